"""Atomic writes: complete files only, plain permissions, deterministic NIfTI bytes."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from shiva_bids.io import atomic_path, atomic_save_nifti, atomic_write_json
from shiva_bids.volume import Volume


def test_outputs_get_the_permissions_of_a_plain_write(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.nii.gz") as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_same_image_same_bytes_whatever_the_name(tmp_path):
    volume = Volume(np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.eye(4))
    a = atomic_save_nifti(volume.to_nifti(), tmp_path / "a.nii.gz").read_bytes()
    b = atomic_save_nifti(volume.to_nifti(), tmp_path / "sub" / "b.nii.gz").read_bytes()
    assert a == b
