"""Report figures (matplotlib, Agg): mosaics with overlays, zoomed clusters, QC panels.

Every function returns PNG bytes, so figures can be embedded in a self-contained HTML page
or saved under `sub-X/figures/`. Images are reoriented to the closest RAS orientation before
slicing and shown in neurological convention (left on the left); panels are labelled L/R.
"""
from __future__ import annotations

import io
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from scipy import ndimage  # noqa: E402

from shiva_bids.volume import Volume  # noqa: E402

DPI = 90


def _red_ramp() -> ListedColormap:
    """Red, from transparent yellow-red at 0 to opaque red at 1 (probability overlays)."""
    colors = np.zeros((256, 4))
    colors[:, 0] = 1.0
    colors[:, 1] = np.linspace(0.8, 0.0, 256)
    colors[:, 3] = np.linspace(0.0, 0.9, 256)
    return ListedColormap(colors)


_REDS = _red_ramp()


def to_ras(volume: Volume) -> np.ndarray:
    """Voxel array reoriented to the closest RAS axes (for display only)."""
    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.data), volume.affine))
    return np.asanyarray(img.dataobj)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", facecolor="black")
    plt.close(fig)
    return buffer.getvalue()


def _window(image: np.ndarray, mask: np.ndarray | None) -> tuple[float, float]:
    values = image[mask > 0] if mask is not None and mask.any() else image[image > 0]
    if values.size == 0:
        return 0.0, 1.0
    low, high = np.percentile(values, [1, 99.5])
    return float(low), float(max(high, low + 1e-6))


def _slice_positions(extent_mask: np.ndarray, axis: int, count: int) -> np.ndarray:
    """`count` slices evenly spaced between 10% and 90% of the mask's extent along `axis`."""
    other = tuple(i for i in range(3) if i != axis)
    present = np.flatnonzero(extent_mask.any(axis=other)) if extent_mask.any() else \
        np.arange(extent_mask.shape[axis])
    low, high = present[0], present[-1]
    return np.unique(np.linspace(low + 0.1 * (high - low), low + 0.9 * (high - low),
                                 count).round().astype(int))


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice displayed with anterior/superior up (transpose + flip)."""
    plane = array[(slice(None),) * axis + (index,)]  # a view: np.take copied ~10 ms a slice
    return np.flipud(plane.T)


def mosaic(background: Volume, *, overlay: Volume | None = None, labels: Volume | None = None,
           contour: Volume | None = None, extent: Volume | None = None, axis: int = 2,
           count: int = 12, columns: int = 6, title: str = "",
           overlay_max: float = 1.0) -> bytes:
    """Slices of `background` with a probability `overlay` (red ramp), cluster `labels`
    (yellow outlines) and a mask `contour` (cyan), all on the background's grid."""
    bg = to_ras(background).astype(np.float32)
    layers = {name: to_ras(v) if v is not None else None
              for name, v in (("overlay", overlay), ("labels", labels), ("contour", contour),
                              ("extent", extent))}
    reference = layers["extent"] if layers["extent"] is not None else (
        layers["contour"] if layers["contour"] is not None else bg > np.percentile(bg, 60))
    positions = _slice_positions(reference > 0, axis, count)
    vmin, vmax = _window(bg, layers["contour"])
    outlines = {name: layers[name] > 0 for name in ("labels", "contour")  # once, not per slice
                if layers[name] is not None}
    rows = int(np.ceil(len(positions) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows),
                             facecolor="black", squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, positions):
        ax.imshow(_take(bg, axis, index), cmap="gray", vmin=vmin, vmax=vmax,
                  interpolation="nearest")
        if layers["overlay"] is not None:
            ax.imshow(_take(layers["overlay"], axis, index), cmap=_REDS, vmin=0,
                      vmax=overlay_max, interpolation="nearest")
        for name, colour, width in (("labels", "yellow", 0.6), ("contour", "cyan", 0.5)):
            if name in outlines:
                ax.contour(_take(outlines[name], axis, index), levels=[0.5], colors=colour,
                           linewidths=width)
        ax.text(0.02, 0.02, f"{'xyz'[axis]}={index}", color="white", fontsize=7,
                transform=ax.transAxes)
        if axis != 0:
            ax.text(0.02, 0.9, "L", color="white", fontsize=8, transform=ax.transAxes)
            ax.text(0.92, 0.9, "R", color="white", fontsize=8, transform=ax.transAxes)
    if title:
        fig.suptitle(title, color="white", fontsize=10)
    return _png(fig)


