"""Tiny BIDS datasets for tests and benchmarks: real (4x4x4) NIfTI files with BIDS names.

    ds = BidsBuilder(tmp_path / "ds")
    ds.add("01", "T1w")                      # sub-01/anat/sub-01_T1w.nii.gz
    ds.add("02", "FLAIR", ses="1", run=2)     # sub-02/ses-1/anat/sub-02_ses-1_run-2_FLAIR.nii.gz
    fmriprep = ds.derivative("fmriprep")      # ds/derivatives/fmriprep (DatasetType derivative)
    fmriprep.add("01", "mask", desc="brain")

Entities are keyword arguments with BIDS keys (acq, ce, rec, run, part, space, desc...), written
in schema order. Every image has the same bytes except for its shape, so building hundreds of
participants is fast.
"""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path
from typing import Iterable

import nibabel as nib
import numpy as np

from shiva_bids.bids.derivatives import ENTITY_ORDER


@functools.lru_cache(maxsize=8)
def nifti_bytes(shape: tuple[int, ...] = (4, 4, 4), gz: bool = True) -> bytes:
    """A small int16 image with 1 mm voxels and a valid header (deterministic bytes)."""
    data = (np.arange(int(np.prod(shape)), dtype=np.int16) % 97).reshape(shape)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.0, 1.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(img.affine, code=1)
    img.header.set_sform(img.affine, code=1)
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def bids_name(sub: str, suffix: str, extension: str = ".nii.gz", ses: str | None = None,
              **entities: object) -> str:
    """`sub-X[_ses-Y]_<entities in schema order>_<suffix><ext>`."""
    values = {"sub": sub, "ses": ses, **{k.rstrip("_"): v for k, v in entities.items()}}
    unknown = set(values) - set(ENTITY_ORDER)
    if unknown:
        raise ValueError(f"unknown entities {sorted(unknown)}")
    parts = [f"{k}-{values[k]}" for k in ENTITY_ORDER if values.get(k) is not None]
    return "_".join(parts + [suffix]) + extension


class BidsBuilder:
    """Writes a raw (or derivative) BIDS dataset under `root`."""

    def __init__(self, root: Path, name: str = "test dataset", derivative: bool = False):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        description: dict = {"Name": name, "BIDSVersion": "1.10.0",
                             "Authors": ["Test A", "Test B"], "License": "CC0"}
        if derivative:
            description.update(DatasetType="derivative",
                               GeneratedBy=[{"Name": name, "Version": "0"}])
        else:
            description["DatasetType"] = "raw"
        self.write_json("dataset_description.json", description)
        (self.root / "README").write_text(f"{name}: synthetic test dataset.\n" * 10)

    def write_json(self, relative: str, payload: object) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    def add(self, sub: str, suffix: str, ses: str | None = None, datatype: str = "anat",
            extension: str = ".nii.gz", shape: tuple[int, ...] = (4, 4, 4),
            sidecar: dict | None = None, **entities: object) -> Path:
        """Write one image (and its JSON sidecar when given); returns its path."""
        folder = self.root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / datatype
        path = folder / bids_name(sub, suffix, extension, ses=ses, **entities)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(nifti_bytes(tuple(shape), extension.endswith(".gz")))
        if sidecar is not None:
            path.with_name(path.name.split(".", 1)[0] + ".json").write_text(
                json.dumps(sidecar, indent=2) + "\n")
        return path

    def add_unit(self, sub: str, ses: str | None = None,
                 suffixes: Iterable[str] = ("T1w", "FLAIR")) -> list[Path]:
        """The same images for one participant/session, no extra entities."""
        return [self.add(sub, suffix, ses=ses) for suffix in suffixes]

    def derivative(self, name: str, root: Path | None = None) -> "BidsBuilder":
        """A derivative dataset (default: `<root>/derivatives/<name>`)."""
        return BidsBuilder(root or self.root / "derivatives" / name, name=name,
                           derivative=True)


def many_participants(root: Path, n_subjects: int, sessions: Iterable[str | None] = (None,),
                      suffixes: Iterable[str] = ("T1w", "FLAIR")) -> BidsBuilder:
    """A dataset with `n_subjects` participants (labels 001, 002, ...) x `sessions`."""
    builder = BidsBuilder(root)
    width = max(3, len(str(n_subjects)))
    sessions = tuple(sessions)
    for index in range(1, n_subjects + 1):
        for ses in sessions:
            builder.add_unit(f"{index:0{width}d}", ses, suffixes)
    return builder
