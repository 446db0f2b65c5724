"""A FreeSurfer-like `aparc+aseg` head built from ellipsoids (tests and benchmarks).

Plausible layout in world mm (RAS, origin at the centre): cerebral WM and lobar cortex (Desikan
labels, right = left + 1000), CSF shell, lateral ventricles, thalamus, caudate, putamen,
pallidum, insula, hippocampus, ventral DC, cerebellum, brainstem, corpus callosum (251-255)
and a WM-hypointensity blob (77). Not anatomy: just every label the derived parcellation uses,
in the right neighbourhoods.
"""
from __future__ import annotations

import numpy as np

from shiva_bids.volume import Volume

# (left label, right label or None, centre with |x|, semi-axes) painted in this order.
STRUCTURES = [
    ((4, 43), (12, 0, 10), (5, 25, 6)),  # lateral ventricles
    ((10, 49), (10, -15, 0), (7, 10, 7)),  # thalamus
    ((11, 50), (14, 15, 12), (4, 10, 6)),  # caudate
    ((12, 51), (25, 5, 0), (5, 14, 8)),  # putamen
    ((13, 52), (19, 2, -1), (3, 6, 4)),  # pallidum
    ((1035, 2035), (38, 5, 0), (3, 16, 10)),  # insula
    ((17, 53), (26, -20, -18), (5, 14, 5)),  # hippocampus
    ((28, 60), (10, -10, -14), (5, 6, 5)),  # ventral DC
    ((8, 47), (22, -65, -35), (22, 18, 14)),  # cerebellum cortex
    ((7, 46), (22, -65, -35), (15, 12, 9)),  # cerebellum WM
]
LOBES = {"frontal": 1028, "parietal": 1029, "temporal": 1015, "occipital": 1005}


def ellipsoid(world, centre, axes) -> np.ndarray:
    """Voxels whose world coordinates lie inside the axis-aligned ellipsoid."""
    return sum(((world[i] - centre[i]) / axes[i]) ** 2 for i in range(3)) <= 1.0


def make_aparc_aseg(shape=(176, 240, 256), zooms=(1.0, 1.0, 1.0), scale: float = 1.0,
                    synthseg: bool = False) -> Volume:
    """The phantom on a grid of `shape` x `zooms` centred on the origin; `scale` shrinks the
    anatomy (0.5 gives a half-size head for fast tests). `synthseg`: SynthSeg-like, with no
    callosum labels (the callosum is cerebral WM) and an interhemispheric fissure (CSF lined
    with cortex) everywhere else, so that left and right WM meet only at the callosum."""
    affine = np.diag(list(zooms) + [1.0])
    affine[:3, 3] = -np.array(zooms) * (np.array(shape) - 1) / 2.0
    axes = [affine[i, i] * np.arange(shape[i], dtype=np.float32) + affine[i, 3]
            for i in range(3)]
    world = np.meshgrid(*[a / scale for a in axes], indexing="ij", sparse=True)
    seg = np.zeros(shape, np.int16)
    seg[ellipsoid(world, (0, 0, 0), (70, 90, 65))] = 24
    cortex = ellipsoid(world, (0, 0, 0), (65, 85, 60))
    x, y, z = world
    left = np.broadcast_to(x < 0, shape)
    lobe = np.where(y > 20, LOBES["frontal"],
                    np.where(y < -50, LOBES["occipital"],
                             np.where(z < -10, LOBES["temporal"], LOBES["parietal"])))
    lobe = np.broadcast_to(lobe, shape)
    seg[cortex] = np.where(left, lobe, lobe + 1000)[cortex]
    wm = ellipsoid(world, (0, 0, 0), (60, 80, 55))
    seg[wm] = np.where(left, 2, 41)[wm]
    for (left_label, right_label), (cx, cy, cz), semi in STRUCTURES:
        seg[ellipsoid(world, (-cx, cy, cz), semi)] = left_label
        seg[ellipsoid(world, (cx, cy, cz), semi)] = right_label
    seg[ellipsoid(world, (0, -30, -35), (9, 10, 22))] = 16  # brainstem
    callosum = (np.abs(x) <= 10) & (np.abs(y) <= 30) & (z >= 18) & (z <= 22)
    if synthseg:
        cerebral = np.isin(seg, [2, 41]) | (seg >= 1000)
        midline = np.broadcast_to(np.abs(x) <= 1, shape) & cerebral & ~callosum
        near = np.broadcast_to((np.abs(x) > 1) & (np.abs(x) <= 3), shape) & np.isin(seg, [2, 41])
        seg[near & ~callosum] = np.where(left, lobe, lobe + 1000)[near & ~callosum]
        seg[midline] = 24
        seg[callosum & np.isin(seg, [2, 41])] = np.where(left, 2, 41)[callosum
                                                                       & np.isin(seg, [2, 41])]
    else:
        seg[callosum] = np.broadcast_to(251 + np.clip((y + 30) // 12, 0, 4), shape)[callosum]
    seg[ellipsoid(world, (-30, 30, 20), (3, 3, 3))] = 77
    return Volume(seg, affine)
