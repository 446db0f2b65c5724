"""Checks that both pipelines (shiva_bids.pipelines.shiva and .fetal) make before any unit runs.

The input folder must be readable (66), the output and work folders writable (73), and each
unit must have the image it cannot run without. They live here, not in the participant level,
so that the pipelines and the pre-flight checks can use them without importing the level that
imports them (no import circle).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from shiva_bids.config import RunConfig
from shiva_bids.errors import MissingInputError, OutputError

WRITE_PROBE_BYTES = 64 * 1024  # written (then deleted) to check an output folder


def required_roles(config: RunConfig) -> tuple[str, ...]:
    """Images a unit cannot run without: the T1w, or the T2w when it replaces the T1w
    (`--replace-t1 t2`) or for the fetal pipeline (T2w only)."""
    if config.pipeline == "fetal-cgm" or config.replace_t1 == "t2":
        return ("t2w",)
    return ("t1w",)


def check_bids_dir(bids_dir: Path) -> None:
    """The input folder must exist and be readable (66)."""
    if not bids_dir.exists():
        raise MissingInputError(f"bids_dir {bids_dir}: no such folder")
    if not bids_dir.is_dir():
        raise MissingInputError(f"bids_dir {bids_dir}: not a folder")
    try:
        next(bids_dir.iterdir(), None)
    except OSError as exc:
        raise MissingInputError(f"bids_dir {bids_dir}: cannot be read ({exc.strerror})") \
            from exc


def ensure_writable_dir(path: Path, what: str) -> None:
    """Create `path` if needed and check that a file can be written in it, with some data so
    that a full disk is found now (73) rather than half-way through a unit."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(bytes(WRITE_PROBE_BYTES))
            probe.flush()
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot be created or written "
                          f"({exc.strerror or exc})") from exc
