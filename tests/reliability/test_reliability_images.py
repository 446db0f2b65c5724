"""Damaged images: each case runs the participant level on a read-only dataset whose image is
damaged in one way, and checks the exit code, the one line naming the file, no traceback, no
output that looks complete, and the input left byte-identical (kit.py).

Problems visible in the header fail the unit before any model is loaded (shiva_bids.preflight,
fake model descriptors suffice); problems in the voxels fail it when preprocessing loads the
image (a real tiny model, one TensorFlow import for the whole session).
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from kit import (anat_file, assert_clean_failure, freeze, image_data, leftovers, looks_complete,
                 make_dataset, nifti_bytes, run_inprocess, tree_state, write_image)
from shiva_bids.errors import ExitCode

BAD, MISSING, MIXED = ExitCode.BAD_INPUT, ExitCode.NO_INPUT, ExitCode.FAILURE


def _bytes(content: bytes) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(content)


def _image(data: np.ndarray | None = None, **options) -> Callable[[Path], None]:
    return lambda path: write_image(path, data, **options)


def _cut(keep: int) -> Callable[[Path], None]:
    return lambda path: path.write_bytes(path.read_bytes()[:keep])


def _as_nii(content: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        path.unlink()
        path.with_name(path.name.removesuffix(".gz")).write_bytes(content)
    return damage


GOOD = image_data()
# name -> (damaged image suffix, damage, exit code, what the line must say)
HEADER_CASES = {
    "truncated-header": ("T1w", _cut(60), BAD, "truncated or corrupt"),
    "gzip-of-garbage": ("T1w", _bytes(gzip.compress(os.urandom(4000), mtime=0)), BAD,
                        "no NIfTI-1 or NIfTI-2 header"),
    "wrong-magic": ("T1w", _bytes(b"not an image\n" * 100), BAD, "not gzip-compressed"),
    "zero-byte": ("T1w", _bytes(b""), BAD, "empty file"),
    "nii-named-nii-gz": ("T1w", _bytes(nifti_bytes(GOOD, gz=False)), BAD,
                         "not gzip-compressed"),
    "garbage-nii": ("T1w", _as_nii(b"\0" * 500), BAD, "no NIfTI-1 or NIfTI-2 header"),
    "short-nii": ("T1w", _as_nii(b"\1" * 100), BAD, "ends after 100 bytes"),
    "4d-series": ("T1w", _image(np.stack([GOOD, GOOD], axis=-1)), BAD, "4D image"),
    "2d-slice": ("T1w", _image(GOOD[:, :, 0]), BAD, "2D image"),
    "one-slice-volume": ("T1w", _image(GOOD[:, :, :1]), BAD, "not a 3D volume"),
    "singular-sform": ("T1w", _image(srow_z=[0.0, 0.0, 0.0, 0.0], qform_code=0), BAD,
                       "singular"),
    "nan-in-affine": ("T1w", _image(srow_x=[np.nan, 0.0, 0.0, 0.0], qform_code=0), BAD,
                      "not finite"),
    "rank-deficient-sform": ("T1w", _image(srow_x=[1.0, 1.0, 0.0, 0.0],
                                           srow_y=[1.0, 1.0, 0.0, 0.0], qform_code=0), BAD,
                             "singular"),
    "flair-wrong-magic": ("FLAIR", _bytes(b"<html>oops</html>"), BAD, "not gzip-compressed"),
    "swi-zero-byte": ("swi", _bytes(b""), BAD, "empty file"),
    "swi-4d": ("swi", _image(np.stack([GOOD] * 3, axis=-1)), BAD, "4D image"),
}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "bids", {"01": ("T1w", "FLAIR", "swi")})


def participant(bids: Path, tmp_path: Path, models: Path, *extra: object) -> list:
    return [bids, tmp_path / "out", "participant", "--models-dir", models,
            "-w", tmp_path / "work", "--skip-bids-validation", "--nprocs", "1", *extra]


def check_input_untouched(bids: Path, before: dict) -> None:
    assert tree_state(bids) == before


@pytest.mark.parametrize("case", sorted(HEADER_CASES))
def test_a_damaged_header_fails_the_unit_before_any_model_loads(case, dataset, tmp_path,
                                                                 fake_models_dir, capfd):
    suffix, damage, code, phrase = HEADER_CASES[case]
    target = anat_file(dataset, "01", suffix)
    damage(target)
    freeze(dataset)
    before = tree_state(dataset)
    result = run_inprocess(capfd, *participant(dataset, tmp_path, fake_models_dir))
    named = target if target.exists() else target.with_name(target.name.removesuffix(".gz"))
    assert_clean_failure(result, code, named.name, phrase)
    out = tmp_path / "out"
    assert looks_complete(out) == [] and leftovers(out) == []
    assert "input check" in (out / "logs" / "crash-sub-01.txt").read_text()
    check_input_untouched(dataset, before)


def _derivative(bids: Path, name: str, suffix: str, content: bytes) -> Path:
    path = bids / "derivatives" / name / "sub-01" / "anat" / f"sub-01_{suffix}.nii.gz"
    path.parent.mkdir(parents=True)
    (path.parents[2] / "dataset_description.json").write_text(
        '{"Name": "d", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}')
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("suffix", ["desc-brain_mask", "desc-aseg_dseg"])
def test_a_damaged_derivative_mask_or_segmentation_is_named(suffix, dataset, tmp_path,
                                                            fake_models_dir, capfd):
    bad = _derivative(dataset, "prep", suffix, nifti_bytes(np.zeros((4, 4))))
    freeze(dataset)
    before = tree_state(dataset)
    result = run_inprocess(capfd, *participant(dataset, tmp_path, fake_models_dir,
                                               "--derivatives", f"prep={bad.parents[2]}"))
    assert_clean_failure(result, BAD, bad.name, "2D image")
    assert looks_complete(tmp_path / "out") == []
    check_input_untouched(dataset, before)


def test_units_failing_for_one_cause_give_its_code_and_a_mix_gives_1(tmp_path,
                                                                     fake_models_dir, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",), "02": ("T1w",), "03": ("FLAIR",)})
    for sub in ("01", "02"):
        anat_file(bids, sub, "T1w").write_bytes(b"")
    freeze(bids)
    before = tree_state(bids)
    args = participant(bids, tmp_path, fake_models_dir)
    both_bad = run_inprocess(capfd, *args, "--participant-label", "01", "02")
    for sub in ("01", "02"):
        assert_clean_failure(both_bad, BAD, f"sub-{sub}_T1w.nii.gz", "empty file")
    # sub-03 has no T1w (66) while sub-01 is corrupt (65): a mix of causes is 1
    mixed = run_inprocess(capfd, *args, "--participant-label", "01", "03")
    assert_clean_failure(mixed, MIXED, "sub-01_T1w.nii.gz", "empty file")
    assert "sub-03: skipped, no t1w image found" in mixed.err
    assert (tmp_path / "out" / "logs" / "skipped-sub-03.txt").read_text().startswith("no t1w")
    check_input_untouched(bids, before)


def test_stop_on_first_crash_keeps_the_failure_class(dataset, tmp_path, fake_models_dir, capfd):
    target = anat_file(dataset, "01", "T1w")
    target.write_bytes(b"")
    freeze(dataset)
    result = run_inprocess(capfd, *participant(dataset, tmp_path, fake_models_dir,
                                               "--stop-on-first-crash"))
    assert_clean_failure(result, BAD, target.name, "empty file")
    assert "stopped: --stop-on-first-crash" in result.err


# Problems only the voxels show: the unit fails when preprocessing loads the image.
DATA_CASES = {
    "truncated-data": (_cut(3000), "truncated or corrupt"),
    "all-zero": (_image(np.zeros_like(GOOD)), "all zero"),
    "constant": (_image(np.full_like(GOOD, 7.0)), "constant"),
    "all-nan": (_image(np.full_like(GOOD, np.nan)), "NaN or Inf"),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_damaged_voxels_fail_the_unit_with_65(case, tmp_path, tiny_models_dir, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    target = anat_file(bids, "01", "T1w")
    damage, phrase = DATA_CASES[case]
    write_image(target, image_data((48, 56, 48)))  # large enough to be cut in its data
    damage(target)
    freeze(bids)
    before = tree_state(bids)
    result = run_inprocess(capfd, *participant(bids, tmp_path, tiny_models_dir, "--premasked"))
    assert_clean_failure(result, BAD, target.name, phrase)
    assert "preprocessing" in (tmp_path / "out" / "logs" / "crash-sub-01.txt").read_text()
    assert looks_complete(tmp_path / "out") == []
    check_input_untouched(bids, before)
