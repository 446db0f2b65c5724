"""Where one unit's regions come from: `--regions {auto,atlas,derivatives,none}` (issue #17).

Precedence under `auto`: a FreeSurfer-style segmentation found in `--derivatives` (exact
anatomy) > the template atlas warped through the brain-mask step's template registration
(approximate) > none. `atlas`, `derivatives` and `none` select one source explicitly; a unit
without a segmentation under `derivatives` fails with a one-line error.

Whatever the source, the unit's derived parcellation (reference/SHIVA.md §9.1) is built once
(:func:`unit_parcellation`) and every marker's scheme is read from it on the marker's own grid
(`regions.build_regions(..., parcellation=...)`). For the atlas it is derived on the 1 mm
conformed grid, in the box of the brain mask grown by the parcellation's margin
(:func:`atlas_grid`): SHiVAi derives its parcellation on the 1 mm cropped model grid (§9.1),
which covers the same brain, but a model grid that cuts the brain would cut the regions too.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from shiva_bids.config import REGION_MODES
from shiva_bids.errors import MissingInputError
from shiva_bids.postprocessing.regions import Parcellation, make_parcellation
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["REGION_MODES", "atlas_grid", "choose_source", "needs_template_registration",
           "unit_parcellation"]


def choose_source(mode: str, has_dseg: bool, unit_id: str = "") -> str:
    """"derivatives", "atlas" or "none" for a unit (see the module doc)."""
    if mode not in REGION_MODES:
        raise ValueError(f"--regions {mode!r}: expected one of {REGION_MODES}")
    if mode == "auto":
        return "derivatives" if has_dseg else "atlas"
    if mode == "derivatives" and not has_dseg:
        raise MissingInputError(f"{unit_id}: --regions derivatives, but no segmentation "
                                "(aseg/aparc+aseg/SynthSeg) was found for it in --derivatives")
    return mode


def needs_template_registration(mode: str, has_dseg: bool) -> bool:
    """True when the unit's regions come from the atlas (so preprocessing must register the
    template even if its brain mask came another way)."""
    return mode == "atlas" or (mode == "auto" and not has_dseg)


def atlas_grid(conformed_mask: Volume) -> Volume:
    """The 1 mm grid the atlas parcellation is derived on: the conformed brain mask's box,
    grown by `parcellation.MARGIN` voxels (the distances of §9.1 reach that far)."""
    from shiva_bids.postprocessing.parcellation import MARGIN
    from shiva_bids.volume import bounding_box
    box = bounding_box(np.asarray(conformed_mask.data) > 0, MARGIN)
    region = conformed_mask.region(box)
    return region.with_data(np.zeros(region.shape[:3], np.uint8))


def load_dseg(path: Path) -> Volume:
    img = nib.load(path)
    return Volume(np.asarray(img.dataobj).astype(np.int32), img.affine)


def atlas_parcellation(grid: Volume, template_name: str, transforms: Sequence[Path],
                       cache_dir: Path, seed: int = 0,
                       templateflow_home: Path | None = None) -> Parcellation:
    """The template atlas on `grid` (participant -> template `transforms` from the brain-mask
    step, then the cached template -> atlas alignment) and its derived parcellation."""
    from shiva_bids.postprocessing.atlases import (
        align_atlas,
        atlas_on_grid,
        default_atlas,
        template_brain,
    )
    from shiva_bids.preprocessing.templates import load_template
    from shiva_bids.preprocessing.templates import template_name as available_template
    atlas = default_atlas()
    if available_template(templateflow_home) != template_name:
        raise MissingInputError(f"the template registration was made with {template_name}, "
                                f"but {available_template(templateflow_home)} is what is "
                                "available now")
    alignment = align_atlas(atlas, template_name,
                            lambda: template_brain(load_template(templateflow_home)),
                            cache_dir, seed)
    labels = atlas_on_grid(atlas, grid, tuple(transforms) + alignment)
    return make_parcellation(labels, f"atlas:{atlas.name}", approximate=True,
                             provenance={**atlas.provenance(), "Template": template_name})


def unit_parcellation(mode: str, unit_id: str, dseg: Path | None, dseg_source: str,
                      template_transform, grid: Volume, cache_dir: Path,
                      seed: int = 0) -> Parcellation | None:
    """The unit's parcellation by `mode` (None: whole-brain statistics only).

    `template_transform` is the preprocessing's `TemplateTransform` (template name and the
    participant -> template transforms) or None; `grid` the 1 mm grid the atlas is derived on.
    """
    source = choose_source(mode, dseg is not None, unit_id)
    if source == "derivatives":
        return make_parcellation(load_dseg(dseg), f"dseg:{dseg_source}")
    if source == "none":
        return None
    if template_transform is None:
        message = (f"{unit_id}: no template registration, so no atlas regions "
                   "(whole-brain statistics only)")
        if mode == "atlas":
            raise MissingInputError(message)
        log.warning(message)
        return None
    return atlas_parcellation(grid, template_transform.template,
                              template_transform.transforms, cache_dir, seed)
