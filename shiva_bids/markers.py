"""The four SHIVA markers and their published defaults.

Thresholds and minimum cluster sizes are SHiVAi's `apptainer/config_example.yml` values
(reference/SHIVA.md §8 and §13); channels and result spaces are from §1.1; the BIDS mask `Type`
from reference/BIDS_APPS.md §2.8 (only Brain/Lesion/Face/ROI exist, PVS are not lesions).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MarkerSpec:
    """Fixed facts about one marker."""

    name: str
    description: str
    default_modalities: tuple[str, ...]  # channel order of the standard published model
    space: str  # BIDS `space-` of the outputs: the native space of the reference image
    threshold: float  # probability threshold, strict `>` (SHIVA.md §8)
    min_cluster_size: int  # voxels of the 1 mm model grid, i.e. mm^3 (SHIVA.md §8)
    mask_type: str  # BIDS MaskDerivatives `Type`
    region_scheme: str  # "pvs", "wmh" or "mars" (SHIVA.md §9.3)


MARKERS: dict[str, MarkerSpec] = {
    "PVS": MarkerSpec("PVS", "perivascular spaces", ("t1",), "T1w", 0.5, 5, "ROI", "pvs"),
    "WMH": MarkerSpec("WMH", "white matter hyperintensities", ("t1", "flair"), "T1w", 0.2, 1,
                      "Lesion", "wmh"),
    "CMB": MarkerSpec("CMB", "cerebral microbleeds", ("swi",), "SWI", 0.5, 1, "Lesion", "mars"),
    "LAC": MarkerSpec("LAC", "lacunes", ("t1", "flair"), "T1w", 0.2, 3, "Lesion", "mars"),
}

MARKER_NAMES: tuple[str, ...] = tuple(MARKERS)

# SHIVA model-grid facts (SHIVA.md §5.2, §5.5): conformed 256^3 at 1 mm, cropped to this box.
SHIVA_MODEL_SHAPE: tuple[int, int, int] = (160, 214, 176)
CONFORMED_SHAPE: tuple[int, int, int] = (256, 256, 256)
