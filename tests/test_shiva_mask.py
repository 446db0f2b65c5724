"""--brain-mask shiva (reference/SHIVA.md §5.4) and SHiVAi's mask cleaning (§5.3).

The cleaning steps are pinned on hand-made arrays; the two-pass procedure runs end to end with
a stand-in brain-mask model in the published `.keras` + `script` format (a 1x1x1 convolution
that thresholds the normalised intensity) on a hand-made head with a skull.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from shiva_bids.bids.inputs import InputSet  # noqa: E402
from shiva_bids.errors import BadInputError, ExitCode, MissingInputError, UsageError  # noqa: E402
from shiva_bids.models.testing import write_threshold_mask_model  # noqa: E402
from shiva_bids.preprocessing import PreprocOptions, preprocess_unit, shiva_mask  # noqa: E402
from shiva_bids.preprocessing.brainmask import threshold_mask  # noqa: E402
from shiva_bids.preprocessing.conform import conform  # noqa: E402
from shiva_bids.preprocessing.native import resample_world  # noqa: E402
from shiva_bids.volume import Volume  # noqa: E402

ONE_MM = (1.0, 1.0, 1.0)


# --- §5.3 cleaning on hand-made arrays ---------------------------------------------------------

def test_opening_is_a_box_and_the_5mm_rule_readmits_nearby_voxels():
    data = np.zeros((80, 80, 80), np.float32)
    data[20:50, 20:50, 20:50] = 1.0  # a 30 mm cube
    data[34:36, 34:36, 50:70] = 1.0  # a 2-voxel-thick rod sticking out 20 mm on top
    data[5:12, 5:12, 60:67] = 0.9  # a 7-voxel cube apart: survives a 7-voxel box opening
    out = threshold_mask(data, ONE_MM, "test", open_mm=3, min_vol_mm3=0, cluster_check="keep_all")
    expected = np.zeros(data.shape, bool)
    expected[20:50, 20:50, 20:50] = True
    expected[34:36, 34:36, 50:55] = True  # the opening removed the rod, step 4 re-admits 5 mm
    expected[5:12, 5:12, 60:67] = True
    np.testing.assert_array_equal(out, expected)


def test_strict_threshold_min_volume_and_size_check():
    data = np.zeros((80, 80, 80), np.float32)
    data[10:50, 10:50, 10:50] = 0.8  # 64 000 mm^3, highest z 49
    data[60:70, 60:70, 10:20] = 0.8  # 1 000 mm^3, far away
    data[0:3, 0:3, 0:3] = 0.5  # not > 0.5
    out = threshold_mask(data, ONE_MM, "t", open_mm=3, min_vol_mm3=30_000, cluster_check="size")
    assert out.sum() == 40 ** 3
    # 2 mm voxels: the small cube is 8 000 mm^3 there, above a 5 000 mm^3 minVol
    kept = threshold_mask(data, (2.0, 2.0, 2.0), "t", min_vol_mm3=5_000)
    assert kept.sum() == 40 ** 3 + 10 ** 3
    with pytest.raises(BadInputError, match="t: the brain mask has no component larger"):
        threshold_mask(data, ONE_MM, "t", min_vol_mm3=100_000)
    data[60:75, 60:75, 55:75] = 0.8  # 4 500 mm^3 reaching higher than the large cube
    with pytest.raises(BadInputError, match="largest brain-mask component is not the one"):
        threshold_mask(data, ONE_MM, "t", min_vol_mm3=1_000, cluster_check="size")
    empty = np.zeros((20, 20, 20), np.float32)
    with pytest.raises(BadInputError, match="empty"):
        threshold_mask(empty, ONE_MM, "t")


# --- preconform ----------------------------------------------------------------------------------

def test_preconform_keeps_the_field_of_view_per_file_axis():
    volume = Volume(np.ones((192, 256, 170), np.float32), np.diag([0.9375, 0.9375, 1.2, 1]))
    size = shiva_mask.preconform_voxel_size(volume, (160, 214, 176))
    np.testing.assert_allclose(size, (192 * 0.9375 / 160, 256 * 0.9375 / 214, 170 * 1.2 / 176))
    # axes stored as (A, S, R) (a sagittal file): SHiVAi still pairs file axis i with grid axis i
    sagittal = np.array([[0, 0, -1, 90], [1, 0, 0, -120], [0, -1, 0, 130], [0, 0, 0, 1.0]])
    volume = Volume(np.ones((240, 256, 176), np.float32), sagittal)
    np.testing.assert_allclose(shiva_mask.preconform_voxel_size(volume, (160, 214, 176)),
                               (240 / 160, 256 / 214, 1.0))


def _head(shape=(200, 230, 150), zooms=(0.9, 0.9, 1.2)) -> tuple[Volume, np.ndarray]:
    """A head: a textured brain ellipsoid (70-120) in a 30-unit skull shell, LAS axes."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.asarray(shape) - 1) / 2 + np.array([4, -6, 3])
    r2 = sum(((grid[k] - centre[k]) * zooms[k] / radius) ** 2
             for k, radius in enumerate((62.0, 78.0, 55.0)))
    brain = r2 <= 1
    data = np.where(brain, 100 * (1.2 - 0.5 * r2), 0).astype(np.float32)
    data[(r2 > 1.1) & (r2 <= 1.35)] = 30.0
    affine = np.diag([-zooms[0], zooms[1], zooms[2], 1.0])  # LAS
    affine[:3, 3] = [100, -105, -80]
    return Volume(data, affine), brain


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_two_pass_shiva_mask_finds_the_brain(tmp_path):
    descriptor_path = write_threshold_mask_model(tmp_path / "models", threshold=0.33)
    descriptor = shiva_mask.choose_model(tmp_path / "models")
    assert descriptor.path == descriptor_path and descriptor.script is not None
    head, brain = _head()
    conformed = conform(head)
    mask = shiva_mask.shiva_brain_mask(head, conformed, descriptor,
                                       shiva_mask.ShivaMaskSettings(threads=2), "sub-01_T1w")
    truth = resample_world(brain.astype(np.uint8), head.affine, conformed.shape,
                           conformed.affine, "nearest") > 0
    assert mask.method == "shiva:v0"
    assert mask.mask.data.dtype == np.uint8 and mask.mask.shape == conformed.shape
    assert _dice(mask.mask.data > 0, truth) >= 0.97
    expected_ml = 4 / 3 * np.pi * 62 * 78 * 55 / 1000
    assert mask.model["premask_volume_ml"] == pytest.approx(expected_ml, rel=0.05)


