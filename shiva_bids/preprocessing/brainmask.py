"""Brain masks on the conformed grid, by one of four methods (recorded in `BrainMask.method`).

(a) `derivatives`: a mask from --derivatives (e.g. sMRIPrep `desc-brain_mask`), resampled to
    the conformed grid (nearest neighbour) and binarised like SHiVAi's custom masks
    (> 0.5, `minVol` 100 mm^3, `keep_all`: :func:`threshold_mask`, reference/SHIVA.md §5.3-5.4).
(b) `premasked`: the input is already skull-stripped; its voxels > 0.5 in raw units
    (nearest-neighbour conform, `minVol` 100 mm^3, `keep_all`) are the mask (SHIVA.md §5.4).
(c) `template`: a head template with a brain mask is registered to the participant (affine,
    then a short SyN, on 2 mm images, in a single-threaded worker: workers.py), its mask warped
    back and cleaned (largest 26-connected component, holes filled). The template is
    TemplateFlow's MNI152NLin2009cAsym when its files are in TEMPLATEFLOW_HOME (never
    downloaded), else a head built offline from the ICBM152 2009a brain that nilearn bundles
    (`templates.py`).
(d) `shiva`: the SHIVA brain-mask model from --models-dir, two passes (`shiva_mask.py`).
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import ants
import numpy as np
from scipy import ndimage

from shiva_bids.errors import BadInputError
from shiva_bids.preprocessing.antsio import from_ants, to_ants
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.registration import Stage, run_ants, warp
from shiva_bids.preprocessing.templates import load_template
from shiva_bids.preprocessing.workers import Workers
from shiva_bids.volume import Volume, bounding_box, fill_holes

log = logging.getLogger(__name__)

MIN_COMPONENT_MM3 = 100  # SHIVA.md §5.4, custom/premasked/synthseg masks
BINARY_THRESHOLD = 0.5  # SHIVA.md §5.3: value > 0.5 (strict) is brain
READMIT_MM = 5.0  # SHIVA.md §5.3 step 4: kept components dilated by a 5 mm box
CLUSTER_CHECKS = ("keep_all", "size")
REGISTRATION_SPACING_MM = 2.0
HEAD_FRACTION = 0.1  # head voxels: brighter than 10 % of the 99th percentile
HEAD_MARGIN_MM = 10.0
HEAD_MASK_MARGIN_VOX = 3
# At 2 mm spacing: an affine stage (MI, regular 10 % sampling, 8 then 4 mm), then a SyN stage
# of 20 iterations at 4 mm. Measured on two phantoms with skull (1 ITK thread, CPU seconds of
# the registration on the shared machine; brain-mask Dice against the truth): the former
# schedule (affine 8/4/2 mm, 200/100/50 iterations; SyN 40 iterations at 4 mm plus a
# 0-iteration 2 mm level) 38.4 s, Dice 0.9834 (1 mm T1w); this one 16.0 s, 0.9831 (1 mm T1w)
# and 11.3 s, 0.9860 (1x1x1.2 mm T1w; 0.9860 with 40 SyN iterations too). A SyN gradient step
# of 0.5 or a 4 mm grid cost about as much and lost 0.01-0.02 of Dice.
TEMPLATE_STAGES = (
    Stage("affine", (200, 100), (4, 2), (2, 1), transform="Affine[0.1]",
          bins=32, sampling_rate=0.1, convergence_window=10),
    Stage("syn", (20,), (2,), (1,), transform="SyN[0.25,3,0]", bins=32,
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
    model: Mapping[str, Any] | None = None  # method (d): which brain-mask model ran

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


def _box(radius_mm: float, zooms: Sequence[float]) -> tuple[int, ...]:
    """Side lengths (voxels) of the box of `radius_mm` per axis: 2 r + 1, r = round(mm / zoom)."""
    return tuple(2 * int(round(radius_mm / float(z))) + 1 for z in zooms)


def threshold_mask(data: np.ndarray, zooms: Sequence[float], source: str,
                   threshold: float = BINARY_THRESHOLD, open_mm: float = 0.0,
                   min_vol_mm3: float = MIN_COMPONENT_MM3, cluster_check: str = "keep_all",
                   ) -> np.ndarray:
    """SHiVAi's mask binarisation and cleaning, step by step (reference/SHIVA.md §5.3).

    1. value > `threshold` (strict);
    2. opening of radius `open_mm` per axis: a (2r + 1)-voxel *box*, not a ball (§14 item 5);
    3. 26-connected components; with more than one, drop those <= `min_vol_mm3` (error if none
       is left); `cluster_check` "size" keeps the largest and fails when it is not also the one
       reaching highest in z (§14 item 14); "keep_all" keeps every remaining component;
    4. dilate what is kept by a 5 mm box and intersect with the step-1 mask, which re-admits
       voxels near the kept components that the opening or the size rule removed.
    Returns a boolean array. Errors are BadInputError naming `source`.
    """
    if cluster_check not in CLUSTER_CHECKS:
        raise ValueError(f"cluster_check must be one of {CLUSTER_CHECKS}")
    thresholded = np.asarray(data) > threshold
    binary = thresholded
    if open_mm:
        size = _box(open_mm, zooms)  # min/max filters are the separable box erosion/dilation
        binary = ndimage.maximum_filter(
            ndimage.minimum_filter(binary, size=size, mode="constant", cval=0),
            size=size, mode="constant", cval=0)
    labels, n = ndimage.label(binary, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        raise BadInputError(f"{source}: the brain mask is empty on the conformed grid")
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes > 0
    if n > 1:
        keep &= sizes * float(np.prod(zooms)) > min_vol_mm3
        if not keep.any():
            raise BadInputError(f"{source}: the brain mask has no component larger than "
                                f"{min_vol_mm3:g} mm^3")
    if cluster_check == "size":
        largest = int(np.argmax(np.where(keep, sizes, 0)))
        # highest z index of each component (index 0: background)
        tops = np.array([-1] + [box[2].stop - 1 for box in ndimage.find_objects(labels)])
        if tops[largest] < tops[keep].max():
            raise BadInputError(f"{source}: the largest brain-mask component is not the one "
                                "reaching highest (SHIVA's clusterCheck 'size' stops here)")
        keep = np.zeros_like(keep)
        keep[largest] = True
    kept = keep[labels]
    readmit = ndimage.maximum_filter(kept, size=_box(READMIT_MM, zooms), mode="constant",
                                     cval=0)
    return thresholded & readmit


def _as_mask(binary: np.ndarray, affine: np.ndarray) -> Volume:
    return Volume(np.asarray(binary, dtype=np.uint8), np.asarray(affine, dtype=float))


def mask_from_image(volume: Volume, reference: Volume, source: str) -> BrainMask:
    """Methods (a) and (b): any image whose voxels > 0.5 are brain, put on `reference`'s grid
    (nearest neighbour) and cleaned like SHiVAi's custom/premasked masks (§5.4: `minVol` 100
    mm^3, `keep_all`)."""
    data = resample_world(volume.data, volume.affine, reference.shape, reference.affine,
                          "nearest")
    binary = threshold_mask(data, reference.zooms, source)
    return BrainMask(_as_mask(binary, reference.affine),
                     "derivatives" if source != "premasked" else "premasked")


def head_box(volume: Volume) -> tuple[slice, ...]:
    """Where the head is in a conformed image: the box of the voxels brighter than
    HEAD_FRACTION of the 99th intensity percentile, grown by HEAD_MARGIN_MM. The template is
    registered inside it: the empty rest of the 256 mm cube only cost time (~30 % of the
    registration here). A noisy background gives the whole image, i.e. no saving, no harm."""
    data = np.asarray(volume.data)
    positive = data[data > 0]
    if positive.size == 0:
        return tuple(slice(0, n) for n in data.shape)
    level = HEAD_FRACTION * float(np.percentile(positive, 99))
    margin = int(np.ceil(HEAD_MARGIN_MM / float(np.min(volume.zooms))))
    return bounding_box(data > level, margin=margin)


@dataclass(frozen=True)
class PreparedTemplate:
    """A head template ready for registration: the head resampled to REGISTRATION_SPACING_MM,
    and the brain mask on the template's own grid."""

    name: str
    image_path: Path | None
    head: Volume
    mask: Volume


