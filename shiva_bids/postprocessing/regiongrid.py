"""A region map moved onto another grid (nearest neighbour), e.g. onto the SWI model grid.

SHiVAi brings the T1w-space parcellation into SWI space with the inverse SWI->T1 rigid and
nearest-neighbour interpolation (reference/SHIVA.md §7, node `seg_to_swi`); the pipeline builds
the region map on the T1w model grid and moves it the same way for CMB.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from shiva_bids.postprocessing.regions import RegionMap
from shiva_bids.volume import Volume


def move_regions(regions: RegionMap, resample: Callable[[Volume], Volume]) -> RegionMap:
    """`regions` with its labels and its brain-without-CSF mask passed through `resample`
    (a nearest-neighbour resampling onto the target grid; values are rounded back to
    integers of the original dtypes)."""
    def move(volume: Volume) -> Volume:
        moved = resample(volume)
        return moved.with_data(np.rint(moved.data).astype(volume.data.dtype))

    inside = regions.brain_without_csf
    return replace(regions, labels=move(regions.labels),
                   brain_without_csf=None if inside is None else move(inside))
