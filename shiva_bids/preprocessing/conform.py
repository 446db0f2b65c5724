"""Conform an image to SHIVA's 256^3, 1 mm, RAS grid (reference/SHIVA.md §5.2).

The reference behaviour *is* `nibabel.processing.conform` (SHiVAi wraps it), so it is called
directly: axes are first permuted/flipped to the closest RAS order, then the grid affine comes
from `nibabel.affines.rescale_affine`, which keeps the rotation (oblique inputs stay oblique)
and maps input voxel (shape-1)//2 to output voxel 127. Interpolation is SciPy's spline of
order 3 (mode constant, cval 0) when the voxel size changes, order 0 when it does not and for
masks; the result is clamped to the input's [min, max] and stored as float32.

Conform and crop only re-grid: they preserve world coordinates, which is what makes the exact
mapping back to the native grid possible (`native.py`).
"""
from __future__ import annotations

import numpy as np
import nibabel as nib
from nibabel.processing import conform as nib_conform

from shiva_bids.markers import CONFORMED_SHAPE
from shiva_bids.volume import Volume

VOXEL_SIZE: tuple[float, float, float] = (1.0, 1.0, 1.0)
ORIENTATION = "RAS"  # hard-coded in SHiVAi (reference/SHIVA.md §5.2)


def conformed_affine(shape: tuple[int, ...], affine: np.ndarray,
                     out_shape: tuple[int, int, int] = CONFORMED_SHAPE,
                     voxel_size: tuple[float, float, float] = VOXEL_SIZE) -> np.ndarray:
    """The affine of the conformed grid, computed exactly as `nibabel.processing.conform`."""
    start = nib.orientations.io_orientation(affine)
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(ORIENTATION))
    reoriented_affine = affine @ nib.orientations.inv_ornt_aff(transform, shape)
    reoriented_shape = np.empty(3, dtype=int)
    reoriented_shape[transform[:, 0].astype(int)] = np.asarray(shape[:3])
    return nib.affines.rescale_affine(reoriented_affine, reoriented_shape, voxel_size, out_shape)


def spline_order(volume: Volume, voxel_size: tuple[float, float, float] = VOXEL_SIZE,
                 is_mask: bool = False) -> int:
    """3 (cubic spline) when the voxel size changes; 0 when it does not and for masks
    (SHiVAi >= 0.5.5, reference/SHIVA.md §5.2)."""
    if is_mask:
        return 0
    same = np.allclose(np.sort(volume.zooms), np.sort(voxel_size), atol=1e-3)
    return 0 if same else 3


def conform(volume: Volume, out_shape: tuple[int, int, int] = CONFORMED_SHAPE,
            voxel_size: tuple[float, float, float] = VOXEL_SIZE, is_mask: bool = False) -> Volume:
    """Resample `volume` onto its conformed grid, clamped to its input range, float32."""
    order = spline_order(volume, voxel_size, is_mask)
    img = nib.Nifti1Image(np.asarray(volume.data, dtype=np.float32), volume.affine)
    out = nib_conform(img, out_shape=out_shape, voxel_size=voxel_size, order=order,
                      mode="constant", cval=0.0, orientation=ORIENTATION)
    data = np.asarray(out.dataobj, dtype=np.float32)
    np.clip(data, volume.data.min(), volume.data.max(), out=data)
    return Volume(data, np.asarray(out.affine, dtype=float))
