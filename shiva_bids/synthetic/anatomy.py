"""The phantom's anatomy: the ICBM152 2009a template that nilearn ships, plus a head around it.

nilearn bundles the 1 mm ICBM152 2009a (symmetric) brain-extracted T1 and its GM/WM probability
maps under `nilearn/datasets/data/` (reference/MEASUREMENTS.md: the T1 is brain-extracted). They
are read from the installed package, never from the network. From them this module derives, once
per process, on a padded 1 mm RAS "canvas" in template millimetres:

* tissue probabilities: CSF = brain - GM - WM; deep grey matter (basal ganglia and thalami,
  picked by depth and position) split from cortical GM;
* a head around the brain, because SHIVA models expect unstripped heads (reference/SHIVA.md §15,
  SHiVAi#28): extra-cerebral CSF, a skull with marrow, muscle and scalp fat layers at fixed
  distances from the brain, and a neck below the brain stem long enough that every native field
  of view cuts it;
* a region map (lobar, deep WM, basal ganglia, infratentorial, CSF) used to place lesions and to
  report where each one is;
* a ventricle mask, the distance to it, and the tips of the lateral ventricles (anchors of
  periventricular WMH caps).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

TEMPLATE_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
# The canvas: the template's head part (voxel ranges of the 197x233x189 template that hold the
# brain, x 26-170, y 27-207, z 0-154, plus 16 mm for the head layers), with a neck of NECK_MM
# added below. The lowest native field of view ends above the canvas bottom (grids.py).
TEMPLATE_CROP = (slice(10, 187), slice(11, 224), slice(0, 171))
NECK_MM = 66

# Brain tissue classes (fractions on the canvas) and head layers (labels on the canvas).
BRAIN_TISSUES: tuple[str, ...] = ("csf", "gm", "wm", "deepgm")
HEAD_LAYERS: tuple[str, ...] = ("air", "csf", "skull", "marrow", "muscle", "fat")
# Head layers as distances (mm) outside the brain mask.
LAYERS_MM: tuple[tuple[str, float], ...] = (
    ("csf", 2.0), ("skull", 4.0), ("marrow", 6.5), ("skull", 8.0), ("muscle", 10.0),
    ("fat", 14.0),
)

# Region codes of `Anatomy.regions` and the names reported in lesion lists.
REGION_NAMES: dict[int, str] = {0: "outside", 1: "lobar", 2: "deep WM", 3: "basal ganglia",
                                4: "infratentorial", 5: "CSF"}
LOBAR, DEEP_WM, BASAL_GANGLIA, INFRATENTORIAL, CSF_REGION = 1, 2, 3, 4, 5


@dataclass(frozen=True, eq=False)
class Anatomy:
    """The template head on the canvas (1 mm, RAS, axes aligned with template mm).

    `fractions[name]` are uint8 brain-tissue fractions (x255) for BRAIN_TISSUES; `layers` the
    head-layer label (index into HEAD_LAYERS) outside the brain; `affine` maps canvas voxels to
    template mm; `brain_center` is the brain's centre of mass in template mm (the centre of
    rotations and scaling in warps).
    """

    fractions: dict[str, np.ndarray]
    layers: np.ndarray  # uint8
    brain: np.ndarray  # bool
    regions: np.ndarray  # uint8, REGION_NAMES codes
    ventricles: np.ndarray  # bool
    ventricle_distance: np.ndarray  # float32 mm, 0 inside the ventricles
    ventricle_tips: np.ndarray  # (4, 3) canvas voxel coords: L/R frontal, L/R occipital
    affine: np.ndarray
    brain_center: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.brain.shape)

    def fraction(self, name: str) -> np.ndarray:
        """Float32 fraction (0-1) of a brain tissue."""
        return self.fractions[name].astype(np.float32) / 255.0

    def mm_to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """Template mm (..., 3) -> canvas voxel coordinates."""
        return np.asarray(points_mm, float) - self.affine[:3, 3]


def template_dir() -> Path:
    """`nilearn/datasets/data` of the installed nilearn (found without importing nilearn,
    which takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("nilearn is not installed; it provides the ICBM152 template")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def _load_template() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The three template maps cropped to the head part and padded with the neck, as 0-1."""
    folder = template_dir()
    arrays, affine = {}, None
    for key, name in TEMPLATE_FILES.items():
        img = nib.load(folder / name)
        data = np.asarray(img.dataobj)[TEMPLATE_CROP]
        arrays[key] = np.pad(data, ((0, 0), (0, 0), (NECK_MM, 0))).astype(np.float32) / 255.0
        affine = np.asarray(img.affine, float).copy()
    offset = np.array([TEMPLATE_CROP[0].start, TEMPLATE_CROP[1].start,
                       TEMPLATE_CROP[2].start - NECK_MM], float)
    affine[:3, 3] += affine[:3, :3] @ offset
    return arrays, affine


def _distance(mask: np.ndarray, coarse: bool = False) -> np.ndarray:
    """Euclidean distance (mm) to `mask`. `coarse` computes it at 2 mm and repeats voxels
    (8x faster; region rules need ~2 mm accuracy only)."""
    if not coarse:
        return ndi.distance_transform_edt(~mask).astype(np.float32)
    dist = ndi.distance_transform_edt(~mask[::2, ::2, ::2], sampling=2.0).astype(np.float32)
    up = dist.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    return up[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def _distance_near(mask: np.ndarray, margin: int) -> np.ndarray:
    """Distance (mm) to `mask`, exact within `margin` voxels of its bounding box and
    `margin` beyond it (all that lesion placement needs; much cheaper than the whole canvas)."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    out = np.full(mask.shape, float(margin), np.float32)
    out[box] = np.minimum(_distance(mask[box]), margin)
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _neck(shape: tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Soft-tissue neck: an elliptic cylinder from the lower brain stem to the canvas bottom."""
    top = NECK_MM + 30  # overlaps the lower head shell so the two merge
    x = np.arange(shape[0]) + affine[0, 3]
    y = np.arange(shape[1]) + affine[1, 3]
    ellipse = (x[:, None] / 52.0) ** 2 + ((y[None, :] + 25.0) / 55.0) ** 2 <= 1.0
    neck = np.zeros(shape, bool)
    neck[:, :, :top] = ellipse[:, :, None]
    return neck


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """Build the canvas once per process (a few seconds); every phantom starts from it."""
    arrays, affine = _load_template()
    brain = _largest_component(ndi.binary_fill_holes(arrays["t1"] > 0.02))
    gm = arrays["gm"] * brain
    wm = arrays["wm"] * brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0) * brain
    shape = brain.shape
    x, y, z = np.meshgrid(*(np.arange(n) + affine[i, 3] for i, n in enumerate(shape)),
                          indexing="ij", sparse=True)

    depth = _distance(~brain, coarse=True)  # distance to the outside, inside the brain
    infra = brain & ((z < -24.0) | ((z < -8.0) & (y < -42.0)))
    deep_box = (np.abs(x) < 31.0) & (y > -40.0) & (y < 28.0) & (z > -14.0) & (z < 22.0)
    deepgm_region = brain & deep_box & (depth > 14.0) & (gm > 0.35) & ~infra
    deepgm = np.where(deepgm_region, gm, 0.0).astype(np.float32)
    gm = gm - deepgm
    vent_box = (np.abs(x) < 28.0) & (y > -50.0) & (y < 35.0) & (z > -5.0) & (z < 35.0)
    ventricles = brain & vent_box & (csf > 0.5) & (depth > 15.0)
    ventricles = _components_at_least(ventricles, 200)
    vent_dist = _distance_near(ventricles, margin=20)

    regions = np.zeros(shape, np.uint8)
    cortex_dist = _distance(brain & (gm > 0.5), coarse=True)
    regions[brain] = DEEP_WM
    regions[brain & (cortex_dist <= 3.0)] = LOBAR
    regions[deepgm_region] = BASAL_GANGLIA
    regions[infra] = INFRATENTORIAL
    regions[brain & (csf > 0.6) & ~infra] = CSF_REGION

    outside = _distance(brain)
    layers = np.zeros(shape, np.uint8)
    inner = 0.0
    for name, outer in LAYERS_MM:
        layers[~brain & (outside > inner) & (outside <= outer)] = HEAD_LAYERS.index(name)
        inner = outer
    neck = _neck(shape, affine) & (layers == 0) & ~brain
    neck_core = ndi.binary_erosion(neck, iterations=5)
    layers[neck_core] = HEAD_LAYERS.index("muscle")
    layers[neck & ~neck_core] = HEAD_LAYERS.index("fat")

    fractions = {name: np.round(frac * 255).astype(np.uint8)
                 for name, frac in zip(BRAIN_TISSUES, (csf, gm, wm, deepgm))}
    tips = _ventricle_tips(ventricles, affine)
    center = np.array(ndi.center_of_mass(brain)) + affine[:3, 3]
    log.debug("phantom canvas %s built", shape)
    return Anatomy(fractions=fractions, layers=layers, brain=brain, regions=regions,
                   ventricles=ventricles, ventricle_distance=vent_dist, ventricle_tips=tips,
                   affine=affine, brain_center=center)


def _components_at_least(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Components of `mask` with at least `min_voxels` voxels (both lateral ventricles)."""
    labels, n = ndi.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = np.nonzero(sizes >= min_voxels)[0]
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def _ventricle_tips(ventricles: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Frontal (most anterior) and occipital (most posterior) ventricle voxels per side."""
    idx = np.argwhere(ventricles)
    x_mm = idx[:, 0] + affine[0, 3]
    tips = []
    for pick in (np.argmax, np.argmin):  # frontal horns, then occipital horns
        for side in (x_mm < -3.0, x_mm > 3.0):
            part = idx[side]
            tips.append(part[pick(part[:, 1])])
    return np.array(tips, float)
