"""The participant level: checks, validation, input discovery, then one unit at a time.

A unit is one participant, or one participant x session (DESIGN.md "Data flow"). This module
owns what happens around a unit (checks, the dataset-level files, the per-unit log file,
skipping units that lack a required image, the exit code); the pipelines themselves
(shiva_bids.pipelines.shiva, shiva_bids.pipelines.fetal) run the units.

Exit codes (reference/BIDS_APPS.md §1.2, also in docs/usage.md):

* before any unit runs: 66 `bids_dir` missing or unreadable, not a BIDS dataset with
  `--skip-bids-validation`, or annexed files of the selected units not fetched (DataLad
  clones; shiva_bids.bids.annex, checked before anything is written to output_dir);
  16 not a BIDS dataset / validator errors; 18 labels or filters select nothing; 64 usage errors; 73 output or work folder not creatable or writable;
* after the units ran: 0 when every selected unit is complete; otherwise the class shared by
  every unit that is not (shiva_bids.errors.combined_exit_code): 65 bad input data, 66 input
  missing or unreadable (a unit without its T1w is skipped with a logged reason: "the input
  lacks the files the app needs"; one whose folder cannot be read fails), 73 output not
  writable, 75 temporary; 1 for a mix of classes or an internal error.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shiva_bids.bids.annex import check_units_fetched
from shiva_bids.bids.access import folder_problem
from shiva_bids.bids.derivatives import (NON_BIDS_PATTERNS, DatasetInfo, ensure_bidsignore,
                                         write_dataset_description)
from shiva_bids.bids.discovery import discover_inputs
from shiva_bids.bids.inputs import InputSet
from shiva_bids.bids.validation import validate_input
from shiva_bids.checks import check_bids_dir, ensure_writable_dir, required_roles
from shiva_bids.config import RunConfig
from shiva_bids.errors import (ExitCode, MissingInputError, ShivaError,
                               combined_exit_code, exit_class)
from shiva_bids.io import atomic_write_text
from shiva_bids.log import unit_log

log = logging.getLogger(__name__)

# Unit outcomes.
DONE, PLANNED, SKIPPED, FAILED = "done", "planned", "skipped", "failed"


@dataclass(frozen=True)
class UnitResult:
    """What happened to one unit: status DONE/PLANNED/SKIPPED/FAILED, why, and the exit class
    of a unit that is not complete (SKIPPED: 66, the input lacks a required image)."""

    unit_id: str
    status: str
    reason: str = ""
    exit_code: ExitCode = ExitCode.OK


def prepare_output(config: RunConfig) -> None:
    """The dataset-level files of the derivative dataset (written atomically, so parallel
    participant jobs can all write them)."""
    write_dataset_description(DatasetInfo(bids_dir=config.bids_dir,
                                          output_dir=config.output_dir))
    ensure_bidsignore(config.output_dir, NON_BIDS_PATTERNS)


def unit_folder_error(bids_dir: Path, inputs: InputSet) -> MissingInputError | None:
    """The unit's first folder (sub-X, ses-Y, anat) that cannot be read, as an error."""
    folder = bids_dir / f"sub-{inputs.subject}"
    for name in ([f"ses-{inputs.session}"] if inputs.session else []) + ["anat", None]:
        problem = folder_problem(folder)
        if problem:
            return MissingInputError(f"{folder}: {problem} (the folder cannot be read)")
        folder = folder / name if name else folder
    return None


def split_runnable(units: list[InputSet], config: RunConfig
                   ) -> tuple[list[InputSet], list[UnitResult]]:
    """Units that can run (or are complete: the runner skips those), and results for the
    others: FAILED (66) when a folder of the unit cannot be read, SKIPPED (66) when it lacks a
    required image; the skip is also recorded in `logs/skipped-<unit>.txt` for the group
    level."""
    from shiva_bids.runner import RunOutcome, record_failure, skip_path
    from shiva_bids.summary import is_complete
    runnable, results = [], []
    for inputs in units:
        if not config.force and is_complete(config.output_dir, inputs.entities):
            runnable.append(inputs)  # its results stand, whatever its inputs are now
            continue
        error = unit_folder_error(config.bids_dir, inputs)
        missing = [role for role in required_roles(config) if not inputs.has(role)]
        if error is not None:
            outcome = RunOutcome()
            with unit_log(config, inputs.unit_id), stopping_on_crash(config):
                record_failure(config, inputs, "input check", outcome, error)
            results.append(UnitResult(inputs.unit_id, FAILED, str(error), error.exit_code))
        elif missing:
            reason = f"no {'/'.join(missing)} image found{_filter_note(config, missing)}"
            with unit_log(config, inputs.unit_id):
                log.warning("%s: skipped, %s", inputs.unit_id, reason)
            atomic_write_text(skip_path(config.output_dir, inputs.unit_id), reason + "\n")
            results.append(UnitResult(inputs.unit_id, SKIPPED, reason, ExitCode.NO_INPUT))
        else:
            skip_path(config.output_dir, inputs.unit_id).unlink(missing_ok=True)
            runnable.append(inputs)
    return runnable, results


