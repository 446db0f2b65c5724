"""Tiny SHIVA-like models for tests, demos and end-to-end runs (not for research).

A few hundred parameters: a one-level 3D U-net (conv + BN + swish, max-pool, conv, upsample,
skip, conv, 1x1x1 sigmoid head) whose swish is a `Lambda` calling `tf`, like the published
`.h5` models. Fully convolutional: any grid works (the pooling level is dropped when a side is
odd). Weights are drawn from a seeded generator, so the same seed gives the same model in every
format: a Keras 3 model (exported as a SavedModel with a `serve` endpoint, or saved `.keras`)
and a tf_keras twin (saved as legacy `.h5`) carry identical weights.
"""
from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from shiva_bids.models.checksums import md5_of_path
from shiva_bids.models.descriptors import DESCRIPTOR_GLOB, format_of_name

FORMAT_SUFFIX = {"savedmodel": ".tf_inference", "keras": ".keras", "h5": ".h5"}
HEAD_GAIN = 8.0  # spreads the output logits over ~5 units, so maps are not near-constant
FORMAT_NAME = {"savedmodel": "SavedModel", "keras": "keras", "h5": "h5"}


def tf_swish(x):
    """x * sigmoid(x) written with `tf` (module-level so Keras 3 serialises it by name)."""
    return x * tf.math.sigmoid(x)


def _build(kx: Any, shape: Sequence[int], channels: int, base: int) -> Any:
    layers = kx.layers
    inp = layers.Input(shape=(*shape, channels), name="image")
    enc = layers.Conv3D(base, 3, padding="same", name="enc_conv")(inp)
    enc = layers.BatchNormalization(name="enc_bn")(enc)
    enc = layers.Lambda(tf_swish, name="enc_swish")(enc)
    if all(int(s) % 2 == 0 for s in shape):
        mid = layers.MaxPooling3D(2, name="down")(enc)
        mid = layers.Conv3D(2 * base, 3, padding="same", name="mid_conv")(mid)
        mid = layers.Lambda(tf_swish, name="mid_swish")(mid)
        enc = layers.Concatenate(name="skip")([enc, layers.UpSampling3D(2, name="up")(mid)])
    dec = layers.Conv3D(base, 3, padding="same", name="dec_conv")(enc)
    dec = layers.Lambda(tf_swish, name="dec_swish")(dec)
    out = layers.Conv3D(1, 1, activation="sigmoid", name="head", dtype="float32")(dec)
    return kx.Model(inp, out, name="tiny_unet")


def _seeded_weights(model: Any, seed: int, out_bias: float) -> None:
    """Deterministic weights by layer order (identical in Keras 3 and tf_keras twins)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        current = layer.get_weights()
        if not current:
            continue
        if len(current) == 4:  # BatchNormalization: gamma, beta, moving mean, moving variance
            n = current[0].shape
            new = [1 + 0.1 * rng.standard_normal(n), 0.1 * rng.standard_normal(n),
                   0.1 * rng.standard_normal(n), 1 + 0.2 * rng.random(n)]
        else:
            kernel, bias = current
            fan_in = int(np.prod(kernel.shape[:-1]))
            gain = HEAD_GAIN if layer.name == "head" else 1.0
            new = [rng.standard_normal(kernel.shape) * gain * np.sqrt(2.0 / fan_in),
                   np.full(bias.shape, out_bias) if layer.name == "head"
                   else 0.05 * rng.standard_normal(bias.shape)]
        layer.set_weights([w.astype(np.float32) for w in new])


def tiny_unet(shape: Sequence[int], channels: int, seed: int = 0, out_bias: float = -4.0,
              base: int = 2, legacy: bool = False, mixed_precision: bool = False) -> Any:
    """A tiny U-net; `legacy` builds it with tf_keras (for `.h5`), else with Keras 3.

    `out_bias` is the head's bias: around -4 a fair share of the sigmoid outputs fall below
    SHIVA's 0.001 per-fold cut. `mixed_precision` (tf_keras only) builds under mixed_float16.
    """
    if legacy:
        import tf_keras as kx
    else:
        import keras as kx
    if mixed_precision:
        kx.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _build(kx, shape, channels, base)
    finally:
        if mixed_precision:
            kx.mixed_precision.set_global_policy("float32")
    _seeded_weights(model, seed, out_bias)
    return model


def save_tiny_model(path: Path, fmt: str, shape: Sequence[int], channels: int, seed: int = 0,
                    out_bias: float = -4.0, mixed_precision: bool = False) -> Path:
    """Save a tiny model: fmt "savedmodel" (folder, `serve` endpoint), "keras" or "h5"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "h5":
        tiny_unet(shape, channels, seed, out_bias, legacy=True,
                  mixed_precision=mixed_precision).save(path)
    elif fmt == "keras":
        tiny_unet(shape, channels, seed, out_bias).save(path)
    elif fmt == "savedmodel":
        tiny_unet(shape, channels, seed, out_bias).export(str(path), format="tf_saved_model",
                                                          verbose=False)
    else:
        raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMAT_SUFFIX)})")
    return path


