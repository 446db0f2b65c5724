"""One marker end to end in memory: clusters -> census -> statistics (`MarkerResult`)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from shiva_bids.postprocessing.census import cluster_census
from shiva_bids.postprocessing.clusters import Clusters, find_clusters, min_size_to_mm3
from shiva_bids.postprocessing.regions import RegionMap
from shiva_bids.postprocessing.stats import region_stats
from shiva_bids.postprocessing.table import Table
from shiva_bids.volume import Volume

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MarkerResult:
    """Everything post-processing computed for one marker of one unit."""

    marker: str
    clusters: Clusters
    census: Table
    stats: Table
    regions: RegionMap | None
    brain_volume_mm3: float


def outside_brain_mask(brain_mask: Volume, regions: RegionMap | None) -> Volume:
    """The mask for the outside-brain filter: the segmentation's brain without CSF when the
    region source has one (avoids SHiVAi#27), else the brain mask (SHIVA.md §8 item 4)."""
    if regions is not None and regions.brain_without_csf is not None:
        return regions.brain_without_csf
    return brain_mask


def postprocess_marker(marker: str, prob: Volume, brain_mask: Volume, threshold: float,
                       min_cluster_size: float, spread: Volume | None = None,
                       regions: RegionMap | None = None) -> MarkerResult:
    """Threshold, cluster, filter, census and statistics of one marker.

    `min_cluster_size` is SHIVA's (voxels of the 1 mm model grid, `RunConfig.min_cluster_size`).
    """
    clusters = find_clusters(prob, threshold, min_size_to_mm3(min_cluster_size),
                             outside_brain_mask(brain_mask, regions))
    census = cluster_census(clusters, prob, spread, regions, marker)
    brain_volume = float(np.count_nonzero(brain_mask.data)) * brain_mask.voxel_volume
    stats = region_stats(census, regions, marker, brain_volume)
    log.info("%s: %d clusters kept (%d below %.3g mm^3, %d outside the brain); regions: %s",
             marker, clusters.count, clusters.removed_small, clusters.min_size_mm3,
             clusters.removed_outside, stats.metadata["RegionSource"])
    return MarkerResult(marker, clusters, census, stats, regions, brain_volume)
