"""Preprocessing stages on hand-made arrays: crop box, normalisation, headers, conform grid,
native resampling (reference/SHIVA.md §5.1, §5.2, §5.5, §5.7)."""
from __future__ import annotations

import gzip
import math

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.errors import BadInputError, ExitCode
from shiva_bids.preprocessing.conform import conform, conformed_affine
from shiva_bids.preprocessing.crop import crop, crop_array, crop_box
from shiva_bids.preprocessing.headers import check_affine, load_image, looks_skull_stripped
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.normalise import norm_peak, normalise
from shiva_bids.synthetic.grids import GRID_PRESETS, make_grid
from shiva_bids.volume import Volume

SHAPE = (160, 214, 176)


# --- crop (SHIVA.md §5.5) ----------------------------------------------------------------------

def _reference_box(mask: np.ndarray, shape):
    """Independent computation of the reference crop: loops over voxels, no shared helpers."""
    idx = np.argwhere(mask > 0).astype(float)
    centre = [math.ceil(v) for v in idx.mean(axis=0)]
    half = [s // 2 for s in shape]
    start = [c - h for c, h in zip(centre, half)]
    top = int(idx[:, 2].max())
    hi = min(start[2] + shape[2], mask.shape[2])
    if hi <= top:
        start[2] += top - hi + 5
    return start


def _reference_crop(data: np.ndarray, start, shape):
    out = np.zeros(shape, data.dtype)
    for i in range(shape[0]):
        x = start[0] + i
        if not 0 <= x < data.shape[0]:
            continue
        for j in range(shape[1]):
            y = start[1] + j
            if not 0 <= y < data.shape[1]:
                continue
            for k in range(shape[2]):
                z = start[2] + k
                if 0 <= z < data.shape[2]:
                    out[i, j, k] = data[x, y, z]
    return out


@pytest.mark.parametrize("corner", [(2, 2, 2), (27, 27, 27), (2, 27, 14), (27, 2, 27),
                                    (14, 14, 2), (14, 14, 27)])
def test_crop_box_hanging_off_every_side(corner):
    rng = np.random.default_rng(sum(corner))
    data = rng.random((30, 30, 30)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint8)
    c = np.array(corner)
    mask[tuple(slice(max(v - 2, 0), v + 1) for v in c)] = 1
    shape = (12, 17, 9)
    box = crop_box(mask, shape)
    assert list(box.start) == _reference_box(mask, shape)
    np.testing.assert_array_equal(crop_array(data, box), _reference_crop(data, box.start, shape))


def test_crop_box_larger_than_image_is_zero_padded():
    data = np.arange(8 * 9 * 10, dtype=np.float32).reshape(8, 9, 10) + 1
    mask = np.ones(data.shape, np.uint8)
    box = crop_box(mask, SHAPE)
    out = crop_array(data, box)
    assert out.shape == SHAPE
    assert out.sum() == data.sum()  # everything kept, the rest is zeros
    assert np.count_nonzero(out) == data.size


def test_neck_rule_shifts_box_up_by_five_beyond_the_mask_top():
    # A tall mask whose centre of mass is low (a long neck-like stalk): the box would cut the top.
    mask = np.zeros((40, 40, 120), np.uint8)
    mask[15:25, 15:25, 0:100] = 1
    mask[10:30, 10:30, 100:110] = 1
    shape = (20, 20, 60)
    box = crop_box(mask, shape)
    centre_z = math.ceil(np.argwhere(mask)[:, 2].mean())
    unshifted_hi = centre_z - 30 + 60
    assert unshifted_hi <= 109
    assert box.neck_shift == 109 - unshifted_hi + 5
    assert box.stop[2] == 109 + 5
    assert list(box.start) == _reference_box(mask, shape)


def test_no_neck_shift_when_the_top_is_inside():
    mask = np.zeros((40, 40, 40), np.uint8)
    mask[10:30, 10:30, 10:30] = 1
    box = crop_box(mask, (30, 30, 30))
    assert box.neck_shift == 0
    assert box.start == (5, 5, 5)  # ceil(19.5) - 15


def test_crop_affine_preserves_world_coordinates():
    affine = np.array([[1, 0, 0, -100.], [0, 1, 0, -120], [0, 0, 1, -90], [0, 0, 0, 1]])
    data = np.random.default_rng(1).random((50, 60, 40)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint8)
    mask[10:20, 30:50, 5:15] = 1
    box = crop_box(mask, (16, 18, 14))
    cropped = crop(Volume(data, affine), box)
    ijk = np.array([3, 4, 5, 1])
    world = cropped.affine @ ijk
    src = np.linalg.inv(affine) @ world
    assert cropped.data[3, 4, 5] == data[tuple(src[:3].round().astype(int))]


def test_empty_mask_is_rejected():
    with pytest.raises(BadInputError):
        crop_box(np.zeros((5, 5, 5)), (4, 4, 4))


# --- normalisation (SHIVA.md §5.7) -------------------------------------------------------------

def _reference_normalise(x, mask, inverse=False):
    x = np.array(x, dtype=np.float64)
    x[np.isnan(x)] = 0
    x[x < 0] = 0
    values = np.sort(x[mask != 0])
    # numpy's default linear percentile, written out
    pos = 0.99 * (values.size - 1)
    lo = int(np.floor(pos))
    p = values[lo] + (pos - lo) * (values[min(lo + 1, values.size - 1)] - values[lo])
    y = np.minimum(x / p, 1.3) / 1.3
    if inverse:
        y = np.where(mask != 0, 1 - y, y)
    return y


@pytest.mark.parametrize("inverse", [False, True])
def test_normalise_matches_reference_formula(inverse):
    rng = np.random.default_rng(3)
    x = rng.normal(100, 40, (20, 21, 22)).astype(np.float32)
    x[0, 0, :3] = np.nan
    mask = np.zeros(x.shape, np.uint8)
    mask[3:17, 4:18, 2:20] = 1
    got = normalise(x, mask, inverse=inverse)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _reference_normalise(x, mask, inverse), atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1
    if not inverse:
        p99 = np.percentile(np.nan_to_num(np.clip(x, 0, None))[mask > 0], 99)
        assert abs(normalise(np.full((2, 2, 2), p99, np.float32), np.ones((2, 2, 2)))[0, 0, 0]
                   - 1 / 1.3) < 1e-6


def test_norm_peak_is_left_edge_of_fullest_bin():
    x = np.full((10, 10, 10), 0.5, np.float32)
    x[:2] = 0.0  # bin 0 is outside bins 12-56 and must be ignored
    assert norm_peak(x) == pytest.approx(32 / 64)


# --- headers (SHIVA.md §5.1, issue #5) -----------------------------------------------------------

def _save(path, data, affine=np.eye(4), qform=None):
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine if qform is None else qform, code=1)
    nib.save(img, path)
    return path


