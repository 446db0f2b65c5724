"""Held-out accuracy of a models folder on model-space phantoms never used in training.

    python -m shiva_bids.training.heldout --models-dir DIR [--seeds 9000 9001 ...] [--tsv FILE]

Phantoms come from seeds >= 9000 (training uses 1000-8999, docs/demo.md). Each marker's
descriptor is chosen from DIR by the model layer, its fold ensemble predicts through
:class:`shiva_bids.models.EnsemblePredictor` (the SHIVA rule: mean of the folds, per-fold values
< 0.001 zeroed, masked by the brain), and the maps are scored with the metrics of
:mod:`shiva_bids.evaluation.metrics` at thresholds 0.1-0.9, predicted clusters smaller than the
marker's default minimum size dropped (reference/SHIVA.md §8). Scores are averaged over phantoms.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from shiva_bids.evaluation.metrics import DEFAULT_THRESHOLDS, threshold_sweep
from shiva_bids.io import atomic_write_text
from shiva_bids.markers import MARKER_NAMES, MARKERS
from shiva_bids.training.data import HELDOUT_SEEDS_START, make_phantom

HELDOUT_LOADS = ("mild", "severe")


@dataclass(frozen=True)
class HeldoutRow:
    """Mean scores of one marker at one threshold over the held-out phantoms."""

    marker: str
    threshold: float
    min_size: int
    voxel_dice: float
    precision: float
    recall: float
    f1: float
    phantoms: int


def heldout_scores(models_dir: Path, seeds: Sequence[int],
                   markers: Sequence[str] = MARKER_NAMES,
                   thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                   threads: int = 2, cache_dir: Path | None = None) -> list[HeldoutRow]:
    """Scores of the ensembles in `models_dir` on the phantoms of `seeds` (all >= 9000)."""
    from shiva_bids.models import EnsemblePredictor, discover_descriptors, select_descriptors

    if min(seeds) < HELDOUT_SEEDS_START:
        raise ValueError(f"held-out seeds start at {HELDOUT_SEEDS_START}, got {min(seeds)}")
    phantoms = [make_phantom(seed, HELDOUT_LOADS[i % len(HELDOUT_LOADS)], cache_dir)
                for i, seed in enumerate(seeds)]
    chosen, skipped = select_descriptors(discover_descriptors(models_dir), markers,
                                         {"t1", "flair", "swi"})
    if skipped:
        raise ValueError(f"{models_dir}: no usable model for {skipped}")
    rows = []
    for marker in markers:
        descriptor = chosen[marker]
        predictor = EnsemblePredictor(descriptor, device="cpu", threads=threads)
        images = [np.stack([p.images[m] for m in descriptor.modalities], axis=-1)
                  for p in phantoms]
        maps = predictor.predict(images, [p.brain_mask for p in phantoms])
        min_size = MARKERS[marker].min_cluster_size
        sweeps = [threshold_sweep(out.mean, p.masks[marker], tuple(thresholds), (min_size,))
                  for out, p in zip(maps, phantoms)]
        for i, threshold in enumerate(thresholds):
            scores = [sweep[i][2] for sweep in sweeps]
            rows.append(HeldoutRow(
                marker, threshold, min_size,
                float(np.mean([s.voxel_dice for s in scores])),
                float(np.mean([s.precision for s in scores])),
                float(np.mean([s.recall for s in scores])),
                float(np.mean([s.f1 for s in scores])), len(scores)))
    return rows


def markdown_table(rows: Sequence[HeldoutRow]) -> str:
    """Rows as a Markdown table, default thresholds in bold."""
    lines = ["| marker | threshold | min size | voxel Dice | precision | recall | cluster F1 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = "**" if abs(r.threshold - MARKERS[r.marker].threshold) < 1e-9 else ""
        lines.append(f"| {mark}{r.marker}{mark} | {mark}{r.threshold:.1f}{mark} | {r.min_size} | "
                     f"{r.voxel_dice:.3f} | {r.precision:.3f} | {r.recall:.3f} | {r.f1:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shiva_bids.training.heldout",
                                     description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[9000, 9001, 9002, 9003])
    parser.add_argument("--markers", nargs="+", default=list(MARKER_NAMES), choices=MARKER_NAMES)
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="reuse phantoms saved here (see python -m shiva_bids.training)")
    parser.add_argument("--tsv", type=Path, default=None, help="also write the rows as TSV")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    rows = heldout_scores(args.models_dir, args.seeds, args.markers, cache_dir=args.cache_dir)
    print(markdown_table(rows))
    if args.tsv:
        fields = list(HeldoutRow.__dataclass_fields__)
        lines = ["\t".join(fields)] + ["\t".join(
            f"{getattr(r, f):.4f}" if isinstance(getattr(r, f), float) else str(getattr(r, f))
            for f in fields) for r in rows]
        atomic_write_text(args.tsv, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
