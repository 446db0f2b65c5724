"""`python -m shiva_bids.training --out DIR --seed S ...`: train and export the demo models."""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from shiva_bids.io import atomic_write_text
from shiva_bids.log import setup_logging
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.training.data import (TRAIN_SEEDS, make_phantoms, marker_channels,
                                      phantom_for_marker)
from shiva_bids.training.export import (ModelSetName, export_savedmodel,
                                        load_savedmodel_weights, write_descriptor)
from shiva_bids.training.train import TrainConfig, train_fold
from shiva_bids.training.unet import UNetSpec, build_unet

log = logging.getLogger("shiva_bids.training")


def _steps(values: Sequence[str], markers: Sequence[str]) -> dict[str, int]:
    """`--steps 300` for every marker, or `--steps PVS=400 WMH=200 ...` (others keep the first int)."""
    steps = {m: 300 for m in markers}
    for value in values:
        marker, _, count = value.rpartition("=")
        if marker:
            steps[marker.upper()] = int(count)
        else:
            steps = {m: int(count) for m in markers} | {k: v for k, v in steps.items()
                                                        if k not in markers}
    return steps


def parse_args(argv: Sequence[str]) -> tuple[TrainConfig, Path, str, Path | None, Path | None]:
    parser = argparse.ArgumentParser(prog="python -m shiva_bids.training",
                                     description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="models folder to write")
    parser.add_argument("--seed", type=int, default=1000,
                        help="first phantom seed and base of every RNG (1000-8999)")
    parser.add_argument("--markers", nargs="+", default=list(MARKER_NAMES),
                        choices=MARKER_NAMES)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--n-phantoms", type=int, default=8)
    parser.add_argument("--loads", nargs="+", default=["mild", "severe"])
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", nargs="+", default=["300"],
                        help="N for every marker, or MARKER=N pairs")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--lesion-fraction", type=float, default=0.7,
                        help="fraction of patches centred near a lesion")
    parser.add_argument("--hard-negative-fraction", type=float, default=0.0,
                        help="fraction of patches centred on CSF-like dark non-lesion voxels")
    parser.add_argument("--fp-weight", type=float, default=0.5,
                        help="Tversky weight of false positives (0.5: soft Dice)")
    parser.add_argument("--bce-weight", type=float, default=1.0,
                        help="weight of the cross-entropy term of the loss")
    parser.add_argument("--warm-start-fraction", type=float, default=0.5,
                        help="folds > 0 start from fold 0 and train this fraction of the steps")
    parser.add_argument("--base-filters", type=int, default=8)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--max-seconds", type=float, nargs="+", default=None,
                        help="wall-time budget per fold (one value, or one per fold): a fold "
                             "stops early when it is spent; the steps run are logged, so the "
                             "run can be repeated exactly with --steps")
    parser.add_argument("--init-from", type=Path, default=None,
                        help="fine-tune: fold k starts from fold k of the marker in this models "
                             "folder and trains --warm-start-fraction of the steps")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep generated phantoms here and reuse them in later runs")
    parser.add_argument("--release-date", default=datetime.date.today().strftime("%d/%m/%Y"),
                        help="dd/mm/yyyy written in the descriptors")
    args = parser.parse_args(argv)
    config = TrainConfig(seed=args.seed, markers=tuple(args.markers), folds=args.folds,
                         n_phantoms=args.n_phantoms, loads=tuple(args.loads), patch=args.patch,
                         batch=args.batch, steps=_steps(args.steps, args.markers),
                         learning_rate=args.learning_rate,
                         lesion_fraction=args.lesion_fraction,
                         hard_negative_fraction=args.hard_negative_fraction,
                         fp_weight=args.fp_weight, bce_weight=args.bce_weight,
                         warm_start_fraction=args.warm_start_fraction,
                         max_seconds=tuple(args.max_seconds) if args.max_seconds else None,
                         base_filters=args.base_filters,
                         depth=args.depth)
    seeds = config.phantom_seeds()
    if seeds[0] not in TRAIN_SEEDS or seeds[-1] not in TRAIN_SEEDS:
        parser.error(f"phantom seeds {seeds[0]}-{seeds[-1]} leave the training range "
                     f"{TRAIN_SEEDS.start}-{TRAIN_SEEDS.stop - 1}")
    return config, args.out, args.release_date, args.cache_dir, args.init_from


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config, out, release_date, cache_dir, init_from = parse_args(argv)
    setup_logging(1)
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
    started = time.monotonic()
    phantoms = dict(zip(config.phantom_seeds(), make_phantoms(config.phantom_seeds(),
                                                              list(config.loads), cache_dir)))
    log.info("%d phantoms in %.0f s", len(phantoms), time.monotonic() - started)
    for marker in config.markers:
        record = {"config": {**config.__dict__, "markers": [marker],
                             "init_from": str(init_from) if init_from else None}, "folds": []}
        volumes = {seed: phantom_for_marker(p, marker) for seed, p in phantoms.items()}
        names = ModelSetName(marker, tuple(volumes[config.seed].channels))
        fold_names, first = [], None
        for fold in range(config.folds):
            spec = UNetSpec(len(marker_channels(marker)), config.base_filters, config.depth)
            fold_name = names.fold_name(spec, fold)
            start = first if init_from is None else load_savedmodel_weights(
                build_unet(spec, name="init"), init_from / fold_name)
            result = train_fold(marker, fold, volumes, config, start)
            first = first or result.model
            export_savedmodel(result.model, result.spec, out / fold_name)
            fold_names.append(fold_name)
            record["folds"].append({
                "marker": marker, "fold": fold, "name": fold_name,
                "train_seeds": result.train_seeds, "validation_seeds": result.validation_seeds,
                "steps": result.steps, "seconds": round(result.seconds, 1),
                "final_loss": round(result.final_loss, 4)})
        write_descriptor(out, names, result.spec, fold_names, release_date)
        record["seconds"] = round(sum(f["seconds"] for f in record["folds"]), 1)
        atomic_write_text(out / names.folder / "training_log.json",
                          json.dumps(record, indent=2) + "\n")
    log.info("all done in %.0f s -> %s", time.monotonic() - started, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