def cluster_zooms(background: Volume, probability: Volume, labels: Volume,
                  clusters: Sequence[dict], half_width_mm: float = 20.0,
                  count: int = 3) -> bytes | None:
    """Three orthogonal zoomed views around each of the `count` largest clusters.

    `clusters` are census rows with `index` and `volume_mm3`; returns None when empty."""
    largest = sorted(clusters, key=lambda row: -float(row["volume_mm3"]))[:count]
    if not largest:
        return None
    bg = to_ras(background).astype(np.float32)
    prob = to_ras(probability)
    lab = to_ras(labels)
    zooms = nib.as_closest_canonical(nib.Nifti1Image(np.zeros((1, 1, 1)),
                                                     background.affine)).header.get_zooms()
    half = np.maximum((half_width_mm / np.asarray(zooms[:3])).astype(int), 4)
    vmin, vmax = _window(bg, None)
    fig, axes = plt.subplots(len(largest), 3, figsize=(6.6, 2.3 * len(largest)),
                             facecolor="black", squeeze=False)
    for row_axes, row in zip(axes, largest):
        voxels = np.argwhere(lab == int(row["index"]))
        centre = voxels.mean(axis=0).round().astype(int) if len(voxels) else \
            np.array(bg.shape) // 2
        box = tuple(slice(max(c - h, 0), c + h) for c, h in zip(centre, half))
        for axis, ax in enumerate(row_axes):
            ax.axis("off")
            local = centre[axis] - box[axis].start
            ax.imshow(_take(bg[box], axis, local), cmap="gray", vmin=vmin, vmax=vmax)
            ax.imshow(_take(prob[box], axis, local), cmap=_REDS, vmin=0, vmax=1)
            ax.contour(_take(lab[box] == int(row["index"]), axis, local), levels=[0.5],
                       colors="yellow", linewidths=0.8)
        row_axes[0].set_title(f"{row.get('name', row['index'])}: "
                              f"{float(row['volume_mm3']):.0f} mm³ {row.get('region', '')}",
                              color="white", fontsize=8, loc="left")
    return _png(fig)


def size_distribution(volumes_mm3: Sequence[float], marker: str) -> bytes | None:
    """Histogram of cluster volumes on a log scale (None when there is no cluster)."""
    values = np.asarray([v for v in volumes_mm3 if v > 0], dtype=float)
    if values.size == 0:
        return None
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    bins = np.logspace(np.log10(values.min()), np.log10(values.max() * 1.01 + 1e-9),
                       min(30, max(5, values.size // 2)))
    ax.hist(values, bins=bins, color="#c0392b")
    ax.set_xscale("log")
    ax.set_xlabel("cluster volume (mm³)")
    ax.set_ylabel("clusters")
    ax.set_title(f"{marker}: {values.size} clusters", fontsize=9)
    fig.patch.set_facecolor("white")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def intensity_histograms(channels: dict[str, np.ndarray], mask: np.ndarray) -> bytes:
    """Histograms (64 bins in [0, 1], as SHIVA's QC) of normalised channels inside the mask."""
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    for name, data in channels.items():
        ax.hist(data[mask > 0].ravel(), bins=64, range=(0, 1), histtype="step", label=name)
    ax.axvline(1 / 1.3, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("normalised intensity (p99 → 0.77)")
    ax.set_ylabel("voxels in brain")
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def edges(image: np.ndarray, fwhm_vox: float = 3.0) -> np.ndarray:
    """Zero crossings of a difference of Gaussians (FWHM f and 1.6 f; SHIVA.md §11)."""
    sigma = fwhm_vox / 2.3548
    dog = ndimage.gaussian_filter(image, sigma) - ndimage.gaussian_filter(image, 1.6 * sigma)
    positive = dog > 0
    return positive ^ ndimage.binary_erosion(positive)


def registration_edges(fixed: Volume, moving: np.ndarray, mask: np.ndarray,
                       title: str) -> bytes:
    """Edges of the registered `moving` image (e.g. FLAIR) drawn in red over `fixed` (T1w),
    both on the same grid, to judge the rigid registration by eye."""
    outline = edges(np.where(mask > 0, moving, 0).astype(np.float32)) & (mask > 0)
    return mosaic(fixed, labels=fixed.with_data(outline.astype(np.uint8)),
                  extent=fixed.with_data(mask), title=title)


def crop_box(background: Volume, mask: Volume, box_world: np.ndarray) -> bytes:
    """Three orthogonal slices through the brain with the mask (cyan) and the model box
    (yellow), the box given by its 8 corners in world mm."""
    canonical = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(background.data),
                                                         background.affine))
    bg = np.asanyarray(canonical.dataobj).astype(np.float32)
    brain = to_ras(mask) > 0
    corners = nib.affines.apply_affine(np.linalg.inv(canonical.affine), box_world)
    low, high = corners.min(axis=0), corners.max(axis=0)
    centre = np.round(ndimage.center_of_mass(brain)).astype(int) if brain.any() else \
        np.array(bg.shape) // 2
    vmin, vmax = _window(bg, brain)
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), facecolor="black")
    for axis, ax in enumerate(axes):
        ax.axis("off")
        ax.imshow(_take(bg, axis, centre[axis]), cmap="gray", vmin=vmin, vmax=vmax)
        ax.contour(_take(brain, axis, centre[axis]), levels=[0.5], colors="cyan",
                   linewidths=0.6)
        u, v = [i for i in range(3) if i != axis]
        height = bg.shape[v]
        ax.add_patch(plt.Rectangle((low[u], height - 1 - high[v]), high[u] - low[u],
                                   high[v] - low[v], fill=False, edgecolor="yellow",
                                   linewidth=1.0))
    fig.suptitle("brain mask (cyan) and model crop box (yellow)", color="white", fontsize=9)
    return _png(fig)
