"""`shiva-bids evaluate`: compare shiva-bids outputs with manual (or phantom) reference masks.

    shiva-bids evaluate --pred-dir OUT --reference-dir DIR [--markers PVS WMH ...]
                        [--thresholds 0.1 ... 0.9] [--min-sizes N ...] [--output FILE.tsv]

Reference masks are named like the app's own outputs (`sub-X[_ses-Y]_space-S_label-M_mask.nii.gz`,
anywhere under DIR; the phantom generator writes exactly these under
`derivatives/reference/`). For each one, the prediction with the same name prefix is looked up
under OUT: the `_probseg` map if present (scored at every threshold), otherwise the binary
`_mask` (scored as it is). Both must be on the same grid. One TSV row per file, threshold and
minimum cluster size (predicted clusters smaller than it are dropped); the default minimum
size is the marker's pipeline default (reference/SHIVA.md §8).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from shiva_bids.bids.derivatives import ensure_bidsignore, parse_entities
from shiva_bids.errors import BadInputError, MissingInputError, UsageError
from shiva_bids.evaluation.metrics import DEFAULT_THRESHOLDS, Scores, score_masks, threshold_sweep
from shiva_bids.io import atomic_write_text
from shiva_bids.markers import MARKER_NAMES, MARKERS

log = logging.getLogger(__name__)

COLUMNS = ("participant_id", "session_id", "marker", "space", "prediction", "threshold",
           "min_size", "voxel_dice", "n_reference", "n_predicted", "found", "correct",
           "precision", "recall", "f1")


@dataclass(frozen=True)
class Pair:
    """A reference mask and the prediction to compare with it."""

    reference: Path
    prediction: Path
    entities: dict[str, str]
    kind: str  # "probseg" or "mask"


def find_pairs(pred_dir: Path, reference_dir: Path, markers: Sequence[str]) -> list[Pair]:
    """Reference masks of `markers` under `reference_dir` matched to predictions in `pred_dir`."""
    predictions = {p.name: p for p in pred_dir.rglob("*_label-*_*.nii*")}
    pairs = []
    for reference in sorted(reference_dir.rglob("*_label-*_mask.nii*")):
        entities = parse_entities(reference.name)
        if entities.get("label") not in markers:
            continue
        stem, extension = reference.name.split("_mask", 1)
        for kind in ("probseg", "mask"):
            prediction = predictions.get(f"{stem}_{kind}{extension}")
            if prediction is not None:
                pairs.append(Pair(reference, prediction, entities, kind))
                break
        else:
            log.warning("%s: no prediction named %s_probseg/_mask under %s", reference, stem,
                        pred_dir)
    if not pairs:
        raise MissingInputError(f"{reference_dir}: no reference mask of {', '.join(markers)} "
                                f"has a matching prediction under {pred_dir}")
    return pairs


def _load(path: Path) -> nib.Nifti1Image:
    try:
        return nib.load(path)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise BadInputError(f"{path}: cannot read ({exc})") from exc


def score_pair(pair: Pair, thresholds: Sequence[float],
               min_sizes: Sequence[int]) -> list[tuple[float | None, int, Scores]]:
    """Rows (threshold, min_size, scores) of one pair; threshold None for binary masks."""
    reference_img, prediction_img = _load(pair.reference), _load(pair.prediction)
    if reference_img.shape[:3] != prediction_img.shape[:3] or not np.allclose(
            reference_img.affine, prediction_img.affine, atol=1e-3):
        raise BadInputError(f"{pair.prediction}: not on the grid of its reference "
                            f"{pair.reference} (shape or affine differs)")
    reference = np.asarray(reference_img.dataobj) > 0
    prediction = np.asarray(prediction_img.dataobj, dtype=np.float32)
    if pair.kind == "mask":
        return [(None, size, score_masks(prediction > 0, reference, size)) for size in min_sizes]
    return threshold_sweep(prediction, reference, tuple(thresholds), tuple(min_sizes))


def _format(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def evaluate(pred_dir: Path, reference_dir: Path, markers: Sequence[str],
             thresholds: Sequence[float], min_sizes: Sequence[int] | None) -> list[dict]:
    """All rows of the evaluation table (see :data:`COLUMNS`)."""
    rows = []
    for pair in find_pairs(pred_dir, reference_dir, markers):
        marker = pair.entities["label"]
        sizes = min_sizes or (MARKERS[marker].min_cluster_size,)
        for threshold, size, scores in score_pair(pair, thresholds, sizes):
            rows.append({
                "participant_id": f"sub-{pair.entities.get('sub', 'n/a')}",
                "session_id": f"ses-{pair.entities['ses']}" if "ses" in pair.entities else "n/a",
                "marker": marker, "space": pair.entities.get("space", "n/a"),
                "prediction": pair.kind, "threshold": threshold, "min_size": size,
                "voxel_dice": scores.voxel_dice, "n_reference": scores.n_reference,
                "n_predicted": scores.n_predicted, "found": scores.found,
                "correct": scores.correct, "precision": scores.precision,
                "recall": scores.recall, "f1": scores.f1})
    return rows


def write_table(rows: list[dict], path: Path) -> Path:
    """The rows as a tab-separated table with a header line."""
    lines = ["\t".join(COLUMNS)]
    lines += ["\t".join(_format(row[c]) for c in COLUMNS) for row in rows]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="shiva-bids evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred-dir", "--pred_dir", type=Path, required=True,
                        help="shiva-bids output folder (the predictions)")
    parser.add_argument("--reference-dir", "--reference_dir", type=Path, required=True,
                        help="folder of reference masks named like the outputs")
    parser.add_argument("--markers", nargs="+", default=list(MARKER_NAMES), choices=MARKER_NAMES)
    parser.add_argument("--thresholds", nargs="+", type=float, default=list(DEFAULT_THRESHOLDS))
    parser.add_argument("--min-sizes", "--min_sizes", nargs="+", type=int, default=None,
                        help="minimum predicted cluster sizes (default: each marker's default)")
    parser.add_argument("--output", type=Path, default=None,
                        help="TSV to write (default: PRED_DIR/group/evaluation.tsv)")
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:
        if exc.code:
            raise UsageError("invalid arguments (see `shiva-bids evaluate --help`)") from exc
        raise


def main(argv: Sequence[str]) -> int:
    """Entry point of `shiva-bids evaluate`; returns the exit code."""
    args = _parse(argv)
    for folder, option in ((args.pred_dir, "--pred-dir"), (args.reference_dir, "--reference-dir")):
        if not folder.is_dir():
            raise MissingInputError(f"{folder}: {option} is not a folder")
    rows = evaluate(args.pred_dir, args.reference_dir, args.markers, args.thresholds,
                    args.min_sizes)
    output = args.output or args.pred_dir / "group" / "evaluation.tsv"
    write_table(rows, output)
    if args.output is None:
        ensure_bidsignore(args.pred_dir, ["group/"])
    print(f"{len(rows)} rows written to {output}")
    return 0
