"""The App's two modes, run inside the shiva-bids container by `main` (via `run.py`).

* participant (config keys `t1` [, `flair`, `t2starw`, `mask`], `models`): build the
  one-subject BIDS dataset, run the shiva-bids participant level on it, convert the
  derivatives to brainlife outputs (`raw`, one `neuro/mask` per marker, `parc`) and write
  product.json;
* aggregator (config key `raw`, a list of this App's `raw` outputs): the shiva-bids group
  level over all of them, output `group`.

Everything is written in the task folder (the current directory); scratch files go to
`shiva-work/` (the link tree is kept, the work folder is removed after a successful run).
Exit status: 0 on success, 64 for an unusable config.json, else shiva-bids' own exit code
(documented in the shiva-bids README), with the reason on stderr. The heavy modules are
imported once the config has been read, so a bad config.json fails at once.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from shiva_brainlife.inputs import (ConfigError, ParticipantConfig, build_bids_tree,
                                    build_mask_dataset, participant_config, read_config)

SCRATCH = "shiva-work"
EXIT_CONFIG = 64


def participant_arguments(config: ParticipantConfig, bids: Path, raw: Path, work: Path,
                          mask_dataset: Path | None) -> list[str]:
    """The shiva-bids participant command line for this task."""
    threads = len(os.sched_getaffinity(0))
    args = [str(bids), str(raw), "participant", "--participant-label", config.subject,
            "--models-dir", str(config.models), "-w", str(work), "--skip-bids-validation",
            "--nprocs", "1", "--omp-nthreads", str(threads), "--notrack", "-v"]
    if mask_dataset is not None:
        args += ["--derivatives", f"brainlife={mask_dataset}"]
    if config.markers:
        args += ["--markers", *config.markers]
    if config.thresholds:
        args += ["--threshold", *config.thresholds]
    if config.tta:
        args += ["--tta", "flip"]
    return args


def run_participant(config: ParticipantConfig, task: Path) -> int:
    """Participant mode; returns the exit status."""
    from shiva_bids import cli
    from shiva_bids.summary import is_complete, read_summary, summary_path
    from shiva_brainlife import outputs, product

    scratch = task / SCRATCH
    bids = build_bids_tree(config, scratch / "bids")
    mask_dataset = build_mask_dataset(config, scratch / "mask")
    raw = task / "raw"
    code = cli.main(participant_arguments(config, bids, raw, scratch / "work", mask_dataset))
    entities = {"sub": config.subject, **({"ses": config.session} if config.session else {})}
    if code != 0 or not is_complete(raw, entities):
        crash = raw / "logs" / f"crash-{config.unit}.txt"
        detail = f"; see {crash}" if crash.is_file() else ""
        print(f"shiva-bids participant level failed with exit {code}{detail}", file=sys.stderr)
        return code or 1
    summary = read_summary(summary_path(raw, entities))
    outputs.write_masks(raw, summary, task)
    reference = outputs.load(config.images["T1w"])
    parc = outputs.build_parcellation(raw, summary, reference)
    outputs.write_parcellation(parc, task / "parc")
    figure = product.key_figure(reference, parc)
    product.write_product(product.participant_product(summary, parc, figure),
                          task / "product.json")
    shutil.rmtree(scratch / "work", ignore_errors=True)
    return 0


def run_aggregator(config: dict, task: Path) -> int:
    """Aggregator mode; returns the exit status."""
    from shiva_bids import cli
    from shiva_brainlife import aggregate, product

    folders = aggregate.output_folders(config, task)
    merged = task / SCRATCH / "merged"
    warnings = aggregate.merge_outputs(folders, merged)
    code = cli.main([str(task / SCRATCH / "no-bids"), str(merged), "group", "-w",
                     str(task / SCRATCH / "work")])
    if code not in (0, 66):  # 66: the table is written; some units are not complete
        return code
    aggregate.copy_group_outputs(merged, task / "group")
    product.write_product(aggregate.group_product(merged, warnings), task / "product.json")
    return 0


def main(argv: Sequence[str]) -> int:
    """`run.py [config.json]`: the mode follows from the config's keys."""
    task = Path.cwd()
    try:
        config = read_config(Path(argv[0]) if argv else task / "config.json")
        if "raw" in config:
            return run_aggregator(config, task)
        return run_participant(participant_config(config, task), task)
    except ConfigError as exc:
        print(f"config.json: {exc}", file=sys.stderr)
        return EXIT_CONFIG
