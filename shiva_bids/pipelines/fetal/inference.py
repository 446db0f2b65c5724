"""Whole-volume inference exactly as DeepMedic v0.7.0 does it (reference/FETAL_DEEPMEDIC.md §5).

* :func:`zscore`: mean and population std over every voxel of the image (§5.1);
* :func:`pad_widths` / :func:`tile_starts` / :func:`tiles`: reflect padding by 8 (+ extra on the
  high side below 45), 45^3 segments with stride 29, the last one pulled back, z outermost then c
  then r, tiles whose input window holds no ROI voxel skipped (§5.2);
* :func:`subsampled_segment`: the strided x3/x5 inputs with DeepMedic's border quirk (§5.5);
* :func:`segment_volume`: batches through any predictor, later tiles overwrite earlier ones,
  uncovered voxels stay 0, unpadding, ROI masking of every map, argmax (§5.6).

The predictor is any callable from (normal, x3, x5) batches to probabilities, so the tiling can
be tested without the network.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from shiva_bids.pipelines.fetal.network import OUTPUT, RECEPTIVE_FIELD, SEGMENT, SUBSAMPLE_FACTORS, \
    subsampled_size

log = logging.getLogger(__name__)

HALF_RF = (RECEPTIVE_FIELD - 1) // 2  # 8: padding per side and output offset in a segment
Predictor = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# Extra peak memory per segment in a batch (activations of the 45^3 forward pass): peak RSS
# 1.42 GiB at 5 and 2.40 GiB at 16 segments per batch (benchmarks/bench_fetal.py), rounded up.
SEGMENT_MEMORY_GB = 0.1
DEFAULT_BATCH = 5  # batchSizeInfer of the dHCP test configs
# Larger batches did not run faster on the CPU (9.8 vs 8.5 s per segment at 16 vs 5), so 5 is
# also the most; a smaller memory budget gives smaller batches.
MAX_BATCH = DEFAULT_BATCH


@dataclass(frozen=True)
class Segmentation:
    """DeepMedic's outputs on the input grid: class probabilities (X, Y, Z, classes) and argmax."""

    probabilities: np.ndarray  # float32
    labels: np.ndarray  # int16
    tiles_run: int
    tiles_total: int


