"""Running the SHIVA participant level over many units (participant x session).

For each chunk of units (sized so that the chunk's model-space images and predictions fit the
`--mem` budget; one chunk holds every unit of a typical run):

1. preprocess the units, in parallel up to `--nprocs` processes;
2. for each marker, load every fold ONCE and predict all units of the chunk with it
   (the model layer's ensemble predictor);
3. for each unit: map the predictions back to native space, cluster, count, write the
   derivatives, the figures and the report, and last the summary (the completion record).

A unit that fails writes `logs/crash-<unit>.txt`, loses whatever outputs it had written (so
nothing of it looks like a result) and the others continue (unless `--stop-on-first-crash`);
its outcome keeps the failure's exit class (shiva_bids.errors.exit_class), from which the
participant level derives the run's exit code. A unit whose summary says complete is skipped
unless `--force`; a unit without one (e.g. killed) has its stale outputs removed and is
processed again.
"""
from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from shiva_bids.bids.derivatives import unit_dir
from shiva_bids.bids.inputs import MODALITY_TO_ROLE, InputSet
from shiva_bids.config import RunConfig
from shiva_bids.errors import (DISK_ERRNOS, ExitCode, ShivaError, TemporaryError,
                               exit_class)
from shiva_bids.io import atomic_write_text
from shiva_bids.log import unit_log
from shiva_bids.orphans import exit_with_parent
from shiva_bids.summary import is_complete, summary_path

log = logging.getLogger(__name__)

# Memory held per unit during a chunk (model-space channels, masks, predictions), in GiB:
# 4 float32 images of 160x214x176 (24 MiB each) per space plus two outputs per marker.
UNIT_MEMORY_GB = 0.5
DEFAULT_CHUNK = 16


@dataclass
class UnitOutcome:
    """How one unit ended."""

    unit_id: str
    status: str  # "done", "skipped" (already complete), "failed"
    message: str = ""
    exit_code: ExitCode = ExitCode.OK  # a failure's class (shiva_bids.errors.exit_class)


