"""Conversions between `Volume` (RAS world, NIfTI convention) and ANTsPy images (LPS world).

ANTs works in physical LPS coordinates: origin, spacing and a direction matrix whose columns
are the voxel axes. A RAS affine A = [R diag(s) | t] becomes origin = F t, direction = F R with
F = diag(-1, -1, 1). Keeping the conversion in one place means every ANTs call sees the same
world as nibabel, so transforms estimated by ANTs apply to any grid (native, conformed, cropped).
"""
from __future__ import annotations

import ants
import numpy as np

from shiva_bids.volume import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def to_ants(volume: Volume) -> "ants.ANTsImage":
    """An ANTs float image on the same world grid as `volume`."""
    affine = np.asarray(volume.affine, dtype=float)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    direction = _RAS_TO_LPS @ (affine[:3, :3] / spacing)
    origin = _RAS_TO_LPS @ affine[:3, 3]
    return ants.from_numpy(np.ascontiguousarray(volume.data, dtype=np.float32),
                           origin=tuple(origin), spacing=tuple(spacing),
                           direction=direction)


def grid_image(shape: tuple[int, ...], affine: np.ndarray) -> "ants.ANTsImage":
    """An empty ANTs image that only defines a target grid (for resampling onto it)."""
    return to_ants(Volume(np.zeros(shape, dtype=np.float32), affine))


def affine_of(image: "ants.ANTsImage") -> np.ndarray:
    """The RAS voxel-to-world affine of an ANTs image."""
    direction = np.asarray(image.direction, dtype=float)
    spacing = np.asarray(image.spacing, dtype=float)
    affine = np.eye(4)
    affine[:3, :3] = _RAS_TO_LPS @ direction @ np.diag(spacing)
    affine[:3, 3] = _RAS_TO_LPS @ np.asarray(image.origin, dtype=float)
    return affine


def from_ants(image: "ants.ANTsImage", dtype=np.float32) -> Volume:
    """A Volume holding an ANTs image's voxels and its RAS affine."""
    return Volume(np.asarray(image.numpy(), dtype=dtype), affine_of(image))
