"""Participant report of the fetal pipeline: one self-contained HTML page.

A mosaic of slices of the T2w with the brain-mask contour (BDN) and the cortical grey matter
(CGM) overlaid, plus the volumes. The PNG is embedded as base64, so the page needs no other file.
"""
from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shiva_bids.io import atomic_write_text

N_SLICES = 12


@dataclass(frozen=True)
class FetalReport:
    """What the page shows about one T2w."""

    title: str
    t2w: np.ndarray
    brain: np.ndarray
    cgm: np.ndarray
    facts: dict[str, str]


def _slices(brain: np.ndarray, axis: int) -> list[int]:
    """Evenly spaced slices through the brain's extent along `axis` (the whole image if empty)."""
    other = tuple(a for a in range(3) if a != axis)
    present = np.flatnonzero(brain.any(axis=other))
    lo, hi = (present[0], present[-1]) if present.size else (0, brain.shape[axis] - 1)
    return sorted(set(np.linspace(lo, hi, N_SLICES + 2)[1:-1].round().astype(int).tolist()))


def mosaic_png(t2w: np.ndarray, brain: np.ndarray, cgm: np.ndarray, axis: int = 2) -> bytes:
    """PNG bytes of slices along `axis` (stored array order; no reorientation)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = _slices(brain, axis)
    cols = 6
    rows = max(1, -(-len(picks) // cols))
    lo, hi = np.percentile(t2w, [1, 99.5])
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.2, rows * 2.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, index in zip(axes.ravel(), picks):
        take = [slice(None)] * 3
        take[axis] = index
        image, mask, cortex = (np.rot90(a[tuple(take)]) for a in (t2w, brain, cgm))
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors="yellow", linewidths=0.7)
        ax.imshow(np.ma.masked_where(cortex == 0, cortex), cmap="autumn", alpha=0.6,
                  interpolation="nearest", vmin=0, vmax=1)
        ax.set_title(f"slice {index}", fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_report(path: Path, report: FetalReport) -> Path:
    """Write the HTML page atomically."""
    png = base64.b64encode(mosaic_png(report.t2w, report.brain, report.cgm)).decode("ascii")
    rows = "\n".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                     for k, v in report.facts.items())
    title = html.escape(report.title)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}th{{text-align:left;padding-right:1em}}
img{{max-width:100%}}</style></head>
<body><h1>{title}</h1>
<table>
{rows}
</table>
<h2>T2w with the brain mask (yellow contour) and cortical grey matter (overlay)</h2>
<p>Slices in the stored array order of the image (no reorientation).</p>
<img alt="mosaic" src="data:image/png;base64,{png}">
</body></html>
"""
    return atomic_write_text(path, page)