def test_preprocess_unit_with_brain_mask_shiva_and_its_cache(tmp_path, monkeypatch):
    write_threshold_mask_model(tmp_path / "models", threshold=0.33)
    head, _ = _head()
    t1 = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(head.to_nifti(np.float32), t1)
    opts = PreprocOptions(brain_mask_method="shiva", models_dir=tmp_path / "models", threads=2)
    unit = preprocess_unit(InputSet("01", t1w=t1), {"t1"}, opts, tmp_path / "work")
    assert unit.brain_mask_method == "shiva:v0"
    assert unit.qc["brain_mask_model"].endswith("model_info_brainmask.json")
    assert unit.qc["brain_mask_volume_ml"] == pytest.approx(4 / 3 * np.pi * 62 * 78 * 55 / 1000,
                                                            rel=0.05)

    def no_second_run(*args, **kwargs):
        raise AssertionError("the cached mask should have been reused")

    monkeypatch.setattr(shiva_mask, "shiva_brain_mask", no_second_run)
    again = preprocess_unit(InputSet("01", t1w=t1), {"t1"}, opts, tmp_path / "work")
    np.testing.assert_array_equal(again.spaces["T1w"].brain_mask,
                                  unit.spaces["T1w"].brain_mask)
    assert again.qc["brain_mask_model"] == unit.qc["brain_mask_model"]


def test_brain_mask_shiva_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(UsageError, match="--brain-mask shiva needs --models-dir"):
        shiva_mask.choose_model(None)
    marker_only = tmp_path / "markers"
    from shiva_bids.models.testing import write_descriptor
    folder = marker_only / "T1-PVS"
    folder.mkdir(parents=True)
    (folder / "fold.keras").write_bytes(b"x")
    write_descriptor(folder, [folder / "fold.keras"], "PVS", ["t1"])
    with pytest.raises(MissingInputError, match="no model_info.*target 'brain_mask'") as info:
        shiva_mask.choose_model(marker_only)
    assert info.value.exit_code == ExitCode.NO_INPUT

