"""Moving label images between grids through world coordinates (nearest neighbour)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from shiva_bids.volume import Volume

_AFFINE_ATOL = 1e-3


def same_grid(a: Volume, b: Volume) -> bool:
    """True when both volumes share shape and affine (to 1e-3 mm)."""
    return a.shape[:3] == b.shape[:3] and bool(np.allclose(a.affine, b.affine,
                                                           atol=_AFFINE_ATOL))


def resample_nearest(source: Volume, reference: Volume) -> Volume:
    """`source` (labels) on the grid of `reference`, nearest neighbour, 0 outside.

    Both affines map voxels to the same world (RAS mm), so reference voxel -> world -> source
    voxel is `inv(A_src) @ A_ref`.
    """
    if same_grid(source, reference):
        return reference.with_data(source.data)
    matrix = np.linalg.inv(source.affine) @ reference.affine
    out = ndimage.affine_transform(source.data, matrix[:3, :3], offset=matrix[:3, 3],
                                   output_shape=reference.shape[:3], order=0, mode="constant",
                                   cval=0, prefilter=False)
    return reference.with_data(out)


def isotropic_1mm(source: Volume, tolerance: float = 0.1) -> Volume:
    """`source` resampled (nearest) to 1 mm voxels with the same orientation and extent.

    Returned unchanged when every voxel size is within `tolerance` of 1 mm, so FreeSurfer and
    SynthSeg outputs (1 mm) are used as they are.
    """
    zooms = source.zooms
    if np.all(np.abs(zooms - 1.0) <= tolerance):
        return source
    rotation = source.affine[:3, :3] / zooms
    corner = source.affine @ np.array([-0.5, -0.5, -0.5, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rotation
    affine[:3, 3] = corner[:3] + rotation @ np.full(3, 0.5)
    shape = tuple(int(np.ceil(n * z - 1e-6)) for n, z in zip(source.shape[:3], zooms))
    return resample_nearest(source, Volume(np.zeros(shape, dtype=source.data.dtype), affine))
