"""Demo-model training and export: reproducible, and loadable through the model layer."""
from __future__ import annotations

import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from shiva_bids.markers import SHIVA_MODEL_SHAPE  # noqa: E402
from shiva_bids.models import EnsemblePredictor, load_descriptor  # noqa: E402
from shiva_bids.training.data import (PatchSampler, Volume4D, dark_non_lesion_voxels,  # noqa: E402
                                      marker_channels)
from shiva_bids.training.export import (ModelSetName, export_savedmodel,  # noqa: E402
                                        load_savedmodel_weights, write_descriptor)
from shiva_bids.training.train import (TrainConfig, split_folds, train_fold,  # noqa: E402
                                       tversky_bce_loss)
from shiva_bids.training.unet import (UNetSpec, build_unet, inference_twin,  # noqa: E402
                                      predict_padded)


def _volumes(channels: int) -> dict[int, Volume4D]:
    rng = np.random.default_rng(0)
    volumes = {}
    for seed in (1000, 1001):
        truth = np.zeros((24, 26, 22), np.uint8)
        truth[8:12, 9:13, 7:10] = 1
        image = rng.uniform(0, 0.5, (*truth.shape, channels)).astype(np.float32)
        image[truth > 0] = 0.9
        volumes[seed] = Volume4D(image, truth, np.ones_like(truth), ("t1",) * channels)
    return volumes


def _config(**overrides) -> TrainConfig:
    base = dict(seed=1000, folds=2, n_phantoms=2, patch=16, batch=2,
                steps={"WMH": 3, "PVS": 3, "CMB": 3, "LAC": 3}, base_filters=2, depth=2)
    return TrainConfig(**(base | overrides))


def test_channels_per_marker_are_shiva_ones():
    # reference/SHIVA.md §1.1: T1 for PVS, T1+FLAIR for WMH and LAC, SWI for CMB
    assert marker_channels("PVS") == ("t1",)
    assert marker_channels("WMH") == ("t1", "flair")
    assert marker_channels("LAC") == ("t1", "flair")
    assert marker_channels("CMB") == ("swi",)


def test_folds_split_the_pool():
    seeds = list(range(1000, 1006))
    train0, val0 = split_folds(seeds, 2, 0)
    train1, val1 = split_folds(seeds, 2, 1)
    assert sorted(val0 + val1) == seeds and not set(val0) & set(val1)
    assert set(train0) == set(val1) and set(train1) == set(val0)


def test_patches_are_lesion_biased():
    volume = _volumes(1)[1000]
    sampler = PatchSampler([volume], 8, 1.0, np.random.default_rng(3))
    x, y = sampler.batch(6)
    assert x.shape == (6, 8, 8, 8, 1) and y.shape == (6, 8, 8, 8, 1)
    assert all(patch.sum() > 0 for patch in y)  # every patch sees some lesion


def test_hard_negative_patches_sit_on_dark_non_lesion_voxels():
    volume = _volumes(1)[1000]
    image = 0.3 + volume.image / 2.5  # background 0.3-0.5, lesion 0.66
    image[2:14, 14:26, 10:22, 0] = 0.0  # a CSF-like pocket (12.6 % of the brain), no lesion
    volume = Volume4D(image, volume.truth, volume.brain, volume.channels)
    pocket = np.zeros(volume.truth.shape, bool)
    pocket[2:14, 14:26, 10:22] = True
    dark = dark_non_lesion_voxels(volume)
    assert pocket[tuple(dark.T)].all() and len(dark) == pocket.sum()
    sampler = PatchSampler([volume], 4, 0.0, np.random.default_rng(3), hard_negative_fraction=1.0)
    x, y = sampler.batch(8)
    assert not y.any() and all((patch == 0).any() for patch in x)
    # without hard negatives the draws are those of the plain sampler (old runs repeat)
    plain = PatchSampler([volume], 4, 0.5, np.random.default_rng(5)).batch(4)
    again = PatchSampler([volume], 4, 0.5, np.random.default_rng(5), 0.0).batch(4)
    np.testing.assert_array_equal(plain[0], again[0])


