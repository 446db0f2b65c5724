"""A small ordered table (list of rows with fixed columns) that writes BIDS TSV files."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

NA = "n/a"  # BIDS missing value


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return str(value)


@dataclass(frozen=True)
class Table:
    """Rows (dicts) with the given columns, in order; `descriptions` is the JSON data
    dictionary ({column: {"Description": ..., "Units": ...}})."""

    columns: tuple[str, ...]
    rows: tuple[Mapping[str, Any], ...]
    descriptions: Mapping[str, Mapping[str, str]]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def column(self, name: str) -> list[Any]:
        return [row[name] for row in self.rows]

    def to_tsv(self) -> str:
        lines = ["\t".join(self.columns)]
        lines += ["\t".join(_cell(row.get(c)) for c in self.columns) for row in self.rows]
        return "\n".join(lines) + "\n"

    def data_dictionary(self) -> dict[str, Any]:
        """The BIDS data dictionary (column descriptions) followed by the table's metadata."""
        out: dict[str, Any] = {c: dict(self.descriptions[c]) for c in self.columns
                               if c in self.descriptions}
        out.update(self.metadata)
        return out


def make_table(rows: Sequence[Mapping[str, Any]], descriptions: Mapping[str, Mapping[str, str]],
               columns: Sequence[str] | None = None,
               metadata: Mapping[str, Any] | None = None) -> Table:
    """A Table whose columns default to the keys of `descriptions`, in order."""
    return Table(tuple(columns or descriptions), tuple(rows), descriptions, dict(metadata or {}))
