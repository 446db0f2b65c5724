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


class Conv3DAsConv2D(layers.Layer):
    """A 3x3x3 'same' convolution without bias, computed as one 2D convolution.

    The three neighbouring slices along X are stacked on the channel axis and convolved over
    (Y, Z) with the kernel reshaped to (3, 3, 3 C, filters): the same sum of products as
    `Conv3D` in another order (outputs agree to ~1e-5). TensorFlow's CPU Conv3D costs 1.4-2 s
    on the 160x216x176 grid whatever the channel count (2-12 here), the 2D form 0.6-0.9 s for the
    demo's 4-channel full-resolution layers (docs/demo.md). Weights have Conv3D's shape and
    name, so a trained model's weights load as they are; used for export only.
    """

    def __init__(self, filters: int, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, 3, input_shape[-1],
                                                            self.filters))

    def call(self, x):
        shape = tf.shape(x)
        padded = tf.pad(x, [[0, 0], [1, 1], [0, 0], [0, 0], [0, 0]])
        stacked = tf.concat([padded[:, :-2], padded[:, 1:-1], padded[:, 2:]], axis=-1)
        planes = tf.reshape(stacked, tf.concat([[-1], shape[2:4], [3 * x.shape[-1]]], 0))
        kernel = tf.reshape(tf.transpose(self.kernel, [1, 2, 0, 3, 4]),
                            (3, 3, 3 * x.shape[-1], self.filters))
        out = tf.nn.conv2d(planes, kernel, 1, "SAME")
        return tf.reshape(out, tf.concat([shape[:4], [self.filters]], 0))


def _conv(filters: int, name: str, inference: bool):
    if inference:
        return Conv3DAsConv2D(filters, name=name)
    return layers.Conv3D(filters, 3, padding="same", use_bias=False, name=name)


def _block(x, filters: int, name: str, inference: bool):
    for i in range(2):
        x = _conv(filters, f"{name}_conv{i}", inference)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("swish", name=f"{name}_swish{i}")(x)
    return x


def build_unet(spec: UNetSpec, name: str = "demo_unet", inference: bool = False) -> keras.Model:
    """The U-net for inputs of shape (n, X, Y, Z, channels) with X, Y, Z multiples of
    `spec.multiple`. `inference=True` builds the export twin: the same layers and weights, its
    3x3x3 convolutions computed as 2D convolutions (:class:`Conv3DAsConv2D`)."""
    inputs = keras.Input(shape=(None, None, None, spec.channels), name="input")
    x = inputs
    skips = []
    for level in range(spec.depth):
        x = _block(x, spec.base_filters * 2 ** level, f"down{level}", inference)
        if level < spec.depth - 1:
            skips.append(x)
            x = layers.MaxPooling3D(2, name=f"pool{level}")(x)
    for level in reversed(range(spec.depth - 1)):
        filters = spec.base_filters * 2 ** level
        x = layers.Conv3DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"concat{level}")([skips[level], x])
        x = _block(x, filters, f"dec{level}", inference)
    outputs = layers.Conv3D(1, 1, activation="sigmoid", dtype="float32", name="output")(x)
    return keras.Model(inputs, outputs, name=name)


def inference_twin(model: keras.Model, spec: UNetSpec) -> keras.Model:
    """`model` rebuilt with :class:`Conv3DAsConv2D` convolutions, its weights copied."""
    twin = build_unet(spec, name=model.name, inference=True)
    twin.set_weights(model.get_weights())
    return twin


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