def _head(shape=(20, 22, 24)):
    return np.random.default_rng(0).random(shape).astype(np.float32) + 1


def test_truncated_gzip_names_the_file(tmp_path):
    path = _save(tmp_path / "sub-01_T1w.nii.gz", _head((40, 40, 40)))
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(BadInputError) as err:
        load_image(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == ExitCode.BAD_INPUT


def test_non_nifti_named_nii_gz(tmp_path):
    path = tmp_path / "sub-01_T1w.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image" * 50))
    with pytest.raises(BadInputError, match="sub-01_T1w.nii.gz"):
        load_image(path)


def test_true_4d_refused_singleton_4d_squeezed(tmp_path):
    with pytest.raises(BadInputError, match="4D"):
        load_image(_save(tmp_path / "a_T1w.nii.gz", np.ones((5, 5, 5, 3), np.float32)
                         * np.arange(3)))
    loaded = load_image(_save(tmp_path / "b_T1w.nii.gz", _head((5, 6, 7))[..., None]))
    assert loaded.volume.shape == (5, 6, 7)


def test_all_zero_and_constant_rejected_with_65(tmp_path):
    for name, value in (("sub-01_FLAIR.nii.gz", 0.0), ("sub-02_FLAIR.nii.gz", 7.0)):
        with pytest.raises(BadInputError, match=name) as err:
            load_image(_save(tmp_path / name, np.full((6, 6, 6), value, np.float32)))
        assert err.value.exit_code == 65


