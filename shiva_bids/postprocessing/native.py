"""Model-grid clusters carried onto the native grid: native shapes, SHIVA's census.

The census is SHIVA's: threshold, 26-connected clusters, size and outside-brain filters, all on
the 1 mm model grid (reference/SHIVA.md §8, §17 item 9), so counts and volumes mean what they
mean in SHIVA papers. The native-grid images keep the better shape of the linearly resampled
probability map (issue #20: on a phantom, native CMB mask Dice 0.603 against the truth, SHiVAi's
model-grid labels carried to the same grid 0.494), and every native cluster carries the label
of the model-grid cluster it comes from, so the native `dseg` and the census rows correspond
one to one.

Where a native voxel comes from. The native probability map is the model map resampled
trilinearly (`preprocessing.native.resample_world`), so its value at a native voxel is a convex
combination of the model map at the (up to) 8 corners of the model cell holding the voxel
centre. A native value **> threshold** therefore needs at least one corner **> threshold**, and
all such corners lie in one 2x2x2 cell, so they are 26-connected: they belong to **one**
model-grid component. The native voxel takes that component's label when the component is a
kept cluster.

The two edge cases, decided here:

* a native voxel above threshold whose component was removed (too small, > 25 % outside the
  brain), or with no corner above threshold (float rounding of a value equal to the threshold),
  gets **no label**: it is not in the native mask or dseg, because the census does not count it
  (counted as `unassigned_voxels`);
* a kept model-grid cluster with **no** native voxel above threshold (a small cluster whose
  resampled probability stays at or below the threshold between native voxel centres) is
  carried by **one native voxel: the one whose centre is nearest its peak** (the model voxel of
  highest probability, first in C order on ties), so that it stays visible in the native dseg.
  If that voxel lies outside the native field of view or already belongs to another cluster,
  the cluster has no native voxel; its census row stays, with `native_voxel_count` 0.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import product

import numpy as np

from shiva_bids.postprocessing.clusters import Clusters
from shiva_bids.volume import Volume

# The 8 corners of a model-grid cell, as offsets from its lowest corner.
_CELL = np.array(list(product((0, 1), repeat=3)), dtype=np.int64)


@dataclass(frozen=True)
class NativeMap:
    """A model-grid probability map resampled trilinearly onto the native grid (`prob`) and
    the voxel mapping the resampling used (`native_to_model`, 4x4: native voxel indices ->
    model voxel indices)."""

    prob: Volume
    native_to_model: np.ndarray


@dataclass(frozen=True)
class NativeClusters:
    """Model-grid clusters on the native grid (labels 1..N = the census rows' `index`).

    `clusters` has the model clusters' count and filter settings with native labels;
    `unassigned_voxels`: native voxels above threshold that belong to no kept cluster;
    `peak_only`: clusters carried by their peak voxel only; `absent`: clusters with no native
    voxel at all.
    """

    clusters: Clusters
    unassigned_voxels: int
    peak_only: tuple[int, ...]
    absent: tuple[int, ...]

    @property
    def voxel_counts(self) -> np.ndarray:
        """Native voxels per cluster, index 0 = cluster 1."""
        return self.clusters.voxel_counts

    def sidecar(self) -> dict[str, object]:
        """What the carrying did, for the native mask and dseg sidecars."""
        return {"NativeLabelRule": "a native voxel with probability > Threshold takes the label "
                                   "of the model-grid cluster of its interpolation cell; "
                                   "clusters without such a voxel keep the native voxel "
                                   "nearest their peak",
                "NativeVoxelsNotInCensus": self.unassigned_voxels,
                "ClustersCarriedByPeakVoxel": list(self.peak_only),
                "ClustersWithoutNativeVoxel": list(self.absent)}


def carry_to_native(model: Clusters, model_prob: Volume, native: NativeMap) -> NativeClusters:
    """Label the native voxels of `native.prob` > threshold with `model`'s cluster labels
    (`native.prob` is `model_prob` resampled; see the module docstring for the rules)."""
    mapping = np.asarray(native.native_to_model, dtype=float)
    model_labels = model.labels.data
    above = np.argwhere(native.prob.data > model.threshold)
    coords = above @ mapping[:3, :3].T + mapping[:3, 3]
    lowest = np.floor(coords).astype(np.int64)
    found = np.zeros(len(above), dtype=np.int32)
    grid = np.asarray(model_labels.shape, dtype=np.int64)
    for offset in _CELL:
        corner = lowest + offset
        inside = np.all((corner >= 0) & (corner < grid), axis=1)
        values = np.zeros(len(above), dtype=np.int32)
        values[inside] = model_labels[tuple(corner[inside].T)]
        np.maximum(found, values, out=found)  # at most one non-zero label per cell
    labels = np.zeros(native.prob.shape[:3], dtype=np.int32)
    labels[tuple(above.T)] = found
    present = np.bincount(found, minlength=model.count + 1)[1:] > 0
    peak_only, absent = _carry_missing(model, model_prob, labels, mapping,
                                       [int(i) + 1 for i in np.flatnonzero(~present)])
    return NativeClusters(replace(model, labels=native.prob.with_data(labels)),
                          int((found == 0).sum()), peak_only, absent)


def _carry_missing(model: Clusters, model_prob: Volume, labels: np.ndarray, mapping: np.ndarray,
                   missing: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Give each cluster of `missing` the native voxel nearest its peak (in place)."""
    if not missing:
        return (), ()
    peaks = _peak_voxels(model.labels.data, model_prob.data, missing)
    back = np.linalg.inv(mapping)
    native = np.rint(peaks @ back[:3, :3].T + back[:3, 3]).astype(np.int64)
    carried, absent = [], []
    for label, voxel in zip(missing, native):
        if np.all(voxel >= 0) and np.all(voxel < labels.shape) and labels[tuple(voxel)] == 0:
            labels[tuple(voxel)] = label
            carried.append(label)
        else:
            absent.append(label)
    return tuple(carried), tuple(absent)


def _peak_voxels(labels: np.ndarray, prob: np.ndarray, wanted: list[int]) -> np.ndarray:
    """Voxel indices (float, one row per label of `wanted`, in that order) of each cluster's
    highest probability, the first in C order among ties (deterministic)."""
    flat = np.flatnonzero(np.isin(labels.ravel(), wanted))
    cluster = labels.ravel()[flat]
    order = np.lexsort((flat, -prob.ravel()[flat], cluster))
    first = order[np.r_[True, cluster[order][1:] != cluster[order][:-1]]]
    by_label = dict(zip(cluster[first].tolist(), flat[first].tolist()))
    return np.array([np.unravel_index(by_label[w], labels.shape) for w in wanted], dtype=float)
