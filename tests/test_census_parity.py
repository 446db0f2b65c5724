"""SHIVA's census on the model grid against hand-computed expectations (issue #20 item 5), and
the model-grid clusters carried onto native grids (issue #20 item 2).

No SHiVAi needed: small hand-made probability maps on a model-like grid (1 mm, RAS, a translated
conformed affine), with every expected number worked out by hand from reference/SHIVA.md §8
(strict threshold, 26-connectivity, >= min size, > 25 % outside dropped, renumbering), §9.2
(winner-takes-all, WMH periventricular priority; ties: our lowest-label rule) and §10.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from shiva_bids.postprocessing import NativeMap, carry_to_native, find_clusters, postprocess_marker
from shiva_bids.postprocessing.regions import RegionMap
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.volume import Volume

MODEL = np.array([[1.0, 0, 0, -12.0], [0, 1.0, 0, -14.0], [0, 0, 1.0, -9.0], [0, 0, 0, 1]])


def _grid(shape=(24, 24, 24)) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(shape, np.float32), np.ones(shape, np.uint8)


def test_pvs_census_on_the_model_grid_matches_hand_computed_rows():
    prob, brain = _grid()
    brain[:, :, :3] = 0  # z < 3 is outside the brain
    prob[2, 2, 10:14] = 0.9  # 4 voxels + one at exactly the threshold: 4 < 5, removed
    prob[2, 2, 14] = 0.5
    for k, p in enumerate((0.6, 0.7, 0.8, 0.9, 1.0)):  # a chain touching by corners only
        prob[5 + k, 5 + k, 10 + k] = p
    prob[12, 3, 5:10] = 0.75  # exactly min_size (5) voxels: kept
    prob[16, 10, 1:9] = 0.55  # 8 voxels, 2 outside = 25 %: kept
    prob[16, 20, 1:8] = 0.9  # 7 voxels, 2 outside = 28.6 %: removed
    prob[20, 5:8, 15:17] = 0.51  # 6 voxels
    result = postprocess_marker("PVS", Volume(prob, MODEL), Volume(brain, MODEL), 0.5, 5,
                                grid_name="T1w model grid")
    rows = [(r["index"], r["name"], r["voxel_count"], r["volume_mm3"], r["centroid_x"],
             r["centroid_y"], r["centroid_z"], r["prob_max"], r["prob_mean"])
            for r in result.census.rows]
    # numbered by first voxel in C order: the chain (x=5), the line (x=12), x=16, x=20
    assert rows == [
        (1, "PVS001", 5, 5.0, -5.0, -7.0, 3.0, 1.0, 0.8),
        (2, "PVS002", 5, 5.0, 0.0, -11.0, -2.0, 0.75, 0.75),
        (3, "PVS003", 8, 8.0, 4.0, -4.0, -4.5, 0.55, 0.55),
        (4, "PVS004", 6, 6.0, 8.0, -8.0, 6.5, 0.51, 0.51),
    ]
    assert (result.clusters.removed_small, result.clusters.removed_outside) == (1, 1)
    whole = result.stats.rows[0]
    assert (whole["n_clusters"], whole["total_volume_mm3"], whole["mean_volume_mm3"],
            whole["median_volume_mm3"], whole["min_volume_mm3"], whole["max_volume_mm3"]) == \
        (4, 24.0, 6.0, 5.5, 5.0, 8.0)
    assert whole["std_volume_mm3"] == pytest.approx(np.sqrt(2.0), abs=1e-4)
    assert whole["brain_volume_mm3"] == 24 * 24 * 21
    assert result.stats.metadata["CensusGrid"] == {
        "Name": "T1w model grid", "Shape": [24, 24, 24], "VoxelSize": [1.0, 1.0, 1.0],
        "VoxelVolume": 1.0, "Units": "mm"}


WMH_NAMES = {1: "Left Shallow WM", 2: "Left Deep WM", 3: "Left PV WM", 4: "Left Cerebellar",
             5: "Right Shallow WM", 6: "Right Deep WM", 7: "Right PV WM", 8: "Right Cerebellar",
             9: "Brainstem"}


def test_wmh_region_winner_ties_background_and_pv_priority():
    prob, brain = _grid((20, 14, 12))
    regions = np.full(prob.shape, 2, np.int16)
    clusters = {  # (x, y): region label of each voxel along z from 3
        (3, 3): [2, 2, 2, 1, 1],  # winner Left Deep WM (3 votes to 2)
        (3, 10): [5, 5, 2, 2],  # tie 2-2: the lowest label, Left Deep WM
        (10, 3): [2, 2, 2, 2, 3],  # touches Left PV WM once: PV priority wins
        (10, 10): [3, 7, 7, 6, 6, 6],  # touches both PV WM: the one it overlaps more
        (17, 3): [0, 0, 0, 1],  # background (no region) never wins
    }
    for (x, y), labels in clusters.items():
        prob[x, y, 3:3 + len(labels)] = 0.9
        regions[x, y, 3:3 + len(labels)] = labels
    region_map = RegionMap(Volume(regions, MODEL), WMH_NAMES, "dseg:hand", "wmh",
                           priority=(3, 7))
    result = postprocess_marker("WMH", Volume(prob, MODEL), Volume(brain, MODEL), 0.2, 1,
                                regions=region_map)
    assert result.census.column("region") == ["Left Deep WM", "Left Deep WM", "Left PV WM",
                                              "Right PV WM", "Left Shallow WM"]
    assert result.census.column("region_label") == [2, 2, 3, 7, 1]
    by_region = {r["region"]: (r["n_clusters"], r["total_volume_mm3"])
                 for r in result.stats.rows}
    assert by_region == {"Whole brain": (5, 24.0), "Left Shallow WM": (1, 4.0),
                         "Left Deep WM": (2, 9.0), "Left PV WM": (1, 5.0),
                         "Left Cerebellar": (0, 0.0), "Right Shallow WM": (0, 0.0),
                         "Right Deep WM": (0, 0.0), "Right PV WM": (1, 6.0),
                         "Right Cerebellar": (0, 0.0), "Brainstem": (0, 0.0)}


# --- carried onto a native grid ----------------------------------------------------------------

def _native(prob: np.ndarray, native_affine: np.ndarray, shape) -> NativeMap:
    """The model map resampled as the pipeline does (trilinear, through world coordinates)."""
    data = resample_world(prob, MODEL, shape, native_affine, "linear")
    return NativeMap(Volume(data, native_affine), np.linalg.inv(MODEL) @ native_affine)


def test_native_labels_sizes_and_edge_cases_on_a_half_voxel_grid():
    prob, brain = _grid((12, 12, 12))
    prob[1, 10, 1] = 0.9  # 1: vanishes when resampled -> its peak's nearest native voxel
    prob[4:8, 4:8, 4:8] = 0.9  # 2: a 4x4x4 block
    prob[11, 1, 1] = 0.9  # 3: vanishes, peak's nearest native voxel outside the native FOV
    prob[9:11, 9:11, 9:11] = 0.9  # outside the brain: removed
    brain[9:11, 9:11, 9:11] = 0
    # native voxel i sits at model coordinate i/2 + 0.2 on each axis (0.5 mm voxels)
    native_affine = MODEL @ np.array([[0.5, 0, 0, 0.2], [0, 0.5, 0, 0.2], [0, 0, 0.5, 0.2],
                                      [0, 0, 0, 1]])
    native = _native(prob, native_affine, (22, 22, 22))
    result = postprocess_marker("CMB", Volume(prob, MODEL), Volume(brain, MODEL), 0.5, 1,
                                native=native)
    carried = result.native
    labels = carried.clusters.labels.data
    # By hand, per axis the block's interpolation weight at native centres 3.7, 4.2..6.7, 7.2
    # is 0.7, 1, 0.8; 0.9 x product > 0.5 keeps 6^3 + 3*2*6^2 + 3*3*6 = 486 voxels.
    assert result.census.column("voxel_count") == [1, 64, 1]
    assert result.census.column("native_voxel_count") == [1, 486, 0]
    assert result.census.column("native_volume_mm3") == [0.125, 60.75, 0.0]
    assert carried.peak_only == (1,) and carried.absent == (3,)
    assert labels[2, 20, 2] == 1  # model (1, 10, 1) -> native (1.6, 19.6, 1.6) rounded
    assert carried.unassigned_voxels == 2 ** 3 + 3 * 2 * 2 ** 2 + 3 * 3 * 2  # the removed block
    above = native.prob.data > 0.5
    assert np.array_equal(labels == 2, above & (labels != 0))  # every other voxel above is 0
    assert ((labels == 0) & above).sum() == carried.unassigned_voxels
    assert carried.clusters.count == result.clusters.count == 3
    sidecar = json.loads(json.dumps(carried.sidecar()))  # plain JSON types
    assert (sidecar["ClustersCarriedByPeakVoxel"], sidecar["ClustersWithoutNativeVoxel"]) == \
        ([1], [3])


def test_native_labels_agree_with_nearest_neighbour_on_an_oblique_grid():
    rng = np.random.default_rng(3)
    from scipy import ndimage
    prob = ndimage.gaussian_filter(rng.random((30, 30, 30)), 1.5).astype(np.float32)
    prob = (prob - prob.min()) / (prob.max() - prob.min())
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                         [0, 0, 1]])
    native_affine = np.eye(4)
    native_affine[:3, :3] = rotation @ np.diag([0.9, 0.9, 2.5])
    native_affine[:3, 3] = MODEL[:3, 3] + [6.0, 1.0, 0.3]
    native = _native(prob, native_affine, (30, 30, 12))
    model = Volume(prob, MODEL)
    clusters = find_clusters(model, 0.7, 3.0, None)
    carried = carry_to_native(clusters, model, native)
    labels = carried.clusters.labels.data
    nearest = resample_world(clusters.labels.data, MODEL, labels.shape, native_affine, "nearest")
    above = native.prob.data > 0.7
    assert clusters.count > 5 and above.sum() > 100
    # the nearest model voxel is a corner of the interpolation cell: its kept label must win
    assert np.array_equal(labels[above & (nearest > 0)], nearest[above & (nearest > 0)])
    # ... and voxels whose nearest model voxel is below threshold still have their cell's label
    assert (above & (nearest == 0) & (labels > 0)).sum() > 10
    # with every component kept, every native voxel above threshold has a label
    everything = find_clusters(model, 0.7, 0.0, None)
    assert carry_to_native(everything, model, native).unassigned_voxels == 0
    peak = np.isin(labels, carried.peak_only) & ~above
    assert not ((labels > 0) & ~above & ~peak).any()  # native voxels above threshold only
    assert set(np.unique(labels)) - {0} == set(range(1, clusters.count + 1)) - set(carried.absent)
