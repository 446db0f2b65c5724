"""shiva-bids derivatives -> brainlife output datatypes.

* `neuro/mask`, one output per marker that ran: `<pvs|wmh|cmb|lac>/mask.nii.gz`, a copy of
  the marker's binary mask (`space-T1w_label-M_mask`, CMB in SWI space);
* `neuro/parcellation/volume`: `parc/parc.nii.gz` on the T1w grid, every marker's kept
  clusters with their own voxel value (PVS clusters 1..n_PVS, then WMH, CMB, LAC), and
  `parc/label.json`, one entry per cluster: `name` (the census name, e.g. PVS007), `label` and
  `voxel_value` (the value in parc.nii.gz), `r`, `g`, `b` (the marker's colour). CMB clusters
  are found on the SWI grid; they are carried onto the T1w grid through the saved SWI->T1w rigid
  transform (nearest label). Where clusters of two markers overlap, the later marker in that
  order keeps the voxel (the count of such voxels is reported);
* `raw`: the shiva-bids derivative dataset itself (reports, tables, sidecars).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from shiva_bids.io import atomic_save_nifti
from shiva_bids.markers import MARKER_NAMES
from shiva_bids.summary import UnitSummary
from shiva_bids.volume import Volume

# One colour per marker (label.json, the product figure).
MARKER_COLOURS: dict[str, tuple[int, int, int]] = {
    "PVS": (255, 215, 0), "WMH": (30, 144, 255), "CMB": (220, 20, 60), "LAC": (50, 205, 50)}
# Transform key that shiva-bids records in the unit summary for the SWI.
SWI_TRANSFORM = "SWI->T1w"


@dataclass(frozen=True)
class Parcellation:
    """All markers' clusters on one grid and their labels."""

    volume: Volume
    labels: list[dict]
    overlap_voxels: int  # voxels claimed by clusters of two markers


def done_markers(summary: UnitSummary) -> list[str]:
    return [m for m in MARKER_NAMES
            if m in summary.markers and summary.markers[m].status == "done"]


def write_masks(raw: Path, summary: UnitSummary, task_dir: Path) -> dict[str, Path]:
    """`<marker>/mask.nii.gz` for every marker that ran (a `neuro/mask` output each)."""
    written = {}
    for marker in done_markers(summary):
        target = task_dir / marker.lower() / "mask.nii.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw / summary.markers[marker].files["mask"], target)
        written[marker] = target
    return written


def load(path: Path) -> Volume:
    img = nib.load(path)
    return Volume(np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float))


def _census_names(path: Path) -> dict[int, str]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]
    return {int(row["index"]): row["name"] for row in rows}


def _same_grid(a: Volume, b: Volume) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=1e-4)


def clusters_on_grid(raw: Path, summary: UnitSummary, marker: str, reference: Volume) -> Volume:
    """The marker's labelled clusters (`seg-M_dseg`) on the reference grid."""
    labels = load(raw / summary.markers[marker].files["dseg"])
    if _same_grid(labels, reference):
        return labels
    from shiva_bids.postprocessing.regions import warp_atlas  # ANTs: only when resampling

    transform = summary.extra.get("transforms", {}).get(SWI_TRANSFORM)
    transforms = [str(raw / transform)] if marker == "CMB" and transform else []
    return warp_atlas(labels.with_data(labels.data.astype(np.int32)), reference, transforms)


def build_parcellation(raw: Path, summary: UnitSummary, reference: Volume) -> Parcellation:
    """Every marker's clusters in one label image on the reference (T1w) grid."""
    data = np.zeros(reference.shape[:3], np.int32)
    labels: list[dict] = []
    overlap = 0
    offset = 0
    for marker in done_markers(summary):
        clusters = np.asarray(clusters_on_grid(raw, summary, marker, reference).data)
        names = _census_names(raw / summary.markers[marker].files["census"])
        inside = clusters > 0
        overlap += int(np.count_nonzero(inside & (data > 0)))
        data[inside] = clusters[inside] + offset
        r, g, b = MARKER_COLOURS[marker]
        for index in sorted(names):
            value = offset + index
            labels.append({"name": names[index], "label": value, "voxel_value": value,
                           "r": r, "g": g, "b": b})
        offset += max(names, default=0)
    dtype = np.int16 if offset < np.iinfo(np.int16).max else np.int32
    return Parcellation(reference.with_data(data.astype(dtype)), labels, overlap)


def write_parcellation(parc: Parcellation, folder: Path) -> tuple[Path, Path]:
    """`parc.nii.gz` and `label.json` (a `neuro/parcellation/volume` output)."""
    image = atomic_save_nifti(parc.volume.to_nifti(), folder / "parc.nii.gz")
    label_json = folder / "label.json"
    label_json.write_text(json.dumps(parc.labels, indent=1) + "\n")
    return image, label_json
