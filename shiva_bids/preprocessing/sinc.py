"""Welch-windowed sinc resampling through an affine transform, computed as ITK computes ANTs'
`welchWindowedSinc` (SHiVAi's interpolator for the FLAIR, reference/SHIVA.md §5.2, §5.6), in a
loop compiled with Numba.

ITK (`WindowedSincInterpolateImageFunction` with radius 3, a Welch window and a constant-zero
boundary, inside `ResampleImageFilter`): an output voxel whose continuous index in the moving
image lies outside [-0.5, n - 0.5) on some axis gets 0; otherwise, with b = floor(index) and
d = index - b per axis, the value is the sum over the 6x6x6 voxels b - 2 ... b + 3 (0 outside
the image) of value x w0 x w1 x w2, where w(x) = sinc(x) (1 - x^2 / 9) at x = d - offset (or
1 at offset 0 and 0 elsewhere when d = 0), summed in double precision in ITK's order (first
axis fastest). ITK evaluates the 216 terms through a neighbourhood iterator: ~25 s of CPU for a
FLAIR on the SHIVA grid; this loop does the same arithmetic in ~1 s. The two agree to float32
rounding (tests/test_sinc.py). No ITK is involved, so the result does not depend on threads.
Not cached on disk (the container's file system is read-only): compiled once per process,
~1.5 s of CPU, which :func:`compile_now` spends while the process waits anyway.
"""
from __future__ import annotations

import math

import numba
import numpy as np

RADIUS = 3  # ANTs' windowed-sinc interpolators (antsApplyTransforms)


@numba.njit(nogil=True)
def _weights(distance: float, out: np.ndarray) -> None:
    """The 2 * RADIUS tap weights of one axis for offsets -RADIUS + 1 ... RADIUS."""
    size = 2 * RADIUS
    if distance == 0.0:
        for i in range(size):
            out[i] = 1.0 if i == RADIUS - 1 else 0.0
        return
    x = distance + RADIUS
    for i in range(size):
        x -= 1.0
        px = math.pi * x
        sinc = 1.0 if x == 0.0 else math.sin(px) / px
        out[i] = (1.0 - x * x / (RADIUS * RADIUS)) * sinc


@numba.njit(nogil=True)
def _resample(data: np.ndarray, matrix: np.ndarray, shape: tuple, out: np.ndarray) -> None:
    nx, ny, nz = data.shape
    w0 = np.empty(2 * RADIUS)
    w1 = np.empty(2 * RADIUS)
    w2 = np.empty(2 * RADIUS)
    for i in range(shape[0]):
        for j in range(shape[1]):
            for k in range(shape[2]):
                c0 = matrix[0, 0] * i + matrix[0, 1] * j + matrix[0, 2] * k + matrix[0, 3]
                c1 = matrix[1, 0] * i + matrix[1, 1] * j + matrix[1, 2] * k + matrix[1, 3]
                c2 = matrix[2, 0] * i + matrix[2, 1] * j + matrix[2, 2] * k + matrix[2, 3]
                if not (-0.5 <= c0 < nx - 0.5 and -0.5 <= c1 < ny - 0.5
                        and -0.5 <= c2 < nz - 0.5):
                    continue
                b0, b1, b2 = math.floor(c0), math.floor(c1), math.floor(c2)
                _weights(c0 - b0, w0)
                _weights(c1 - b1, w1)
                _weights(c2 - b2, w2)
                total = 0.0
                for t2 in range(2 * RADIUS):
                    z = b2 + t2 - RADIUS + 1
                    if z < 0 or z >= nz:
                        continue
                    for t1 in range(2 * RADIUS):
                        y = b1 + t1 - RADIUS + 1
                        if y < 0 or y >= ny:
                            continue
                        for t0 in range(2 * RADIUS):
                            x = b0 + t0 - RADIUS + 1
                            if x < 0 or x >= nx:
                                continue
                            total += data[x, y, z] * w0[t0] * w1[t1] * w2[t2]
                out[i, j, k] = total


def welch_sinc_resample(moving: np.ndarray, voxel_map: np.ndarray,
                        shape: tuple[int, int, int]) -> np.ndarray:
    """`moving` resampled onto a grid of `shape`: `voxel_map` (4x4) takes an output voxel index
    to the continuous index in `moving` that it shows. float32."""
    out = np.zeros(tuple(int(s) for s in shape), np.float32)
    _resample(np.ascontiguousarray(moving, dtype=np.float32),
              np.ascontiguousarray(voxel_map, dtype=np.float64), out.shape, out)
    return out


def compile_now() -> None:
    """Compile the loop (a call on a tiny image)."""
    welch_sinc_resample(np.zeros((2, 2, 2), np.float32), np.eye(4), (1, 1, 1))
