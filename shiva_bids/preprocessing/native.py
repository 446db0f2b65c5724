"""Resampling between grids through world coordinates: the way back to native space.

Conform and crop only re-grid (reference/SHIVA.md §7: "world coordinates are preserved"), so a
model-space map reaches the native grid of its reference image by one resampling: native voxel
-> world (the affine the pipeline used for that image) -> model voxel. Probabilities use
trilinear interpolation, labels nearest neighbour; values outside the model box are 0.
SHiVAi has no such step (§16); it is what makes native-space outputs possible here.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

KINDS = {"linear": 1, "nearest": 0}


def resample_world(data: np.ndarray, source_affine: np.ndarray,
                   target_shape: tuple[int, ...], target_affine: np.ndarray,
                   kind: str = "linear") -> np.ndarray:
    """Values of `data` (on `source_affine`) at the voxel centres of the target grid.

    `kind` "linear" returns float32; "nearest" keeps the input dtype (labels stay integers).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    data = np.asarray(data)
    if kind == "linear":
        data = data.astype(np.float32, copy=False)
    mapping = np.linalg.inv(np.asarray(source_affine, dtype=float)) @ np.asarray(
        target_affine, dtype=float)
    return ndimage.affine_transform(data, mapping[:3, :3], offset=mapping[:3, 3],
                                    output_shape=tuple(int(s) for s in target_shape[:3]),
                                    order=KINDS[kind], mode="constant", cval=0,
                                    prefilter=False)
