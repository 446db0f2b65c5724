"""The dHCP two-stage fetal pipeline: brain (BDN) then cortical grey matter (CGM) on T2w.

reference/FETAL_DEEPMEDIC.md §1, exactly as published by default: z-score the whole T2w (of a
4-D file, its first volume, as the dHCP normalisation script, §5.1), run BDN on the whole
volume, take its argmax as the brain mask and run CGM on the same normalised volume with that
mask as DeepMedic's ROI (the dHCP README feeds the BDN segmentation itself to CGM; neither
DeepMedic v0.7.0 nor the dHCP repository has connected-component code). With
`--fetal-largest-component` (a deviation, docs/fetal.md) only the largest 26-connected
component of the BDN mask becomes the ROI. Outputs, in the T2w's own grid (no reorientation,
§5.1):

* `<source>_space-T2w_desc-brain_mask.nii.gz` (BDN argmax: CGM's ROI);
* `<source>_space-T2w_label-CGM_probseg.nii.gz` (CGM class-1 probability, 0 outside the mask);
* `<source>_space-T2w_label-CGM_mask.nii.gz` (CGM argmax);
* their JSON sidecars (sources, spatial reference, checkpoint names and md5 of the data
  files), a participant HTML report, and `<source>_desc-fetal_stats.json` (volumes and
  gestational age), written last: its presence marks the unit done.

`run_fetal_participant(config)` and `fetal_group_rows(output_dir)` are the entry points the
participant and group levels dispatch to when `--pipeline fetal-cgm`.
"""
from __future__ import annotations

import csv
import json
import logging
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from shiva_bids.bids import derivatives as bd
from shiva_bids.bids.annex import check_fetched
from shiva_bids.bids.discovery import discover_inputs
from shiva_bids.bids.validation import validate_input
from shiva_bids.config import RunConfig
from shiva_bids.errors import (BadInputError, ExitCode, MissingInputError,
                               NothingSelectedError, UsageError, combined_exit_code,
                               exit_class)
from shiva_bids.pipelines.fetal import checkpoint as ckpt
from shiva_bids.pipelines.fetal.inference import (Predictor, Segmentation, batch_size_for_memory,
                                        segment_volume, set_threads, zscore)
from shiva_bids.pipelines.fetal.network import OUTPUT
from shiva_bids.pipelines.fetal.report import FetalReport, write_report
from shiva_bids.io import atomic_save_nifti, atomic_write_json, atomic_write_text
from shiva_bids.log import add_file_log, remove_file_log
from shiva_bids.models.checksums import md5_of_path
from shiva_bids.checks import check_bids_dir, ensure_writable_dir
from shiva_bids.preprocessing.brainmask import largest_component
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

NETWORKS: tuple[str, ...] = ("bdn", "cgm")
# Column names holding the gestational age (weeks) in sessions.tsv / participants.tsv.
GA_COLUMNS: tuple[str, ...] = ("gestational_age", "scan_ga", "ga", "gestational_age_weeks",
                               "ga_weeks", "scan_age")
STATS_DESC = "fetal"
GROUP_TABLE = "group/fetal-cgm_stats.tsv"
GROUP_COLUMNS: tuple[str, ...] = ("participant_id", "session_id", "source", "gestational_age",
                                  "brain_volume_mm3", "cgm_volume_mm3", "cgm_brain_ratio")


@dataclass(frozen=True)
class FetalModel:
    """One checkpoint and its provenance."""

    name: str  # "bdn" or "cgm"
    prefix: Path
    data_md5: str

    @property
    def provenance(self) -> dict[str, str]:
        return {"Network": f"dHCP fetal {self.name.upper()} (DeepMedic v0.7.0 layout)",
                "Checkpoint": self.prefix.name, "DataFile": self.prefix.name + ckpt.DATA_SUFFIX,
                "DataFileMD5": self.data_md5}


@dataclass(frozen=True)
class FetalUnit:
    """One fetal T2w to process."""

    t2w: Path
    entities: dict[str, str]  # source entities for derivative names (sub, ses, rec, ...)

    @property
    def unit_id(self) -> str:
        return bd.derivative_name(self.entities, "T2w", "").removesuffix("_T2w")


@dataclass(frozen=True)
class LoadedT2w:
    """The T2w volume to segment and the warnings its loading raised."""

    volume: Volume
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetalResult:
    """Outputs of both stages on the T2w grid."""

    brain: np.ndarray  # uint8 0/1
    cgm_probability: np.ndarray  # float32
    cgm: np.ndarray  # uint8 0/1
    bdn_tiles: str
    cgm_tiles: str


