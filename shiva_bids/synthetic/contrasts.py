"""Contrasts synthesised from the phantom's tissue maps, and lesion appearance.

Each contrast is a weighted sum of tissue fractions (brain) plus one value per head layer, in
arbitrary units around 0-1 (issue #3 item 3): T1w WM > GM > CSF; FLAIR with CSF suppressed;
an SWI-like T2*-weighted magnitude where deep grey matter, veins and microbleeds are dark; T2w
with bright CSF. Scanner effects (bias, noise, global scale) are added later on native grids.

Lesion voxels get a class (PVS ... VEIN below); their value in each contrast is a blend of the
tissue value and a target, so the lesion generator's changes are exactly the class voxels.
"""
from __future__ import annotations

import functools

import numpy as np

from shiva_bids.synthetic.anatomy import BRAIN_TISSUES, HEAD_LAYERS, load_anatomy

CONTRASTS: tuple[str, ...] = ("t1", "flair", "swi", "t2")

# Mean intensity per tissue and contrast (a.u.).
TISSUE_INTENSITY: dict[str, dict[str, float]] = {
    "t1":    {"air": 0.0, "csf": 0.15, "gm": 0.50, "wm": 0.78, "deepgm": 0.62, "skull": 0.05,
              "marrow": 0.70, "muscle": 0.40, "fat": 0.95},
    "flair": {"air": 0.0, "csf": 0.07, "gm": 0.60, "wm": 0.44, "deepgm": 0.52, "skull": 0.04,
              "marrow": 0.55, "muscle": 0.30, "fat": 0.75},
    "swi":   {"air": 0.0, "csf": 0.85, "gm": 0.55, "wm": 0.66, "deepgm": 0.36, "skull": 0.05,
              "marrow": 0.40, "muscle": 0.35, "fat": 0.60},
    "t2":    {"air": 0.0, "csf": 1.00, "gm": 0.52, "wm": 0.36, "deepgm": 0.42, "skull": 0.04,
              "marrow": 0.45, "muscle": 0.28, "fat": 0.65},
}

# Lesion classes on the canvas (uint8 codes 1-7). Classes 1-4 are the markers (ground truth);
# 5-7 change images but are not markers: the gliotic rim of lacunes, the blooming halo of
# microbleeds on SWI, and veins (dark on SWI, a classic CMB mimic, SHIVA.md §15 SHiVAi#30).
PVS, WMH, CMB, LAC, LAC_RIM, CMB_BLOOM, VEIN = 1, 2, 3, 4, 5, 6, 7
MARKER_CLASS: dict[str, int] = {"PVS": PVS, "WMH": WMH, "CMB": CMB, "LAC": LAC}
N_CLASSES = 8

# (weight, target) per class and contrast: value = (1 - weight) * tissue + weight * target.
_CSF = {c: TISSUE_INTENSITY[c]["csf"] for c in CONTRASTS}
LESION_APPEARANCE: dict[int, dict[str, tuple[float, float]]] = {
    # CSF-like: dark T1, bright T2, dark-ish FLAIR.
    PVS: {"t1": (0.85, _CSF["t1"]), "flair": (0.7, _CSF["flair"]), "swi": (0.4, _CSF["swi"]),
          "t2": (0.85, _CSF["t2"])},
    # Bright FLAIR and T2, slightly dark T1.
    WMH: {"t1": (1.0, 0.57), "flair": (1.0, 0.95), "swi": (0.5, 0.72), "t2": (1.0, 0.78)},
    # Very dark on SWI, mostly invisible on T1.
    CMB: {"t1": (0.15, 0.40), "flair": (0.3, 0.30), "swi": (1.0, 0.04), "t2": (0.7, 0.15)},
    # CSF-filled cavity: dark T1 and FLAIR, bright T2.
    LAC: {"t1": (0.95, _CSF["t1"]), "flair": (0.95, _CSF["flair"]), "swi": (0.8, _CSF["swi"]),
          "t2": (0.95, _CSF["t2"])},
    LAC_RIM: {"t1": (0.5, 0.50), "flair": (1.0, 0.92), "swi": (0.0, 0.0), "t2": (0.6, 0.75)},
    CMB_BLOOM: {"t1": (0.0, 0.0), "flair": (0.0, 0.0), "swi": (0.9, 0.08), "t2": (0.2, 0.2)},
    VEIN: {"t1": (0.1, 0.4), "flair": (0.0, 0.0), "swi": (0.85, 0.12), "t2": (0.0, 0.0)},
}


@functools.lru_cache(maxsize=1)
def base_contrasts() -> dict[str, np.ndarray]:
    """The four lesion-free contrasts on the canvas (float32), computed once per process."""
    anatomy = load_anatomy()
    fractions = {name: anatomy.fraction(name) for name in BRAIN_TISSUES}
    out = {}
    for contrast in CONTRASTS:
        table = TISSUE_INTENSITY[contrast]
        lut = np.array([table[name] for name in HEAD_LAYERS], np.float32)
        image = lut[anatomy.layers]
        for name, frac in fractions.items():
            image += table[name] * frac
        out[contrast] = image
    return out


def with_lesions(classes: np.ndarray, contrasts: tuple[str, ...] = CONTRASTS
                 ) -> dict[str, np.ndarray]:
    """Copies of the base contrasts with each lesion-class voxel blended toward its target.

    `classes` is the uint8 class volume on the canvas (0 = unchanged).
    """
    base = base_contrasts()
    index = np.flatnonzero(classes)
    labels = classes.ravel()[index]
    out = {}
    for contrast in contrasts:
        image = base[contrast].copy()
        flat = image.reshape(-1)
        values = flat[index]
        weight = np.zeros(N_CLASSES, np.float32)
        target = np.zeros(N_CLASSES, np.float32)
        for cls, table in LESION_APPEARANCE.items():
            weight[cls], target[cls] = table[contrast]
        w = weight[labels]
        flat[index] = (1.0 - w) * values + w * target[labels]
        out[contrast] = image
    return out