def prepare_template(templateflow_home: Path | None = None) -> PreparedTemplate:
    """Load the template (`templates.load_template`) and resample its head for registration.
    Runs in a worker while the parent conforms the participant's image."""
    template = load_template(templateflow_home)
    head = ants.resample_image(to_ants(template.head), (REGISTRATION_SPACING_MM,) * 3, False, 0)
    return PreparedTemplate(template.name, template.image_path, from_ants(head), template.mask)


def register_template(head: Volume, template: PreparedTemplate, work_dir: Path,
                      seed: int = 0) -> TemplateTransform:
    """antsRegistration of the template head to `head` (the participant's head box), both at
    REGISTRATION_SPACING_MM, TEMPLATE_STAGES. Runs in a `workers.Workers` process."""
    work_dir.mkdir(parents=True, exist_ok=True)
    prefix = str(work_dir / "template_to_ref_")
    fixed = ants.resample_image(to_ants(head), (REGISTRATION_SPACING_MM,) * 3, False, 0)
    run_ants(fixed, to_ants(template.head), prefix, list(TEMPLATE_STAGES), seed=seed)
    transforms = (Path(prefix + "1Warp.nii.gz"), Path(prefix + "0GenericAffine.mat"))
    return TemplateTransform(template.name, template.image_path, transforms)


