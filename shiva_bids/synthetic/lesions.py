"""Lesions painted on the phantom canvas, with their exact extent (the ground truth).

Each marker is placed where it occurs in patients (issue #3 item 4):

* PVS: straight tubes 1-3 mm in diameter and 3-20 mm long, in the centrum semiovale (running
  radially) and in the basal ganglia (running upward, along the perforating arteries);
* WMH: periventricular caps at the tips of the lateral ventricles, a thin periventricular band
  (severe load), and deep punctate or confluent blobs (unions of ellipsoids) in deep WM;
* CMB: round foci (true diameter 2-5 mm; with the SWI blooming halo 3-10 mm) at the
  cortico-subcortical junction, in the basal ganglia or infratentorially;
* LAC: ellipsoidal cavities 3-15 mm in the basal ganglia or deep WM, with a 1-voxel gliotic rim.

Painting works on a uint8 class volume (the class codes of contrasts.py) and an int32 id volume on
the 1 mm canvas. A later lesion overwrites an earlier one; decorations (rim, blooming halo,
veins) never overwrite a marker. The truth of each marker is therefore exactly the set of
voxels whose class is that marker, and each lesion's voxel count is taken after all painting.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import binary_dilation

from shiva_bids.synthetic import contrasts as C
from shiva_bids.synthetic.anatomy import (BASAL_GANGLIA, DEEP_WM, INFRATENTORIAL, LOBAR,
                                          REGION_NAMES, Anatomy)

LOADS: tuple[str, ...] = ("none", "mild", "severe")
# Loads given to participants 1, 2, 3, ... when none are asked for (cycled).
LESION_LOADS_DEFAULT: tuple[str, ...] = ("mild", "severe", "none")


@dataclass(frozen=True)
class LoadSpec:
    """How many lesions of each kind, and how large, for one lesion load."""

    pvs: tuple[int, int]
    wmh_caps: int
    cap_radius: tuple[float, float]  # mm, extent along the ventricle wall
    cap_depth: tuple[float, float]  # mm, thickness away from the ventricle
    wmh_band: float  # mm thickness of the periventricular band (0: none)
    wmh_blobs: tuple[int, int]
    blob_radius: tuple[float, float]
    cmb: tuple[int, int]
    lac: tuple[int, int]


LOAD_SPECS: dict[str, LoadSpec] = {
    "none": LoadSpec((0, 0), 0, (0, 0), (0, 0), 0.0, (0, 0), (0, 0), (0, 0), (0, 0)),
    "mild": LoadSpec((25, 50), 2, (4, 7), (2.5, 4), 0.0, (2, 6), (1.2, 3.0), (1, 3), (1, 1)),
    "severe": LoadSpec((120, 200), 4, (8, 14), (4, 8), 1.6, (10, 20), (1.5, 5.0), (6, 14),
                       (3, 6)),
}
N_VEINS = (20, 30)


@dataclass(frozen=True)
class PaintedLesion:
    """One lesion on the canvas: its marker, kind, region and final extent."""

    id: int
    marker: str
    kind: str
    region: str
    voxels: int  # canvas voxels (1 mm^3 of template space) after all painting
    centroid: tuple[float, float, float]  # canvas voxel coordinates


@dataclass(frozen=True, eq=False)
class LesionMap:
    """The lesion classes on the canvas and the list of marker lesions. `voxels` / `voxel_ids`
    are the flat canvas indices of every marker-lesion voxel and its `PaintedLesion.id` (the
    lesions' exact extent, kept sparse)."""

    classes: np.ndarray  # uint8, class codes of contrasts.py (PVS=1 ... VEIN=7)
    lesions: tuple[PaintedLesion, ...]
    load: str
    voxels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    voxel_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


@dataclass(frozen=True)
class _Candidates:
    """Flat canvas indices of plausible lesion centres."""

    semiovale: np.ndarray
    deep_wm: np.ndarray
    basal_ganglia: np.ndarray
    junction: np.ndarray
    infratentorial: np.ndarray
    sulci: np.ndarray


@functools.lru_cache(maxsize=1)
def _candidates(anatomy: Anatomy) -> _Candidates:
    f = anatomy.fractions
    wm, gm, csf = f["wm"], f["gm"], f["csf"]
    reg = anatomy.regions
    z_mm = np.arange(anatomy.shape[2]) + anatomy.affine[2, 3]
    above = np.broadcast_to(z_mm > 12.0, anatomy.shape)
    deep = (reg == DEEP_WM) & (wm > 180) & (anatomy.ventricle_distance > 2.0)
    return _Candidates(
        semiovale=np.flatnonzero(deep & above),
        deep_wm=np.flatnonzero(deep),
        basal_ganglia=np.flatnonzero((reg == BASAL_GANGLIA) & (f["deepgm"] > 128)),
        junction=np.flatnonzero((reg == LOBAR) & (wm > 64) & (gm > 64)),
        infratentorial=np.flatnonzero((reg == INFRATENTORIAL) & (csf < 64)),
        sulci=np.flatnonzero((reg == LOBAR) & (csf > 90) & (csf < 180)),
    )


class _Painter:
    """Paints shapes into the class/id volumes within local boxes."""

    def __init__(self, anatomy: Anatomy, rng: np.random.Generator):
        self.anatomy = anatomy
        self.rng = rng
        self.classes = np.zeros(anatomy.shape, np.uint8)
        self.ids = np.zeros(anatomy.shape, np.int32)
        self.meta: dict[int, tuple[str, str]] = {}

    def pick(self, candidates: np.ndarray) -> np.ndarray:
        """A random candidate voxel (canvas coordinates) with sub-voxel jitter."""
        flat = candidates[self.rng.integers(len(candidates))]
        return np.array(np.unravel_index(flat, self.anatomy.shape), float) \
            + self.rng.uniform(-0.5, 0.5, 3)

    def box(self, lo: np.ndarray, hi: np.ndarray):
        """Slices of the canvas box [lo, hi] and its sparse voxel coordinate grids."""
        shape = self.anatomy.shape
        lo = np.maximum(np.floor(lo).astype(int), 0)
        hi = np.minimum(np.ceil(hi).astype(int) + 1, shape)
        if np.any(hi <= lo):
            return None, None
        sl = tuple(slice(a, b) for a, b in zip(lo, hi))
        grids = np.ogrid[sl]
        return sl, grids

    def allowed(self, sl, rule: str) -> np.ndarray:
        """Tissue where a lesion kind may be painted."""
        f = self.anatomy.fractions
        vent = self.anatomy.ventricles[sl]
        if rule == "any":
            return self.anatomy.brain[sl] & ~vent
        if rule == "pvs":
            ok = (f["wm"][sl] > 110) | (f["deepgm"][sl] > 110)
        elif rule == "wmh":
            ok = f["wm"][sl] > 90
        else:  # "brain": any tissue but CSF
            ok = self.anatomy.brain[sl] & (f["csf"][sl] < 128)
        return ok & ~vent

    def paint(self, sl, shape_mask: np.ndarray, cls: int, marker: str | None, kind: str) -> None:
        """Marker lesions overwrite anything; decorations only fill unchanged voxels."""
        classes = self.classes[sl]
        if marker is None:
            shape_mask = shape_mask & ((classes == 0) | (classes == C.VEIN))
            classes[shape_mask] = cls
            return
        new_id = len(self.meta) + 1
        self.meta[new_id] = (marker, kind)
        classes[shape_mask] = cls
        self.ids[sl][shape_mask] = new_id

    def ellipsoid(self, center, radii, rule: str, cls: int, marker: str | None, kind: str,
                  rotation: np.ndarray | None = None) -> None:
        r = float(np.max(radii))
        sl, grids = self.box(center - r - 1, center + r + 1)
        if sl is None:
            return
        rot = np.eye(3) if rotation is None else rotation
        d = [g - c for g, c in zip(grids, center)]
        q = 0.0
        for axis in range(3):
            proj = d[0] * rot[0, axis] + d[1] * rot[1, axis] + d[2] * rot[2, axis]
            q = q + (proj / radii[axis]) ** 2
        self.paint(sl, (q <= 1.0) & self.allowed(sl, rule), cls, marker, kind)

    def tube(self, p0, p1, radius: float, rule: str, cls: int, marker: str | None,
             kind: str) -> None:
        lo = np.minimum(p0, p1) - radius - 1
        hi = np.maximum(p0, p1) + radius + 1
        sl, grids = self.box(lo, hi)
        if sl is None:
            return
        axis = p1 - p0
        length2 = float(axis @ axis) or 1.0
        d = [g - c for g, c in zip(grids, p0)]
        t = np.clip((d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]) / length2, 0.0, 1.0)
        dist2 = sum((d[i] - t * axis[i]) ** 2 for i in range(3))
        # +0.35 voxel keeps 1 mm tubes 26-connected on the 1 mm canvas.
        shape_mask = (dist2 <= (radius + 0.35) ** 2) & self.allowed(sl, rule)
        self.paint(sl, shape_mask, cls, marker, kind)

    def dilation_ring(self, lesion_id: int, cls: int) -> None:
        """One-voxel shell around a painted lesion (LAC rim)."""
        idx = np.argwhere(self.ids == lesion_id) if lesion_id else np.empty((0, 3))
        if len(idx) == 0:
            return
        sl, _ = self.box(idx.min(0) - 1, idx.max(0) + 1)
        inside = self.ids[sl] == lesion_id
        ring = binary_dilation(inside) & ~inside & self.anatomy.brain[sl]
        self.paint(sl, ring, cls, None, "rim")


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def paint_lesions(anatomy: Anatomy, load: str, rng: np.random.Generator) -> LesionMap:
    """Paint the lesions of one participant (`load`: none, mild or severe) on the canvas."""
    if load not in LOAD_SPECS:
        raise ValueError(f"lesion load {load!r} is not one of {', '.join(LOADS)}")
    spec = LOAD_SPECS[load]
    cand = _candidates(anatomy)
    p = _Painter(anatomy, rng)
    center = anatomy.mm_to_voxel(np.array([0.0, -15.0, 15.0]))

    for _ in range(rng.integers(*N_VEINS, endpoint=True)):  # veins first: lesions override
        start = p.pick(cand.sulci)
        direction = _unit(rng.normal(size=3))
        p.tube(start, start + direction * rng.uniform(10, 30), rng.uniform(0.4, 0.8), "any",
               C.VEIN, None, "vein")

    for _ in range(rng.integers(*spec.wmh_blobs, endpoint=True)):
        c0 = p.pick(cand.deep_wm)
        n_parts = rng.integers(1, 4)
        radius = rng.uniform(*spec.blob_radius)
        first = len(p.meta) + 1
        for part in range(n_parts):
            offset = rng.normal(scale=radius * 0.7, size=3) if part else np.zeros(3)
            radii = radius * rng.uniform(0.6, 1.2, 3)
            p.ellipsoid(c0 + offset, radii, "wmh", C.WMH, "WMH", "deep",
                        _random_rotation(rng))
        _merge_ids(p, first)
    tips = anatomy.ventricle_tips[rng.permutation(len(anatomy.ventricle_tips))]
    for tip in tips[: spec.wmh_caps]:
        _paint_cap(p, tip, rng.uniform(*spec.cap_radius), rng.uniform(*spec.cap_depth))
    if spec.wmh_band > 0:
        _paint_band(p, spec.wmh_band)

    for _ in range(rng.integers(*spec.pvs, endpoint=True)):
        in_bg = rng.random() < 0.3
        start = p.pick(cand.basal_ganglia if in_bg else cand.semiovale)
        if in_bg:
            direction = _unit(np.array([0.0, 0.0, 1.0]) + rng.normal(scale=0.3, size=3))
            length = rng.uniform(3, 10)
        else:
            direction = _unit(_unit(start - center) + rng.normal(scale=0.3, size=3))
            length = rng.uniform(3, 20)
        diameter = 1.0 + 2.0 * rng.random() ** 2
        p.tube(start - direction * length / 2, start + direction * length / 2, diameter / 2,
               "pvs", C.PVS, "PVS", "basal ganglia" if in_bg else "centrum semiovale")

    lac_ids = []
    for _ in range(rng.integers(*spec.lac, endpoint=True)):
        in_bg = rng.random() < 0.6
        c0 = p.pick(cand.basal_ganglia if in_bg else cand.deep_wm)
        radii = rng.uniform(1.5, 7.5) * np.array([1.0, *rng.uniform(0.6, 1.0, 2)])
        p.ellipsoid(c0, radii, "brain", C.LAC, "LAC", "cavity", _random_rotation(rng))
        lac_ids.append(len(p.meta))

    for _ in range(rng.integers(*spec.cmb, endpoint=True)):
        where = rng.random()
        pool = cand.junction if where < 0.5 else (
            cand.basal_ganglia if where < 0.8 else cand.infratentorial)
        c0 = p.pick(pool)
        radius = rng.uniform(1.0, 2.5)
        p.ellipsoid(c0, np.full(3, radius), "brain", C.CMB, "CMB", "focus")
        bloom = 1.6 * radius + 0.8
        p.ellipsoid(c0, np.full(3, bloom), "brain", C.CMB_BLOOM, None, "bloom")

    for lesion_id in lac_ids:
        p.dilation_ring(lesion_id, C.LAC_RIM)
    flat = np.flatnonzero(p.ids)
    return LesionMap(classes=p.classes, lesions=_census(p), load=load, voxels=flat,
                     voxel_ids=p.ids.reshape(-1)[flat])


