"""A PNG of one phantom session: the four contrasts with ground-truth outlines.

One axial slice per modality, each in its own native grid (nearest world-z slice to the
centroid of the largest lesion, so markers are visible), shown in RAS display orientation;
outlines: PVS cyan, WMH yellow, CMB magenta, LAC lime, brain mask grey.
"""
from __future__ import annotations

import io as _io
from pathlib import Path

import nibabel as nib
import numpy as np

from shiva_bids.io import atomic_path
from shiva_bids.synthetic.contrasts import MARKER_CLASS
from shiva_bids.synthetic.phantom import BRAIN_BIT, CLASS_BITS, Session

OUTLINE_COLOURS = {"PVS": "cyan", "WMH": "yellow", "CMB": "magenta", "LAC": "lime"}


def _axial_slice(data: np.ndarray, affine: np.ndarray, z_mm: float) -> tuple[np.ndarray, int]:
    """Reorient to RAS (axis permutation/flips only) and take the slice nearest `z_mm`."""
    ornt = nib.orientations.io_orientation(affine)
    ras = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    k = int(round((z_mm - new_affine[2, 3]) / new_affine[2, 2]))
    k = int(np.clip(k, 0, ras.shape[2] - 1))
    return ras[:, :, k], k


def render_phantom_figure(session: Session) -> bytes:
    """PNG bytes of the figure (matplotlib Agg, deterministic metadata)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    big = max(session.lesions, key=lambda les: les.voxels, default=None)
    z_mm = big.centroid_mm[2] if big else float(session.warp.pose.translation[2])
    fig = Figure(figsize=(3.0 * len(session.images), 3.4), dpi=64)
    axes = fig.subplots(1, len(session.images), squeeze=False)[0]
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.01, top=0.84, wspace=0.02)
    for ax, (modality, image) in zip(axes, session.images.items()):
        data, _ = _axial_slice(image.data, image.grid.affine, z_mm)
        labels, _ = _axial_slice(image.labels, image.grid.affine, z_mm)
        zooms = image.grid.zooms
        aspect = zooms[1] / zooms[0] if image.grid.orientation[0] in "RL" else 1.0
        vmax = float(np.percentile(data, 99.5)) or 1.0
        ax.imshow(data.T, cmap="gray", origin="lower", vmin=0, vmax=vmax, aspect=aspect,
                  interpolation="nearest")
        ax.contour(((labels & BRAIN_BIT) > 0).T.astype(float), levels=[0.5], colors="0.6",
                   linewidths=0.5)
        for marker, colour in OUTLINE_COLOURS.items():
            mask = ((labels & CLASS_BITS) == MARKER_CLASS[marker]).T
            if mask.any():
                ax.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
        ax.set_title(f"{modality}: {image.grid.label} {image.grid.orientation}", fontsize=8)
        ax.set_axis_off()
    fig.suptitle(f"synthetic phantom sub-{session.participant.label} "
                 f"(load {session.participant.load}): PVS cyan, WMH yellow, CMB magenta, "
                 "LAC lime, brain grey", fontsize=9)
    buffer = _io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def write_phantom_figure(session: Session, path: Path) -> Path:
    """Write the figure atomically to `path`."""
    path = Path(path)
    payload = render_phantom_figure(session)
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)
    return path