def write_descriptor(folder: Path, fold_paths: Sequence[Path], marker: str,
                     modalities: Sequence[str], version: str = "v0", demo: bool = False,
                     description: str | None = None, name: str | None = None,
                     script: Path | None = None, **keys: Any) -> Path:
    """Write a published-style `model_info*.json` for fold files under `folder`."""
    data: dict[str, Any] = {
        "version": version, "release date": "01/01/2026", "author": "shiva-bids tests",
        "url": "https://example.invalid/tiny", "target": marker,
        "modalities": list(modalities),
        "files": [{"name": p.relative_to(folder).as_posix(), "md5": md5_of_path(p)}
                  for p in fold_paths],
        **keys,
    }
    if script is not None:
        data["script"] = {"name": script.relative_to(folder).as_posix(),
                          "md5": md5_of_path(script)}
    if demo:
        data["demo"] = True
    if description:
        data["description"] = description
    path = folder / (name or f"model_info_{'-'.join(modalities)}-{marker.lower()}-{version}.json")
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def write_tiny_model_folder(root: Path, marker: str, modalities: Sequence[str],
                            n_folds: int = 2, shape: Sequence[int] = (160, 214, 176),
                            fmt: str = "savedmodel", version: str = "v0", seed: int = 0,
                            out_bias: float = -4.0, demo: bool = False,
                            description: str | None = None) -> Path:
    """A valid models folder `root/<MODALITIES>-<MARKER>/` with `n_folds` tiny folds.

    Returns the descriptor path. Fold i is seeded with `seed + i`; any grid `shape` works.
    """
    folder = Path(root) / f"{'.'.join(m.upper() for m in modalities)}-{marker}"
    suffix = FORMAT_SUFFIX[fmt]
    folds = [save_tiny_model(folder / f"tiny_{marker.lower()}_fold_{i}{suffix}", fmt, shape,
                             len(modalities), seed + i, out_bias) for i in range(n_folds)]
    script = write_script(folder / "tiny_layers.py") if fmt == "keras" else None
    return write_descriptor(folder, folds, marker, modalities, version, demo, description,
                            script=script, architecture="tiny-unet",
                            model_format=FORMAT_NAME[fmt])


def write_script(path: Path) -> Path:
    """The descriptor `script` of a tiny `.keras` model: it defines `tf_swish` (SHIVA.md §2.1:
    `.keras` models name one `.py` file holding their custom objects)."""
    path.write_text(f"import tensorflow as tf\n\n\n{inspect.getsource(tf_swish)}",
                    encoding="utf-8")
    return path


def write_threshold_mask_model(root: Path, threshold: float, gain: float = 40.0,
                               shape: Sequence[int] = (160, 214, 176)) -> Path:
    """A stand-in for the SHIVA brain-mask model in its published format (`.keras` + `script`,
    target "brain_mask", SHIVA.md §2.2): one 1x1x1 convolution, sigmoid(gain (x - threshold)),
    i.e. "brain" wherever the normalised intensity exceeds `threshold`. Returns the descriptor.
    """
    import keras

    folder = Path(root) / "brainmask"
    folder.mkdir(parents=True, exist_ok=True)
    inp = keras.layers.Input(shape=(*shape, 1), name="image")
    out = keras.layers.Conv3D(1, 1, activation="sigmoid", name="head")(inp)
    model = keras.Model(inp, out, name="threshold_mask")
    model.get_layer("head").set_weights([np.full((1, 1, 1, 1, 1), gain, np.float32),
                                         np.full((1,), -gain * threshold, np.float32)])
    fold = folder / "threshold_brainmask_fold_0.keras"
    model.save(fold)
    return write_descriptor(folder, [fold], "brain_mask", ["t1"],
                            script=write_script(folder / "tiny_layers.py"),
                            name="model_info_brainmask.json")


def write_published_standins(root: Path, published: Path, shape: Sequence[int],
                             seed: int = 0, out_bias: float = -4.0) -> list[Path]:
    """Every published descriptor in `published` (a folder of `model_info*.json`) unzipped
    side by side into `root`, with a tiny stand-in network at each fold's published name.

    Descriptors land in `root` itself, folds at their published relative paths, as the
    releases' zips unpacked into one models folder. One tiny model per (format, channel count)
    is copied to every fold of that kind; each descriptor's md5s are rewritten to the
    stand-ins', except where the published descriptor lists none (PVS v3), which stays so.
    Returns the descriptor paths.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        templates: dict[tuple[str, int], Path] = {}
        for source in sorted(Path(published).glob(DESCRIPTOR_GLOB)):
            data = json.loads(source.read_text(encoding="utf-8"))
            channels = len(data["modalities"])
            for entry in data["files"]:
                fmt = {"SavedModel": "savedmodel"}.get(format_of_name(entry["name"]), "h5")
                key = (fmt, channels)
                if key not in templates:
                    templates[key] = save_tiny_model(
                        Path(scratch) / f"{fmt}_{channels}{FORMAT_SUFFIX[fmt]}", fmt, shape,
                        channels, seed, out_bias)
                fold = root / entry["name"]
                if not fold.exists():
                    fold.parent.mkdir(parents=True, exist_ok=True)
                    copy = shutil.copytree if templates[key].is_dir() else shutil.copyfile
                    copy(templates[key], fold)
                if "md5" in entry:
                    entry["md5"] = md5_of_path(fold)
            target = root / source.name
            target.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
            written.append(target)
    return written
