"""Clusters (SHIVA.md §8): strict threshold, 26-connectivity, size in mm^3, outside-brain 25 %."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from shiva_bids.postprocessing import find_clusters, min_size_to_mm3
from shiva_bids.volume import Volume


def _vol(data, zooms=(1.0, 1.0, 1.0)) -> Volume:
    return Volume(np.asarray(data), np.diag(list(zooms) + [1.0]))


def test_threshold_is_strict():
    prob = np.zeros((5, 5, 5), np.float32)
    prob[1, 1, 1] = 0.5
    prob[3, 3, 3] = 0.5001
    clusters = find_clusters(_vol(prob), 0.5, 1.0, None)
    assert clusters.count == 1
    assert clusters.labels.data[3, 3, 3] == 1 and clusters.labels.data[1, 1, 1] == 0


def test_corner_neighbours_form_one_cluster_with_26_connectivity():
    prob = np.zeros((6, 6, 6), np.float32)
    prob[1, 1, 1] = prob[2, 2, 2] = 1.0  # touch by a corner only
    prob[4, 1, 1] = prob[4, 2, 1] = 1.0  # touch by a face
    # 6-connectivity would give 3 clusters, 26-connectivity (SHiVAi) gives 2.
    assert ndimage.label(prob > 0.5)[1] == 3
    clusters = find_clusters(_vol(prob), 0.5, 1.0, None)
    assert clusters.count == 2
    assert clusters.labels.data[1, 1, 1] == clusters.labels.data[2, 2, 2]


def test_size_filter_keeps_clusters_of_exactly_min_size():
    prob = np.zeros((20, 20, 20), np.float32)
    prob[1, 1, 1:5] = 1.0  # 4 voxels
    prob[5, 5, 1:6] = 1.0  # 5 voxels
    prob[9, 9, 1:7] = 1.0  # 6 voxels
    clusters = find_clusters(_vol(prob), 0.5, min_size_to_mm3(5), None)
    assert clusters.count == 2
    assert clusters.removed_small == 1
    assert sorted(clusters.voxel_counts.tolist()) == [5, 6]


@pytest.mark.parametrize("zooms, kept_voxels, dropped_voxels", [
    ((0.5, 0.5, 2.0), 10, 9),  # 0.5 mm^3 voxels: 5 mm^3 needs 10 voxels
    ((1.0, 1.0, 3.0), 2, 1),  # 3 mm^3 voxels: 2 voxels = 6 mm^3 >= 5, 1 voxel = 3 < 5
    ((0.9, 0.9, 0.9), 7, 6),  # 0.729 mm^3: 7 voxels = 5.103, 6 voxels = 4.374
])
def test_min_size_is_a_volume_on_anisotropic_grids(zooms, kept_voxels, dropped_voxels):
    prob = np.zeros((30, 30, 30), np.float32)
    prob[2, 2, 2:2 + kept_voxels] = 1.0
    prob[10, 10, 2:2 + dropped_voxels] = 1.0
    clusters = find_clusters(_vol(prob, zooms), 0.5, min_size_to_mm3(5), None)
    assert clusters.count == 1
    assert clusters.voxel_counts.tolist() == [kept_voxels]


def test_outside_brain_filter_boundary_is_25_percent():
    prob = np.zeros((20, 20, 20), np.float32)
    brain = np.zeros_like(prob, dtype=np.uint8)
    brain[:, :, 4:] = 1
    prob[2, 2, 3:7] = 1.0  # 4 voxels, 1 outside: 25 % -> kept
    prob[8, 8, 2:9] = 1.0  # 7 voxels, 2 outside: 28.6 % -> dropped
    prob[14, 14, 1:5] = 1.0  # 4 voxels, 3 outside -> dropped
    clusters = find_clusters(_vol(prob), 0.5, 1.0, _vol(brain))
    assert clusters.count == 1
    assert clusters.removed_outside == 2
    assert clusters.labels.data[2, 2, 3] == 1


def test_renumbering_is_deterministic_and_dense():
    prob = np.zeros((10, 10, 10), np.float32)
    prob[1, 1, 1] = 1.0  # dropped (small)
    prob[3, 3, 3:6] = 1.0
    prob[7, 7, 7:9] = 1.0
    clusters = find_clusters(_vol(prob), 0.5, 2.0, None)
    assert clusters.count == 2
    assert set(np.unique(clusters.labels.data)) == {0, 1, 2}
    assert clusters.labels.data[3, 3, 3] == 1 and clusters.labels.data[7, 7, 7] == 2
    assert clusters.labels.data.dtype == np.int32
    assert clusters.mask.data.dtype == np.uint8 and clusters.mask.data.sum() == 5


def test_brain_mask_on_another_grid_is_refused():
    prob = _vol(np.zeros((5, 5, 5), np.float32))
    with pytest.raises(ValueError, match="grid"):
        find_clusters(prob, 0.5, 1.0, _vol(np.ones((5, 5, 6), np.uint8)))
