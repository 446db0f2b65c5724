"""Native acquisition grids, the subject/session warp, and sampling the canvas onto grids.

A phantom unit is seen through one mapping from scanner (world) millimetres to the canvas:

    s = R^T (x - t)                 session pose: rigid, brain centre at world t
    u = s + d(s)                    subject shape: smooth deformation in the head frame
    tau = c + u / g                 subject size: per-axis scaling about the brain centre c
    v = tau - canvas origin         canvas voxel (1 mm, template axes)

d is a sum of K random plane waves (wavelengths 80-160 mm), so on a native grid (whose voxel
axes are world axes, permuted and flipped) every wave factorises into 1D complex exponentials
and the whole displacement field is three small matrix products: the warp costs about as much
as one interpolation. The same subject shape is used in every session; the pose changes.

Each modality has realistic grid presets (issue #3 item 2): T1w 1 mm sagittal or axial,
FLAIR anisotropic, T2*w/SWI thin in-plane with thick slices, T2w; orientations RAS, LPS, LAS,
ASL...; fields of view larger than the 160x214x176 crop box for T1w and smaller ones for others;
all of them cut the neck (the canvas neck is longer than any field of view reaches).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

AXIS_CODES: dict[str, tuple[int, float]] = {"R": (0, 1.0), "L": (0, -1.0), "A": (1, 1.0),
                                            "P": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


@dataclass(frozen=True, eq=False)
class NativeGrid:
    """A voxel grid in world mm: `affine` maps voxel indices to world (RAS) mm."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    orientation: str
    label: str

    @property
    def zooms(self) -> tuple[float, float, float]:
        return tuple(float(z) for z in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


@dataclass(frozen=True)
class GridPreset:
    """An acquisition: voxel axis codes, voxel size and field of view per voxel axis, and
    where the field of view is centred (mm above the brain centre)."""

    label: str
    orientation: str
    zooms: tuple[float, float, float]
    fov_mm: tuple[float, float, float]
    z_offset: float = 0.0


GRID_PRESETS: dict[str, tuple[GridPreset, ...]] = {
    "T1w": (
        GridPreset("3D sagittal 1 mm", "ASL", (1.0, 1.0, 1.0), (256.0, 256.0, 176.0), 10.0),
        GridPreset("3D axial 1x1x1.2 mm", "RAS", (1.0, 1.0, 1.2), (240.0, 240.0, 180.0), 0.0),
        GridPreset("3D axial 0.94x0.94x1 mm", "LAS", (0.9375, 0.9375, 1.0),
                   (240.0, 240.0, 176.0), 2.0),
    ),
    "FLAIR": (
        GridPreset("2D axial 0.9x0.9x3 mm", "LPS", (0.9, 0.9, 3.0), (230.0, 230.0, 159.0), -3.0),
        GridPreset("3D axial 1x1x1.5 mm", "RAS", (1.0, 1.0, 1.5), (220.0, 240.0, 165.0), 0.0),
    ),
    "T2starw": (
        GridPreset("2D axial 0.8x0.8x2 mm", "LAS", (0.8, 0.8, 2.0), (220.0, 200.0, 128.0), 5.0),
        GridPreset("3D axial 0.9x0.9x2.5 mm", "LPS", (0.9, 0.9, 2.5), (230.0, 230.0, 140.0), 0.0),
    ),
    "T2w": (
        GridPreset("2D axial 0.9x0.9x4 mm", "LPI", (0.9, 0.9, 4.0), (230.0, 230.0, 160.0), 0.0),
        GridPreset("3D axial 1x1x2 mm", "RAS", (1.0, 1.0, 2.0), (220.0, 240.0, 170.0), 0.0),
    ),
}


def make_grid(orientation: str, zooms, fov_mm, center_world: np.ndarray,
              label: str = "") -> NativeGrid:
    """A grid whose voxel axis k runs along world axis `orientation[k]` (e.g. "LPS")."""
    matrix = np.zeros((3, 3))
    for k, code in enumerate(orientation):
        axis, sign = AXIS_CODES[code]
        matrix[axis, k] = sign * zooms[k]
    shape = tuple(int(round(f / z)) for f, z in zip(fov_mm, zooms))
    affine = np.eye(4)
    affine[:3, :3] = matrix
    affine[:3, 3] = np.asarray(center_world, float) - matrix @ ((np.array(shape) - 1) / 2.0)
    return NativeGrid(shape=shape, affine=affine, orientation=orientation, label=label)


def preset_grid(preset: GridPreset, brain_center_world: np.ndarray,
                rng: np.random.Generator) -> NativeGrid:
    """A preset's grid centred near the brain (a few mm of random placement)."""
    center = np.asarray(brain_center_world, float) + np.array([0.0, 0.0, preset.z_offset]) \
        + rng.uniform(-4.0, 4.0, 3)
    return make_grid(preset.orientation, preset.zooms, preset.fov_mm, center, preset.label)


@dataclass(frozen=True, eq=False)
class SubjectShape:
    """Per-participant anatomy variation: per-axis size and a smooth deformation."""

    scale: np.ndarray  # (3,) size factors (head frame)
    waves: np.ndarray  # (K, 3) wave vectors, rad/mm
    phases: np.ndarray  # (K,)
    amplitudes: np.ndarray  # (3, K) mm

    @classmethod
    def random(cls, rng: np.random.Generator, n_waves: int = 10,
               displacement_mm: float = 2.0) -> "SubjectShape":
        size = rng.uniform(0.92, 1.08)
        scale = size * rng.uniform(0.97, 1.03, 3)
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        waves = directions * (2 * np.pi / rng.uniform(80.0, 160.0, (n_waves, 1)))
        amplitudes = rng.normal(scale=displacement_mm / np.sqrt(n_waves / 2), size=(3, n_waves))
        return cls(scale, waves, rng.uniform(0, 2 * np.pi, n_waves), amplitudes)

    def displacement(self, s: np.ndarray) -> np.ndarray:
        """d(s) for points (N, 3) in the head frame (mm)."""
        return np.sin(s @ self.waves.T + self.phases) @ self.amplitudes.T


@dataclass(frozen=True, eq=False)
class Pose:
    """Per-session head position: rotation R and world position t of the brain centre."""

    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, max_deg: tuple[float, float, float] = (6, 10, 6),
               max_shift_mm: float = 8.0) -> "Pose":
        angles = np.deg2rad(rng.uniform(-1, 1, 3) * np.array(max_deg))
        return cls(_rotation(angles), rng.uniform(-max_shift_mm, max_shift_mm, 3))