def find_models(models_dir: Path | None) -> dict[str, Path]:
    """Checkpoint prefixes `<models_dir>/{bdn,cgm}/<name>.index` -> {"bdn": prefix, ...}."""
    if models_dir is None:
        raise UsageError("--pipeline fetal-cgm needs --models-dir (a folder with bdn/ and cgm/ "
                         "checkpoints)")
    found: dict[str, Path] = {}
    for name in NETWORKS:
        indexes = sorted((models_dir / name).glob(f"*{ckpt.INDEX_SUFFIX}"))
        if len(indexes) != 1:
            what = "no" if not indexes else f"{len(indexes)}"
            raise MissingInputError(f"{models_dir / name}: {what} checkpoint index (*.index) "
                                    f"found; expected exactly one {name}.model.ckpt.index")
        found[name] = Path(str(indexes[0])[: -len(ckpt.INDEX_SUFFIX)])
    return found


def load_networks(models_dir: Path | None, verify: bool = True):
    """Check and load both checkpoints -> ({name: DeepMedicNet}, {name: FetalModel})."""
    from shiva_bids.pipelines.fetal.network import DeepMedicNet

    nets, models = {}, {}
    for name, prefix in find_models(models_dir).items():
        nets[name] = DeepMedicNet().load(prefix, verify=verify)
        models[name] = FetalModel(name, prefix,
                                  md5_of_path(Path(str(prefix) + ckpt.DATA_SUFFIX)))
    return nets, models


def find_t2w(config: RunConfig) -> tuple[list[FetalUnit], list[str]]:
    """One T2w per selected participant/session (shiva_bids.bids.discovery: labels, the `t2w`
    entry of the filter file, the documented choice among several matches); returns the units
    and the ids of those without any T2w."""
    units, missing = [], []
    for inputs in discover_inputs(config):
        if inputs.t2w is None:
            log.warning("%s: skipped, no T2w image found", inputs.unit_id)
            missing.append(inputs.unit_id)
            continue
        if "t2w" in inputs.choices:
            log.info("%s: %s", inputs.unit_id, inputs.choices["t2w"])
        units.append(FetalUnit(inputs.t2w, bd.source_entities(inputs.t2w.name)))
    if not units:
        raise NothingSelectedError(f"{config.bids_dir}: no T2w image in the selected "
                                   "participants/sessions")
    return units, missing


def load_t2w(path: Path) -> LoadedT2w:
    """The T2w as stored (no reorientation), checked: 3-D (a 4-D file gives its first volume,
    with a warning, as the dHCP `normalise_t2w_images.py`: FETAL_DEEPMEDIC.md §5.1), finite,
    not constant, at least 29 voxels (one DeepMedic output block) along every axis. Axes of
    29-44 voxels are padded as DeepMedic pads them (`inference.pad_widths`, §5.2)."""
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise BadInputError(f"{path}: cannot read the image ({exc})") from exc
    warnings: list[str] = []
    if data.ndim == 4:
        if data.shape[3] > 1:
            warnings.append(f"{path.name}: 4-D image with {data.shape[3]} volumes; the first "
                            "is segmented (as the dHCP normalisation script does)")
            log.warning(warnings[-1])
        data = data[..., 0]
    if data.ndim != 3:
        raise BadInputError(f"{path}: a 3-D T2w is needed, the image has shape {data.shape}")
    if min(data.shape) < OUTPUT:
        raise BadInputError(f"{path}: shape {data.shape} has fewer than {OUTPUT} voxels (one "
                            "DeepMedic output block) along an axis; a reconstructed 3-D volume "
                            "is expected")
    data = np.asarray(data, dtype=np.float64)
    if not np.isfinite(data).all() or data.std() == 0:
        raise BadInputError(f"{path}: the image is constant or holds NaN/inf values")
    return LoadedT2w(Volume(data, np.asarray(img.affine, dtype=float)), tuple(warnings))


def segment_fetal(t2w: np.ndarray, bdn: Predictor, cgm: Predictor, batch_size: int,
                  largest: bool = False) -> FetalResult:
    """Both stages on one T2w array: z-score, BDN (no ROI), its argmax as CGM's ROI (with
    `largest`, only its largest 26-connected component: not in the published system)."""
    normalised = zscore(t2w)
    brain_run: Segmentation = segment_volume(normalised, bdn, None, batch_size, "BDN")
    brain = brain_run.labels == 1
    if largest:
        brain = largest_component(brain)
    brain = brain.astype(np.uint8)
    cgm_run = segment_volume(normalised, cgm, brain, batch_size, "CGM")
    return FetalResult(brain, cgm_run.probabilities[..., 1].astype(np.float32),
                       (cgm_run.labels == 1).astype(np.uint8),
                       f"{brain_run.tiles_run}/{brain_run.tiles_total}",
                       f"{cgm_run.tiles_run}/{cgm_run.tiles_total}")