@dataclass
class RunOutcome:
    outcomes: list[UnitOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[UnitOutcome]:
        return [o for o in self.outcomes if o.status == "failed"]


class StopRun(Exception):
    """Raised to stop after the first crash (`--stop-on-first-crash`)."""


def chunk_size(mem_gb: float | None) -> int:
    """Units per chunk: as many as the memory budget allows (at least one)."""
    if mem_gb is None:
        return DEFAULT_CHUNK
    return max(1, int(mem_gb / UNIT_MEMORY_GB) - 2)


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def crash_path(output_dir: Path, unit_id: str) -> Path:
    return output_dir / "logs" / f"crash-{unit_id}.txt"


def skip_path(output_dir: Path, unit_id: str) -> Path:
    """`logs/skipped-<unit>.txt`: why the participant level did not run a unit (no T1w)."""
    return output_dir / "logs" / f"skipped-{unit_id}.txt"


def write_crash(output_dir: Path, unit_id: str, stage: str, exc: BaseException) -> Path:
    """`logs/crash-<unit>.txt`: what failed, where, and the traceback (the worker's when
    the exception came back from another process)."""
    trace = getattr(exc, "traceback_text", None) or "".join(traceback.format_exception(exc))
    text = f"unit: {unit_id}\nstage: {stage}\nerror: {type(exc).__name__}: {exc}\n\n{trace}"
    return atomic_write_text(crash_path(output_dir, unit_id), text)


def remove_unit_outputs(output_dir: Path, inputs: InputSet) -> None:
    """Remove the unit's derivatives, figures, report and summary (not its log files)."""
    anat = unit_dir(output_dir, inputs.entities)
    for folder in (anat, anat.parent / "figures"):
        if folder.is_dir():
            shutil.rmtree(folder)
    for stale in (output_dir / f"{inputs.unit_id}.html", summary_path(output_dir,
                                                                      inputs.entities)):
        stale.unlink(missing_ok=True)


def clear_stale_outputs(output_dir: Path, inputs: InputSet) -> None:
    """Remove what an interrupted earlier run left for this unit (no completion record), so
    nothing of it can be mistaken for a result, and the record of an earlier failure."""
    remove_unit_outputs(output_dir, inputs)
    crash_path(output_dir, inputs.unit_id).unlink(missing_ok=True)


def pending_units(config: RunConfig, units: Sequence[InputSet],
                  outcome: RunOutcome) -> list[InputSet]:
    """Units to process: complete ones are skipped unless `--force`."""
    todo = []
    for inputs in units:
        if not config.force and is_complete(config.output_dir, inputs.entities):
            with unit_log(config, inputs.unit_id):
                log.warning("%s: already complete, skipped (use --force to recompute)",
                            inputs.unit_id)
            outcome.outcomes.append(UnitOutcome(inputs.unit_id, "skipped", "already complete"))
            continue
        clear_stale_outputs(config.output_dir, inputs)
        todo.append(inputs)
    return todo


def available_modalities(inputs: InputSet, replace_t1: str | None) -> set[str]:
    """Descriptor modality names (t1, flair, swi, t2) this unit can supply."""
    found = {m for m, role in MODALITY_TO_ROLE.items() if inputs.has(role)}
    if replace_t1 == "t2":
        found.discard("t1")
        if inputs.has("t2w"):
            found.add("t1")
    return found


def full_folder(folders: Sequence[Path], reserve: int = 1 << 20) -> Path | None:
    """The first existing folder with less than `reserve` bytes free (the disk that filled)."""
    for folder in folders:
        try:
            if shutil.disk_usage(folder).free < reserve:
                return folder
        except OSError:
            continue
    return None


def classify_failure(config: RunConfig, exc: BaseException) -> tuple[ExitCode, str]:
    """The failure's exit class and one line saying what went wrong: the error's own message;
    for a full disk, the folder (an OSError from a write names no file); an unexpected error
    while the output or work disk is full is put down to the full disk (ANTs or matplotlib
    do not say ENOSPC); otherwise the error's type and text (an internal error, class 1)."""
    code = exit_class(exc)
    if isinstance(exc, ShivaError):
        return code, str(exc)
    full = full_folder([config.output_dir, config.work_dir])
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        where = exc.filename or full or f"{config.output_dir} or {config.work_dir}"
        return code, f"{where}: cannot write ({exc.strerror})"
    if full is not None:
        return ExitCode.CANNOT_CREATE_OUTPUT, (f"{full}: no space left on device "
                                               f"({type(exc).__name__}: {exc})")
    return code, f"{type(exc).__name__}: {exc}"


def record_failure(config: RunConfig, inputs: InputSet, stage: str, outcome: RunOutcome,
                   exc: BaseException) -> None:
    """Record a unit's failure with its exit class: remove its partial outputs, write its
    crash file (if the disk still allows), log one line (or stop the run when asked)."""
    code, what = classify_failure(config, exc)
    message = f"{stage}: {what}"
    try:
        remove_unit_outputs(config.output_dir, inputs)
        path = write_crash(config.output_dir, inputs.unit_id, stage, exc)
        details = f"details: {path.relative_to(config.output_dir)}"
    except (OSError, ShivaError) as error:  # e.g. the disk is full: the log line must do
        details = f"no crash file written: {error}"
    log.error("%s: failed: %s (%s)", inputs.unit_id, message, details)
    log.debug("%s: %s", inputs.unit_id, getattr(exc, "traceback_text", None)
              or "".join(traceback.format_exception(exc)))  # unit log file; -vv console
    # The outcome's message is the progress line: short, the error line above says it all.
    outcome.outcomes.append(UnitOutcome(inputs.unit_id, "failed",
                                        f"failed, exit class {int(code)} ({details})", code))
    if config.stop_on_first_crash:
        raise StopRun(inputs.unit_id) from exc


def parallel_map(function: Callable, items: Sequence, processes: int) -> list:
    """`function` over `items` in up to `processes` worker processes (spawned, so that no
    TensorFlow state is forked); exceptions are returned in place of results."""
    if processes <= 1 or len(items) <= 1:
        return [_capture(function, item) for item in items]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(processes, len(items)),
                             mp_context=context, initializer=exit_with_parent) as pool:
        futures = [pool.submit(_capture, function, item) for item in items]
        return [_result(future) for future in futures]


def _result(future):
    """A worker's result; a worker that died (killed, e.g. by the out-of-memory killer)
    fails its unit with a temporary error instead of the whole run."""
    try:
        return future.result()
    except BrokenProcessPool:
        return TemporaryError("a worker process stopped abruptly (killed, e.g. out of "
                              "memory); retry, with fewer --nprocs or more memory")


def _capture(function: Callable, item):
    try:
        return function(item)
    except Exception as exc:  # noqa: BLE001 - re-raised by the caller per unit
        exc.traceback_text = traceback.format_exc()  # type: ignore[attr-defined]
        return exc


def elapsed(start: float) -> float:
    return round(time.perf_counter() - start, 1)
