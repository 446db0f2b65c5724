"""Training data for the demo models: model-space phantoms and lesion-biased patches.

Each marker sees the channels of the published SHIVA model for it (reference/SHIVA.md §1.1,
`markers.MARKERS[...].default_modalities`): T1 for PVS, T1+FLAIR for WMH and LAC, SWI for CMB.
Phantoms come from :func:`shiva_bids.synthetic.model_space_sample`, already on the 160x214x176
grid and already normalised like SHIVA inputs.

Seed ranges (docs/demo.md): training phantoms use seeds 1000-8999, held-out evaluation uses
9000 and above, so no evaluation phantom was ever seen in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiva_bids.io import atomic_path
from shiva_bids.markers import MARKERS, SHIVA_MODEL_SHAPE

TRAIN_SEEDS = range(1000, 9000)
HELDOUT_SEEDS_START = 9000


@dataclass(frozen=True)
class Volume4D:
    """One phantom as the network sees it for one marker: (X, Y, Z, C) float32 and a 0/1 truth."""

    image: np.ndarray
    truth: np.ndarray
    brain: np.ndarray
    channels: tuple[str, ...]


def marker_channels(marker: str) -> tuple[str, ...]:
    """Channel names of `marker`'s model, in order (SHIVA.md §1.1)."""
    return MARKERS[marker].default_modalities


def phantom_for_marker(sample, marker: str) -> Volume4D:
    """Stack the channels of `marker` from a ``ModelSpaceSample`` and take its truth mask."""
    image = np.stack([np.asarray(sample.images[m], dtype=np.float32)
                      for m in marker_channels(marker)], axis=-1)
    return Volume4D(image, np.asarray(sample.masks[marker], dtype=np.uint8),
                    np.asarray(sample.brain_mask, dtype=np.uint8), marker_channels(marker))


@dataclass(frozen=True)
class Phantom:
    """The parts of a model-space phantom that training uses."""

    images: dict[str, np.ndarray]
    brain_mask: np.ndarray
    masks: dict[str, np.ndarray]


def make_phantom(seed: int, load: str, cache_dir: Path | None = None,
                 shape: tuple[int, int, int] = SHIVA_MODEL_SHAPE) -> Phantom:
    """The model-space phantom of `seed`, read from `cache_dir` when it was made before.

    Generating one takes seconds to tens of seconds on a busy CPU; training several markers
    in separate runs reuses the same phantoms through the cache.
    """
    cached = cache_dir / f"phantom_{seed}_{load}_{'x'.join(map(str, shape))}.npz" \
        if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached) as data:
            return Phantom({k[4:]: data[k] for k in data.files if k.startswith("img_")},
                           data["brain_mask"],
                           {k[5:]: data[k] for k in data.files if k.startswith("mask_")})
    from shiva_bids.synthetic import model_space_sample  # the generator of issue 3

    sample = model_space_sample(seed, load=load, shape=shape)
    phantom = Phantom(dict(sample.images), sample.brain_mask, dict(sample.masks))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cached) as tmp:
            np.savez(tmp, brain_mask=phantom.brain_mask,
                     **{f"img_{k}": v for k, v in phantom.images.items()},
                     **{f"mask_{k}": v for k, v in phantom.masks.items()})
    return phantom


def make_phantoms(seeds: list[int], loads: list[str], cache_dir: Path | None = None) -> list:
    """Model-space phantoms for `seeds`, cycling through the lesion `loads`."""
    return [make_phantom(seed, loads[i % len(loads)], cache_dir) for i, seed in enumerate(seeds)]


#: Hard negatives are non-lesion brain voxels whose first channel lies in this lowest fraction
#: of the brain's values: with T1 first (PVS, WMH, LAC) these are the CSF-like dark voxels
#: (ventricle borders, sulci, CSF pockets) that a lacune or PVS model most easily mistakes.
HARD_NEGATIVE_QUANTILE = 0.10


def dark_non_lesion_voxels(volume: Volume4D, quantile: float = HARD_NEGATIVE_QUANTILE) -> np.ndarray:
    """(N, 3) coordinates of brain, non-lesion voxels whose channel 0 is below its `quantile`."""
    brain = volume.brain > 0
    first = volume.image[..., 0]
    cutoff = np.quantile(first[brain], quantile)
    return np.argwhere(brain & (volume.truth == 0) & (first <= cutoff))


class PatchSampler:
    """Random training patches: near a lesion, on a CSF-like hard negative, or anywhere in the brain.

    Lesions are rare (a few hundred voxels in 6 M), so uniform patches would teach the network
    to predict nothing; lesion-centred patches (with a random offset), a fraction
    `lesion_fraction` of them, fix the class balance, the others (centred on brain voxels)
    teach it what is not a lesion. A fraction `hard_negative_fraction` is centred on dark
    non-lesion voxels (:func:`dark_non_lesion_voxels`), where false positives of cavity-like
    lesions gather. Random flips along each axis augment every kind.
    """

    def __init__(self, volumes: list[Volume4D], patch: int, lesion_fraction: float,
                 rng: np.random.Generator, hard_negative_fraction: float = 0.0):
        self.volumes = volumes
        self.patch = patch
        self.lesion_fraction = lesion_fraction
        self.hard_negative_fraction = hard_negative_fraction
        self.rng = rng
        self._lesion_voxels = [np.argwhere(v.truth > 0) for v in volumes]
        self._brain_voxels = [np.argwhere(v.brain > 0)[::7] for v in volumes]
        self._dark_voxels = [dark_non_lesion_voxels(v) if hard_negative_fraction > 0
                             else np.empty((0, 3), int) for v in volumes]

    def _corner(self, index: int) -> np.ndarray:
        volume = self.volumes[index]
        lesions, dark = self._lesion_voxels[index], self._dark_voxels[index]
        draw = self.rng.random()
        if len(lesions) and draw < self.lesion_fraction:
            centre = lesions[self.rng.integers(len(lesions))]
            centre = centre + self.rng.integers(-self.patch // 4, self.patch // 4 + 1, 3)
        elif len(dark) and draw < self.lesion_fraction + self.hard_negative_fraction:
            centre = dark[self.rng.integers(len(dark))]
        else:
            brain = self._brain_voxels[index]
            centre = brain[self.rng.integers(len(brain))]
        high = np.array(volume.truth.shape) - self.patch
        return np.clip(centre - self.patch // 2, 0, high)

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """`size` patches: images (size, p, p, p, C) and truths (size, p, p, p, 1), float32."""
        images, truths = [], []
        p = self.patch
        for _ in range(size):
            index = int(self.rng.integers(len(self.volumes)))
            x, y, z = self._corner(index)
            volume = self.volumes[index]
            image = volume.image[x:x + p, y:y + p, z:z + p]
            truth = volume.truth[x:x + p, y:y + p, z:z + p, None]
            flips = [axis for axis in range(3) if self.rng.random() < 0.5]
            if flips:
                image, truth = np.flip(image, flips), np.flip(truth, flips)
            images.append(image)
            truths.append(truth)
        return (np.ascontiguousarray(np.stack(images), dtype=np.float32),
                np.ascontiguousarray(np.stack(truths), dtype=np.float32))
