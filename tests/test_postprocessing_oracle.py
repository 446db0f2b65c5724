"""Oracle: ground-truth lesion masks fed as probability maps must come back exactly.

Hand-made head on an anisotropic native grid: lesions are ellipsoids in world space, rasterised
on the native grid; a FreeSurfer-like segmentation gives hemispheres and a CSF shell. The census
must count exactly the true lesions (per marker and per region), their volumes must match the
rasterised truth exactly and the analytic ellipsoid volume within 5 %, and nothing may lie
outside the brain.
"""
from __future__ import annotations

import numpy as np
import pytest

from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing import build_regions, min_size_to_mm3, postprocess_marker
from shiva_bids.volume import Volume

from fs_phantom import ellipsoid  # noqa: E402  (tests/ helper)

ZOOMS = (0.9, 0.9, 1.2)
SHAPE = (100, 110, 80)
# Lesions: centre (world mm), semi-axes (mm), hemisphere. Deep WM, > 8 mm from each other.
LESIONS = [
    ((-20.0, 10.0, 0.0), (3.0, 3.0, 3.6), "Left"),
    ((-18.0, -15.0, 8.0), (4.0, 2.5, 3.0), "Left"),
    ((-15.0, 20.0, -10.0), (2.5, 2.5, 2.5), "Left"),
    ((19.0, 0.0, 2.0), (3.5, 3.5, 3.5), "Right"),
    ((15.0, -20.0, -6.0), (2.5, 4.0, 3.0), "Right"),
]
OUTSIDE = ((0.0, 0.0, 45.0), (3.0, 3.0, 3.0))  # beyond the brain (scalp)
IN_CSF = ((0.0, 42.0, 0.0), (2.0, 1.5, 2.0))  # inside the SynthSeg-style mask, but in CSF


def _world() -> tuple[np.ndarray, np.ndarray]:
    affine = np.diag(list(ZOOMS) + [1.0])
    affine[:3, 3] = -np.array(ZOOMS) * (np.array(SHAPE) - 1) / 2.0
    ijk = np.indices(SHAPE, dtype=np.float32)
    world = np.einsum("ij,j...->i...", affine[:3, :3].astype(np.float32), ijk)
    return affine, world + affine[:3, 3, None, None, None].astype(np.float32)


@pytest.fixture(scope="module")
def head():
    affine, world = _world()
    inner = ellipsoid(world, (0, 0, 0), (36.0, 44.0, 30.0))
    parenchyma = ellipsoid(world, (0, 0, 0), (32.0, 40.0, 26.0))
    wm = ellipsoid(world, (0, 0, 0), (29.0, 37.0, 23.0))
    left = world[0] < 0
    front = world[1] >= 0
    seg = np.zeros(SHAPE, np.int32)
    seg[inner] = 24  # CSF between brain and skull
    cortex = parenchyma & ~wm
    seg[cortex & left & front] = 1028
    seg[cortex & left & ~front] = 1005
    seg[cortex & ~left & front] = 2028
    seg[cortex & ~left & ~front] = 2005
    seg[wm & left] = 2
    seg[wm & ~left] = 41
    truth = np.zeros(SHAPE, np.int32)
    for index, (centre, axes, _) in enumerate(LESIONS, start=1):
        truth[ellipsoid(world, centre, axes)] = index
    extra = ellipsoid(world, *OUTSIDE) | ellipsoid(world, *IN_CSF)
    brain_mask = (seg > 0)  # includes CSF, as SynthSeg's does (SHIVA.md §14 item 6)
    assert not (ellipsoid(world, *OUTSIDE) & brain_mask).any()
    assert (seg[ellipsoid(world, *IN_CSF)] == 24).all()
    return (Volume(truth, affine), Volume(extra, affine), Volume(seg, affine),
            Volume(brain_mask.astype(np.uint8), affine))


