"""Head templates with a brain mask, found offline.

TemplateFlow's MNI152NLin2009cAsym T1w + brain mask are used only when the files are already in
TEMPLATEFLOW_HOME (the container pre-fetches them). `templateflow.api.get` is never called: for a
missing file it tries the network and fails after seconds (reference/MEASUREMENTS.md,
"TemplateFlow offline"); an empty placeholder file counts as missing.

Otherwise the fallback is built from nilearn's bundled ICBM152 2009a T1, which is
brain-extracted (MEASUREMENTS.md): its non-zero voxels give the brain mask, and a synthetic head
is wrapped around the brain (dark CSF/skull bands, bright scalp) so that an unstripped
participant head can be registered to it with mutual information.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from shiva_bids.volume import Volume, bounding_box, fill_holes

log = logging.getLogger(__name__)

TEMPLATEFLOW_NAME = "MNI152NLin2009cAsym"
FALLBACK_NAME = "ICBM152NLin2009aSymHead"
_TF_RES = ("01", "1", "02", "2")
_NILEARN_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
# Synthetic head around the fallback brain: (outer distance in mm, intensity / white matter).
HEAD_LAYERS = ((2.0, 0.15), (7.0, 0.05), (13.0, 0.75))
PAD_MM = 25


@dataclass(frozen=True)
class Template:
    """A T1w head image and its brain mask (same grid), and where they came from."""

    name: str
    head: Volume
    mask: Volume
    image_path: Path | None  # the file the template-space grid is defined by (atlases use it)
    source: str  # "templateflow" | "nilearn-fallback"


def templateflow_files(home: Path | str | None = None) -> tuple[Path, Path] | None:
    """(T1w, brain mask) of MNI152NLin2009cAsym if both are real files in TEMPLATEFLOW_HOME."""
    home = home or os.environ.get("TEMPLATEFLOW_HOME")
    if not home:
        home = Path.home() / ".cache" / "templateflow"
    folder = Path(home) / f"tpl-{TEMPLATEFLOW_NAME}"
    for res in _TF_RES:
        stem = f"tpl-{TEMPLATEFLOW_NAME}_res-{res}"
        t1 = folder / f"{stem}_T1w.nii.gz"
        mask = folder / f"{stem}_desc-brain_mask.nii.gz"
        if _real_file(t1) and _real_file(mask):
            return t1, mask
    return None


def _real_file(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def template_name(home: Path | str | None = None) -> str:
    """The name of the template :func:`load_template` would return (without loading it)."""
    return TEMPLATEFLOW_NAME if templateflow_files(home) is not None else FALLBACK_NAME


def load_template(home: Path | str | None = None) -> Template:
    """TemplateFlow's template when present locally, else the offline fallback (logged)."""
    files = templateflow_files(home)
    if files is not None:
        t1, mask = files
        head = nib.load(t1)
        brain = nib.load(mask)
        log.info("brain-mask template: TemplateFlow %s from %s", TEMPLATEFLOW_NAME, t1.parent)
        return Template(TEMPLATEFLOW_NAME,
                        Volume(np.asarray(head.dataobj, np.float32), head.affine),
                        Volume((np.asarray(brain.dataobj) > 0.5).astype(np.uint8),
                               brain.affine), t1, "templateflow")
    log.warning("TemplateFlow %s not found in TEMPLATEFLOW_HOME; using the offline fallback "
                "head built from nilearn's ICBM152 2009a brain", TEMPLATEFLOW_NAME)
    return fallback_template()


def nilearn_t1_path() -> Path:
    import nilearn.datasets
    return Path(nilearn.datasets.__file__).parent / "data" / _NILEARN_T1


@functools.lru_cache(maxsize=1)
def fallback_template() -> Template:
    """ICBM152 2009a brain (nilearn) inside a synthetic head, with its brain mask."""
    path = nilearn_t1_path()
    img = nib.load(path)
    brain = np.asarray(img.dataobj, dtype=np.float32)
    pad = PAD_MM
    padded = np.pad(brain, pad, mode="constant")
    # The brain stem leaves the bottom of nilearn's field of view: continue it downwards.
    padded[:, :, :pad] = padded[:, :, pad:pad + 1]
    affine = img.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    mask = padded > 0
    mask[:, :, :pad] = False
    mask = fill_holes(mask, slice_by_slice=False)
    white = float(np.percentile(brain[brain > 0], 90))
    # Distances to the brain matter only up to the outermost layer: work in the brain's box
    # grown by that much (the same result as the whole volume, ~3x faster).
    box = bounding_box(padded > 0, margin=int(np.ceil(HEAD_LAYERS[-1][0])) + 1)
    distance = ndimage.distance_transform_edt(~(padded[box] > 0))
    head = padded.copy()
    local = head[box]
    inner = 0.0
    for outer, level in HEAD_LAYERS:
        local[(distance > inner) & (distance <= outer)] = level * white
        inner = outer
    return Template(FALLBACK_NAME, Volume(head, affine), Volume(mask.astype(np.uint8), affine),
                    path, "nilearn-fallback")
