"""Train the demo fold ensembles on model-space phantoms and export them.

Reproducible from a seed: phantoms are generated from fixed seeds (training range 1000-8999,
:data:`shiva_bids.training.data.TRAIN_SEEDS`), every random draw (weights, patches, flips) comes
from generators seeded from `--seed`, and TensorFlow runs with deterministic ops.

Folds: the phantom pool is split K ways (K = `folds`); fold k trains on every part but part k
and reports its voxel Dice on part k, so the ensemble's members differ both in data and seed.
The loss is soft Dice + binary cross-entropy (a Dice-type loss for rare lesions, with BCE for
stable early gradients).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from shiva_bids.markers import MARKER_NAMES, MARKERS
from shiva_bids.training.data import PatchSampler, Volume4D, marker_channels
from shiva_bids.training.unet import UNetSpec, build_unet, predict_padded

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (all of it is written to the training log)."""

    seed: int = 1000
    markers: tuple[str, ...] = MARKER_NAMES
    folds: int = 2
    n_phantoms: int = 8
    loads: tuple[str, ...] = ("mild", "severe")
    patch: int = 48
    batch: int = 2
    steps: dict[str, int] = field(default_factory=lambda: {m: 300 for m in MARKER_NAMES})
    learning_rate: float = 2e-3
    lesion_fraction: float = 0.7
    base_filters: int = 8
    depth: int = 3

    def phantom_seeds(self) -> list[int]:
        """Seeds of the phantom pool: `seed`, `seed`+1, ... (all inside 1000-8999)."""
        return list(range(self.seed, self.seed + self.n_phantoms))


@dataclass
class FoldResult:
    """A trained fold and what happened while training it."""

    marker: str
    fold: int
    model: keras.Model
    spec: UNetSpec
    train_seeds: list[int]
    validation_seeds: list[int]
    seconds: float
    final_loss: float
    validation_dice: float


def dice_bce_loss(truth: tf.Tensor, prob: tf.Tensor) -> tf.Tensor:
    """Soft Dice over the whole batch plus mean binary cross-entropy."""
    smooth = 1.0
    intersection = tf.reduce_sum(truth * prob)
    dice = (2.0 * intersection + smooth) / (tf.reduce_sum(truth) + tf.reduce_sum(prob) + smooth)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(truth, prob))
    return (1.0 - dice) + bce


def split_folds(seeds: list[int], folds: int, fold: int) -> tuple[list[int], list[int]]:
    """(training seeds, validation seeds) of `fold` in a `folds`-way split of `seeds`."""
    validation = [s for i, s in enumerate(seeds) if i % folds == fold]
    return [s for s in seeds if s not in validation], validation


def _voxel_dice(prob: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    pred = prob > threshold
    denominator = pred.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2 * (pred & (truth > 0)).sum() / denominator)


def train_fold(marker: str, fold: int, volumes: dict[int, Volume4D],
               config: TrainConfig) -> FoldResult:
    """Train one fold of `marker` on the phantoms of its training split."""
    started = time.monotonic()
    train_seeds, validation_seeds = split_folds(sorted(volumes), config.folds, fold)
    run_seed = config.seed * 100 + MARKER_NAMES.index(marker) * 10 + fold
    keras.utils.set_random_seed(run_seed)
    spec = UNetSpec(len(marker_channels(marker)), config.base_filters, config.depth)
    model = build_unet(spec, name=f"demo_{marker.lower()}_fold{fold}")
    optimizer = keras.optimizers.Adam(config.learning_rate)
    sampler = PatchSampler([volumes[s] for s in train_seeds], config.patch,
                           config.lesion_fraction, np.random.default_rng(run_seed))

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = dice_bce_loss(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    steps = config.steps[marker]
    losses = []
    for i in range(steps):
        x, y = sampler.batch(config.batch)
        losses.append(float(step(tf.constant(x), tf.constant(y))))
        if (i + 1) % 50 == 0:
            log.info("%s fold %d step %d/%d loss %.4f (%.0f s)", marker, fold, i + 1, steps,
                     np.mean(losses[-50:]), time.monotonic() - started)
    dices = []
    for seed in validation_seeds[:2]:
        volume = volumes[seed]
        prob = predict_padded(model, tf.constant(volume.image[None]), spec.multiple)
        dices.append(_voxel_dice(prob.numpy()[0, ..., 0] * volume.brain, volume.truth,
                                 MARKERS[marker].threshold))
    result = FoldResult(marker, fold, model, spec, train_seeds, validation_seeds,
                        time.monotonic() - started, float(np.mean(losses[-50:])),
                        float(np.mean(dices)))
    log.info("%s fold %d done in %.0f s, validation voxel Dice %.3f", marker, fold,
             result.seconds, result.validation_dice)
    return result
