"""The group level: every unit's outputs in one table, QC flags and a group report.

Reads the unit summaries in `output_dir` (the completion records: units without one are
listed as incomplete, crash files as failed), then writes under `output_dir/group/` (listed in
.bidsignore):

* `shiva_group.tsv` + `shiva_group.json` (data dictionary): one row per participant/session;
* `shiva_clusters.tsv`: every cluster of every unit (long format);
* `group_report.html` at the top level (flagged units first, links to unit reports).

QC flags: the 1.5 x IQR rule on QC measures and marker loads when there are >= 10 units
(as SHiVAi does, reference/SHIVA.md §11), plus hard checks that apply at any size.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode, MissingInputError
from shiva_bids.io import atomic_write_json, atomic_write_text
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.postprocessing.standard import standard_descriptions, standard_values
from shiva_bids.summary import COMPLETE, UnitSummary, find_summaries, read_summary

log = logging.getLogger(__name__)

MIN_UNITS_FOR_IQR = 10  # SHIVA.md §11
BRAIN_VOLUME_RANGE_MM3 = (600_000.0, 2_600_000.0)  # adult brain masks (CSF may be in)
MAX_REGISTRATION_ROTATION_DEG = 20.0
MAX_REGISTRATION_TRANSLATION_MM = 30.0
GROUP_FOLDER = "group"


@dataclass
class GroupInputs:
    """What the group level found in the output folder."""

    summaries: list[UnitSummary] = field(default_factory=list)
    failed: dict[str, Path] = field(default_factory=dict)  # unit -> crash file
    incomplete: list[str] = field(default_factory=list)  # summaries not marked complete
    unreadable: list[str] = field(default_factory=list)


def slug(text: str) -> str:
    """A column-friendly form of a region name: `Deep WM L` -> `deep_wm_l`."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def collect_units(output_dir: Path) -> GroupInputs:
    """Read every unit summary; note failed and incomplete units."""
    found = GroupInputs()
    for path in find_summaries(output_dir):
        try:
            summary = read_summary(path)
        except ValueError as exc:
            log.warning("%s", exc)
            found.unreadable.append(str(path.relative_to(output_dir)))
            continue
        if summary.status == COMPLETE:
            found.summaries.append(summary)
        else:
            found.incomplete.append(summary.unit_id)
    done = {s.unit_id for s in found.summaries}
    for crash in sorted((output_dir / "logs").glob("crash-*.txt")):
        unit = crash.stem.removeprefix("crash-")
        if unit not in done:
            found.failed[unit] = crash
    return found


def unit_row(summary: UnitSummary) -> dict[str, object]:
    """The wide row of one unit: loads per marker and region, brain volume, QC, models."""
    row: dict[str, object] = {
        "participant_id": f"sub-{summary.subject}",
        "session_id": f"ses-{summary.session}" if summary.session else "n/a",
        "brain_volume_mm3": summary.brain_volume_mm3,
        "brain_mask_method": summary.brain_mask_method,
        "demo_models": summary.demo_models,
    }
    for name in MARKER_NAMES:
        marker = summary.markers.get(name)
        if marker is None or marker.status != "done":
            row[f"{name}_status"] = "skipped" if marker else "not run"
            continue
        row[f"{name}_status"] = "done"
        row[f"{name}_n_clusters"] = marker.n_clusters
        row[f"{name}_volume_mm3"] = marker.total_volume_mm3
        row[f"{name}_model"] = f"{marker.model.get('target', name)} " \
                               f"{marker.model.get('version', '')}".strip()
        row[f"{name}_model_md5"] = marker.model.get("checksums", "n/a")
        row[f"{name}_region_source"] = marker.region_source
        row.update({f"{name}_{k}": v for k, v in standard_values(name, marker.regions).items()})
        for region, stats in marker.regions.items():
            if region.lower() == "whole brain":
                continue
            row[f"{name}_{slug(region)}_count"] = stats.get("n_clusters", 0)
            row[f"{name}_{slug(region)}_volume_mm3"] = stats.get("total_volume_mm3", 0.0)
    for key, value in summary.qc.items():
        row[f"qc_{slug(key)}"] = value
    for key, value in summary.extra.get("group_values", {}).items():
        row[slug(key)] = value
    row["n_warnings"] = len(summary.warnings)
    return row


