"""One marker end to end in memory: clusters -> census -> statistics (`MarkerResult`).

The census is measured on the grid of the probability map given (the pipeline gives the 1 mm
model grid, as SHiVAi: reference/SHIVA.md §8, §10); with a `NativeMap`, the clusters are also
carried onto the native grid (`native.carry_to_native`) for the native images.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from shiva_bids.postprocessing.census import cluster_census, grid_description
from shiva_bids.postprocessing.clusters import Clusters, find_clusters, min_size_to_mm3
from shiva_bids.postprocessing.native import NativeClusters, NativeMap, carry_to_native
from shiva_bids.postprocessing.regions import RegionMap
from shiva_bids.postprocessing.stats import region_stats
from shiva_bids.postprocessing.table import Table
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarkerResult:
    """Everything post-processing computed for one marker of one unit.

    `clusters`, `census`, `stats` and `brain_volume_mm3` are on the census grid (`grid`
    describes it); `native` holds the same clusters on the native grid, when asked for.
    """

    marker: str
    clusters: Clusters
    census: Table
    stats: Table
    regions: RegionMap | None
    brain_volume_mm3: float
    grid: dict[str, object]
    native: NativeClusters | None = None


def outside_brain_mask(brain_mask: Volume, regions: RegionMap | None) -> Volume:
    """The mask for the outside-brain filter: the segmentation's brain without CSF when the
    region source has one (avoids SHiVAi#27), else the brain mask (SHIVA.md §8 item 4)."""
    if regions is not None and regions.brain_without_csf is not None:
        return regions.brain_without_csf
    return brain_mask


def postprocess_marker(marker: str, prob: Volume, brain_mask: Volume, threshold: float,
                       min_cluster_size: float, spread: Volume | None = None,
                       regions: RegionMap | None = None, native: NativeMap | None = None,
                       grid_name: str = "probability map") -> MarkerResult:
    """Threshold, cluster, filter, census and statistics of one marker on `prob`'s grid
    (`brain_mask`, `spread` and `regions` on the same grid); with `native`, the clusters are
    also carried onto the native grid and the census gets their native sizes.

    `min_cluster_size` is SHIVA's (voxels of the 1 mm model grid, `RunConfig.min_cluster_size`),
    compared as a volume, i.e. as a voxel count on the 1 mm model grid.
    `grid_name` names the census grid in the sidecars (`CensusGrid`).
    """
    clusters = find_clusters(prob, threshold, min_size_to_mm3(min_cluster_size),
                             outside_brain_mask(brain_mask, regions))
    carried = None if native is None else carry_to_native(clusters, prob, native)
    census = cluster_census(clusters, prob, spread, regions, marker, carried)
    brain_volume = float(np.count_nonzero(brain_mask.data)) * brain_mask.voxel_volume
    grid = grid_description(prob, grid_name)
    stats = region_stats(census, regions, marker, brain_volume, grid)
    log.info("%s: %d clusters kept (%d below %.3g mm^3, %d outside the brain); regions: %s",
             marker, clusters.count, clusters.removed_small, clusters.min_size_mm3,
             clusters.removed_outside, stats.metadata["RegionSource"])
    if carried is not None and (carried.peak_only or carried.absent):
        log.info("%s: on the native grid, %d clusters kept by their peak voxel only, %d without "
                 "a voxel", marker, len(carried.peak_only), len(carried.absent))
    return MarkerResult(marker, clusters, census, stats, regions, brain_volume, grid, carried)