def _merge_ids(p: _Painter, first: int) -> None:
    """Give the parts of one confluent blob (ids first..last) the first id."""
    last = len(p.meta)
    if last <= first:
        return
    parts = (p.ids > first) & (p.ids <= last)
    p.ids[parts] = first
    for extra in range(first + 1, last + 1):
        p.meta[extra] = ("", "merged")


def _paint_cap(p: _Painter, tip: np.ndarray, radius: float, depth: float) -> None:
    """A periventricular cap: WM within `depth` mm of the ventricle and `radius` of its tip."""
    sl, grids = p.box(tip - radius - 1, tip + radius + 1)
    if sl is None:
        return
    dist2 = sum((g - c) ** 2 for g, c in zip(grids, tip))
    near = (p.anatomy.ventricle_distance[sl] > 0) & (p.anatomy.ventricle_distance[sl] <= depth)
    p.paint(sl, (dist2 <= radius ** 2) & near & p.allowed(sl, "wmh"), C.WMH, "WMH",
            "periventricular cap")


def _paint_band(p: _Painter, thickness: float) -> None:
    """A thin periventricular band along the lateral ventricles (severe load)."""
    dist = p.anatomy.ventricle_distance
    idx = np.argwhere(p.anatomy.ventricles)
    sl, _ = p.box(idx.min(0) - thickness - 1, idx.max(0) + thickness + 1)
    near = (dist[sl] > 0) & (dist[sl] <= thickness)
    p.paint(sl, near & p.allowed(sl, "wmh"), C.WMH, "WMH", "periventricular band")


def _census(p: _Painter) -> tuple[PaintedLesion, ...]:
    """Final extent of every marker lesion (after overwrites), with its region."""
    flat = np.flatnonzero(p.ids)
    ids = p.ids.reshape(-1)[flat]
    coords = np.stack(np.unravel_index(flat, p.anatomy.shape), axis=1).astype(float)
    n = len(p.meta) + 1
    counts = np.bincount(ids, minlength=n)
    sums = np.stack([np.bincount(ids, weights=coords[:, k], minlength=n) for k in range(3)], 1)
    regions = p.anatomy.regions.reshape(-1)[flat]
    out = []
    for lesion_id in np.nonzero(counts)[0]:
        marker, kind = p.meta[int(lesion_id)]
        region_counts = np.bincount(regions[ids == lesion_id], minlength=len(REGION_NAMES))
        region_counts[0] = 0
        if kind.startswith("periventricular"):
            region = "periventricular"
        else:
            region = REGION_NAMES[int(np.argmax(region_counts))]
        out.append(PaintedLesion(id=int(lesion_id), marker=marker, kind=kind, region=region,
                                 voxels=int(counts[lesion_id]),
                                 centroid=tuple(sums[lesion_id] / counts[lesion_id])))
    return tuple(out)
