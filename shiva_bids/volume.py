"""`Volume`: the array-plus-affine value that flows between pipeline stages."""
from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Volume:
    """A 3D image: voxel array and the voxel-to-world (RAS mm) affine.

    Stages take and return Volumes so that each can be tested alone and cached; conversions to
    and from NIfTI live here so that every stage writes headers the same way.
    """

    data: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def zooms(self) -> np.ndarray:
        """Voxel sizes in mm (column norms of the affine)."""
        return np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm^3."""
        return float(abs(np.linalg.det(self.affine[:3, :3])))

    def with_data(self, data: np.ndarray) -> "Volume":
        """The same grid with other voxel values."""
        if data.shape[:3] != self.data.shape[:3]:
            raise ValueError(f"shape {data.shape} does not match grid {self.data.shape}")
        return Volume(data, self.affine)

    def region(self, box: tuple[slice, ...]) -> "Volume":
        """The sub-volume of `box` (slices with unit steps, e.g. from :func:`bounding_box`),
        with the affine moved so that world coordinates are unchanged."""
        shift = np.eye(4)
        shift[:3, 3] = [b.start or 0 for b in box[:3]]
        return Volume(self.data[box], self.affine @ shift)

    def to_nifti(self, dtype: np.dtype | type | None = None) -> nib.Nifti1Image:
        """A NIfTI image with sform and qform both set to the affine (code 1, scanner)."""
        data = self.data if dtype is None else self.data.astype(dtype)
        img = nib.Nifti1Image(data, self.affine)
        img.set_sform(self.affine, code=1)
        img.set_qform(self.affine, code=1)
        img.header.set_data_dtype(data.dtype)
        return img

    @classmethod
    def from_nifti(cls, img: nib.spatialimages.SpatialImage, dtype=np.float32) -> "Volume":
        """Plain conversion (no header checks: `preprocessing.headers` does those)."""
        return cls(np.asarray(img.dataobj, dtype=dtype), np.asarray(img.affine, dtype=float))


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    """Bounding box of `mask` grown by `margin` voxels (whole array if `mask` is empty).
    Local work inside it gives the same result as on the whole array when every distance
    that matters is shorter than `margin` (labelling needs none: outside the box is empty)."""
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if len(hits) == 0:
            return tuple(slice(0, n) for n in mask.shape)
        box.append(slice(max(int(hits[0]) - margin, 0),
                         min(int(hits[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def fill_holes(binary: np.ndarray, slice_by_slice: bool = True) -> np.ndarray:
    """Fill enclosed holes in 3D, then (by default) slice by slice along each axis, which also
    closes cavities open on one side only (e.g. ventricles reaching a mask's edge sideways).

    Works inside the bounding box grown by one voxel: background touching that box's border is
    connected to the array border too, so the result equals whole-array filling, faster."""
    box = bounding_box(binary, margin=1)
    filled = ndimage.binary_fill_holes(binary[box])
    if slice_by_slice:
        for axis in range(3):
            filled = np.stack([ndimage.binary_fill_holes(s)
                               for s in np.moveaxis(filled, axis, 0)], axis=axis)
    out = np.zeros(binary.shape, bool)
    out[box] = filled
    return out
