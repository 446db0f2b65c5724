"""`shiva-bids models list --models-dir DIR`: what a models folder holds and what would run.

    shiva-bids models list --models-dir DIR [--no-verify]

Prints every `model_info*.json` found under DIR (any depth): marker, modalities, version,
release date, format, fold count, how many fold files are present, whether their md5s match
the descriptor ("not published" for releases whose descriptor lists none, PVS v3), and the
descriptor's path; then the broken descriptors with their problem; then, for a unit with T1
only, T1+FLAIR, and T1+FLAIR+SWI, the release each marker would use (the rule of
docs/models.md "Which model is used"). `--no-verify` skips the md5s (they read every model
file: about 1 GB per release).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from shiva_bids.errors import ShivaError
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.models.checksums import md5_of_path
from shiva_bids.models.descriptors import (NOT_PUBLISHED, TARGETS, ModelDescriptor,
                                           resolve_model_file)
from shiva_bids.models.selection import ModelScan, choose_models, scan_models_dir

# The unit kinds the choice is shown for: name -> the images (InputSet roles) it has.
UNIT_KINDS: dict[str, tuple[str, ...]] = {
    "T1": ("t1w",), "T1+FLAIR": ("t1w", "flair"), "T1+FLAIR+SWI": ("t1w", "flair", "swi")}


def md5_status(descriptor: ModelDescriptor) -> str:
    """"verified", "not published", "verified, N not published" or "MISMATCH: names"."""
    entries = list(descriptor.files) + ([descriptor.script] if descriptor.script else [])
    checked = [e for e in entries if e.md5 is not None]
    bad = [e.name for e in checked
           if md5_of_path(resolve_model_file(descriptor.directory, e.name)) != e.md5]
    if bad:
        return f"MISMATCH: {', '.join(bad)}"
    if not checked:
        return NOT_PUBLISHED
    unpublished = len(entries) - len(checked)
    return "verified" + (f", {unpublished} {NOT_PUBLISHED}" if unpublished else "")


@dataclass(frozen=True)
class Row:
    """One descriptor's line of the listing."""

    descriptor: ModelDescriptor
    files: str  # "present/total"
    md5: str  # md5_status, "not checked", or "-" when files are missing

    @property
    def usable(self) -> bool:
        return self.descriptor.files_present and not self.md5.startswith("MISMATCH")


def rows_of(scan: ModelScan, verify: bool) -> list[Row]:
    """The listing rows, ordered by marker, modalities, version."""
    def order(d: ModelDescriptor) -> tuple:
        return (TARGETS.index(d.target), len(d.modalities), d.modalities, d.version_number,
                str(d.path))

    rows = []
    for descriptor in sorted(scan.descriptors, key=order):
        total = len(descriptor.files)
        present = total - len(descriptor.missing_folds)
        if present < total:
            md5 = "-"
        else:
            md5 = md5_status(descriptor) if verify else "not checked"
        rows.append(Row(descriptor, f"{present}/{total}", md5))
    return rows


def choice_table(scan: ModelScan, rows: Sequence[Row]) -> list[list[str]]:
    """Per unit kind, the release each marker would use, or why none / why the run stops."""
    by_path = {row.descriptor.path: row for row in rows}
    table = []
    for kind, roles in UNIT_KINDS.items():
        line = [kind]
        try:
            choices = choose_models(scan.descriptors, MARKER_NAMES, roles,
                                    broken=scan.broken)
        except ShivaError as exc:
            table.append([kind, f"the run stops: {exc}"])
            continue
        for marker in MARKER_NAMES:
            descriptor = choices[marker].descriptor
            if descriptor is None:
                line.append("-")
                continue
            row = by_path[descriptor.path]
            note = "" if row.usable else \
                f" (stops: {'files missing' if row.md5 == '-' else 'md5 mismatch'})"
            line.append(f"{descriptor.target} {descriptor.version} "
                        f"({'+'.join(descriptor.modalities)}){note}")
        table.append(line)
    return table


def _format(table: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table if i < len(r)) for i in range(max(map(len, table)))]
    return ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in table]


def render(scan: ModelScan, verify: bool) -> str:
    """The whole listing as text."""
    rows = rows_of(scan, verify)
    total = len(scan.descriptors) + len(scan.broken)
    lines = [f"{total} model descriptor(s) under {scan.models_dir}", ""]
    table = [["marker", "modalities", "version", "released", "format", "folds", "files",
              "md5", "descriptor"]]
    for row in rows:
        d = row.descriptor
        table.append([d.target + (" (demo)" if d.is_demo else ""), "+".join(d.modalities),
                      d.version, d.release_date or "-", d.format, str(len(d.files)), row.files,
                      row.md5, str(d.path.relative_to(scan.models_dir))])
    lines += _format(table)
    if scan.broken:
        lines += ["", "broken descriptors (ignored unless selected for a marker):"]
        lines += [f"  {b.path.relative_to(scan.models_dir)}: {b.problem}" for b in scan.broken]
    lines += ["", "release used by a unit with these images:"]
    lines += _format([["unit images", *MARKER_NAMES], *choice_table(scan, rows)])
    return "\n".join(lines) + "\n"


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    from shiva_bids.cli import _Parser

    parser = _Parser(prog="shiva-bids models", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list",), help="list: every descriptor found")
    parser.add_argument("--models-dir", "--models_dir", type=Path, required=True,
                        metavar="DIR", help="the folder given to --models-dir")
    parser.add_argument("--no-verify", "--no_verify", action="store_true",
                        help="do not compute md5s (faster; the md5 column says 'not checked')")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    """Entry point of `shiva-bids models list`; returns the exit code."""
    args = _parse(argv)
    print(render(scan_models_dir(args.models_dir.absolute()), verify=not args.no_verify),
          end="")
    return 0

