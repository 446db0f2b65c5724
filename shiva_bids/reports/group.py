"""The group report: `output_dir/group_report.html`, self-contained.

Distributions of every marker's load per region (box plot with the units as points), and a
table of units with links to their reports, QC-flagged units first.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from shiva_bids import __version__  # noqa: E402
from shiva_bids.io import atomic_write_text  # noqa: E402
from shiva_bids.markers import MARKER_NAMES  # noqa: E402
from shiva_bids.postprocessing.standard import STANDARD_GROUPS  # noqa: E402
from shiva_bids.reports.render import Figure, environment, stylesheet  # noqa: E402

MAX_POINTS = 2000  # strip-plot points drawn per box (a random, seeded subset beyond that)


def _distribution_png(marker: str, columns: dict[str, np.ndarray]) -> bytes:
    """Box plot per region with the units drawn as jittered points (log1p volume)."""
    rng = np.random.default_rng(0)
    names = list(columns)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.2))
    data = [np.log1p(columns[n][np.isfinite(columns[n])]) for n in names]
    ax.boxplot(data, showfliers=False)
    for position, values in enumerate(data, start=1):
        if values.size > MAX_POINTS:
            values = rng.choice(values, MAX_POINTS, replace=False)
        ax.scatter(position + rng.uniform(-0.15, 0.15, values.size), values, s=6,
                   alpha=0.5, color="#c0392b")
    ax.set_xticks(range(1, len(names) + 1), names, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("log(1 + volume mm³)")
    ax.set_title(f"{marker} load per region", fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _standard(marker: str) -> list[str]:
    """The marker's standard region groups (postprocessing/standard.py)."""
    return [group for group, _, _ in STANDARD_GROUPS.get(marker, ())]


def _marker_columns(rows: Sequence[dict], marker: str) -> dict[str, np.ndarray]:
    """Region name -> volume per unit, for the marker's total and its standard region groups
    (each scheme region when no unit has them)."""
    standard = [f"{marker}_{g}_volume_mm3" for g in _standard(marker)]
    regional = standard if any(isinstance(r.get(c), (int, float)) for r in rows
                               for c in standard) else sorted(
        {c for r in rows for c in r if c.startswith(f"{marker}_") and c.endswith("_volume_mm3")
         and c != f"{marker}_volume_mm3" and c not in standard})
    wanted = [f"{marker}_volume_mm3"] + regional
    result = {}
    for column in wanted:
        values = np.array([float(r[column]) if isinstance(r.get(column), (int, float))
                           else np.nan for r in rows])
        if np.isfinite(values).any():
            label = "total" if column == f"{marker}_volume_mm3" else \
                column[len(marker) + 1:-len("_volume_mm3")]
            result[label] = values
    return result


def _display_row(row: dict) -> dict:
    unit = row["participant_id"] + ("" if row["session_id"] == "n/a" else f"_{row['session_id']}")
    shown = {"unit": unit, "report": f"{unit}.html", "flags": row.get("qc_flags", ""),
             "brain": f"{row['brain_volume_mm3'] / 1000:.0f}"
             if isinstance(row.get("brain_volume_mm3"), (int, float)) else "–"}
    for marker in MARKER_NAMES:
        if row.get(f"{marker}_status") == "done":
            shown[f"{marker}_n"] = row[f"{marker}_n_clusters"]
            shown[f"{marker}_v"] = f"{row[f'{marker}_volume_mm3']:.1f}"
            # standard regions: volumes for WMH (rated by extent), counts for the others
            unit = "volume_mm3" if marker == "WMH" else "count"
            parts = [f"{g.replace('_', ' ')} {_number(row.get(f'{marker}_{g}_{unit}'))}"
                     for g in _standard(marker)]
            shown[f"{marker}_r"] = "; ".join(parts)
    return shown


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return f"{value:.0f}" if isinstance(value, int) or float(value).is_integer() \
        else f"{value:.1f}"


def render_group_report(output_dir: Path, rows: Sequence[dict], statuses: Sequence,
                        min_units_for_iqr: int) -> Path:
    """Write `output_dir/group_report.html` from the complete units' rows (with `qc_flags`)
    and every expected unit's status (shiva_bids.unit_status.UnitStatus)."""
    ordered = sorted(rows, key=lambda r: (not r.get("qc_flags"), r["participant_id"],
                                          r["session_id"]))
    markers = [m for m in MARKER_NAMES if any(r.get(f"{m}_status") == "done" for r in rows)]
    figures = [Figure.from_png(f"{m} load per region",
                               _distribution_png(m, _marker_columns(rows, m)))
               for m in markers if _marker_columns(rows, m)]
    sources = {str(r[c]) for r in rows for c in r if c.endswith("_region_source")}
    page = environment().get_template("group.html").render(
        css=stylesheet(), version=__version__, rows=[_display_row(r) for r in ordered],
        markers=markers, figures=figures,
        not_complete=[s for s in statuses if s.status != "complete"],
        n_units=len(statuses), n_flagged=sum(bool(r.get("qc_flags")) for r in rows),
        region_sources=sorted(sources),
        atlas_based=any(source.startswith("atlas:") for source in sources),
        demo=any(r.get("demo_models") for r in rows), min_iqr=min_units_for_iqr)
    return atomic_write_text(output_dir / "group_report.html", page)
