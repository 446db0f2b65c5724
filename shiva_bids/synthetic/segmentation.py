"""The phantom's true FreeSurfer-style segmentation and the true region of every lesion.

The phantom's anatomy is the ICBM152 2009a template (anatomy.py). Its "true" `aparc+aseg` is
the app's template atlas (postprocessing/atlases.py, FreeSurfer Desikan-Killiany labels)
aligned to that template by the same atlas alignment the app computes for its fallback
template (the canvas is in the template's millimetres), kept inside the phantom's brain. Each
session's segmentation is that canvas sampled through the session's warp, exactly as its
images and lesion masks are (grids.sample), so it is the segmentation a perfect FreeSurfer run
would hand over with `--derivatives`.

A lesion's true region in its marker's scheme (reference/SHIVA.md §9.3: PVS, WMH, MARS) is
assigned on the canvas by the app's own rule (regions.assign_regions: winner-takes-all, WMH
periventricular priority) from the canvas segmentation's derived parcellation. `boundary_mm`
is how deep the lesion lies inside that region: the smallest distance from any of its voxels
to a voxel of another region of the scheme (unlabelled voxels do not count), capped at
MAX_BOUNDARY_MM. Lesions deeper than a registration error keep their region under it.

What this truth measures: the phantom's anatomy is the template's, deformed by a smooth warp,
so agreement with the atlas path measures registration (and atlas-alignment) error only, not
the differences of individual anatomy that real participants add.
"""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing.regions import (Parcellation, RegionMap, assign_regions,
                                               build_regions, make_parcellation)
from shiva_bids.synthetic.anatomy import load_anatomy
from shiva_bids.synthetic.lesions import LesionMap
from shiva_bids.volume import Volume

MAX_BOUNDARY_MM = 10.0
SOURCE = "phantom-truth"


@functools.lru_cache(maxsize=1)
def atlas_cache_dir() -> Path:
    """A per-process folder for the atlas alignment (removed at exit); the app's own atlas
    regions can reuse it (`sources.unit_parcellation(cache_dir=...)`) for the phantom's
    fallback template instead of aligning again."""
    folder = Path(tempfile.mkdtemp(prefix="shiva-phantom-atlas-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder


@functools.lru_cache(maxsize=1)
def canvas_segmentation() -> Volume:
    """FreeSurfer labels (int16) on the phantom canvas (computed once per process: one atlas
    alignment, ~10-20 s of CPU)."""
    from shiva_bids.postprocessing.atlases import (
        align_atlas,
        atlas_on_grid,
        default_atlas,
        template_brain,
    )
    from shiva_bids.preprocessing.templates import fallback_template
    anatomy = load_anatomy()
    template = fallback_template()
    atlas = default_atlas()
    grid = Volume(np.zeros(anatomy.shape, np.uint8), anatomy.affine)
    alignment = align_atlas(atlas, template.name, template_brain(template), atlas_cache_dir())
    labels = atlas_on_grid(atlas, grid, alignment)
    return grid.with_data(np.where(anatomy.brain, labels.data, 0).astype(np.int16))


@functools.lru_cache(maxsize=1)
def canvas_parcellation() -> Parcellation:
    """The derived parcellation (§9.1) of the canvas segmentation."""
    return make_parcellation(canvas_segmentation(), f"dseg:{SOURCE}")


def atlas_provenance() -> dict:
    """What the segmentation's sidecar says about the atlas it comes from (licence)."""
    from shiva_bids.postprocessing.atlases import default_atlas
    return default_atlas().provenance()


def _scheme_map(scheme: str) -> RegionMap:
    parcellation = canvas_parcellation()
    return build_regions(scheme, parcellation.derived, parcellation=parcellation)


def lesion_regions(lesions: LesionMap) -> list[tuple[str, float]]:
    """(true region name in the marker's scheme, boundary_mm) of each `lesions.lesions`."""
    anatomy = load_anatomy()
    ids = np.zeros(anatomy.shape, np.int32)
    ids.reshape(-1)[lesions.voxels] = lesions.voxel_ids
    out: list[tuple[str, float]] = []
    maps: dict[str, RegionMap] = {}
    objects = ndimage.find_objects(ids)
    margin = int(MAX_BOUNDARY_MM) + 1
    for lesion in lesions.lesions:
        scheme = MARKERS[lesion.marker].region_scheme
        if scheme not in maps:
            maps[scheme] = _scheme_map(scheme)
        regions = maps[scheme]
        box = tuple(slice(max(0, s.start - margin), min(n, s.stop + margin))
                    for s, n in zip(objects[lesion.id - 1], ids.shape))
        mine = ids[box] == lesion.id
        local = Volume(regions.labels.data[box], regions.labels.affine)
        label = int(assign_regions(mine.astype(np.int32), 1,
                                   RegionMap(local, regions.names, regions.source, scheme,
                                             priority=regions.priority))[0])
        others = (local.data != label) & (local.data > 0)
        if label == 0 or not others.any():
            depth = MAX_BOUNDARY_MM
        else:
            depth = float(ndimage.distance_transform_edt(~others)[mine].min())
        out.append((regions.name(label), round(min(depth, MAX_BOUNDARY_MM), 2)))
    return out
