"""Crop (or zero-pad) a conformed image to the model's input grid (reference/SHIVA.md §5.5).

Centre c = ceil(centre of mass of the binary mask) in conformed voxel indices; half =
floor(shape / 2) ((80, 107, 88) for SHIVA's 160x214x176); the box is [c - half, c - half +
shape) per axis. Parts of the box outside the image stay 0 (zero padding). Neck rule: when the
box's upper z bound, clipped to the image, does not reach above the top of the mask, the box
moves up by (top - bound + 5) voxels. The cropped affine maps cropped voxel 0 to the unclipped
box start, so world coordinates are preserved.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shiva_bids.errors import BadInputError
from shiva_bids.volume import Volume

NECK_MARGIN = 5  # voxels added above the mask top by the neck rule (SHIVA.md §5.5 step 5)


@dataclass(frozen=True)
class CropBox:
    """Where the model grid sits in the conformed grid (unclipped, after the neck shift)."""

    start: tuple[int, int, int]
    shape: tuple[int, int, int]
    centre: tuple[int, int, int]
    neck_shift: int

    @property
    def stop(self) -> tuple[int, int, int]:
        return tuple(int(s + n) for s, n in zip(self.start, self.shape))

    def translation(self) -> np.ndarray:
        """4x4 matrix taking cropped voxel indices to conformed voxel indices."""
        shift = np.eye(4)
        shift[:3, 3] = self.start
        return shift


def crop_box(mask: np.ndarray, shape: tuple[int, int, int]) -> CropBox:
    """The reference crop box for a binary mask on the conformed grid."""
    binary = np.asarray(mask) > 0
    if not binary.any():
        raise BadInputError("brain mask is empty: cannot centre the crop box")
    centre = np.ceil(np.asarray(ndimage.center_of_mass(binary))).astype(int)
    half = np.asarray(shape) // 2
    start = centre - half
    z_top = int(np.nonzero(binary.any(axis=(0, 1)))[0].max())
    z_hi = min(int(start[2] + shape[2]), binary.shape[2])
    shift = 0
    if z_hi <= z_top:
        shift = z_top - z_hi + NECK_MARGIN
        start[2] += shift
        centre[2] += shift
    return CropBox(tuple(int(v) for v in start), tuple(int(v) for v in shape),
                   tuple(int(v) for v in centre), shift)


def crop_array(data: np.ndarray, box: CropBox) -> np.ndarray:
    """The box's voxels of `data` (same dtype), zero where the box leaves the array."""
    out = np.zeros(box.shape, dtype=data.dtype)
    src, dst = [], []
    for start, size, full in zip(box.start, box.shape, data.shape):
        lo, hi = max(start, 0), min(start + size, full)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
    out[tuple(dst)] = data[tuple(src)]
    return out


def crop(volume: Volume, box: CropBox, dtype=np.float32) -> Volume:
    """Crop a conformed volume; the affine keeps world coordinates (SHIVA.md §5.5 step 6)."""
    data = crop_array(np.asarray(volume.data), box).astype(dtype, copy=False)
    return Volume(data, np.asarray(volume.affine, dtype=float) @ box.translation())


def mask_inside_box(mask: np.ndarray, box: CropBox) -> float:
    """Fraction of mask voxels that the box keeps (1.0 when the whole mask fits)."""
    total = int(np.count_nonzero(mask))
    return float(np.count_nonzero(crop_array(mask, box))) / total if total else 1.0
