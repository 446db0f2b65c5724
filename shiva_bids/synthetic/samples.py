"""Model-space training samples: phantom images directly on the 1 mm SHIVA model grid.

For training the demo models (issue #3 item 6) no BIDS files and no anisotropic grids are
needed: the four contrasts are sampled straight onto a 1 mm RAS box of the model shape
(160x214x176, reference/SHIVA.md §5.5) centred on the brain, with a random anatomy variation,
pose, intensity gamma, bias field and noise, then normalised the SHIVA way
(reference/SHIVA.md §5.7): x <- clip(x / p99_in_brain, 0, 1.3) / 1.3 after negatives -> 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shiva_bids.markers import MARKER_NAMES, SHIVA_MODEL_SHAPE
from shiva_bids.synthetic.contrasts import CONTRASTS, MARKER_CLASS
from shiva_bids.synthetic.grids import Pose, make_grid, sample
from shiva_bids.synthetic.phantom import (BRAIN_BIT, CLASS_BITS, make_participant, make_warp,
                                          session_rng)
from shiva_bids.synthetic.scanner import ScannerEffects, acquire

SHIVA_PERCENTILE = 99.0  # reference/SHIVA.md §5.7 (config `percentile`)
SHIVA_CLIP = 1.3  # reference/SHIVA.md §5.7
GAMMA_RANGE = (0.85, 1.2)  # per-contrast intensity gamma of model-space samples


@dataclass(frozen=True, eq=False)
class ModelSpaceSample:
    """Images (keys t1, flair, swi, t2; float32 in [0, 1]) and uint8 truth on one 1 mm grid.

    `affine` maps the sample's voxels to the (random) scanner mm of this sample.
    """

    images: dict[str, np.ndarray]
    brain_mask: np.ndarray
    masks: dict[str, np.ndarray]  # PVS, WMH, CMB, LAC
    affine: np.ndarray
    seed: int
    load: str


def shiva_normalise(image: np.ndarray, brain_mask: np.ndarray,
                    percentile: float = SHIVA_PERCENTILE) -> np.ndarray:
    """SHiVAi's normalisation (reference/SHIVA.md §5.7): NaN and negatives -> 0, divide by the
    99th percentile inside the brain mask, clip at 1.3, divide by 1.3."""
    x = np.nan_to_num(image.astype(np.float32, copy=False))
    np.maximum(x, 0, out=x)
    inside = x[brain_mask > 0]
    p = float(np.percentile(inside if inside.size else x, percentile))
    if p <= 0:
        return np.zeros_like(x)
    return (np.minimum(x / np.float32(p), SHIVA_CLIP) / np.float32(SHIVA_CLIP)).astype(
        np.float32)


def model_space_sample(seed: int, load: str = "mild",
                       shape: tuple[int, int, int] = SHIVA_MODEL_SHAPE) -> ModelSpaceSample:
    """One training pair on the 1 mm model grid (a few seconds).

    Each seed is an independent phantom participant (anatomy, lesions, pose, scanner effects).
    Seeds 0-999 are for tests and the demo, 1000-8999 for training, 9000+ for held-out
    evaluation (docs/synthetic.md).
    """
    participant = make_participant(seed, 0, load)
    rng = session_rng(seed, 0, 0)
    warp = make_warp(participant.shape, Pose.random(rng))
    # Brain centre +- a few mm, as SHiVAi's crop centres the box on the brain mask (§5.5).
    center = warp.pose.translation + rng.uniform(-3.0, 3.0, 3)
    grid = make_grid("RAS", (1.0, 1.0, 1.0), shape, center, "model space")
    sampled, labels = sample(participant.canvases, participant.labels, grid, warp)
    brain = ((labels & BRAIN_BIT) > 0).astype(np.uint8)
    images = {}
    for contrast in CONTRASTS:
        effects = ScannerEffects.random(rng)
        image_rng = np.random.default_rng(rng.integers(2 ** 63))
        # A random gamma varies tissue contrast between samples (training augmentation).
        gamma = np.float32(rng.uniform(*GAMMA_RANGE))
        raw = acquire(np.power(sampled[contrast], gamma), grid.zooms, effects, image_rng)
        images[contrast] = shiva_normalise(raw, brain)
    classes = labels & CLASS_BITS
    masks = {marker: (classes == MARKER_CLASS[marker]).astype(np.uint8)
             for marker in MARKER_NAMES}
    return ModelSpaceSample(images=images, brain_mask=brain, masks=masks, affine=grid.affine,
                            seed=seed, load=load)