def zscore(data: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the whole image, background included, ddof 0 (§5.1), float32."""
    values = np.asarray(data, dtype=np.float64)
    std = values.std()
    if not np.isfinite(std) or std == 0:
        raise ValueError("the image is constant or not finite; it cannot be z-scored")
    return ((values - values.mean()) / std).astype(np.float32)


def pad_widths(shape: Sequence[int]) -> list[tuple[int, int]]:
    """8 voxels per side, plus extra on the high side where the padded size is still < 45."""
    return [(HALF_RF, HALF_RF + max(0, SEGMENT - (d + 2 * HALF_RF))) for d in shape]


def tile_starts(padded: int) -> list[int]:
    """Starts on one padded axis: 0, 29, 58, ... each window pulled back to end by `padded`."""
    starts: list[int] = []
    nominal = 0
    while True:
        end = min(nominal + SEGMENT, padded)
        starts.append(end - SEGMENT)
        if end == padded:
            return starts
        nominal += OUTPUT


def tiles(padded_shape: Sequence[int], padded_roi: np.ndarray | None = None
          ) -> tuple[list[tuple[int, int, int]], int]:
    """Tile starts (r, c, z) in DeepMedic's order (z outermost, r innermost), those without any
    ROI voxel in their 45^3 input window dropped; also returns the count before dropping."""
    rs, cs, zs = (tile_starts(d) for d in padded_shape)
    every = [(r, c, z) for z in zs for c in cs for r in rs]
    if padded_roi is None:
        return every, len(every)
    kept = [t for t in every if padded_roi[t[0]:t[0] + SEGMENT, t[1]:t[1] + SEGMENT,
                                           t[2]:t[2] + SEGMENT].any()]
    return kept, len(every)


def _axis_sampling(start: int, factor: int, length: int, size: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(source indices, destination slots) of one axis of a subsampled segment (§5.5)."""
    low = start + factor // 2 - ((factor - 1) // 2) * RECEPTIVE_FIELD
    lo, hi = max(low, 0), min(low + factor * size, length)
    source = np.arange(lo, hi, factor)  # quirk: from index 0 when low < 0, not low + f*k
    first = (-low) // factor if low < 0 else 0
    return source, np.arange(first, first + source.size)


def subsampled_segment(padded: np.ndarray, start: Sequence[int], factor: int,
                       fill: float) -> np.ndarray:
    """The x`factor` input of the tile starting at `start`: strided samples, the rest `fill`."""
    size = subsampled_size(factor)
    out = np.full((size, size, size), fill, dtype=np.float32)
    axes = [_axis_sampling(s, factor, d, size) for s, d in zip(start, padded.shape)]
    out[np.ix_(*(a[1] for a in axes))] = padded[np.ix_(*(a[0] for a in axes))]
    return out


def corner_mean(padded: np.ndarray) -> float:
    """Mean of the 8 corner voxels: the fill value of subsampled segments (§5.5)."""
    return float(padded[np.ix_(*([0, d - 1] for d in padded.shape))].mean())


def batch_size_for_memory(mem_gb: float | None) -> int:
    """Segments per batch: DeepMedic's 5 unless a memory budget (or the free memory) is too
    small; half the budget goes to activations. Results do not depend on the batch size."""
    budget = mem_gb if mem_gb is not None else _available_gb()
    if budget is None:
        return DEFAULT_BATCH
    return max(1, min(MAX_BATCH, int(0.5 * budget / SEGMENT_MEMORY_GB)))


def _available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024 ** 2
    except OSError:
        pass
    return None


def _progress(total: int, label: str):
    """A tqdm bar on a terminal, nothing otherwise (logs report progress instead)."""
    from tqdm import tqdm
    return tqdm(total=total, desc=label, unit="seg", disable=not sys.stderr.isatty(),
                leave=False, file=sys.stderr)


def segment_volume(normalised: np.ndarray, predict: Predictor, roi: np.ndarray | None = None,
                   batch_size: int = DEFAULT_BATCH, label: str = "DeepMedic") -> Segmentation:
    """Run `predict` over the whole (already normalised) 3-D volume as DeepMedic v0.7.0 does."""
    if normalised.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {normalised.shape}")
    widths = pad_widths(normalised.shape)
    padded = np.pad(normalised.astype(np.float32, copy=False), widths, mode="reflect")
    padded_roi = None if roi is None else np.pad(roi != 0, widths, mode="reflect")
    starts, total = tiles(padded.shape, padded_roi)
    fill = corner_mean(padded)
    probs = None
    log.info("%s: %d of %d segments, %d per batch", label, len(starts), total, batch_size)
    with _progress(len(starts), label) as bar:
        for first in range(0, len(starts), batch_size):
            batch = starts[first:first + batch_size]
            normal = np.stack([padded[r:r + SEGMENT, c:c + SEGMENT, z:z + SEGMENT]
                               for r, c, z in batch])[..., None]
            subs = [np.stack([subsampled_segment(padded, t, f, fill) for t in batch])[..., None]
                    for f in SUBSAMPLE_FACTORS]
            out = np.asarray(predict(normal, *subs))
            if probs is None:
                probs = np.zeros(padded.shape + out.shape[-1:], dtype=np.float32)
            for (r, c, z), tile in zip(batch, out):  # later tiles overwrite earlier ones
                probs[r + HALF_RF:r + HALF_RF + OUTPUT, c + HALF_RF:c + HALF_RF + OUTPUT,
                      z + HALF_RF:z + HALF_RF + OUTPUT] = tile
            bar.update(len(batch))
            if (first // batch_size) % 10 == 0:
                log.debug("%s: %d/%d segments", label, first + len(batch), len(starts))
    if probs is None:  # an empty ROI: nothing is segmented
        probs = np.zeros(padded.shape + (2,), dtype=np.float32)
    inner = tuple(slice(lo, lo + d) for (lo, _), d in zip(widths, normalised.shape))
    probs = probs[inner]
    if roi is not None:
        probs = probs * (roi != 0)[..., None].astype(np.float32)
    labels = np.argmax(probs, axis=-1).astype(np.int16)
    return Segmentation(np.ascontiguousarray(probs), labels, len(starts), total)


def set_threads(n: int) -> None:
    """Limit TensorFlow's intra-op threads (call before the first TF op)."""
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(min(2, n))
    except RuntimeError:  # already initialised: keep the current setting
        log.debug("TensorFlow threads already set")
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def segments_count(shape: Sequence[int]) -> int:
    """Number of 45^3 tiles for a volume of `shape` without an ROI (for estimates)."""
    return math.prod(len(tile_starts(d + sum(w))) for d, w in zip(shape, pad_widths(shape)))
