"""Threshold a probability map into 26-connected clusters and filter them (SHIVA.md §8).

Order and numbers are SHiVAi's (reference/SHIVA.md §8, §17 item 9):

1. binary = probability **> threshold** (strict);
2. 26-connected components (``scipy.ndimage.label`` with a full 3x3x3 structure, the same
   neighbourhood as ``skimage.measure.label``'s default in 3D);
3. keep clusters whose volume is **>= the minimum size**. SHiVAi counts voxels of its 1 mm
   model grid (1 voxel = 1 mm^3); shiva-bids works on the native grid, so the size is compared
   as a volume: ``n_voxels * voxel_volume_mm3 >= min_size_mm3`` where the voxel volume is
   ``|det(affine[:3, :3])|``. On anisotropic grids (e.g. 0.5 x 0.5 x 2 mm = 0.5 mm^3) this
   keeps the same physical size as SHiVAi, not the same voxel count;
4. drop clusters with **more than 25 %** of their voxels outside the brain (SHiVAi v0.5.9).
   The mask must not include CSF when a segmentation is available (SHiVAi#27: a SynthSeg brain
   mask with CSF defeats the filter for lacunes); `RegionMap.brain_without_csf` provides it;
5. renumber the survivors 1..N in order of their first voxel in C (row-major) order, which is
   what ``ndimage.label`` does, so the numbering is deterministic.

Connectivity is topological (voxel neighbours), as in SHiVAi, also on anisotropic grids.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shiva_bids.volume import Volume

# SHIVA.md §8: the outside-brain filter drops clusters with more than this fraction outside.
MAX_OUTSIDE_FRACTION = 0.25
# SHIVA.md §5.2/§8: sizes are voxels of the conformed 1 mm grid, i.e. 1 mm^3 each.
MODEL_VOXEL_MM3 = 1.0
CONNECTIVITY = 26
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)
# Relative tolerance for the volume comparison (voxel volumes come from float affines).
_VOLUME_RTOL = 1e-6


@dataclass(frozen=True)
class Clusters:
    """Labelled clusters of one marker on the grid of its probability map.

    `labels` holds 0 (background) and 1..count (int32). The `removed_*` counts say what the
    filters dropped, for logs and sidecars.
    """

    labels: Volume
    count: int
    threshold: float
    min_size_mm3: float
    removed_small: int = 0
    removed_outside: int = 0
    max_outside_fraction: float = MAX_OUTSIDE_FRACTION

    @property
    def mask(self) -> Volume:
        """Binary mask (uint8) of the kept clusters."""
        return self.labels.with_data((self.labels.data > 0).astype(np.uint8))

    @property
    def voxel_counts(self) -> np.ndarray:
        """Voxels per cluster, index 0 = cluster 1."""
        return np.bincount(self.labels.data.ravel(), minlength=self.count + 1)[1:]


def min_size_to_mm3(min_size_voxels: float) -> float:
    """SHIVA's minimum cluster size (voxels of the 1 mm model grid) as a volume in mm^3."""
    return float(min_size_voxels) * MODEL_VOXEL_MM3


def _check_grid(name: str, volume: Volume, reference: Volume) -> None:
    if volume.shape[:3] != reference.shape[:3] or not np.allclose(volume.affine,
                                                                  reference.affine, atol=1e-3):
        raise ValueError(f"{name} is not on the grid of the probability map "
                         f"({volume.shape} vs {reference.shape})")


def find_clusters(prob: Volume, threshold: float, min_size_mm3: float, brain: Volume | None,
                  max_outside_fraction: float = MAX_OUTSIDE_FRACTION) -> Clusters:
    """Clusters of `prob > threshold` that pass the size and outside-brain filters.

    `brain` is the mask of "inside the brain" on the same grid (non-zero = inside): pass
    `RegionMap.brain_without_csf` when a segmentation is available, else the brain mask;
    None disables the outside-brain filter.
    """
    if brain is not None:
        _check_grid("brain mask", brain, prob)
    labels, n = ndimage.label(prob.data > threshold, structure=_STRUCTURE_26)
    if n == 0:
        return Clusters(prob.with_data(labels.astype(np.int32)), 0, float(threshold),
                        float(min_size_mm3), max_outside_fraction=max_outside_fraction)
    flat = labels.ravel()
    inside = flat > 0
    ids = flat[inside]
    counts = np.bincount(ids, minlength=n + 1)
    volumes = counts * prob.voxel_volume
    big = volumes >= min_size_mm3 * (1.0 - _VOLUME_RTOL)
    big[0] = False
    keep = big.copy()
    if brain is not None:
        outside = np.bincount(ids, weights=(brain.data.ravel()[inside] == 0),
                              minlength=n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(counts > 0, outside / np.maximum(counts, 1), 0.0)
        keep &= fraction <= max_outside_fraction
    new_ids = np.zeros(n + 1, dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    relabelled = np.zeros(flat.shape, dtype=np.int32)
    relabelled[inside] = new_ids[ids]
    return Clusters(
        labels=prob.with_data(relabelled.reshape(labels.shape)),
        count=int(keep.sum()),
        threshold=float(threshold),
        min_size_mm3=float(min_size_mm3),
        removed_small=int(n - big[1:].sum()),
        removed_outside=int(big.sum() - keep.sum()),
        max_outside_fraction=max_outside_fraction,
    )
