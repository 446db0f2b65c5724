"""Segmentation accuracy against reference masks, as in the SHIVA PVS paper.

Two levels (the metrics the SHIVA papers report):
- voxel level: Dice of the binarised prediction and the reference mask;
- cluster level: clusters are 26-connected components (the SHIVA cluster rule,
  reference/SHIVA.md §8). A reference cluster is *found* when it overlaps a predicted cluster;
  a predicted cluster is *correct* when it overlaps a reference cluster. Recall = found /
  reference clusters, precision = correct / predicted clusters, F1 their harmonic mean.

Predictions are binarised with the strict `prob > threshold` rule and predicted clusters smaller
than `min_size` voxels are dropped first, exactly as the pipeline does (§8). Sweeping the
threshold (0.1-0.9) and the minimum size gives the tables users want to pick their settings.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from shiva_bids.volume import bounding_box

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_CONNECTIVITY_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class Scores:
    """Voxel and cluster agreement of one binary prediction with one reference mask."""

    voxel_dice: float
    n_reference: int  # reference clusters
    n_predicted: int  # predicted clusters (after the size filter)
    found: int  # reference clusters overlapped by a predicted cluster
    correct: int  # predicted clusters overlapping a reference cluster

    @property
    def recall(self) -> float:
        return 1.0 if self.n_reference == 0 else self.found / self.n_reference

    @property
    def precision(self) -> float:
        return 1.0 if self.n_predicted == 0 else self.correct / self.n_predicted

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def label_clusters(mask: np.ndarray, min_size: int = 1) -> tuple[np.ndarray, int]:
    """26-connected clusters of `mask` with at least `min_size` voxels, numbered 1..n."""
    labels, n = ndimage.label(mask > 0, structure=_CONNECTIVITY_26)
    if min_size > 1 and n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_size
        keep[0] = False
        remap = np.zeros(n + 1, dtype=np.int32)
        remap[keep] = np.arange(1, int(keep.sum()) + 1)
        labels, n = remap[labels], int(keep.sum())
    return labels, n


def voxel_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two binary masks; 1.0 when both are empty (nothing to find, nothing found)."""
    pred, ref = prediction > 0, reference > 0
    total = int(pred.sum()) + int(ref.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & ref).sum()) / total


def _check_same_grid(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} "
                         "are not on the same grid")


def score_masks(prediction: np.ndarray, reference: np.ndarray, min_size: int = 1,
                reference_labels: tuple[np.ndarray, int] | None = None) -> Scores:
    """Voxel Dice and cluster detection of a binary `prediction` against `reference`.

    `min_size` filters the predicted clusters; the reference is taken as it is.
    `reference_labels` lets a caller reuse the reference's clusters across a sweep.
    """
    _check_same_grid(prediction, reference)
    pred_labels, n_pred = label_clusters(prediction, min_size)
    ref_labels, n_ref = reference_labels or label_clusters(reference)
    overlap = (pred_labels > 0) & (ref_labels > 0)
    found = np.unique(ref_labels[overlap]).size
    correct = np.unique(pred_labels[overlap]).size
    return Scores(voxel_dice(pred_labels > 0, reference), n_ref, n_pred, found, correct)


def threshold_sweep(probability: np.ndarray, reference: np.ndarray,
                    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS,
                    min_sizes: tuple[int, ...] = (1,)) -> list[tuple[float, int, Scores]]:
    """Scores of `probability > t` for every threshold t and predicted-cluster minimum size.

    Everything outside the bounding box of the reference and of `probability > min(t)` is zero
    at every threshold, so the sweep runs on that box only (same scores, labelling a box
    instead of the whole volume: ~10x faster on native-space maps)."""
    _check_same_grid(probability, reference)
    box = bounding_box((probability > min(thresholds)) | (reference > 0))
    probability, reference = probability[box], reference[box]
    reference_labels = label_clusters(reference)
    return [(t, size, score_masks(probability > t, reference, size, reference_labels))
            for t in thresholds for size in min_sizes]