def test_nan_inf_replaced_and_reported(tmp_path):
    data = _head()
    data[1, 1, 1] = np.nan
    data[2, 2, 2] = np.inf
    loaded = load_image(_save(tmp_path / "x_T1w.nii.gz", data))
    assert np.isfinite(loaded.volume.data).all() and loaded.volume.data[1, 1, 1] == 0
    assert any("2 NaN/Inf" in w for w in loaded.warnings)


def test_sform_qform_mismatch_flagged_and_sform_used(tmp_path):
    sform = np.diag([1.0, 1.0, 1.0, 1.0])
    qform = sform.copy()
    qform[:3, 3] = [5, 0, 0]
    loaded = load_image(_save(tmp_path / "x_T1w.nii.gz", _head(), sform, qform))
    assert loaded.sform_qform_mismatch and loaded.affine_source == "sform"
    np.testing.assert_allclose(loaded.volume.affine, sform)
    assert any("disagree" in w for w in loaded.warnings)


def test_qform_used_when_sform_code_is_zero(tmp_path):
    img = nib.Nifti1Image(_head(), np.eye(4))
    qform = np.diag([2.0, 2.0, 2.0, 1.0])
    img.set_qform(qform, code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "q_T1w.nii.gz")
    loaded = load_image(tmp_path / "q_T1w.nii.gz")
    assert loaded.affine_source == "qform"
    np.testing.assert_allclose(loaded.volume.zooms, [2, 2, 2])


def test_anisotropy_warning(tmp_path):
    loaded = load_image(_save(tmp_path / "swi_SWI.nii.gz", _head(),
                              np.diag([0.5, 0.5, 2.0, 1.0])))
    assert any("anisotropic" in w for w in loaded.warnings)
    loaded = load_image(_save(tmp_path / "swi2_SWI.nii.gz", _head(),
                              np.diag([0.8, 0.8, 2.0, 1.0])))
    assert not any("anisotropic" in w for w in loaded.warnings)