def _numeric(rows: Sequence[dict], column: str) -> np.ndarray:
    values = []
    for row in rows:
        value = row.get(column)
        values.append(float(value) if isinstance(value, (int, float)) and
                      not isinstance(value, bool) else np.nan)
    return np.asarray(values, dtype=float)


def qc_flags(rows: Sequence[dict]) -> list[list[str]]:
    """Flags per row: hard checks always; the 1.5 x IQR rule on QC measures and marker loads
    (columns `qc_*`, `*_volume_mm3`, `*_n_clusters`) when there are >= 10 units."""
    flags: list[list[str]] = [[] for _ in rows]
    low, high = BRAIN_VOLUME_RANGE_MM3
    for i, value in enumerate(_numeric(rows, "brain_volume_mm3")):
        if np.isfinite(value) and not low <= value <= high:
            flags[i].append("brain_volume_out_of_range")
    columns = sorted({c for row in rows for c in row})
    for column in columns:
        values = _numeric(rows, column)
        if column.endswith("norm_peak"):
            for i in np.flatnonzero((values < 0) | (values > 1)):
                flags[i].append(f"{column}_outside_0_1")
        if "rotation" in column:
            for i in np.flatnonzero(values > MAX_REGISTRATION_ROTATION_DEG):
                flags[i].append(f"{column}_large")
        if "translation" in column:
            for i in np.flatnonzero(values > MAX_REGISTRATION_TRANSLATION_MM):
                flags[i].append(f"{column}_large")
    if len(rows) >= MIN_UNITS_FOR_IQR:
        measured = [c for c in columns if c.startswith("qc_") or c.endswith("_n_clusters")
                    or (c.endswith("_volume_mm3") and c.count("_") == 2)]
        for column in measured:
            values = _numeric(rows, column)
            finite = values[np.isfinite(values)]
            if finite.size < MIN_UNITS_FOR_IQR:
                continue
            q1, q3 = np.percentile(finite, [25, 75])
            spread = 1.5 * (q3 - q1)
            for i in np.flatnonzero((values < q1 - spread) | (values > q3 + spread)):
                flags[i].append(f"outlier_{column}")
    return flags


def _tsv(rows: Iterable[dict], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), delimiter="\t",
                            lineterminator="\n", restval="n/a", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buffer.getvalue()