def _lookup_ga(bids_dir: Path, entities: dict[str, str]) -> float | None:
    """Gestational age from the session's row of sessions.tsv, else participants.tsv."""
    subject = f"sub-{entities['sub']}"
    tables = []
    if "ses" in entities:
        tables.append((bids_dir / subject / f"{subject}_sessions.tsv", "session_id",
                       f"ses-{entities['ses']}"))
    tables.append((bids_dir / "participants.tsv", "participant_id", subject))
    for table, key, wanted in tables:
        if not table.is_file():
            continue
        with open(table, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                if row.get(key) != wanted:
                    continue
                for column in GA_COLUMNS:
                    try:
                        return float(row[column])
                    except (KeyError, TypeError, ValueError):
                        continue
    return None


def _save(volume: Volume, data: np.ndarray, dtype, path: Path, fields: dict) -> Path:
    atomic_save_nifti(volume.with_data(data).to_nifti(dtype), path)
    bd.write_sidecar(path, fields)
    return path


def write_outputs(config: RunConfig, unit: FetalUnit, loaded: LoadedT2w, result: FetalResult,
                  models: dict[str, FetalModel]) -> dict[str, Any]:
    """Write images, sidecars, the report and (last) the stats record; returns the stats."""
    out, t2w = config.output_dir, loaded.volume
    source_uri = bd.bids_uri(unit.t2w, config.bids_dir, "raw")
    orientation = "".join(nib.aff2axcodes(t2w.affine))
    common = {"SpatialReference": source_uri, "InputOrientation": orientation}
    paths = {
        "brain": bd.derivative_path(out, unit.entities, "mask", space="T2w", desc="brain"),
        "probseg": bd.derivative_path(out, unit.entities, "probseg", space="T2w", label="CGM"),
        "cgm": bd.derivative_path(out, unit.entities, "mask", space="T2w", label="CGM"),
    }
    brain_uri = bd.bids_uri(paths["brain"], out)
    _save(t2w, result.brain, np.uint8, paths["brain"], {
        **common, "Type": "Brain", "Sources": [source_uri], "Model": models["bdn"].provenance,
        "Description": "dHCP BDN brain mask (argmax), CGM's ROI" + (
            "; only its largest 26-connected component (--fetal-largest-component, not in "
            "the published system)" if config.fetal_largest_component else "")})
    cgm_fields = {**common, "Sources": [source_uri, brain_uri],
                  "Model": models["cgm"].provenance}
    _save(t2w, result.cgm_probability, np.float32, paths["probseg"], {
        **cgm_fields, "Description": "dHCP CGM probability of cortical grey matter; 0 outside "
                                     "the brain mask (DeepMedic ROI masking)"})
    _save(t2w, result.cgm, np.uint8, paths["cgm"], {
        **cgm_fields, "Type": "ROI", "Description": "dHCP CGM cortical grey matter (argmax)"})
    voxel = t2w.voxel_volume
    stats = {"participant_id": f"sub-{unit.entities['sub']}",
             "session_id": f"ses-{unit.entities['ses']}" if "ses" in unit.entities else None,
             "source": source_uri,
             "gestational_age": _lookup_ga(config.bids_dir, unit.entities),
             "brain_volume_mm3": round(float(result.brain.sum()) * voxel, 3),
             "cgm_volume_mm3": round(float(result.cgm.sum()) * voxel, 3),
             "segments_bdn": result.bdn_tiles, "segments_cgm": result.cgm_tiles,
             "brain_largest_component": config.fetal_largest_component,
             "warnings": list(loaded.warnings),
             "models": {name: m.provenance for name, m in models.items()}}
    facts = {"T2w": unit.t2w.name, "shape": "x".join(map(str, t2w.shape)),
             "orientation (stored axes)": orientation,
             "voxel size (mm)": " x ".join(f"{z:.3g}" for z in t2w.zooms),
             "gestational age (weeks)": str(stats["gestational_age"] or "n/a"),
             "brain volume (mL)": f"{stats['brain_volume_mm3'] / 1000:.2f}",
             "CGM volume (mL)": f"{stats['cgm_volume_mm3'] / 1000:.2f}",
             "segments run (BDN, CGM)": f"{result.bdn_tiles}, {result.cgm_tiles}",
             "brain mask": "BDN largest component (deviation)"
             if config.fetal_largest_component else "BDN argmax (as published)",
             **({"warnings": "; ".join(loaded.warnings)} if loaded.warnings else {}),
             **{f"{n.upper()} data md5": m.data_md5 for n, m in models.items()}}
    write_report(out / f"{unit.unit_id}_desc-fetal_report.html",
                 FetalReport(f"{unit.unit_id}: fetal cortical grey matter", t2w.data,
                             result.brain, result.cgm, facts))
    atomic_write_json(stats_path(out, unit), stats)
    return stats


def stats_path(output_dir: Path, unit: FetalUnit) -> Path:
    return bd.derivative_path(output_dir, unit.entities, "stats", ".json", desc=STATS_DESC)


def _prepare_output(config: RunConfig) -> None:
    """Checks of the folders, then the derivative dataset's own files."""
    check_bids_dir(config.bids_dir)
    ensure_writable_dir(config.output_dir, "output_dir")
    ensure_writable_dir(config.work_dir, "--work-dir")
    bd.write_dataset_description(bd.DatasetInfo(
        config.bids_dir, config.output_dir,
        description="dHCP fetal cortical grey matter (DeepMedic v0.7.0 checkpoints)"))
    bd.ensure_bidsignore(config.output_dir, bd.NON_BIDS_PATTERNS)


def run_fetal_participant(config: RunConfig) -> ExitCode:
    """`participant` level with `--pipeline fetal-cgm`: every selected T2w, both stages.

    A failing T2w is logged with one line and a crash file; the others go on (unless
    --stop-on-first-crash). Returns the participant level's rule
    (shiva_bids.errors.combined_exit_code) over the failures' classes and NO_INPUT (66) for
    a selected participant/session without a T2w.
    """
    _prepare_output(config)
    validate_input(config.bids_dir, skip=config.skip_bids_validation,
                   cache_dir=config.work_dir / "deno-cache")
    units, missing = find_t2w(config)
    todo = [u for u in units if config.force or not stats_path(config.output_dir, u).is_file()]
    log.info("fetal-cgm: %d T2w selected, %d to do", len(units), len(todo))
    check_fetched([u.t2w for u in todo], config.bids_dir, config.work_dir)
    missing_code = [ExitCode.NO_INPUT] if missing else []
    if not todo:
        return combined_exit_code(missing_code)
    set_threads(config.inference_threads)
    nets, models = load_networks(config.models_dir, verify=not config.skip_model_checksum)
    batch = batch_size_for_memory(config.mem_gb)
    failures: list[ExitCode] = []
    for unit in todo:
        handler = add_file_log(config.logs_dir / f"{unit.unit_id}_fetal.log")
        try:
            t2w = load_t2w(unit.t2w)
            result = segment_fetal(t2w.volume.data, nets["bdn"], nets["cgm"], batch,
                                   config.fetal_largest_component)
            stats = write_outputs(config, unit, t2w, result, models)
            log.info("%s: brain %.1f mL, CGM %.1f mL", unit.unit_id,
                     stats["brain_volume_mm3"] / 1000, stats["cgm_volume_mm3"] / 1000)
        except Exception as exc:  # one unit's failure must not stop the others
            failures.append(exit_class(exc))
            log.error("%s: %s", unit.unit_id, exc)
            atomic_write_text(config.logs_dir / f"crash-{unit.unit_id}.txt",
                              traceback.format_exc())
            if config.stop_on_first_crash:
                break
        finally:
            remove_file_log(handler)
    return combined_exit_code(failures + missing_code)


def fetal_group_rows(output_dir: Path) -> list[dict]:
    """One row per processed T2w (sorted by file name), columns :data:`GROUP_COLUMNS`."""
    rows = []
    for path in sorted(Path(output_dir).glob(f"sub-*/**/*_desc-{STATS_DESC}_stats.json")):
        stats = json.loads(path.read_text())
        brain = stats["brain_volume_mm3"]
        row = {key: stats.get(key) for key in GROUP_COLUMNS}
        row["cgm_brain_ratio"] = round(stats["cgm_volume_mm3"] / brain, 6) if brain else None
        rows.append(row)
    return rows


def run_fetal_group(config: RunConfig) -> ExitCode:
    """`group` level with `--pipeline fetal-cgm`: the rows as a TSV (n/a for missing values)."""
    rows = fetal_group_rows(config.output_dir)
    if not rows:
        raise MissingInputError(f"{config.output_dir}: no fetal-cgm participant outputs "
                                "(run the participant level first)")
    lines = ["\t".join(GROUP_COLUMNS)]
    lines += ["\t".join("n/a" if row[c] is None else str(row[c]) for c in GROUP_COLUMNS)
              for row in rows]
    atomic_write_text(config.output_dir / GROUP_TABLE, "\n".join(lines) + "\n")
    return ExitCode.OK
