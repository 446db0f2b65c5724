"""`product.json`: what brainlife shows on the task page and keeps in its database.

brainlife renders the entries of the `brainlife` list: messages (`{"type": "info" | "success"
| "warning" | "error", "msg": ...}`) and images (`{"type": "image/png", "name": ...,
"base64": ...}`); any other key is stored as is, for quick aggregation across subjects. The
file must stay at a few kilobytes, so the figure is a small palette PNG (three axial slices of
the T1w with every marker's clusters in its colour) and the whole file is capped at
:data:`MAX_BYTES` (the figure is left out, with a message, if it would not fit).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from shiva_bids.reports.figures import to_ras
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.summary import MarkerSummary, UnitSummary
from shiva_bids.volume import Volume
from shiva_brainlife.outputs import MARKER_COLOURS, Parcellation

MAX_BYTES = 16 * 1024
FIGURE_HEIGHT = 96  # pixels per slice panel
FIGURE_SLICES = 3
COLOUR_NAMES = {"PVS": "yellow", "WMH": "blue", "CMB": "red", "LAC": "green"}  # MARKER_COLOURS
GREY_LEVELS = 12  # palette: grey levels, then the marker colours (never merged away)


def _slices(labels: np.ndarray, brain: np.ndarray, count: int) -> list[int]:
    """Axial slices: those with the most cluster voxels (at least 5 slices apart), completed
    by slices spread over the head's extent."""
    per_slice = np.count_nonzero(labels, axis=(0, 1))
    chosen: list[int] = []
    for z in np.argsort(-per_slice, kind="stable"):
        if per_slice[z] == 0 or len(chosen) == count:
            break
        if all(abs(int(z) - c) >= 5 for c in chosen):
            chosen.append(int(z))
    present = np.flatnonzero(brain.any(axis=(0, 1)))
    low, high = (present[0], present[-1]) if present.size else (0, brain.shape[2] - 1)
    for z in np.linspace(low + 0.3 * (high - low), low + 0.7 * (high - low), count).round():
        if len(chosen) < count and all(abs(int(z) - c) >= 5 for c in chosen):
            chosen.append(int(z))
    return sorted(chosen)


def _palette() -> Image.Image:
    """A palette image of GREY_LEVELS greys and the marker colours, for `quantize`."""
    greys = np.linspace(0, 255, GREY_LEVELS).round().astype(int)
    colours = [(g, g, g) for g in greys] + list(MARKER_COLOURS.values())
    palette = Image.new("P", (1, 1))
    palette.putpalette([v for colour in colours for v in colour])
    return palette