def _rotation(angles: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True, eq=False)
class Warp:
    """World mm <-> canvas voxels for one unit (see the module docstring)."""

    shape: SubjectShape
    pose: Pose
    brain_center: np.ndarray  # template mm
    canvas_origin: np.ndarray  # template mm of canvas voxel 0

    def world_to_canvas(self, points: np.ndarray) -> np.ndarray:
        """World mm (N, 3) -> canvas voxel coordinates (N, 3)."""
        s = (np.asarray(points, float) - self.pose.translation) @ self.pose.rotation
        u = s + self.shape.displacement(s)
        return self.brain_center + u / self.shape.scale - self.canvas_origin

    def canvas_to_world(self, voxels: np.ndarray, iterations: int = 30) -> np.ndarray:
        """Canvas voxel coordinates (N, 3) -> world mm, inverting the deformation by
        fixed-point iteration (it converges: the field's gradient is far below 1)."""
        u = (np.asarray(voxels, float) + self.canvas_origin - self.brain_center) \
            * self.shape.scale
        s = u.copy()
        for _ in range(iterations):
            s = u - self.shape.displacement(s)
        return s @ self.pose.rotation.T + self.pose.translation

    def grid_coordinates(self, grid: NativeGrid, rows: slice) -> np.ndarray:
        """Canvas coordinates (3, n_rows, NJ, NK) float32 of grid voxels [rows, :, :]."""
        ni = len(range(*rows.indices(grid.shape[0])))
        nj, nk = grid.shape[1], grid.shape[2]
        rot, t = self.pose.rotation, self.pose.translation
        b = rot.T @ grid.affine[:3, :3]  # head-frame step per voxel index
        s0 = rot.T @ (grid.affine[:3, 3] + grid.affine[:3, :3] @ [rows.start, 0, 0] - t)
        i = np.arange(ni, dtype=float)
        j = np.arange(nj, dtype=float)
        k = np.arange(nk, dtype=float)
        waves = self.shape.waves
        alpha = waves @ s0 + self.shape.phases
        beta, gamma, delta = (waves @ b).T  # (K,) per voxel axis
        left = np.exp(1j * (alpha[None, None, :] + i[:, None, None] * beta
                            + j[None, :, None] * gamma)).reshape(ni * nj, -1)
        right = np.exp(1j * k[None, :] * delta[:, None])  # (K, NK)
        left_ri = np.concatenate([left.real, left.imag], axis=1).astype(np.float32)
        out = np.empty((3, ni, nj, nk), np.float32)
        offset = self.brain_center - self.canvas_origin
        for c in range(3):
            weighted = self.shape.amplitudes[c][:, None] * right
            stacked = np.concatenate([weighted.imag, weighted.real], axis=0).astype(np.float32)
            disp = (left_ri @ stacked).reshape(ni, nj, nk)
            lin = (s0[c] + b[c, 0] * i[:, None, None] + b[c, 1] * j[None, :, None]
                   + b[c, 2] * k[None, None, :]).astype(np.float32)
            out[c] = (disp + lin) / np.float32(self.shape.scale[c]) + np.float32(offset[c])
        return out


