"""Random-weight checkpoints with the real dHCP variable names (tests, demo, benchmarks).

The real `.data` files are not public (reference/FETAL_DEEPMEDIC.md §3); these stand-ins have
the exact `net/` names and shapes, fan-in scaled kernels and BN statistics that keep the
activations in range, so every code path runs on them. They segment nothing meaningful.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shiva_bids.pipelines.fetal.network import variable_shapes


def random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Name -> float32 array for every `net/` variable."""
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for name, shape in variable_shapes().items():
        base = name.split("/")[1].rstrip("0123456789").rstrip("_")
        if base == "W":
            fan_in = int(np.prod(shape[1:]))
            value = rng.normal(0.0, np.sqrt(1.0 / fan_in), shape)
        elif base == "gBn":
            value = rng.uniform(0.8, 1.2, shape)
        elif base == "aPrelu":
            value = rng.uniform(0.01, 0.3, shape)
        elif base == "varBnsForRollingAverage":
            value = rng.uniform(0.5, 1.5, shape) * rng.uniform(0.5, 2.0, shape[1:])
        elif base == "muBnsForRollingAverage":
            value = rng.normal(0.0, 0.2, shape) + rng.normal(0.0, 0.3, shape[1:])
        else:  # b, bBn, sharedNew*
            value = rng.normal(0.0, 0.1, shape)
        weights[name] = value.astype(np.float32)
    return weights


def write_checkpoint(prefix: Path | str, weights: dict[str, np.ndarray]) -> Path:
    """Write a TF1 name-based checkpoint (`<prefix>.index` + `.data-00000-of-00001`)."""
    import tensorflow as tf

    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(weights)
    tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(weights[n]) for n in names])
    return prefix
