"""A small 3D U-net of the SHIVA family, for the bundled demo models.

The published SHIVA networks (reference/SHIVA.md §2.2: "Unet3Dv2-10.7.2-1.8",
"ResUnet3D-8.9.2-1.5") are 3D U-nets on the 160x214x176 model grid, channels last, with one
sigmoid output channel (§3). This one keeps that interface (same grid, same channels per marker)
but is scaled down so that it trains on two CPU cores: blocks of two 3x3x3 convolutions + batch
normalisation + swish, `base_filters` doubling per level, max-pooling down and transposed
convolutions up. It is fully convolutional, so it trains on patches and is exported with the
fixed SHIVA input signature.

Axis 1 of the SHIVA grid (214) is only divisible by 2 once, so :func:`pad_to_multiple` pads every
spatial axis to a multiple of ``2 ** (depth - 1)`` and the prediction is cropped back; the
exported `serve` endpoint does the same (see :mod:`shiva_bids.training.export`).
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers


@dataclass(frozen=True)
class UNetSpec:
    """Shape of the network: input channels, filters of the first level, number of levels."""

    channels: int
    base_filters: int = 8
    depth: int = 3

    @property
    def architecture(self) -> str:
        """Identifier written in the descriptor, in the style of the SHIVA names (§2.2)."""
        return f"DemoUnet3D-{self.base_filters}.{self.depth}.2"

    @property
    def multiple(self) -> int:
        """Spatial sizes the network accepts must be multiples of this."""
        return 2 ** (self.depth - 1)


def _block(x, filters: int, name: str):
    for i in range(2):
        x = layers.Conv3D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("swish", name=f"{name}_swish{i}")(x)
    return x


def build_unet(spec: UNetSpec, name: str = "demo_unet") -> keras.Model:
    """The U-net for inputs of shape (n, X, Y, Z, channels) with X, Y, Z multiples of `spec.multiple`."""
    inputs = keras.Input(shape=(None, None, None, spec.channels), name="input")
    x = inputs
    skips = []
    for level in range(spec.depth):
        x = _block(x, spec.base_filters * 2 ** level, f"down{level}")
        if level < spec.depth - 1:
            skips.append(x)
            x = layers.MaxPooling3D(2, name=f"pool{level}")(x)
    for level in reversed(range(spec.depth - 1)):
        filters = spec.base_filters * 2 ** level
        x = layers.Conv3DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"concat{level}")([skips[level], x])
        x = _block(x, filters, f"dec{level}")
    outputs = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def pad_to_multiple(x: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Zero-pad the spatial axes of a (n, X, Y, Z, C) tensor at their end to multiples of `multiple`.

    Returns the padded tensor and the original spatial shape (to crop the output back). The
    channel count stays static: with an unknown channel axis, Keras routes the first convolution
    through an XLA-compiled kernel (its grouped-convolution path), which on CPU made an
    inference pass of the exported `serve` endpoint 10.0 s instead of 7.0 s (demo folds).
    """
    spatial = tf.shape(x)[1:4]
    pad_after = (-spatial) % multiple
    paddings = tf.stack([tf.zeros(5, tf.int32),
                         tf.concat([[0], pad_after, [0]], axis=0)], axis=1)
    padded = tf.pad(x, paddings)
    padded.set_shape([None, None, None, None, x.shape[-1]])
    return padded, spatial


def predict_padded(model: keras.Model, x: tf.Tensor, multiple: int) -> tf.Tensor:
    """Run `model` (inference mode) on any spatial size: pad, predict, crop back."""
    padded, spatial = pad_to_multiple(x, multiple)
    y = model(padded, training=False)
    return y[:, :spatial[0], :spatial[1], :spatial[2], :]