def _cache_friendly_order(grid: NativeGrid) -> tuple[int, ...]:
    """Voxel axes sorted by the world axis they run along (canvas memory order x, y, z)."""
    dominant = np.argmax(np.abs(grid.affine[:3, :3]), axis=0)
    return tuple(int(a) for a in np.argsort(dominant, kind="stable"))


def _permuted(grid: NativeGrid, order: tuple[int, ...]) -> NativeGrid:
    affine = grid.affine.copy()
    affine[:3, :3] = grid.affine[:3, order]
    return NativeGrid(tuple(grid.shape[a] for a in order), affine, grid.orientation, grid.label)


def nearest(volume: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Nearest-neighbour lookup of `volume` at `coords` (3, ...), 0 outside (3x faster than
    map_coordinates(order=0)). Ties at exactly .5 round to even."""
    index = np.rint(coords).astype(np.intp)
    inside = np.ones(coords.shape[1:], bool)
    for axis, n in enumerate(volume.shape):
        inside &= (index[axis] >= 0) & (index[axis] < n)
    flat = np.ravel_multi_index(tuple(index), volume.shape, mode="clip")
    out = volume.reshape(-1).take(flat)
    out[~inside] = 0
    return out


def sample(volumes: dict[str, np.ndarray], labels: np.ndarray | None, grid: NativeGrid,
           warp: Warp, rows_per_chunk: int = 24) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Sample canvas `volumes` (trilinear) and `labels` (nearest neighbour) at the centres of
    `grid`'s voxels. Both use the same coordinates, so images and truth agree voxel for voxel.

    The grid is walked in the canvas' memory order (axes permuted, then transposed back): the
    interpolation then reads the canvas almost sequentially, which is several times faster.
    """
    order = _cache_friendly_order(grid)
    walk = _permuted(grid, order)
    images = {name: np.empty(walk.shape, np.float32) for name in volumes}
    label_out = None if labels is None else np.empty(walk.shape, labels.dtype)
    for start in range(0, walk.shape[0], rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, walk.shape[0]))
        coords = warp.grid_coordinates(walk, rows)
        for name, volume in volumes.items():
            ndi.map_coordinates(volume, coords, output=images[name][rows], order=1,
                                mode="constant", cval=0.0, prefilter=False)
        if labels is not None:
            label_out[rows] = nearest(labels, coords)
    inverse = tuple(int(a) for a in np.argsort(order))
    images = {name: np.ascontiguousarray(img.transpose(inverse)) for name, img in images.items()}
    if label_out is not None:
        label_out = np.ascontiguousarray(label_out.transpose(inverse))
    return images, label_out
