"""Post-processing: clusters, census, regions, statistics and native-space derivatives.

Public API (see docs/outputs.md)::

    clusters = find_clusters(prob, threshold, min_size_mm3, brain)  # on the model grid
    regions = build_regions(scheme, reference, dseg=None, atlas=None, brain=None)
    native = NativeMap(native_prob, native_to_model)  # prob resampled onto a native grid
    carried = carry_to_native(clusters, prob, native)  # the same labels on the native grid
    census = cluster_census(clusters, prob, spread, regions, marker, carried)
    stats = region_stats(census, regions, marker, brain_volume_mm3, grid)
    paths = write_marker_outputs(output_dir, inputs, marker, prob, mask, clusters, census,
                                 stats, brain_mask, sources, spatial_reference, provenance,
                                 params)
    result = postprocess_marker(marker, prob, brain_mask, threshold, min_cluster_size,
                                spread, regions, native)  # clusters to statistics at once
"""
from shiva_bids.postprocessing.census import cluster_census
from shiva_bids.postprocessing.clusters import Clusters, find_clusters, min_size_to_mm3
from shiva_bids.postprocessing.marker import MarkerResult, outside_brain_mask, postprocess_marker
from shiva_bids.postprocessing.native import NativeClusters, NativeMap, carry_to_native
from shiva_bids.postprocessing.outputs import marker_paths, write_marker_outputs
from shiva_bids.postprocessing.parcellation import derived_parcellation
from shiva_bids.postprocessing.regions import Atlas, RegionMap, build_regions, warp_atlas
from shiva_bids.postprocessing.stats import region_stats, stats_by_region
from shiva_bids.postprocessing.table import Table

__all__ = [
    "Atlas", "Clusters", "MarkerResult", "NativeClusters", "NativeMap", "RegionMap", "Table",
    "build_regions", "carry_to_native", "cluster_census",
    "derived_parcellation", "find_clusters", "marker_paths", "min_size_to_mm3",
    "outside_brain_mask", "postprocess_marker", "region_stats", "stats_by_region", "warp_atlas",
    "write_marker_outputs",
]
