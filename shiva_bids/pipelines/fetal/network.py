"""A DeepMedic v0.7.0-compatible 3-pathway CNN in TensorFlow 2 (the dHCP BDN/CGM layout).

Architecture and test-time maths: reference/FETAL_DEEPMEDIC.md §2 (layers), §4 (variable names,
Bessel counts), §5.3 (one layer at test time) and §5.4 (segment geometry):

* normal pathway and two pathways fed with inputs subsampled x3 and x5, each 8 pre-activation
  layers (BN -> PReLU -> [dropout] -> 3^3 VALID conv; the first layer has a per-input-channel bias
  and a linear activation instead), residuals at layers 4, 6, 8;
* the subsampled outputs are upsampled by repetition and cropped from the start, concatenated
  with the normal one (150 channels), padded symmetrically by 1, then FC1 (3^3), FC2 (1^3, with
  a residual from FC1's unpadded input) and the classification layer (1^3), test-time dropout
  scaling x0.5 on the inputs of FC2 and of the classification layer, `b_3`, softmax;
* BN uses the 60 rolling means/variances with the v0.7.0 variance factor N/(N-1).

Variables are plain `tf.Variable`s named exactly as the checkpoints' `net/` entries (199 of
them, TF1 auto-numbering per base name), so a checkpoint is loaded tensor by tensor by name.
Arrays are channels-last (batch, r, c, z, channels) in the stored axis order of the image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from shiva_bids.errors import BadInputError
from shiva_bids.pipelines.fetal import checkpoint as ckpt

PATHWAY_FMS: tuple[int, ...] = (30, 30, 40, 40, 40, 40, 50, 50)
RESIDUAL_LAYERS: tuple[int, ...] = (4, 6, 8)  # 1-based, in each pathway
SUBSAMPLE_FACTORS: tuple[int, ...] = (3, 5)
FC_FMS: tuple[int, ...] = (250, 250)
N_CLASSES = 2
N_CHANNELS = 1
FC_DROPOUT: tuple[float, ...] = (0.0, 0.5, 0.5)  # FC1, FC2, classification
FC_RESIDUAL_LAYERS: tuple[int, ...] = (2,)  # 1-based among FC1, FC2, classification
KERNEL = 3
RECEPTIVE_FIELD = 1 + len(PATHWAY_FMS) * (KERNEL - 1)  # 17
SEGMENT = 45  # segmentsDimInference
OUTPUT = SEGMENT - RECEPTIVE_FIELD + 1  # 29 voxels per axis
ROLLING_BATCHES = 60
TRAIN_SEGMENT = 25
TRAIN_BATCH = 5
TRAIN_OUTPUT = TRAIN_SEGMENT - RECEPTIVE_FIELD + 1  # 9
BN_EPSILON = float(np.finfo(np.float32).tiny)  # §5.3: the smallest normal float32
BN_PARTS: tuple[str, ...] = ("gBn", "bBn", "aPrelu", "muBnsForRollingAverage",
                             "varBnsForRollingAverage", "sharedNewMu_B", "sharedNewVar_B")


def subsampled_size(factor: int, output: int = OUTPUT) -> int:
    """Input size of a subsampled pathway: 17 + ceil(out/f) - 1 (26 for x3, 22 for x5)."""
    return RECEPTIVE_FIELD + math.ceil(output / factor) - 1


@dataclass(frozen=True)
class LayerSpec:
    """One pre-activation layer and the names of its variables."""

    pathway: str  # "normal", "sub3", "sub5", "fc"
    number: int  # 1-based within its pathway (FC: 1 = FC1, 3 = classification)
    c_in: int
    c_out: int
    kernel: int
    weight: str  # name of W
    bias: str | None  # input bias (first pathway layer) else None
    bn: dict[str, str] | None  # BN/PReLU part -> variable name
    bessel_n: int  # N of the v0.7.0 variance factor (0 without BN)
    dropout: float
    residual: bool


def _train_input_size(pathway: str) -> int:
    """Per-axis input size of a pathway's first layer at training time (§4.1)."""
    if pathway == "normal":
        return TRAIN_SEGMENT
    return subsampled_size(int(pathway[3:]), TRAIN_OUTPUT)