def _cell(value: object) -> object:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _ordered_columns(rows: Sequence[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    head = ["participant_id", "session_id", "qc_flags"]
    return head + [c for c in seen if c not in head]


def describe_column(column: str) -> dict[str, str]:
    """A BIDS-style data dictionary entry for a group-table column."""
    fixed = {
        "participant_id": "Participant label (sub-<label>).",
        "session_id": "Session label (ses-<label>), n/a without sessions.",
        "qc_flags": "Semicolon-separated QC flags (empty: none). outlier_<col>: outside "
                    "[Q1 - 1.5 IQR, Q3 + 1.5 IQR] (only with >= 10 units).",
        "brain_volume_mm3": "Brain mask volume in the native reference space.",
        "brain_mask_method": "How the brain mask was obtained.",
        "demo_models": "True when demo models (trained on phantoms, not for research) were used.",
        "n_warnings": "Number of warnings raised while processing the unit.",
    }
    standard = standard_descriptions()
    if column in fixed:
        entry = {"Description": fixed[column]}
    elif column in standard:
        entry = dict(standard[column])
    elif column.endswith("_region_source"):
        entry = {"Description": f"Where the {column[:3]} regions come from: "
                                "dseg:<segmentation> (--derivatives), atlas:<name> (template "
                                "atlas registered to the participant: approximate) or none."}
    elif column.startswith("qc_"):
        entry = {"Description": f"Quality-control measure {column[3:]}."}
    elif column.endswith("_status"):
        entry = {"Description": f"{column[:3]} processing status (done, skipped, not run)."}
    elif column.endswith("_model"):
        entry = {"Description": f"{column[:3]} model target and version."}
    elif column.endswith("_model_md5"):
        entry = {"Description": f"{column[:3]} model files' md5: verified, not published (the "
                                "release's descriptor lists none), partly verified, or not "
                                "verified (--skip-model-checksum); n/a for older outputs."}
    elif column.endswith("_n_clusters") or column.endswith("_count"):
        entry = {"Description": f"Number of {column[:3]} clusters"
                                + (" in the region." if column.endswith("_count") else ".")}
    elif column.endswith("_volume_mm3"):
        entry = {"Description": f"Total {column[:3]} volume"
                                + (" in the region." if column.count("_") > 2 else "."),
                 "Units": "mm^3"}
    else:
        entry = {"Description": column.replace("_", " ")}
    return entry


def cluster_rows(output_dir: Path, summaries: Sequence[UnitSummary]) -> Iterator[dict]:
    """Every cluster of every unit, read from the `seg-<M>_dseg.tsv` census files."""
    for summary in summaries:
        for marker in summary.markers.values():
            census = marker.files.get("census")
            if marker.status != "done" or not census:
                continue
            path = output_dir / census
            if not path.is_file():
                continue
            with open(path, newline="") as handle:
                for record in csv.DictReader(handle, delimiter="\t"):
                    yield {"participant_id": f"sub-{summary.subject}",
                           "session_id": f"ses-{summary.session}" if summary.session else "n/a",
                           "marker": marker.marker, **record}


@dataclass
class GroupOutputs:
    """The group table rows (with their flags) and the files written."""

    rows: list[dict]
    table: Path
    dictionary: Path
    clusters: Path


def write_group_outputs(output_dir: Path, found: GroupInputs) -> GroupOutputs:
    """Write the group table, its dictionary and the cluster table."""
    rows = [unit_row(s) for s in found.summaries]
    for row, flags in zip(rows, qc_flags(rows)):
        row["qc_flags"] = ";".join(flags)
    columns = _ordered_columns(rows)
    folder = output_dir / GROUP_FOLDER
    table = atomic_write_text(folder / "shiva_group.tsv", _tsv(rows, columns))
    dictionary = atomic_write_json(folder / "shiva_group.json",
                                   {c: describe_column(c) for c in columns})
    clusters = list(cluster_rows(output_dir, found.summaries))
    cluster_columns = [c for c in _ordered_columns(clusters) if c != "qc_flags"] if clusters \
        else ["participant_id", "session_id", "marker", "index", "name"]
    cluster_table = atomic_write_text(folder / "shiva_clusters.tsv",
                                      _tsv(clusters, cluster_columns))
    return GroupOutputs(rows, table, dictionary, cluster_table)


def run_group_level(config: RunConfig) -> ExitCode:
    """Gather every unit of `config.output_dir` into the group table and report."""
    if config.pipeline == "fetal-cgm":
        from shiva_bids.fetal.pipeline import run_fetal_group
        return run_fetal_group(config)
    output_dir = config.output_dir
    if not output_dir.is_dir():
        raise MissingInputError(f"{output_dir}: no such folder; run the participant level "
                                "first")
    found = collect_units(output_dir)
    if not found.summaries and not found.failed:
        raise MissingInputError(f"{output_dir}: no participant outputs found; run the "
                                "participant level first")
    written = write_group_outputs(output_dir, found)
    from shiva_bids.reports.group import render_group_report
    report = render_group_report(output_dir, written.rows, found.failed,
                                 found.incomplete, MIN_UNITS_FOR_IQR)
    print(f"group level: {len(found.summaries)} units ({len(found.failed)} failed, "
          f"{len(found.incomplete)} incomplete); table {written.table}; report {report}")
    return ExitCode.OK
