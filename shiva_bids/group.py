"""The group level: every unit's outputs in one table, QC flags and a group report.

Every unit the group level expects (the selected units of `bids_dir` and every unit the
participant level left a trace of) gets a status, complete / failed / incomplete / not run
(shiva_bids.unit_status); the summaries (completion records) of the complete ones give the
values. Then it writes under `output_dir/group/` (listed in .bidsignore):

* `shiva_group.tsv` + `shiva_group.json` (data dictionary): one row per expected
  participant/session, with its `status` (values only for complete units);
* `shiva_clusters.tsv`: every cluster of every complete unit (long format);
* `group_report.html` at the top level (flagged units first, links to unit reports, and the
  units that are not complete with the reason);
* `logs/group.log`.

Exit code: 0 when every expected unit is complete, 66 otherwise (the outputs are still
written); 66 with nothing written when the participant level has left nothing at all.

QC flags: the 1.5 x IQR rule on QC measures and marker loads when there are >= 10 units
(as SHiVAi does, reference/SHIVA.md §11), plus hard checks that apply at any size.
"""
from __future__ import annotations

import csv
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode, MissingInputError
from shiva_bids.io import atomic_write_json, atomic_write_text
from shiva_bids.log import add_file_log, remove_file_log
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.postprocessing.standard import standard_descriptions, standard_values
from shiva_bids.summary import UnitSummary
from shiva_bids.unit_status import UnitsFound, UnitStatus, collect_statuses, counts, describe

log = logging.getLogger(__name__)

MIN_UNITS_FOR_IQR = 10  # SHIVA.md §11
BRAIN_VOLUME_RANGE_MM3 = (600_000.0, 2_600_000.0)  # adult brain masks (CSF may be in)
MAX_REGISTRATION_ROTATION_DEG = 20.0
MAX_REGISTRATION_TRANSLATION_MM = 30.0
GROUP_FOLDER = "group"


def slug(text: str) -> str:
    """A column-friendly form of a region name: `Deep WM L` -> `deep_wm_l`."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def status_row(status: UnitStatus) -> dict[str, object]:
    """The row of a unit: its names and status; a complete unit's values come after."""
    return {"participant_id": f"sub-{status.subject}",
            "session_id": f"ses-{status.session}" if status.session else "n/a",
            "status": status.status, "status_detail": status.detail}


def engine_label(model: dict) -> str:
    """"openvino 2026.4.1 fp32" from a marker's model provenance ("n/a" for outputs written
    before the engine was recorded)."""
    if "engine" not in model:
        return "n/a"
    return " ".join(str(model.get(k, "?")) for k in ("engine", "engine_version", "precision"))


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
        row[f"{name}_engine"] = engine_label(marker.model)
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


def _ordered_columns(rows: Sequence[dict], head: Sequence[str] = (
        "participant_id", "session_id", "status", "status_detail", "qc_flags")) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    head = [c for c in head if c in seen or c == "qc_flags"]
    return head + [c for c in seen if c not in head]


def describe_column(column: str) -> dict[str, str]:
    """A BIDS-style data dictionary entry for a group-table column."""
    fixed = {
        "participant_id": "Participant label (sub-<label>).",
        "session_id": "Session label (ses-<label>), n/a without sessions.",
        "status": "Unit status: complete, failed (see logs/crash-<unit>.txt), incomplete "
                  "(started but not finished: still running or stopped; or an unreadable "
                  "summary), not run (skipped by the participant level, or never run). "
                  "Values are given for complete units only.",
        "status_detail": "Why the unit is not complete, naming the file to look at.",
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
    elif column.endswith("_engine"):
        entry = {"Description": f"What ran the {column[:3]} model: engine (openvino or "
                                "tensorflow), its version and the compute precision (fp32 or "
                                "bf16; --engine, --precision); n/a for older outputs."}
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


def write_group_outputs(output_dir: Path, found: UnitsFound) -> GroupOutputs:
    """Write the group table (a row per expected unit), its dictionary and the cluster
    table. `rows` are the complete units' rows (with their QC flags)."""
    rows = [unit_row(s) for s in found.summaries]
    for row, flags in zip(rows, qc_flags(rows)):
        row["qc_flags"] = ";".join(flags)
    by_unit = {(row["participant_id"], row["session_id"]): row for row in rows}
    table_rows = []
    for status in found.statuses:
        row = status_row(status)
        table_rows.append({**row, **by_unit.get((row["participant_id"], row["session_id"]),
                                                {})})
    columns = _ordered_columns(table_rows)
    folder = output_dir / GROUP_FOLDER
    table = atomic_write_text(folder / "shiva_group.tsv", _tsv(table_rows, columns))
    dictionary = atomic_write_json(folder / "shiva_group.json",
                                   {c: describe_column(c) for c in columns})
    clusters = list(cluster_rows(output_dir, found.summaries))
    cluster_columns = [c for c in _ordered_columns(clusters) if c != "qc_flags"] if clusters \
        else ["participant_id", "session_id", "marker", "index", "name"]
    cluster_table = atomic_write_text(folder / "shiva_clusters.tsv",
                                      _tsv(clusters, cluster_columns))
    return GroupOutputs(rows, table, dictionary, cluster_table)


def run_group_level(config: RunConfig) -> ExitCode:
    """Gather every expected unit of `config.output_dir` into the group table and report."""
    if config.pipeline == "fetal-cgm":
        from shiva_bids.models.devices import import_tensorflow
        import_tensorflow()  # quietly, before the fetal modules import it
        from shiva_bids.pipelines.fetal.pipeline import run_fetal_group
        return run_fetal_group(config)
    output_dir = config.output_dir
    if not output_dir.is_dir():
        raise MissingInputError(f"{output_dir}: no such folder; run the participant level "
                                "first")
    found = collect_statuses(output_dir, config.bids_dir, config.participant_labels,
                             config.session_labels)
    if not found.any_trace:
        raise MissingInputError(f"{output_dir}: no participant outputs found; run the "
                                "participant level first")
    handler = add_file_log(config.logs_dir / "group.log")
    try:
        written = write_group_outputs(output_dir, found)
        from shiva_bids.reports.group import render_group_report
        report = render_group_report(output_dir, written.rows, found.statuses,
                                     MIN_UNITS_FOR_IQR)
        for line in describe(found):
            log.warning("%s", line)
        code = ExitCode.OK if found.all_complete else ExitCode.NO_INPUT
        log.info("group level: %s; table %s; report %s (exit %d)", counts(found),
                 written.table, report, int(code))
    finally:
        remove_file_log(handler)
    print(f"group level: {counts(found)}; table {written.table}; report {report}")
    return code