def _filter_note(config: RunConfig, roles: list[str]) -> str:
    filtered = [role for role in roles if role in config.bids_filters]
    return f" (with the --bids-filter-file {'/'.join(filtered)} filter)" if filtered else ""


def units_to_read(units: list[InputSet], config: RunConfig) -> list[InputSet]:
    """The units whose input files this run opens: every unit with `--force`; with
    `--reports-only` the complete ones (their figures are drawn on the raw images); else the
    incomplete ones, since a rerun skips complete units, whose annexed inputs may have been
    dropped (`datalad drop`) after they were processed."""
    from shiva_bids.summary import is_complete
    if config.force and not config.reports_only:
        return list(units)
    return [u for u in units
            if is_complete(config.output_dir, u.entities) == config.reports_only]


def rebuild_reports(units: list[InputSet], config: RunConfig) -> list[UnitResult]:
    """`--reports-only`: re-render the report of every complete unit, compute nothing."""
    from shiva_bids.reports.participant import rebuild_report
    from shiva_bids.summary import is_complete, read_summary, summary_path
    results = []
    for inputs in units:
        if not is_complete(config.output_dir, inputs.entities):
            log.warning("%s: no complete outputs, no report to rebuild", inputs.unit_id)
            results.append(UnitResult(inputs.unit_id, SKIPPED, "no complete outputs",
                                      ExitCode.NO_INPUT))
            continue
        summary = read_summary(summary_path(config.output_dir, inputs.entities))
        log.info("%s: report rebuilt: %s", inputs.unit_id,
                 rebuild_report(config.output_dir, summary))
        results.append(UnitResult(inputs.unit_id, DONE))
    return results


@contextlib.contextmanager
def stopping_on_crash(config: RunConfig) -> Iterator[None]:
    """Turn the runner's StopRun (`--stop-on-first-crash`) into the run's error, which keeps
    the failed unit's exit class."""
    from shiva_bids.runner import StopRun
    try:
        yield
    except StopRun as stop:
        cause = stop.__cause__
        raise ShivaError(f"{stop} failed (stopped: --stop-on-first-crash; see "
                         f"{config.logs_dir}/crash-{stop}.txt)",
                         exit_class(cause) if cause else ExitCode.FAILURE) from stop


def run_units(units: list[InputSet], config: RunConfig) -> list[UnitResult]:
    """Run the SHIVA pipeline on the units; map its outcomes to unit results."""
    from shiva_bids.pipelines.shiva import run_shiva_units
    with stopping_on_crash(config):
        outcome = run_shiva_units(config, units)
    return [UnitResult(o.unit_id, FAILED, o.message, o.exit_code or ExitCode.FAILURE)
            if o.status == "failed" else UnitResult(o.unit_id, DONE, o.message)
            for o in outcome.outcomes]


def exit_code(results: list[UnitResult]) -> ExitCode:
    """0 when every unit is complete, else the class shared by the others, 1 for a mix
    (shiva_bids.errors.combined_exit_code)."""
    return combined_exit_code(result.exit_code for result in results)


def run_participant_level(config: RunConfig) -> ExitCode:
    """Checks, validation, discovery, dataset files, then every selected unit in turn."""
    if config.pipeline == "fetal-cgm":
        from shiva_bids.models.devices import import_tensorflow
        import_tensorflow()  # quietly, before the fetal modules import it
        from shiva_bids.pipelines.fetal.pipeline import run_fetal_participant
        return run_fetal_participant(config)
    check_bids_dir(config.bids_dir)
    ensure_writable_dir(config.output_dir, "output_dir")
    ensure_writable_dir(config.work_dir, "--work-dir")
    validate_input(config.bids_dir, skip=config.skip_bids_validation,
                   cache_dir=config.work_dir / "deno-cache")
    units = discover_inputs(config)
    log.info("%d participant/session unit(s) selected", len(units))
    check_units_fetched(units_to_read(units, config), config.bids_dir, config.work_dir)
    ensure_writable_dir(config.logs_dir, "the logs folder")
    prepare_output(config)
    runnable, results = split_runnable(units, config)
    if runnable and config.reports_only:
        results += rebuild_reports(runnable, config)
    elif runnable:
        results += run_units(runnable, config)
    skipped = [r.unit_id for r in results if r.status == SKIPPED]
    failed = [r.unit_id for r in results if r.status == FAILED]
    code = exit_code(results)
    log.log(logging.INFO if code == ExitCode.OK else logging.WARNING,
            "participant level finished: %d unit(s); skipped: %s; failed: %s (exit %d)",
            len(results), " ".join(skipped) or "none", " ".join(failed) or "none", int(code))
    return code