def head_mask(data: np.ndarray, margin_vox: int = HEAD_MASK_MARGIN_VOX) -> np.ndarray:
    """The head in an image (uint8): voxels brighter than HEAD_FRACTION of the 99th percentile
    of the positive voxels, in 26-connected components of at least 1 % of the largest one
    (scalp and brain may be apart), holes filled, dilated by `margin_vox` voxels. The SWI
    registration's fixed mask (PreprocOptions.swi_registration_mask)."""
    data = np.asarray(data)
    positive = data[data > 0]
    if positive.size == 0:
        return np.ones(data.shape, np.uint8)
    labels, n = ndimage.label(data > HEAD_FRACTION * np.percentile(positive, 99),
                              structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    head = fill_holes((sizes >= 0.01 * sizes.max())[labels] & (labels > 0))
    return ndimage.binary_dilation(head, iterations=margin_vox).astype(np.uint8)


def start_template_registration(reference: Volume, template: PreparedTemplate, work_dir: Path,
                                workers: Workers, seed: int = 0) -> Future:
    """Submit the registration of `template` to `reference`'s head box (:func:`head_box`,
    :func:`register_template`) to the workers; the Future gives its `TemplateTransform`. The
    one registration that serves both the template brain mask (:func:`template_mask`) and
    the atlas regions (postprocessing/sources.py)."""
    return workers.submit(register_template, reference.region(head_box(reference)), template,
                          work_dir, seed)


def template_mask(reference: Volume, template: PreparedTemplate, transform: TemplateTransform,
                  workers: Workers) -> BrainMask:
    """Method (c) once the template is registered: the template's brain mask warped onto the
    head box (linear, > 0.5, slabs side by side in the workers), its largest component with
    the holes filled."""
    box = head_box(reference)
    head = reference.region(box)
    warped = warp(workers, template.mask, head.shape, head.affine, list(transform.transforms),
                  "linear")
    binary = np.zeros(reference.shape, bool)
    binary[box] = warped.data > 0.5
    if not binary.any():
        raise BadInputError("template registration produced an empty brain mask")
    cleaned = fill_holes(largest_component(binary))
    log.info("brain mask from template %s (%.0f mL)", template.name,
             cleaned.sum() * reference.voxel_volume / 1000.0)
    return BrainMask(_as_mask(cleaned, reference.affine), f"template:{template.name}",
                     transform)
