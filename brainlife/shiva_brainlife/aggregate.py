"""Aggregator mode: many participant outputs (`raw`) -> the shiva-bids group table.

The config key `raw` lists the `raw` outputs of participant runs of this App (each a
shiva-bids derivative dataset of one subject; brainlife gives a list for a "multi" input).
They are merged by symbolic links into one derivative dataset, on which the shiva-bids group
level runs. The `group` output (brainlife datatype `raw`) holds `shiva_group.tsv` (one row per
participant/session) with its data dictionary `shiva_group.json`, `shiva_clusters.tsv` (every
cluster) and `group_report.html`; product.json summarises counts per marker.
"""
from __future__ import annotations

import csv
import shutil
import statistics
from pathlib import Path

from shiva_bids.group import GROUP_FOLDER
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.unit_status import COMPLETE, collect_statuses
from shiva_brainlife.inputs import ConfigError

GROUP_FILES = ("shiva_group.tsv", "shiva_group.json", "shiva_clusters.tsv")
MAX_LISTED = 10  # units named in a product.json message


def output_folders(config: dict, base: Path) -> list[Path]:
    """The `raw` folders of the config (a list, or one path), each a shiva-bids output."""
    value = config.get("raw")
    folders = [value] if isinstance(value, str) else list(value or [])
    paths = [(base / str(v)).absolute() for v in folders]
    for path in paths:
        if not (path / "dataset_description.json").is_file():
            raise ConfigError(f"raw: {path} is not a shiva-bids output (no "
                              "dataset_description.json)")
    if not paths:
        raise ConfigError("raw: no participant output given")
    return paths


def _link_children(source: Path, target: Path, pattern: str) -> list[str]:
    """Link `source/<pattern>` entries into `target`; return the names already there."""
    clashes = []
    for entry in sorted(source.glob(pattern)):
        link = target / entry.name
        if link.exists() or link.is_symlink():
            clashes.append(str(link.relative_to(target.parent)))
            continue
        link.symlink_to(entry)
    return clashes


def merge_outputs(folders: list[Path], merged: Path) -> list[str]:
    """One derivative dataset made of links to every folder's units, reports and logs; a unit
    given twice is taken from the first folder (returned as a warning)."""
    merged.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(folders[0] / "dataset_description.json",
                    merged / "dataset_description.json")
    (merged / "logs").mkdir(exist_ok=True)
    warnings = []
    for folder in folders:
        for subject in sorted(folder.glob("sub-*/")):
            (merged / subject.name).mkdir(exist_ok=True)
            clashes = _link_children(subject, merged / subject.name, "*")
            warnings += [f"{name} is in more than one input; the first one is used"
                         for name in clashes if "_summary.json" in name or "ses-" in name]
        _link_children(folder, merged, "sub-*.html")
        if (folder / "logs").is_dir():
            _link_children(folder / "logs", merged / "logs", "*")
    return warnings


def _numbers(rows: list[dict], column: str) -> list[float]:
    return [float(r[column]) for r in rows if r.get(column) not in (None, "", "n/a")]


def group_product(merged: Path, warnings: list[str]) -> dict:
    """Messages and per-marker figures of the group table (its rows of complete units) and
    the units that are not complete, with their status."""
    with open(merged / GROUP_FOLDER / "shiva_group.tsv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t")
                if r.get("status", COMPLETE) == COMPLETE]
    found = collect_statuses(merged, merged / "no-bids")
    markers = {}
    for name in MARKER_NAMES:
        counts = _numbers(rows, f"{name}_n_clusters")
        if counts:
            volumes = _numbers(rows, f"{name}_volume_mm3")
            markers[name] = {"units": len(counts), "median_n_clusters": statistics.median(counts),
                             "max_n_clusters": max(counts),
                             "median_volume_mm3": round(statistics.median(volumes), 3)}
    lines = [f"{len(rows)} participant/session unit(s) in the group table"]
    lines += [f"{m}: {v['units']} units, median {v['median_n_clusters']:g} clusters "
              f"({v['median_volume_mm3']:g} mm^3)" for m, v in markers.items()]
    entries = [{"type": "success", "msg": "; ".join(lines)}]
    flagged = [f"{r['participant_id']} {r['session_id']}: {r['qc_flags']}"
               for r in rows if r.get("qc_flags")]
    if flagged:
        entries.append({"type": "warning", "msg": f"QC flags ({len(flagged)}): "
                        + "; ".join(flagged[:MAX_LISTED])})
    not_complete = [f"{s.unit_id} ({s.status})" for s in found.statuses if s.status != COMPLETE]
    if not_complete:
        entries.append({"type": "warning", "msg": f"{len(not_complete)} unit(s) not complete: "
                        + ", ".join(not_complete[:MAX_LISTED])})
    entries += [{"type": "warning", "msg": text} for text in warnings]
    return {"brainlife": entries, "shiva_bids_group": {"units": len(rows), "markers": markers}}


def copy_group_outputs(merged: Path, target: Path) -> list[Path]:
    """The `group` output: the group tables and the group report."""
    target.mkdir(parents=True, exist_ok=True)
    sources = [merged / GROUP_FOLDER / name for name in GROUP_FILES]
    sources.append(merged / "group_report.html")
    return [Path(shutil.copyfile(s, target / s.name)) for s in sources if s.is_file()]