def build_specs() -> tuple[LayerSpec, ...]:
    """Every layer in creation order, with TF1 auto-numbered variable names (§4)."""
    counts: dict[str, int] = {}

    def name(base: str) -> str:
        count = counts.get(base, 0)
        counts[base] = count + 1
        return f"net/{base}" if count == 0 else f"net/{base}_{count}"

    specs: list[LayerSpec] = []
    for pathway in ("normal", *(f"sub{f}" for f in SUBSAMPLE_FACTORS)):
        size = _train_input_size(pathway)
        c_in = N_CHANNELS
        for number, c_out in enumerate(PATHWAY_FMS, start=1):
            first = number == 1
            bias = name("b") if first else None
            bn = None if first else {part: name(part) for part in BN_PARTS}
            weight = name("W")
            specs.append(LayerSpec(pathway, number, c_in, c_out, KERNEL, weight, bias, bn,
                                   0 if first else TRAIN_BATCH * size ** 3, 0.0,
                                   number in RESIDUAL_LAYERS))
            size -= KERNEL - 1
            c_in = c_out
    c_in = PATHWAY_FMS[-1] * (1 + len(SUBSAMPLE_FACTORS))
    sizes = (TRAIN_OUTPUT + KERNEL - 1, TRAIN_OUTPUT, TRAIN_OUTPUT)  # FC1 input is padded
    for number, c_out in enumerate((*FC_FMS, N_CLASSES), start=1):
        kernel = KERNEL if number == 1 else 1
        bn = {part: name(part) for part in BN_PARTS}
        specs.append(LayerSpec("fc", number, c_in, c_out, kernel, name("W"), None, bn,
                               TRAIN_BATCH * sizes[number - 1] ** 3, FC_DROPOUT[number - 1],
                               number in FC_RESIDUAL_LAYERS))
        c_in = c_out
    return tuple(specs)


SPECS: tuple[LayerSpec, ...] = build_specs()
SOFTMAX_BIAS = "net/b_3"


def variable_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every `net/` variable (199), as the checkpoints hold them."""
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in SPECS:
        if spec.bias:
            shapes[spec.bias] = (spec.c_in,)
        if spec.bn:
            for part, var in spec.bn.items():
                rolling = part.endswith("ForRollingAverage")
                shapes[var] = (ROLLING_BATCHES, spec.c_in) if rolling else (spec.c_in,)
        shapes[spec.weight] = (spec.c_out, spec.c_in, spec.kernel, spec.kernel, spec.kernel)
    shapes[SOFTMAX_BIAS] = (N_CLASSES,)
    return shapes


def _crop_to(source: tf.Tensor, size: int) -> tf.Tensor:
    """Centre crop of a (B, S, S, S, C) tensor to size^3, start (S-1)//2 - (s-1)//2 (§5.3)."""
    start = (source.shape[1] - 1) // 2 - (size - 1) // 2
    return source[:, start:start + size, start:start + size, start:start + size, :]


def _add_residual(output: tf.Tensor, source: tf.Tensor) -> tf.Tensor:
    """output + centre-cropped source, its missing channels being zeros appended at the end."""
    cropped = _crop_to(source, output.shape[1])
    extra = output.shape[-1] - cropped.shape[-1]
    if extra:
        cropped = tf.pad(cropped, [[0, 0]] * 4 + [[0, extra]])
    return output + cropped


def _upsample(features: tf.Tensor, factor: int, size: int) -> tf.Tensor:
    """Repeat every voxel `factor` times per axis; keep the first `size` (crop from the start)."""
    for axis in (1, 2, 3):
        features = tf.repeat(features, factor, axis=axis)
    return features[:, :size, :size, :size, :]