@pytest.mark.parametrize("marker", ["PVS", "WMH", "CMB", "LAC"])
def test_oracle_census_matches_the_truth(head, marker):
    truth, extra, seg, brain = head
    prob = truth.with_data(((truth.data > 0) | extra.data).astype(np.float32))
    spec = MARKERS[marker]
    regions = build_regions(spec.region_scheme, prob, dseg=seg, brain=brain)
    result = postprocess_marker(marker, prob, brain, spec.threshold, spec.min_cluster_size,
                                None, regions)
    census = result.census
    assert len(census) == len(LESIONS)
    assert result.clusters.removed_outside == 2  # the scalp and the CSF blobs
    labels = result.clusters.labels.data
    assert not (labels[brain.data == 0] > 0).any()
    assert not (labels[seg.data == 24] > 0).any()
    voxel_volume = float(np.prod(ZOOMS))
    for row in census.rows:
        true_index = int(np.bincount(truth.data[labels == row["index"]]).argmax())
        centre, axes, side = LESIONS[true_index - 1]
        true_voxels = int((truth.data == true_index).sum())
        assert row["voxel_count"] == true_voxels
        assert row["volume_mm3"] == pytest.approx(true_voxels * voxel_volume, rel=1e-6)
        analytic = 4.0 / 3.0 * np.pi * np.prod(axes)
        assert row["volume_mm3"] == pytest.approx(analytic, rel=0.05)
        assert (row["centroid_x"], row["centroid_y"], row["centroid_z"]) == \
            pytest.approx(centre, abs=0.5)
        assert row["region"].startswith(side)
        assert row["region"].endswith(("Deep WM", "D&PV WM"))
    whole = result.stats.rows[0]
    assert whole["n_clusters"] == len(LESIONS)
    assert min(census.column("volume_mm3")) >= min_size_to_mm3(spec.min_cluster_size)


# --- Oracle on the synthetic phantom (shiva_bids.synthetic): native grids of real presets ----

PHANTOM_MARKERS = {"PVS": "T1w", "WMH": "T1w", "LAC": "T1w", "CMB": "T2starw"}


@pytest.fixture(scope="module")
def phantom_session():
    from shiva_bids.synthetic.phantom import acquire_session, make_participant

    participant = make_participant(seed=0, index=0, load="mild")
    return acquire_session(participant, 0, None, ("T1w", "T2starw"))


def _outside_blob(brain: np.ndarray) -> tuple[slice, ...]:
    """A 3x3x3 cube entirely outside the brain, next to the brain's bounding box."""
    nonzero = np.argwhere(brain)
    low = np.maximum(nonzero.min(axis=0) - 4, 0)
    box = tuple(slice(int(a), int(a) + 3) for a in low)
    assert not brain[box].any()
    return box


@pytest.mark.parametrize("marker", list(PHANTOM_MARKERS))
def test_phantom_oracle(phantom_session, marker):
    image = phantom_session.images[PHANTOM_MARKERS[marker]]
    affine = image.grid.affine
    truth = image.marker_mask(marker).astype(bool)
    brain = Volume(image.brain_mask(), affine)
    prob = truth.astype(np.float32)
    prob[_outside_blob(brain.data > 0)] = 1.0  # must be removed by the outside-brain filter
    spec = MARKERS[marker]
    result = postprocess_marker(marker, Volume(prob, affine), brain, spec.threshold,
                                spec.min_cluster_size)
    lesions = [les for les in phantom_session.lesions if les.marker == marker]
    census = result.census
    assert lesions and len(census) == len(lesions)  # exactly the true lesions
    assert result.clusters.removed_outside == 1
    labels = result.clusters.labels.data
    assert not labels[brain.data == 0].any()  # nothing outside the brain
    # one-to-one match of true lesions and clusters by centroid (world mm)
    centroids = np.array([[r["centroid_x"], r["centroid_y"], r["centroid_z"]]
                          for r in census.rows])
    matched = set()
    for lesion in lesions:
        distance = np.linalg.norm(centroids - np.array(lesion.centroid_mm), axis=1)
        assert distance.min() <= 1.5
        matched.add(int(distance.argmin()))
    assert len(matched) == len(lesions)
    # volumes: the native-grid truth of each lesion, within 5 % (here: exactly)
    voxel_volume = abs(np.linalg.det(affine[:3, :3]))
    for row in census.rows:
        true_volume = truth[labels == row["index"]].sum() * voxel_volume
        assert row["volume_mm3"] == pytest.approx(true_volume, rel=0.05)
    assert sum(census.column("volume_mm3")) == pytest.approx(truth.sum() * voxel_volume,
                                                             rel=0.05)