def _box(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """In-plane (x, y) bounding box of `mask` over all slices, grown by `margin`."""
    box = []
    for axis in (0, 1):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        low, high = (hits[0], hits[-1]) if hits.size else (0, mask.shape[axis] - 1)
        box.append(slice(max(low - margin, 0), min(high + margin + 1, mask.shape[axis])))
    return box[0], box[1]


def _panel(grey: np.ndarray, labels: np.ndarray, colours: np.ndarray) -> Image.Image:
    """One slice at FIGURE_HEIGHT pixels: the grey image resized smoothly, then the clusters
    painted, grown first so that a one-voxel cluster still covers a pixel after the resize."""
    grey_img = Image.fromarray(np.flipud(grey.T))  # anterior up, left on the left
    scale = FIGURE_HEIGHT / grey_img.height
    size = (max(1, round(grey_img.width * scale)), FIGURE_HEIGHT)
    grown = ndimage.grey_dilation(labels, size=(max(1, int(np.ceil(3 / scale))),) * 2)
    label_img = Image.fromarray(np.flipud(grown.T).astype(np.int32), mode="I")
    small_labels = np.asarray(label_img.resize(size, Image.Resampling.NEAREST))
    rgb = np.repeat(np.asarray(grey_img.resize(size, Image.Resampling.BILINEAR))[..., None],
                    3, axis=2)
    rgb[small_labels > 0] = colours[small_labels[small_labels > 0]]
    return Image.fromarray(rgb)


def key_figure(t1: Volume, parc: Parcellation) -> bytes:
    """Three axial slices of the T1w (cropped to the head), clusters painted in their marker's
    colour, as a small palette PNG."""
    image = to_ras(t1).astype(np.float32)
    labels = to_ras(parc.volume)
    colours = np.zeros((int(labels.max()) + 1, 3), np.uint8)
    for entry in parc.labels:
        colours[entry["voxel_value"]] = (entry["r"], entry["g"], entry["b"])
    head = image > np.percentile(image, 60)
    low, high = np.percentile(image[head], [1, 99.5]) if head.any() else (0.0, 1.0)
    box = _box(head)
    panels = []
    for z in _slices(labels, head, FIGURE_SLICES):
        grey = np.clip((image[box + (z,)] - low) / max(high - low, 1e-6), 0, 1) * 255
        panels.append(_panel(grey.astype(np.uint8), labels[box + (z,)], colours))
    strip = Image.new("RGB", (sum(p.width for p in panels), FIGURE_HEIGHT))
    x = 0
    for panel in panels:
        strip.paste(panel, (x, 0))
        x += panel.width
    buffer = io.BytesIO()
    strip.quantize(palette=_palette(), dither=Image.Dither.NONE).save(
        buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _markers(summary: UnitSummary) -> list[tuple[str, MarkerSummary]]:
    """The unit's markers in the usual order (PVS, WMH, CMB, LAC)."""
    return [(name, summary.markers[name]) for name in MARKER_NAMES if name in summary.markers]


def _marker_line(summary: UnitSummary) -> str:
    parts = []
    for name, marker in _markers(summary):
        if marker.status == "done":
            parts.append(f"{name} {marker.n_clusters} clusters "
                         f"({marker.total_volume_mm3:.1f} mm^3)")
        else:
            parts.append(f"{name} not run ({marker.reason})")
    return f"{summary.unit_id}: " + "; ".join(parts)


def messages(summary: UnitSummary, parc: Parcellation) -> list[dict[str, str]]:
    """The task-page messages: the result per marker, then every warning of the run."""
    found = [{"type": "success", "msg": _marker_line(summary)}]
    if summary.demo_models:
        found.append({"type": "warning", "msg": "made with the shiva-bids DEMO models "
                      "(trained on phantoms): not for research"})
    found += [{"type": "warning", "msg": text} for text in summary.warnings]
    if parc.overlap_voxels:
        found.append({"type": "info", "msg": f"parc: {parc.overlap_voxels} voxels belong to "
                      "clusters of two markers; the later of PVS, WMH, CMB, LAC kept them"})
    return found


def unit_record(summary: UnitSummary) -> dict[str, Any]:
    """Counts and volumes per marker, for aggregation across subjects."""
    return {
        "subject": summary.subject, "session": summary.session,
        "software_version": summary.software_version, "demo_models": summary.demo_models,
        "brain_volume_mm3": summary.brain_volume_mm3,
        "markers": {name: {"status": m.status, "n_clusters": m.n_clusters,
                           "total_volume_mm3": round(m.total_volume_mm3, 3),
                           "threshold": m.threshold, "reason": m.reason}
                    for name, m in _markers(summary)},
    }


def participant_product(summary: UnitSummary, parc: Parcellation, figure: bytes) -> dict:
    """product.json of a participant run: messages, the figure, the per-marker record."""
    colours = ", ".join(f"{m} {name}" for m, name in COLOUR_NAMES.items())
    image = {"type": "image/png", "name": f"Clusters on the T1w ({colours})",
             "base64": base64.b64encode(figure).decode("ascii")}
    return {"brainlife": [*messages(summary, parc), image], "shiva_bids": unit_record(summary)}


def write_product(product: dict, path: Path) -> Path:
    """Write `product.json` (compact); over :data:`MAX_BYTES`, images are dropped first."""
    text = json.dumps(product, separators=(",", ":"))
    if len(text.encode()) > MAX_BYTES:
        kept = [e for e in product.get("brainlife", []) if not e["type"].startswith("image/")]
        kept.append({"type": "info", "msg": "figure left out to keep product.json small; "
                     "see the report in the raw output"})
        text = json.dumps({**product, "brainlife": kept}, separators=(",", ":"))
    path.write_text(text)
    return path