class DeepMedicNet(tf.Module):
    """The dHCP DeepMedic network; call it on (normal, x3, x5) input segments.

    `net(normal, sub3, sub5)` takes float32 arrays of shape (B, 45, 45, 45, 1), (B, 26, 26, 26, 1)
    and (B, 22, 22, 22, 1) and returns class probabilities (B, 29, 29, 29, 2). Other segment
    sizes work the same way (output = segment - 16, subsampled inputs per :func:`subsampled_size`).
    """

    def __init__(self):
        super().__init__(name=None)
        self.vars: dict[str, tf.Variable] = {}
        for name, shape in variable_shapes().items():
            self.vars[name] = tf.Variable(tf.zeros(shape, tf.float32), name=name, trainable=False)
        self._forward = tf.function(self._call, reduce_retracing=True)

    def load(self, prefix: Path | str, verify: bool = True) -> "DeepMedicNet":
        """Load every `net/` tensor by name from a TF1 checkpoint, after checking its layout,
        its data file's size and (with `verify`) every tensor's CRC32C."""
        index = ckpt.read_index(prefix)
        check_layout(index)
        ckpt.verify_data(index, checksums=verify)
        reader = tf.train.load_checkpoint(str(prefix))
        for name, var in self.vars.items():
            try:
                var.assign(reader.get_tensor(name))
            except (tf.errors.OpError, RuntimeError) as exc:  # TF checks each tensor's CRC too
                reason = str(exc).splitlines()[0].split("): ", 1)[-1]
                raise BadInputError(f"{index.data_path}: cannot read {name} ({reason})") from exc
        return self

    def __call__(self, normal, sub3, sub5) -> tf.Tensor:
        return self._forward(tf.convert_to_tensor(normal, tf.float32),
                             tf.convert_to_tensor(sub3, tf.float32),
                             tf.convert_to_tensor(sub5, tf.float32))

    # -- layer maths (§5.3) -------------------------------------------------------------
    def _bn_prelu(self, x: tf.Tensor, spec: LayerSpec) -> tf.Tensor:
        v = {part: self.vars[name] for part, name in spec.bn.items()}
        mean = tf.reduce_mean(v["muBnsForRollingAverage"], axis=0)
        factor = spec.bessel_n / (spec.bessel_n - 1)
        var = factor * tf.reduce_mean(v["varBnsForRollingAverage"], axis=0)
        x = v["gBn"] * (x - mean) / tf.sqrt(var + BN_EPSILON) + v["bBn"]
        return tf.maximum(x, 0.0) + v["aPrelu"] * tf.minimum(x, 0.0)

    def _layer(self, x: tf.Tensor, spec: LayerSpec) -> tf.Tensor:
        """Pre-activation: bias (first layer, linear) or BN -> PReLU; dropout scaling; conv."""
        x = x + self.vars[spec.bias] if spec.bias else self._bn_prelu(x, spec)
        if spec.dropout:
            x = x * (1.0 - spec.dropout)
        kernel = tf.transpose(self.vars[spec.weight], (2, 3, 4, 1, 0))  # -> r, c, z, in, out
        return tf.nn.conv3d(x, kernel, strides=[1] * 5, padding="VALID")  # cross-correlation

    def _stack(self, x: tf.Tensor, specs: list[LayerSpec]) -> tf.Tensor:
        """Run a pathway's layers in order, residuals from the input of the previous layer."""
        inputs: list[tf.Tensor] = []
        for spec in specs:
            inputs.append(x)
            y = self._layer(x, spec)
            if spec.residual:
                y = _add_residual(y, inputs[-2])
            x = y
        return x

    def _call(self, normal, sub3, sub5) -> tf.Tensor:
        by_path = {p: [s for s in SPECS if s.pathway == p]
                   for p in ("normal", "sub3", "sub5", "fc")}
        features = self._stack(normal, by_path["normal"])
        size = features.shape[1]
        concat = tf.concat([features] + [_upsample(self._stack(x, by_path[f"sub{f}"]), f, size)
                                         for f, x in zip(SUBSAMPLE_FACTORS, (sub3, sub5))],
                           axis=-1)
        fc1, fc2, fc3 = by_path["fc"]
        padded = tf.pad(concat, [[0, 0], [1, 1], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        x = self._layer(padded, fc1)
        x = _add_residual(self._layer(x, fc2), concat)  # FC2's residual: FC1's unpadded input
        scores = self._layer(x, fc3) + self.vars[SOFTMAX_BIAS]
        return tf.nn.softmax(scores, axis=-1)


def check_layout(index: ckpt.CheckpointIndex) -> None:
    """The index must hold every `net/` variable with the dHCP shape and dtype (§4)."""
    where = index.index_path
    for name, shape in variable_shapes().items():
        entry = index.entries.get(name)
        if entry is None:
            raise BadInputError(f"{where}: no variable {name}; not a checkpoint of the dHCP "
                                "DeepMedic network")
        if entry.shape != shape or entry.dtype != np.float32:
            raise BadInputError(f"{where}: {name} is {entry.dtype}{list(entry.shape)}, the dHCP "
                                f"DeepMedic network needs float32{list(shape)}")
