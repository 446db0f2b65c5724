"""The group level: reads the participant outputs already in `output_dir`.

For now it only checks that `output_dir` holds a derivative dataset and logs which
participant/session units it holds; the group table and report are the group-level work.
"""
from __future__ import annotations

import logging
from pathlib import Path

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode, MissingInputError

log = logging.getLogger(__name__)


def participant_folders(output_dir: Path) -> list[Path]:
    """`sub-*` folders of the derivative dataset, sorted."""
    return sorted(p for p in output_dir.glob("sub-*") if p.is_dir())


def run_group_level(config: RunConfig) -> ExitCode:
    """Check the participant outputs exist (66 otherwise) and log what was found."""
    if not (config.output_dir / "dataset_description.json").is_file():
        raise MissingInputError(f"output_dir {config.output_dir}: no participant-level "
                                "outputs (run the participant level first)")
    subjects = participant_folders(config.output_dir)
    log.warning("group level: %d participant folder(s) in %s; the group table is not "
                "implemented yet", len(subjects), config.output_dir)
    return ExitCode.OK
