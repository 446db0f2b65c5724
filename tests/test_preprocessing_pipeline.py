"""preprocess_unit paths that need no registration (premasked, derivatives mask, T2 as T1),
bad inputs through the pipeline, and the offline template choice."""
from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.bids.inputs import InputSet
from shiva_bids.errors import BadInputError, MissingInputError, UsageError
from shiva_bids.preprocessing import PreprocOptions, preprocess_unit
from shiva_bids.preprocessing.templates import load_template, templateflow_files


def _ellipsoid(shape, zooms, radii_mm, value=100.0, noise=0.0, seed=0):
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape) - 1) / 2
    r2 = sum(((grid[k] - centre[k]) * zooms[k] / radii_mm[k]) ** 2 for k in range(3))
    data = np.where(r2 <= 1, value * (1.2 - 0.5 * r2), 0).astype(np.float32)
    if noise:
        data += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return data


def _write(path: Path, data, zooms=(1, 1, 1), affine=None):
    if affine is None:
        affine = np.diag(list(zooms) + [1.0])
        affine[:3, 3] = -np.array(data.shape[:3]) * np.array(zooms) / 2
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    nib.save(img, path)
    return path


def test_t1w_smaller_than_crop_box_is_zero_padded(tmp_path):
    brain = _ellipsoid((120, 150, 110), (1, 1, 1), (55, 70, 50))
    t1 = _write(tmp_path / "sub-01_T1w.nii.gz", brain)
    unit = preprocess_unit(InputSet("01", t1w=t1), {"t1"}, PreprocOptions(premasked=True),
                           tmp_path / "work")
    space = unit.spaces["T1w"]
    assert unit.brain_mask_method == "premasked"
    assert space.channels["t1"].shape == (160, 214, 176)
    # every brain voxel is inside the box: the mask volume is the ellipsoid's
    assert space.brain_mask.sum() == pytest.approx((brain > 0.5).sum(), rel=0.01)
    assert space.channels["t1"][0].max() == 0  # padding
    back = unit.to_native("T1w", space.channels["t1"], "linear")
    assert back.shape == brain.shape
    assert unit.native_brain_mask("T1w").data.sum() == (brain > 0.5).sum()
    assert not any("field of view" in w for w in unit.warnings)
    assert any("skull-stripped" in w for w in unit.warnings) is False  # premasked: not checked


def test_brain_touching_fov_edge_is_warned(tmp_path):
    brain = _ellipsoid((100, 120, 90), (1, 1, 1), (48, 60, 50))  # cut at the top and bottom
    t1 = _write(tmp_path / "sub-01_T1w.nii.gz", brain)
    unit = preprocess_unit(InputSet("01", t1w=t1), {"t1"}, PreprocOptions(premasked=True),
                           tmp_path / "work")
    assert any("edge of the field of view" in w for w in unit.warnings)


def test_derivatives_mask_on_another_grid_and_inverse_t2(tmp_path):
    head = _ellipsoid((110, 130, 100), (1.2, 1.2, 1.2), (70, 85, 65), noise=2.0)
    t2 = _write(tmp_path / "sub-01_T2w.nii.gz", head, (1.2, 1.2, 1.2))
    mask = (_ellipsoid((90, 110, 85), (1.5, 1.5, 1.5), (55, 70, 50)) > 0).astype(np.uint8)
    mask_path = _write(tmp_path / "sub-01_desc-brain_mask.nii.gz", mask, (1.5, 1.5, 1.5))
    inputs = InputSet("01", t2w=t2, brain_mask=mask_path)
    opts = PreprocOptions(replace_t1="t2", inverse_t2=True)
    unit = preprocess_unit(inputs, {"t1"}, opts, tmp_path / "work")
    assert unit.brain_mask_method == "derivatives"
    space = unit.spaces["T1w"]
    assert space.native_reference == t2
    inside = space.brain_mask > 0
    # 1 - x inside the mask (SHIVA.md §1.3): p99 maps to 1 - 1/1.3
    assert np.percentile(space.channels["t1"][inside], 1) == pytest.approx(1 - 1 / 1.3,
                                                                           abs=0.02)
    expected_ml = 4 / 3 * np.pi * 55 * 70 * 50 / 1000
    assert unit.qc["brain_mask_volume_ml"] == pytest.approx(expected_ml, rel=0.03)


def test_bad_inputs_through_the_pipeline(tmp_path):
    t1 = _write(tmp_path / "sub-01_T1w.nii.gz", _ellipsoid((60, 70, 60), (2, 2, 2), (50, 60, 50)),
                (2, 2, 2))
    zero = _write(tmp_path / "sub-01_FLAIR.nii.gz", np.zeros((40, 40, 20), np.float32))
    with pytest.raises(BadInputError, match="sub-01_FLAIR.nii.gz: image is all zero"):
        preprocess_unit(InputSet("01", t1w=t1, flair=zero), {"t1", "flair"},
                        PreprocOptions(premasked=True), tmp_path / "w1")
    four_d = _write(tmp_path / "sub-02_T1w.nii.gz", np.random.default_rng(0).random(
        (10, 10, 10, 2)).astype(np.float32))
    with pytest.raises(BadInputError, match="sub-02_T1w.nii.gz: 4D image"):
        preprocess_unit(InputSet("02", t1w=four_d), {"t1"}, PreprocOptions(), tmp_path / "w2")
    with pytest.raises(MissingInputError):
        preprocess_unit(InputSet("03", t1w=t1), {"t1", "flair"}, PreprocOptions(premasked=True),
                        tmp_path / "w3")
    with pytest.raises(UsageError, match="shiva"):
        preprocess_unit(InputSet("04", t1w=t1), {"t1"}, PreprocOptions(brain_mask_method="shiva"),
                        tmp_path / "w4")


def test_template_missing_offline_falls_back_and_logs(tmp_path, caplog):
    home = tmp_path / "templateflow"
    folder = home / "tpl-MNI152NLin2009cAsym"
    folder.mkdir(parents=True)
    # an offline `import templateflow` leaves empty placeholders: they must not count
    (folder / "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz").touch()
    (folder / "tpl-MNI152NLin2009cAsym_res-01_desc-brain_mask.nii.gz").touch()
    assert templateflow_files(home) is None
    with caplog.at_level(logging.WARNING, logger="shiva_bids.preprocessing.templates"):
        template = load_template(home)
    assert template.source == "nilearn-fallback"
    assert "offline fallback" in caplog.text
    mask_ml = template.mask.data.sum() / 1000
    assert 1400 < mask_ml < 2000
    # the synthetic head: skull band dark, scalp bright, air zero
    assert template.head.data.max() > 0 and template.head.data[0, 0, 0] == 0


def test_templateflow_used_when_present(tmp_path):
    folder = tmp_path / "tpl-MNI152NLin2009cAsym"
    folder.mkdir()
    data = np.zeros((8, 8, 8), np.float32)
    data[2:6, 2:6, 2:6] = 1
    for name in ("T1w", "desc-brain_mask"):
        nib.save(nib.Nifti1Image(data, np.eye(4)),
                 folder / f"tpl-MNI152NLin2009cAsym_res-01_{name}.nii.gz")
    template = load_template(tmp_path)
    assert template.source == "templateflow" and template.name == "MNI152NLin2009cAsym"
    assert template.mask.data.sum() == 64