def test_tversky_loss_is_dice_at_half_and_weights_false_positives_above():
    truth = tf.constant([[1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    prob = tf.constant([[0.9, 0.8, 0.6, 0.4, 0.0, 0.0]])
    tp, fp, fn = 1.7, 1.0, 0.3
    bce = float(tf.reduce_mean(tf.keras.losses.binary_crossentropy(truth, prob)))
    dice = (2 * tp + 1) / (2 * tp + fp + fn + 1)
    assert float(tversky_bce_loss(truth, prob)) == pytest.approx(1 - dice + bce, rel=1e-5)
    assert float(tversky_bce_loss(truth, prob, 0.5, 0.0)) == pytest.approx(1 - dice, rel=1e-5)
    # more false positives than false negatives here: weighting them raises the loss
    assert float(tversky_bce_loss(truth, prob, 0.7, 0.0)) > float(
        tversky_bce_loss(truth, prob, 0.5, 0.0))
    assert float(tversky_bce_loss(truth, prob, 0.7, 0.0)) == pytest.approx(
        1 - (tp + 0.5) / (tp + 0.3 * fn + 0.7 * fp + 0.5), rel=1e-5)


def test_training_is_reproducible():
    volumes = _volumes(2)
    first = train_fold("WMH", 0, volumes, _config())
    again = train_fold("WMH", 0, volumes, _config())
    other = train_fold("WMH", 1, volumes, _config(), start_from=first.model)
    for a, b in zip(first.model.get_weights(), again.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert other.train_seeds != first.train_seeds
    assert other.steps == round(3 * 0.5)  # a warm-started fold trains half the steps (default)
    assert not all(np.array_equal(a, b) for a, b in
                   zip(first.model.get_weights(), other.model.get_weights()))


def test_export_loads_through_the_model_layer(tmp_path):
    result = train_fold("CMB", 0, _volumes(1), _config())
    names = ModelSetName("CMB", ("swi",))
    fold = names.fold_name(result.spec, 0)
    export_savedmodel(result.model, result.spec, tmp_path / fold)
    # No XLA-compiled kernel in the serving graph (on CPU it made inference several times slower)
    assert b"_XlaMustCompile" not in (tmp_path / fold / "saved_model.pb").read_bytes()
    path = write_descriptor(tmp_path, names, result.spec, [fold], "21/11/2026")
    payload = json.loads(path.read_text())
    assert list(payload)[:6] == ["version", "release date", "author", "url", "target",
                                 "modalities"]
    assert payload["demo"] is True and payload["model_format"] == "SavedModel"
    descriptor = load_descriptor(path)
    assert descriptor.is_demo and descriptor.target == "CMB"
    predictor = EnsemblePredictor(descriptor, device="cpu", threads=2)
    assert tuple(predictor.input_shape[:3]) == SHIVA_MODEL_SHAPE and predictor.channels == 1
    image = np.zeros((*SHIVA_MODEL_SHAPE, 1), np.float32)
    image[40:44, 50:54, 60:63] = 0.9
    out = predictor.predict([image], [None])[0].mean
    expected = predict_padded(result.model, tf.constant(image[None]), result.spec.multiple)
    expected = expected.numpy()[0, ..., 0]
    expected[expected < 0.001] = 0
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # --init-from: an exported fold's weights come back into a fresh network
    restored = load_savedmodel_weights(build_unet(result.spec, name="again"), tmp_path / fold)
    for a, b in zip(result.model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_inference_twin_computes_the_same_network():
    """The export twin (3x3x3 convolutions as 2D convolutions over stacked X-neighbours) gives
    the plain network's output on random weights and inputs, per image of a batch of 2 (the
    stacking must not mix images or wrap around the X borders)."""
    spec = UNetSpec(channels=2, base_filters=3, depth=2)
    model = build_unet(spec, name="plain")
    rng = np.random.default_rng(5)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) if w.ndim > 1
                       else w.numpy() for w in model.weights])
    x = rng.random((2, 10, 12, 8, 2), dtype=np.float32)
    plain = model(x, training=False).numpy()
    twin = inference_twin(model, spec)(x, training=False).numpy()
    assert plain.std() > 0.01  # a non-trivial output
    np.testing.assert_allclose(twin, plain, atol=1e-4)  # float32 summation order
    alone = inference_twin(model, spec)(x[1:], training=False).numpy()
    np.testing.assert_allclose(alone[0], plain[1], atol=1e-4)