def test_affine_repair_branches():
    good = np.diag([1.0, 1.0, 1.2, 1.0])
    assert check_affine(good, _head())[1] == "none"
    slightly = good.copy()
    slightly[0, 1] = 1e-3
    fixed, how = check_affine(slightly, _head())
    assert how == "orthogonalised"
    rot = fixed[:3, :3] / np.sqrt((fixed[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-9)
    sheared = good.copy()
    sheared[0, 1] = 0.2
    data = np.zeros((10, 10, 10), np.float32)
    data[6, 2, 3] = 1
    rebuilt, how = check_affine(sheared, data)
    assert how == "rebuilt"
    np.testing.assert_allclose(rebuilt @ [6, 2, 3, 1], [0, 0, 0, 1], atol=1e-9)


def test_skull_stripped_detection():
    affine = np.eye(4)
    stripped = np.zeros((150, 150, 150), np.float32)
    stripped[20:130, 20:130, 25:125] = 1.0  # 1.21 L of tissue in exact zeros
    assert looks_skull_stripped(Volume(stripped, affine))
    head = stripped + np.random.default_rng(0).random(stripped.shape).astype(np.float32) * 0.05
    assert not looks_skull_stripped(Volume(head, affine))


# --- conform (SHIVA.md §5.2) -------------------------------------------------------------------

def test_conform_grid_is_nibabels_and_keeps_centre_voxel():
    affine = np.array([[0, 0, -1.2, 90], [-0.9, 0, 0, 100], [0, 1.1, 0, -80], [0, 0, 0, 1.0]])
    shape = (50, 60, 40)
    data = np.random.default_rng(2).random(shape).astype(np.float32)
    out = conform(Volume(data, affine))
    ref = nib.processing.conform(nib.Nifti1Image(data, affine), order=3)
    np.testing.assert_allclose(out.affine, ref.affine)
    assert out.shape == (256, 256, 256) and out.data.dtype == np.float32
    assert out.data.min() >= data.min() and out.data.max() <= data.max()  # clamped
    # voxel (shape-1)//2 of the RAS-reoriented input maps to output voxel 127 (rescale_affine)
    ras = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    centre_world = ras.affine @ np.r_[(np.array(ras.shape) - 1) // 2, 1]
    np.testing.assert_allclose(out.affine @ [127, 127, 127, 1], centre_world, atol=1e-6)
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    np.testing.assert_allclose(conformed_affine(shape, affine), out.affine)


def test_conform_uses_order_zero_when_voxel_size_is_unchanged():
    data = np.zeros((30, 30, 30), np.float32)
    data[10:20, 10:20, 10:20] = 5
    out = conform(Volume(data, np.diag([-1.0, 1, 1, 1])))
    assert set(np.unique(out.data)) == {0.0, 5.0}


# --- native resampling --------------------------------------------------------------------------

def test_resample_world_round_trip_is_exact_on_an_aligned_sub_grid():
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    labels = np.random.default_rng(4).integers(0, 5, (20, 20, 20)).astype(np.int16)
    sub = affine.copy()
    sub[:3, 3] = [3, 4, 5]
    there = resample_world(labels, affine, (10, 10, 10), sub, "nearest")
    assert there.dtype == np.int16
    np.testing.assert_array_equal(there, labels[3:13, 4:14, 5:15])
    with pytest.raises(ValueError):
        resample_world(labels, affine, (2, 2, 2), affine, "cubic")


def _shifted(affine: np.ndarray, voxels) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] += affine[:3, :3] @ np.asarray(voxels, dtype=float)
    return out


@pytest.mark.parametrize("preset", [p for p in GRID_PRESETS["T1w"] if min(p.zooms) >= 1.0],
                         ids=lambda p: p.label)
def test_round_trip_is_exact_for_3_voxel_structures_on_grids_of_1mm_or_coarser(preset):
    """native -> model (nearest) -> native (nearest) through the pipeline's own grids (the
    conformed affine of the native grid, shifted by an integer crop start): every native voxel
    centre has its own nearest 1 mm model voxel, so labels come back exactly, however small.
    (Finer native grids lose resolution on the 1 mm model grid: docs/preprocessing.md.)"""
    rng = np.random.default_rng(3)
    grid = make_grid(preset.orientation, preset.zooms, preset.fov_mm, rng.uniform(-5, 5, 3))
    conformed = conformed_affine(grid.shape, grid.affine)
    native_shape, model_shape = (30, 30, 30), (48, 48, 48)
    for _ in range(5):
        native = _shifted(grid.affine, np.array(grid.shape) // 2 - 15 + rng.integers(-20, 20, 3))
        centre = np.linalg.solve(conformed, native @ np.r_[15.0, 15.0, 15.0, 1.0])[:3]
        model = _shifted(conformed, np.round(centre).astype(int) - 24)
        ijk = np.indices(native_shape, dtype=np.float32)
        c = 15 + rng.uniform(-0.5, 0.5, 3)
        labels = (sum((ijk[k] - c[k]) ** 2 for k in range(3)) <= 1.5 ** 2).astype(np.uint8)
        there = resample_world(labels, native, model_shape, model, "nearest")
        back = resample_world(there, model, native_shape, native, "nearest")
        assert labels.any(axis=(1, 2)).sum() == 3  # 3 voxels wide
        np.testing.assert_array_equal(back, labels)
