"""Brain masks on the conformed grid, by one of four methods (recorded in `BrainMask.method`).

(a) `derivatives`: a mask from --derivatives (e.g. sMRIPrep `desc-brain_mask`), resampled to
    the conformed grid (nearest neighbour) and binarised like SHiVAi's custom masks
    (> 0.5, components <= 100 mm^3 dropped, reference/SHIVA.md §5.3-5.4).
(b) `premasked`: the input is already skull-stripped; its non-zero voxels (> 0.5 in raw units,
    nearest-neighbour conform, components <= 100 mm^3 dropped) are the mask (SHIVA.md §5.4).
(c) `template`: a head template with a brain mask is registered to the participant (affine,
    then a short SyN, both at 2 mm), its mask warped back and cleaned (largest 26-connected
    component, holes filled). The template is TemplateFlow's MNI152NLin2009cAsym when its files
    are in TEMPLATEFLOW_HOME (never downloaded), else a head built offline from the ICBM152
    2009a brain that nilearn bundles (`templates.py`).
(d) `shiva`: the SHIVA brain-mask model; not available in this version (clear error).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import ants
import numpy as np
from scipy import ndimage

from shiva_bids.errors import BadInputError, UsageError
from shiva_bids.preprocessing.antsio import from_ants, grid_image, to_ants
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.registration import Stage, run_ants
from shiva_bids.preprocessing.templates import Template
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

MIN_COMPONENT_MM3 = 100  # SHIVA.md §5.4, custom/premasked/synthseg masks
REGISTRATION_SPACING_MM = 2.0
# Affine at 2 mm (MI, regular 25 %), then a short SyN (MI) at 4 and 2 mm: the "AffineFast then
# SyNOnly with few iterations" row of reference/MEASUREMENTS.md, at half the resolution.
TEMPLATE_STAGES = (
    Stage("affine", (1000, 500, 100), (4, 2, 1), (2, 1, 0), transform="Affine[0.1]",
          bins=32, sampling_rate=0.25, convergence_window=10),
    Stage("syn", (40, 20), (2, 1), (1, 0), transform="SyN[0.2,3,0]", bins=32,
          sampling="None", convergence_threshold=1e-7, convergence_window=8),
)


@dataclass(frozen=True)
class TemplateTransform:
    """What warps template-space images (atlases) onto a participant grid.

    `transforms` are ANTs transform files in `ants.apply_transforms` order (warp, then affine):
    `ants.apply_transforms(fixed=<any participant-space image>, moving=<template-space image>,
    transformlist=[str(t) for t in transforms])`. ANTs transforms act on world coordinates, so
    the native T1w grid works as `fixed` as well as the conformed one.
    """

    template: str
    template_image: Path | None
    transforms: tuple[Path, ...]


@dataclass(frozen=True)
class BrainMask:
    """A binary brain mask (uint8) on the conformed reference grid and how it was made."""

    mask: Volume
    method: str
    template_transform: TemplateTransform | None = None

    @property
    def volume_ml(self) -> float:
        return float(np.count_nonzero(self.mask.data)) * self.mask.voxel_volume / 1000.0


def largest_component(binary: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean array."""
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3D and then slice by slice (closes ventricles opening sideways)."""
    filled = ndimage.binary_fill_holes(binary)
    for axis in range(3):
        filled = np.stack([ndimage.binary_fill_holes(s) for s in np.moveaxis(filled, axis, 0)],
                          axis=axis)
    return filled


def drop_small_components(binary: np.ndarray, min_voxels: int) -> np.ndarray:
    """SHiVAi's `keep_all` cluster step: with several components, drop those <= min_voxels."""
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return binary
    sizes = np.bincount(labels.ravel())
    keep = sizes > min_voxels
    keep[0] = False
    if not keep[1:].any():
        raise BadInputError("brain mask has no component larger than "
                            f"{min_voxels} voxels")
    return keep[labels]


def _as_mask(binary: np.ndarray, affine: np.ndarray) -> Volume:
    return Volume(np.asarray(binary, dtype=np.uint8), np.asarray(affine, dtype=float))


def mask_from_image(volume: Volume, reference: Volume, source: str) -> BrainMask:
    """Methods (a) and (b): any image whose voxels > 0.5 are brain, put on `reference`'s grid."""
    data = resample_world(volume.data, volume.affine, reference.shape, reference.affine,
                          "nearest")
    binary = data > 0.5
    if not binary.any():
        raise BadInputError(f"{source}: the brain mask is empty on the T1w grid")
    min_voxels = int(round(MIN_COMPONENT_MM3 / reference.voxel_volume))
    return BrainMask(_as_mask(drop_small_components(binary, min_voxels), reference.affine),
                     "derivatives" if source != "premasked" else "premasked")


def template_mask(reference: Volume, template: Template, work_dir: Path,
                  seed: int = 0) -> BrainMask:
    """Method (c): register `template` (head + brain mask) to `reference`, warp, clean."""
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(work_dir / "template_to_ref_")
    fixed = ants.resample_image(to_ants(reference), (REGISTRATION_SPACING_MM,) * 3, False, 0)
    moving = ants.resample_image(to_ants(template.head), (REGISTRATION_SPACING_MM,) * 3,
                                 False, 0)
    run_ants(fixed, moving, prefix, list(TEMPLATE_STAGES), seed=seed)
    transforms = (Path(prefix + "1Warp.nii.gz"), Path(prefix + "0GenericAffine.mat"))
    warped = ants.apply_transforms(grid_image(reference.shape, reference.affine),
                                   to_ants(template.mask), [str(t) for t in transforms],
                                   interpolator="linear")
    binary = from_ants(warped).data > 0.5
    if not binary.any():
        raise BadInputError("template registration produced an empty brain mask")
    cleaned = fill_holes(largest_component(binary))
    log.info("brain mask from template %s (%.0f mL)", template.name,
             cleaned.sum() * reference.voxel_volume / 1000.0)
    tt = TemplateTransform(template.name, template.image_path, transforms)
    return BrainMask(_as_mask(cleaned, reference.affine), f"template:{template.name}", tt)


def shiva_mask_unavailable(models_dir: Path | None) -> BrainMask:
    """Method (d) is not implemented yet: say so in one line."""
    raise UsageError("--brain-mask shiva: the SHIVA brain-mask model is not supported in this "
                     f"version (models dir {models_dir}); use --brain-mask auto or template")
