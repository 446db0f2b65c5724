"""The frozen run configuration that the CLI builds and every level receives.

Nothing outside `shiva_bids.cli` reads `sys.argv`; stages read what they need from a
:class:`RunConfig` (or from smaller typed arguments derived from it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from shiva_bids.markers import MARKER_NAMES, MARKERS

PIPELINES: tuple[str, ...] = ("shiva", "fetal-cgm")
DEVICES: tuple[str, ...] = ("auto", "cpu", "gpu")
# Inference engine and precision (models/engines.py): auto = OpenVINO on the CPU, TensorFlow
# on a GPU; bf16 only where the CPU computes it natively.
ENGINES: tuple[str, ...] = ("auto", "openvino", "tensorflow")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
BRAIN_MASK_METHODS: tuple[str, ...] = ("auto", "template", "shiva")
# Where regions come from (postprocessing/sources.py): auto = a --derivatives segmentation,
# else the template atlas.
REGION_MODES: tuple[str, ...] = ("auto", "atlas", "derivatives", "none")
TTA_MODES: tuple[str, ...] = ("none", "flip")
LEVELS: tuple[str, ...] = ("participant", "group")


def _frozen(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class RunConfig:
    """Everything one invocation of `shiva-bids bids_dir output_dir level` was asked to do."""

    bids_dir: Path
    output_dir: Path
    analysis_level: str
    participant_labels: tuple[str, ...] = ()  # empty: every participant
    session_labels: tuple[str, ...] = ()  # empty: every session
    bids_filters: Mapping[str, Any] = field(default_factory=lambda: _frozen(None))
    bids_database_dir: Path | None = None
    skip_bids_validation: bool = False
    work_dir: Path = Path("work")
    nprocs: int = 1
    omp_nthreads: int = 1
    mem_gb: float | None = None
    device: str = "auto"
    engine: str = "auto"
    precision: str = "fp32"
    pipeline: str = "shiva"
    models_dir: Path | None = None
    model_overrides: Mapping[str, Path] = field(default_factory=lambda: _frozen(None))
    skip_model_checksum: bool = False
    markers: tuple[str, ...] = ()  # empty: every marker whose model and inputs are available
    derivatives: Mapping[str, Path] = field(default_factory=lambda: _frozen(None))
    brain_mask: str = "auto"
    regions: str = "auto"
    premasked: bool = False
    replace_t1: str | None = None  # e.g. "t2": the T2w takes the T1w's role (channel 0)
    inverse_t2: bool = False
    tta: str = "none"
    thresholds: Mapping[str, float] = field(default_factory=lambda: _frozen(None))
    min_cluster_sizes: Mapping[str, int] = field(default_factory=lambda: _frozen(None))
    keep_model_space: bool = False  # also write the model-grid maps (res-model)
    sloppy: bool = False  # testing only: the cheaper rigid registration (registration.SLOPPY)
    fetal_largest_component: bool = False  # fetal-cgm: BDN's largest component as CGM's ROI
    reports_only: bool = False
    stop_on_first_crash: bool = False
    force: bool = False
    random_seed: int = 0
    verbosity: int = 0

    def threshold(self, marker: str) -> float:
        """Probability threshold for `marker`: the user's override, else the SHIVA default."""
        return float(self.thresholds.get(marker, MARKERS[marker].threshold))

    def min_cluster_size(self, marker: str) -> int:
        """Minimum cluster size (voxels of the 1 mm model grid) for `marker`."""
        return int(self.min_cluster_sizes.get(marker, MARKERS[marker].min_cluster_size))

    @property
    def requested_markers(self) -> tuple[str, ...]:
        """Markers the user asked for, or all of them."""
        return self.markers or MARKER_NAMES

    @property
    def inference_threads(self) -> int:
        """TensorFlow threads for inference. Inference runs in one process at a time (fold after
        fold over all units), so it gets the whole CPU budget (--nprocs), not the per-process
        share (--omp-nthreads) that parallel preprocessing workers each get."""
        return max(self.nprocs, self.omp_nthreads)

    @property
    def ir_cache(self) -> Path:
        """The work directory's cache of folds converted to OpenVINO IR (models/openvino_ir)."""
        return self.work_dir / "openvino"

    @property
    def logs_dir(self) -> Path:
        return self.output_dir / "logs"
