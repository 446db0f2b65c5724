"""Builds unit summaries and their output files on disk, for group and report tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shiva_bids import __version__
from shiva_bids.bids.derivatives import derivative_path
from shiva_bids.io import atomic_save_nifti, atomic_write_text
from shiva_bids.summary import COMPLETE, MarkerSummary, UnitSummary, write_summary
from shiva_bids.volume import Volume

AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
AFFINE[:3, 3] = [-24, -30, -20]


def marker_summary(marker: str, volumes: list[float]) -> MarkerSummary:
    """A `done` marker with clusters of the given volumes, all in one region."""
    total = float(sum(volumes))
    return MarkerSummary(
        marker=marker, status="done", space="T1w", threshold=0.5, min_cluster_size_mm3=5,
        n_clusters=len(volumes), total_volume_mm3=total,
        regions={"Whole brain": {"n_clusters": len(volumes), "total_volume_mm3": total},
                 "Left Deep WM": {"n_clusters": len(volumes), "total_volume_mm3": total}},
        region_source="atlas:DesikanKilliany",
        model={"target": marker, "version": "v9", "demo": True})


def write_unit(output_dir: Path, subject: str, session: str | None, volumes: list[float],
               brain_mm3: float = 1.2e6, with_images: bool = False) -> UnitSummary:
    """Write a complete unit (summary last; images and census when asked)."""
    summary = UnitSummary(subject=subject, session=session, status=COMPLETE,
                          software_version=__version__, brain_volume_mm3=brain_mm3,
                          brain_mask_method="template", demo_models=True,
                          qc={"main_norm_peak": 0.5, "rotation_flair_reg": 1.0})
    marker = marker_summary("PVS", volumes)
    ents = summary.entities
    census = derivative_path(output_dir, ents, "dseg", ".tsv", space="T1w", seg="PVS")
    rows = "".join(f"{i}\tPVS{i:03d}\t{v}\tLeft Deep WM\n" for i, v in enumerate(volumes, 1))
    atomic_write_text(census, "index\tname\tvolume_mm3\tregion\n" + rows)
    marker.files["census"] = str(census.relative_to(output_dir))
    if with_images:
        marker.files.update(_write_images(output_dir, ents, volumes))
    summary.markers["PVS"] = marker
    write_summary(output_dir, summary)
    return summary


def _write_images(output_dir: Path, ents: dict, volumes: list[float]) -> dict[str, str]:
    """A 48x60x40 head with a spherical brain and cube clusters of the given volumes."""
    shape = (48, 60, 40)
    grid = np.indices(shape).transpose(1, 2, 3, 0) - np.array(shape) / 2
    brain = (np.linalg.norm(grid / [20, 26, 17], axis=-1) < 1).astype(np.uint8)
    prob = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int16)
    for index, volume in enumerate(volumes, start=1):
        side = max(1, round(volume ** (1 / 3)))
        x0 = 12 + 7 * (index - 1)
        labels[x0:x0 + side, 28:28 + side, 18:18 + side] = index
        prob[labels == index] = 0.9
    files = {}
    for kind, data, suffix, entities in (
            ("probseg", prob, "probseg", {"space": "T1w", "label": "PVS"}),
            ("dseg", labels, "dseg", {"space": "T1w", "seg": "PVS"}),
            ("brainmask", brain, "mask", {"space": "T1w", "desc": "brain"})):
        path = derivative_path(output_dir, ents, suffix, **entities)
        atomic_save_nifti(Volume(data, AFFINE).to_nifti(), path)
        files[kind] = str(path.relative_to(output_dir))
    t1 = brain * 100.0 + np.random.default_rng(0).normal(0, 5, shape)
    t1_path = output_dir / "raw_t1w.nii.gz"
    atomic_save_nifti(Volume(t1.astype(np.float32), AFFINE).to_nifti(), t1_path)
    return files
