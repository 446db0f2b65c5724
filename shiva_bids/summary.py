"""The per-unit summary record: what was run on one participant/session and what it found.

It is written last, after every output file of the unit, so its presence with
``status == "complete"`` is the completion record (DESIGN.md "Conventions"): a rerun skips the
unit, the group level reads it, and ``--reports-only`` rebuilds the report from it. A unit
killed half-way has no summary and is redone by the next run.

File: ``sub-X[/ses-Y]/sub-X[_ses-Y]_summary.json`` (not a BIDS suffix: listed in .bidsignore).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from shiva_bids.bids.derivatives import unit_dir
from shiva_bids.bids.inputs import UnitNames
from shiva_bids.io import atomic_write_json

SCHEMA_VERSION = 1
COMPLETE = "complete"


@dataclass
class MarkerSummary:
    """What one marker produced (or why it was skipped) for one unit."""

    marker: str
    status: str  # "done" or "skipped"
    reason: str = ""  # why skipped
    space: str = ""
    threshold: float | None = None
    min_cluster_size_mm3: float | None = None
    n_clusters: int = 0
    total_volume_mm3: float = 0.0
    regions: dict[str, dict[str, float]] = field(default_factory=dict)  # region -> stats
    region_source: str = "none"
    model: dict[str, Any] = field(default_factory=dict)  # provenance from the model layer
    files: dict[str, str] = field(default_factory=dict)  # kind -> path relative to output_dir


@dataclass
class UnitSummary(UnitNames):
    """Everything the group level and the report need about one participant/session."""

    subject: str
    session: str | None
    status: str
    software_version: str
    inputs: dict[str, str] = field(default_factory=dict)  # role -> BIDS URI
    input_choices: dict[str, str] = field(default_factory=dict)
    brain_mask_method: str = ""
    brain_volume_mm3: float | None = None
    markers: dict[str, MarkerSummary] = field(default_factory=dict)
    qc: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    demo_models: bool = False
    runtime_s: float | None = None
    pipeline: str = "shiva"
    extra: dict[str, Any] = field(default_factory=dict)  # pipeline-specific values (fetal)
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "UnitSummary":
        """The summary from its JSON form; TypeError when the JSON has another shape."""
        data = _checked(cls, payload, "")
        data["markers"] = {name: MarkerSummary(**_checked(MarkerSummary, m, f"markers.{name}."))
                           for name, m in data.get("markers", {}).items()}
        return cls(**data)


def _checked(cls, payload: Any, where: str) -> dict[str, Any]:
    """The known fields of `payload`, after checking that it is an object whose object and
    array fields are objects and arrays (and `regions` an object of objects)."""
    if not isinstance(payload, dict):
        raise TypeError(f"{where or 'the summary'} is a JSON {type(payload).__name__}, not an "
                        "object")
    data = {k: v for k, v in payload.items() if k in cls.__dataclass_fields__}
    for name, spec in cls.__dataclass_fields__.items():
        kind = spec.default_factory
        if name in data and kind in (dict, list) and not isinstance(data[name], kind):
            raise TypeError(f"{where}{name} is not a JSON {'object' if kind is dict else 'array'}")
    if not all(isinstance(stats, dict) for stats in data.get("regions", {}).values()):
        raise TypeError(f"{where}regions holds a value that is not a JSON object")
    return data


def summary_path(output_dir: Path, entities: dict[str, str]) -> Path:
    """Where the summary of a unit lives (next to its `anat/` folder)."""
    folder = unit_dir(output_dir, entities).parent
    stem = f"sub-{entities['sub']}" + (f"_ses-{entities['ses']}" if entities.get("ses") else "")
    return folder / f"{stem}_summary.json"


def write_summary(output_dir: Path, summary: UnitSummary) -> Path:
    """Write the summary atomically; call it last for a unit."""
    return atomic_write_json(summary_path(output_dir, summary.entities), summary.to_json())


def read_summary(path: Path) -> UnitSummary:
    """Read one summary file; ValueError naming it when it cannot be read or is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return UnitSummary.from_json(json.loads(text))
    except (ValueError, TypeError, KeyError) as exc:  # JSON and Unicode errors are ValueErrors
        raise ValueError(f"{path}: not a shiva-bids summary ({exc})") from exc


def is_complete(output_dir: Path, entities: dict[str, str]) -> bool:
    """True when the unit has a complete summary (its outputs can be trusted)."""
    path = summary_path(output_dir, entities)
    if not path.is_file():
        return False
    try:
        return read_summary(path).status == COMPLETE
    except ValueError:
        return False


def find_summaries(output_dir: Path) -> list[Path]:
    """Every unit summary under `output_dir`, sorted (sub-*/ and sub-*/ses-*/)."""
    found = list(output_dir.glob("sub-*/sub-*_summary.json"))
    found += output_dir.glob("sub-*/ses-*/sub-*_summary.json")
    return sorted(found)
