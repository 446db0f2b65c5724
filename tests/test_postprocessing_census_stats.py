"""Census (one row per cluster) and per-region statistics (SHIVA.md §10)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from shiva_bids.postprocessing import (build_regions, cluster_census, find_clusters,
                                       postprocess_marker, region_stats, stats_by_region)
from shiva_bids.postprocessing.regions import RegionMap
from shiva_bids.volume import Volume

AFFINE = np.array([[0.5, 0, 0, -10.0], [0, 0.5, 0, 20.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def _setup():
    prob = np.zeros((20, 20, 10), np.float32)
    prob[2:4, 2:4, 2] = [[0.6, 0.7], [0.8, 0.9]]  # cluster 1: 4 voxels
    prob[10, 10, 5:8] = 0.95  # cluster 2: 3 voxels
    spread = np.zeros_like(prob)
    spread[2:4, 2:4, 2] = [[0.1, 0.1], [0.2, 0.4]]
    regions = np.zeros(prob.shape, np.int16)
    regions[:8] = 2
    regions[8:] = 1
    names = {1: "Left Deep WM", 2: "Left Basal Gang.", 3: "Left Hippoc."}
    region_map = RegionMap(Volume(regions, AFFINE), names, "dseg:test", "pvs")
    return Volume(prob, AFFINE), Volume(spread, AFFINE), region_map


def test_census_rows():
    prob, spread, regions = _setup()
    clusters = find_clusters(prob, 0.5, 1.0, None)
    census = cluster_census(clusters, prob, spread, regions, "PVS")
    assert census.column("index") == [1, 2]
    assert census.column("name") == ["PVS001", "PVS002"]
    assert census.column("voxel_count") == [4, 3]
    assert census.column("volume_mm3") == [2.0, 1.5]  # 0.5 mm^3 voxels
    first, second = census.rows
    # centroid of voxels (2.5, 2.5, 2) -> world (-10 + 1.25, 20 + 1.25, 5 + 4)
    assert (first["centroid_x"], first["centroid_y"], first["centroid_z"]) == (-8.75, 21.25, 9.0)
    assert (second["centroid_x"], second["centroid_y"], second["centroid_z"]) == (-5.0, 25.0,
                                                                                 17.0)
    assert first["prob_max"] == pytest.approx(0.9) and first["prob_mean"] == pytest.approx(0.75)
    assert first["fold_std_mean"] == pytest.approx(0.2)
    assert first["fold_std_max"] == pytest.approx(0.4)
    assert census.column("region") == ["Left Basal Gang.", "Left Deep WM"]
    assert census.column("region_label") == [2, 1]
    tsv = census.to_tsv().splitlines()
    assert tsv[0].split("\t")[:2] == ["index", "name"] and len(tsv) == 3


def test_census_without_spread_or_regions_writes_na():
    prob, _, _ = _setup()
    clusters = find_clusters(prob, 0.5, 1.0, None)
    census = cluster_census(clusters, prob, None, None, "CMB")
    assert census.column("fold_std_mean") == [None, None]
    assert census.column("region") == [None, None]
    assert "\tn/a\t" in census.to_tsv()


def test_cluster_names_stay_unique_beyond_999():
    prob = np.zeros((64, 64, 2), np.float32)
    prob[::2, ::2, 0] = 1.0  # 1024 isolated voxels
    prob_volume = Volume(prob, np.eye(4))
    census = cluster_census(find_clusters(prob_volume, 0.5, 1.0, None), prob_volume, None, None,
                            "CMB")
    names = census.column("name")
    assert len(names) == 1024 and len(set(names)) == 1024 and names[0] == "CMB0001"


def test_region_stats_per_region_and_whole_brain():
    prob, spread, regions = _setup()
    census = cluster_census(find_clusters(prob, 0.5, 1.0, None), prob, spread, regions, "PVS")
    stats = region_stats(census, regions, "PVS", 1234.5)
    rows = {row["region"]: row for row in stats.rows}
    assert stats.column("region") == ["Whole brain", "Left Deep WM", "Left Basal Gang.",
                                      "Left Hippoc."]
    whole = rows["Whole brain"]
    assert (whole["region_label"], whole["n_clusters"], whole["total_volume_mm3"]) == (-1, 2, 3.5)
    assert whole["median_volume_mm3"] == 1.75 and whole["max_volume_mm3"] == 2.0
    assert whole["std_volume_mm3"] == pytest.approx(math.sqrt(0.125), abs=1e-4)
    deep = rows["Left Deep WM"]
    assert deep["n_clusters"] == 1 and deep["std_volume_mm3"] is None
    empty = rows["Left Hippoc."]
    assert empty["n_clusters"] == 0 and empty["total_volume_mm3"] == 0.0
    assert empty["mean_volume_mm3"] is None
    assert set(stats.column("brain_volume_mm3")) == {1234.5}
    assert stats.metadata["WholeBrainOnly"] is False
    assert stats.metadata["RegionSource"] == "dseg:test"
    dictionary = stats.data_dictionary()
    assert dictionary["total_volume_mm3"]["Units"] == "mm^3"


def test_whole_brain_only_when_no_region_source():
    prob, spread, _ = _setup()
    brain = prob.with_data(np.ones(prob.shape, np.uint8))
    regions = build_regions("pvs", prob)
    result = postprocess_marker("PVS", prob, brain, 0.5, 1, spread, regions)
    assert result.stats.column("region") == ["Whole brain"]
    assert result.stats.metadata == {
        "RegionSource": "none", "RegionScheme": "pvs", "WholeBrainOnly": True,
        "UnassignedClusters": None,
        "CensusGrid": {"Name": "probability map", "Shape": [20, 20, 10],
                       "VoxelSize": [0.5, 0.5, 2.0], "VoxelVolume": 0.5, "Units": "mm"}}
    assert result.brain_volume_mm3 == pytest.approx(20 * 20 * 10 * 0.5)
    assert result.census.column("region") == [None, None]


def test_postprocess_marker_converts_the_shiva_min_size():
    prob, spread, regions = _setup()
    brain = prob.with_data(np.ones(prob.shape, np.uint8))
    # min size 2 voxels of 1 mm = 2 mm^3: the 3-voxel cluster (1.5 mm^3) is dropped
    result = postprocess_marker("PVS", prob, brain, 0.5, 2, spread, regions)
    assert result.clusters.count == 1 and result.census.column("volume_mm3") == [2.0]


def test_stats_by_region_for_unit_summaries():
    prob, spread, regions = _setup()
    census = cluster_census(find_clusters(prob, 0.5, 1.0, None), prob, spread, regions, "PVS")
    by_region = stats_by_region(region_stats(census, regions, "PVS", 10.0))
    assert list(by_region)[0] == "Whole brain"
    assert by_region["Left Deep WM"]["total_volume_mm3"] == 1.5
    assert "region" not in by_region["Left Deep WM"]
