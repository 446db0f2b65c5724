"""Train the demo fold ensembles on model-space phantoms and export them.

Reproducible from a seed: phantoms are generated from fixed seeds (training range 1000-8999,
:data:`shiva_bids.training.data.TRAIN_SEEDS`), every random draw (weights, patches, flips) comes
from generators seeded from `--seed`, and TensorFlow runs with deterministic ops.

Folds: the phantom pool is split K ways (K = `folds`); fold k trains on every part but part k
with its own seed, so the ensemble's members differ both in data and in random draws. To fit
the CPU budget, folds after the first start from the first fold's weights and train for
`warm_start_fraction` of the steps (0 trains every fold from scratch); held-out accuracy is
measured separately on seeds >= 9000 (docs/demo.md).
The loss is a soft Tversky index + weighted binary cross-entropy (a Dice-type loss for rare
lesions, with BCE for stable early gradients); with the defaults (`fp_weight` 0.5, `bce_weight`
1) the Tversky index is the soft Dice. `fp_weight` > 0.5 penalises false positives more than
false negatives (used for the LAC demo model, docs/demo.md).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from shiva_bids.markers import MARKER_NAMES
from shiva_bids.training.data import PatchSampler, Volume4D, marker_channels
from shiva_bids.training.unet import UNetSpec, build_unet

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
    hard_negative_fraction: float = 0.0  # patches centred on CSF-like dark non-lesion voxels
    fp_weight: float = 0.5  # Tversky weight of false positives (false negatives: 1 - it)
    bce_weight: float = 1.0
    warm_start_fraction: float = 0.5
    max_seconds: tuple[float, ...] | None = None  # per fold: stop a fold early after this
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
    steps: int
    seconds: float
    final_loss: float


def tversky_bce_loss(truth: tf.Tensor, prob: tf.Tensor, fp_weight: float = 0.5,
                     bce_weight: float = 1.0) -> tf.Tensor:
    """(1 - soft Tversky index over the whole batch) + `bce_weight` x mean cross-entropy.

    Tversky index = TP / (TP + (1 - fp_weight) FN + fp_weight FP); at `fp_weight` 0.5 it is the
    soft Dice 2TP / (2TP + FN + FP) (both with a smoothing term of 1 in Dice units).
    """
    smooth = 0.5
    tp = tf.reduce_sum(truth * prob)
    fp = tf.reduce_sum((1.0 - truth) * prob)
    fn = tf.reduce_sum(truth * (1.0 - prob))
    tversky = (tp + smooth) / (tp + (1.0 - fp_weight) * fn + fp_weight * fp + smooth)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(truth, prob))
    return (1.0 - tversky) + bce_weight * bce


def split_folds(seeds: list[int], folds: int, fold: int) -> tuple[list[int], list[int]]:
    """(training seeds, validation seeds) of `fold` in a `folds`-way split of `seeds`."""
    validation = [s for i, s in enumerate(seeds) if i % folds == fold]
    return [s for s in seeds if s not in validation], validation


def train_fold(marker: str, fold: int, volumes: dict[int, Volume4D], config: TrainConfig,
               start_from: keras.Model | None = None) -> FoldResult:
    """Train one fold of `marker` on the phantoms of its training split.

    With `start_from` (the first fold), its weights are the starting point and the fold trains
    for `config.warm_start_fraction` of the marker's steps.
    """
    started = time.monotonic()
    train_seeds, validation_seeds = split_folds(sorted(volumes), config.folds, fold)
    run_seed = config.seed * 100 + MARKER_NAMES.index(marker) * 10 + fold
    keras.utils.set_random_seed(run_seed)
    spec = UNetSpec(len(marker_channels(marker)), config.base_filters, config.depth)
    model = build_unet(spec, name=f"demo_{marker.lower()}_fold{fold}")
    steps = config.steps[marker]
    if start_from is not None and config.warm_start_fraction > 0:
        model.set_weights(start_from.get_weights())
        steps = max(1, round(steps * config.warm_start_fraction))
    optimizer = keras.optimizers.Adam(config.learning_rate)
    sampler = PatchSampler([volumes[s] for s in train_seeds], config.patch,
                           config.lesion_fraction, np.random.default_rng(run_seed),
                           config.hard_negative_fraction)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = tversky_bce_loss(y, model(x, training=True), config.fp_weight,
                                    config.bce_weight)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = []
    budget = config.max_seconds[min(fold, len(config.max_seconds) - 1)] \
        if config.max_seconds else float("inf")
    for i in range(steps):
        if time.monotonic() - started > budget:
            log.warning("%s fold %d: time budget of %.0f s reached after %d steps", marker,
                        fold, budget, i)
            steps = i
            break
        x, y = sampler.batch(config.batch)
        losses.append(float(step(tf.constant(x), tf.constant(y))))
        if (i + 1) % 50 == 0:
            log.info("%s fold %d step %d/%d loss %.4f (%.0f s)", marker, fold, i + 1, steps,
                     np.mean(losses[-50:]), time.monotonic() - started)
    result = FoldResult(marker, fold, model, spec, train_seeds, validation_seeds, steps,
                        time.monotonic() - started, float(np.mean(losses[-50:])))
    log.info("%s fold %d: %d steps in %.0f s, final loss %.4f", marker, fold, steps,
             result.seconds, result.final_loss)
    return result
