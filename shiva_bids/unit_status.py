"""Which units the group level expects, and where each of them stands.

Expected units are the selected participants/sessions of `bids_dir` (its `sub-*`/`ses-*`
folders, selected by the labels as the participant level selects them) plus every unit the
participant level left a trace of in `output_dir` (a summary, a crash file, a skip record, a
log file), so that nothing is dropped when `bids_dir` cannot be read by the group job.

The status of a unit is the first that applies:

* complete: its summary (the completion record) says complete;
* failed: `logs/crash-<unit>.txt` exists;
* not run: the participant level skipped it (`logs/skipped-<unit>.txt`, e.g. no T1w), or
  there is no trace of it at all;
* incomplete: its summary cannot be read or is not complete, or it has a log file but none of
  the above: it started and did not finish (still running, or stopped: killed, out of time).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from shiva_bids.bids.inputs import unit_id
from shiva_bids.summary import COMPLETE, UnitSummary, find_summaries, read_summary

log = logging.getLogger(__name__)

FAILED, INCOMPLETE, NOT_RUN = "failed", "incomplete", "not run"
STATUSES: tuple[str, ...] = (COMPLETE, FAILED, INCOMPLETE, NOT_RUN)
_UNIT = re.compile(r"^sub-([A-Za-z0-9]+)(?:_ses-([A-Za-z0-9]+))?$")


@dataclass(frozen=True)
class UnitStatus:
    """Where one expected unit stands, and why (naming the file to look at)."""

    subject: str
    session: str | None
    status: str
    detail: str = ""

    @property
    def unit_id(self) -> str:
        return unit_id(self.subject, self.session)


@dataclass
class UnitsFound:
    """Every expected unit's status, and the summaries of the complete ones."""

    statuses: list[UnitStatus] = field(default_factory=list)
    summaries: list[UnitSummary] = field(default_factory=list)
    any_trace: bool = False  # False: the participant level has left nothing in output_dir

    def with_status(self, status: str) -> list[UnitStatus]:
        return [s for s in self.statuses if s.status == status]

    @property
    def all_complete(self) -> bool:
        return all(s.status == COMPLETE for s in self.statuses)


def _parse_unit(name: str) -> tuple[str, str | None] | None:
    match = _UNIT.match(name)
    return (match.group(1), match.group(2)) if match else None


def dataset_units(bids_dir: Path, participant_labels: Sequence[str] = (),
                  session_labels: Sequence[str] = ()) -> list[tuple[str, str | None]]:
    """The units of `bids_dir` selected by the labels; none (with a warning) when the
    dataset cannot be read, e.g. not mounted in the group job. Unknown labels raise
    NothingSelectedError (18), as at the participant level."""
    from shiva_bids.bids.discovery import select_units
    from shiva_bids.errors import MissingInputError
    try:
        return [(u.subject, u.session) for u in select_units(bids_dir, participant_labels,
                                                             session_labels)]
    except MissingInputError as exc:
        log.warning("%s; units are taken from the participant-level outputs only", exc)
        return []
    except OSError as exc:
        log.warning("%s cannot be read (%s); units are taken from the participant-level "
                    "outputs only", bids_dir, exc.strerror or exc)
        return []


def _traces(output_dir: Path) -> dict[str, dict[tuple[str, str | None], Path]]:
    """Files the participant level leaves per unit: kind -> {(subject, session): path}."""
    logs = output_dir / "logs"
    kinds = {"crash": ("crash-", ".txt"), "skip": ("skipped-", ".txt"), "log": ("", ".log")}
    found: dict[str, dict[tuple[str, str | None], Path]] = {kind: {} for kind in kinds}
    for kind, (prefix, suffix) in kinds.items():
        for path in sorted(logs.glob(f"{prefix}sub-*{suffix}")):
            unit = _parse_unit(path.name[len(prefix):-len(suffix)])
            if unit is not None:
                found[kind][unit] = path
    found["summary"] = {}
    for path in find_summaries(output_dir):
        unit = _parse_unit(path.name.removesuffix("_summary.json"))
        if unit is not None:
            found["summary"][unit] = path
    return found


def _selected(unit: tuple[str, str | None], participant_labels: Sequence[str],
              session_labels: Sequence[str]) -> bool:
    subject, session = unit
    return (not participant_labels or subject in participant_labels) and \
        (not session_labels or session in session_labels)


def collect_statuses(output_dir: Path, bids_dir: Path, participant_labels: Sequence[str] = (),
                     session_labels: Sequence[str] = ()) -> UnitsFound:
    """The status of every expected unit (module docstring), sorted by unit."""
    traces = _traces(output_dir)
    units = set(dataset_units(bids_dir, participant_labels, session_labels))
    for per_unit in traces.values():
        units.update(u for u in per_unit if _selected(u, participant_labels, session_labels))
    found = UnitsFound(any_trace=any(traces.values()))
    for unit in sorted(units, key=lambda u: (u[0], u[1] or "")):
        status, detail, summary = _status(output_dir, unit, traces)
        found.statuses.append(UnitStatus(unit[0], unit[1], status, detail))
        if summary is not None:
            found.summaries.append(summary)
    return found


def _status(output_dir: Path, unit: tuple[str, str | None],
            traces: dict[str, dict]) -> tuple[str, str, UnitSummary | None]:
    def rel(path: Path) -> str:
        return str(path.relative_to(output_dir))

    summary_file = traces["summary"].get(unit)
    problem = ""
    if summary_file is not None:
        try:
            summary = read_summary(summary_file)
        except ValueError as exc:
            problem = f"unreadable summary: {exc}"
        else:
            if summary.status == COMPLETE:
                return COMPLETE, "", summary
            problem = f"summary {rel(summary_file)} says {summary.status!r}"
    if unit in traces["crash"]:
        return FAILED, f"see {rel(traces['crash'][unit])}", None
    if unit in traces["skip"]:
        return NOT_RUN, f"skipped: {_first_line(traces['skip'][unit])}", None
    if problem:
        return INCOMPLETE, f"{problem}; rerun the participant level", None
    if unit in traces["log"]:
        return INCOMPLETE, (f"started ({rel(traces['log'][unit])}) but has no completion "
                            "record: still running, or stopped (killed, out of time); rerun "
                            "the participant level once no job runs it"), None
    return NOT_RUN, "no output and no log: the participant level has not run it", None


def _first_line(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[0]
    except (OSError, IndexError):
        return "reason not recorded"


def describe(found: UnitsFound, limit: int = 20) -> list[str]:
    """Log lines for the units that are not complete (at most `limit`, then a count)."""
    lines = [f"{s.unit_id}: {s.status}: {s.detail}" for s in found.statuses
             if s.status != COMPLETE]
    if len(lines) > limit:
        lines = lines[:limit] + [f"... and {len(lines) - limit} more not complete (see the "
                                 "status column of the group table)"]
    return lines


def counts(found: UnitsFound) -> str:
    """`3 of 5 unit(s) complete (1 failed, 1 incomplete)`."""
    others = ", ".join(f"{len(found.with_status(s))} {s}" for s in STATUSES[1:]
                       if found.with_status(s))
    text = f"{len(found.with_status(COMPLETE))} of {len(found.statuses)} unit(s) complete"
    return f"{text} ({others})" if others else text


__all__ = ["UnitStatus", "UnitsFound", "collect_statuses", "dataset_units", "describe",
           "counts", "COMPLETE", "FAILED", "INCOMPLETE", "NOT_RUN", "STATUSES"]
