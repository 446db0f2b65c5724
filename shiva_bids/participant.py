"""The participant level: checks, validation, input discovery, then one unit at a time.

A unit is one participant, or one participant x session (DESIGN.md "Data flow"). This module
owns what happens around a unit (checks, the dataset-level files, the per-unit log file,
skipping units that lack a required image, the exit code); :func:`process_unit` is the single
hook where the pipeline of one unit runs.

Exit codes (reference/BIDS_APPS.md §1.2, also in docs/usage.md):

* 66: `bids_dir` missing or unreadable; not a BIDS dataset with `--skip-bids-validation`;
  or one or more selected units lack a required image (those are skipped with a logged reason
  after every other unit has been processed: "the input lacks the files the app needs");
* 16: not a BIDS dataset / validator errors; 18: labels select nothing;
  73: output or work folder not creatable or writable;
* 1: one or more units failed (takes precedence over 66); 0: every selected unit ran.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from shiva_bids.bids.derivatives import (NON_BIDS_PATTERNS, DatasetInfo, ensure_bidsignore,
                                         write_dataset_description)
from shiva_bids.bids.discovery import discover_inputs
from shiva_bids.bids.inputs import InputSet
from shiva_bids.bids.validation import validate_input
from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode, MissingInputError, OutputError, ShivaError
from shiva_bids.log import add_file_log, remove_file_log

log = logging.getLogger(__name__)

# Unit outcomes.
DONE, PLANNED, SKIPPED, FAILED = "done", "planned", "skipped", "failed"


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit: status DONE/PLANNED/SKIPPED/FAILED and why."""

    unit_id: str
    status: str
    reason: str = ""


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
    """Create `path` if needed and check a file can be written in it (73)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise OutputError(f"{what} {path}: cannot be created or written "
                          f"({exc.strerror or exc})") from exc


def prepare_output(config: RunConfig) -> None:
    """The dataset-level files of the derivative dataset (written atomically, so parallel
    participant jobs can all write them)."""
    write_dataset_description(DatasetInfo(bids_dir=config.bids_dir,
                                          output_dir=config.output_dir))
    ensure_bidsignore(config.output_dir, NON_BIDS_PATTERNS)


def process_unit(inputs: InputSet, config: RunConfig) -> UnitResult:
    """Run the pipeline on one unit (the hook the participant-level pipeline fills in).

    For now it only logs what would run; it writes no output.
    """
    images = {role: path.name for role in ("t1w", "flair", "swi", "t2w")
              if (path := inputs.image(role)) is not None}
    log.info("%s: would run pipeline %s (markers %s) on %s%s%s", inputs.unit_id,
             config.pipeline, " ".join(config.requested_markers), images,
             f", brain mask {inputs.brain_mask.name}" if inputs.brain_mask else "",
             f", segmentation {inputs.dseg.name}" if inputs.dseg else "")
    return UnitResult(inputs.unit_id, PLANNED, "processing is not implemented yet")


def run_unit(inputs: InputSet, config: RunConfig) -> UnitResult:
    """One unit with its own log file `logs/sub-X[_ses-Y].log`: skip it when a required
    image is missing, else :func:`process_unit`; a failure is logged and reported, not
    raised, unless `--stop-on-first-crash`."""
    handler = add_file_log(config.logs_dir / f"{inputs.unit_id}.log")
    try:
        for reason in inputs.choices.values():
            log.info("%s: %s", inputs.unit_id, reason)
        missing = [role for role in required_roles(config) if not inputs.has(role)]
        if missing:
            reason = f"no {'/'.join(missing)} image found"
            log.warning("%s: skipped, %s", inputs.unit_id, reason)
            return UnitResult(inputs.unit_id, SKIPPED, reason)
        try:
            return process_unit(inputs, config)
        except Exception as exc:  # one unit failing does not stop the others
            one_line = str(exc) if isinstance(exc, ShivaError) else f"{type(exc).__name__}: {exc}"
            log.error("%s: failed: %s", inputs.unit_id, one_line)
            log.debug("%s: traceback", inputs.unit_id, exc_info=True)  # log file; console -vv
            if config.stop_on_first_crash:
                raise ShivaError(f"{inputs.unit_id} failed: {one_line} (stopped: "
                                 "--stop-on-first-crash)") from exc
            return UnitResult(inputs.unit_id, FAILED, one_line)
    finally:
        remove_file_log(handler)


def exit_code(results: list[UnitResult]) -> ExitCode:
    """1 if any unit failed, else 66 if any was skipped for a missing image, else 0."""
    statuses = {result.status for result in results}
    if FAILED in statuses:
        return ExitCode.FAILURE
    if SKIPPED in statuses:
        return ExitCode.NO_INPUT
    return ExitCode.OK


def run_participant_level(config: RunConfig) -> ExitCode:
    """Checks, validation, discovery, dataset files, then every selected unit in turn."""
    if config.pipeline == "fetal-cgm":
        from shiva_bids.fetal.pipeline import run_fetal_participant
        return run_fetal_participant(config)
    check_bids_dir(config.bids_dir)
    ensure_writable_dir(config.output_dir, "output_dir")
    ensure_writable_dir(config.work_dir, "--work-dir")
    validate_input(config.bids_dir, skip=config.skip_bids_validation,
                   cache_dir=config.work_dir / "deno-cache")
    units = discover_inputs(config)
    log.info("%d participant/session unit(s) selected", len(units))
    prepare_output(config)
    results = [run_unit(inputs, config) for inputs in units]
    skipped = [r.unit_id for r in results if r.status == SKIPPED]
    failed = [r.unit_id for r in results if r.status == FAILED]
    code = exit_code(results)
    log.log(logging.INFO if code == ExitCode.OK else logging.WARNING,
            "participant level finished: %d unit(s); skipped: %s; failed: %s (exit %d)",
            len(results), " ".join(skipped) or "none", " ".join(failed) or "none", int(code))
    return code
