"""Rigid FLAIR -> T1w registration when the FLAIR's field of view is very different (issue #5,
bad input "FLAIR with a very different FOV"): the FLAIR keeps only the upper part of the head
and its header is moved by a known rigid transform. SHiVAi's centre-of-mass start is pulled by
the missing slab (measured: 14-21 mm off); the headers' own alignment scores better than that,
so the header start runs, recovers the transform and is kept (issue #20: kept only where it
scores clearly better). Registrations run in single-threaded workers (issue #19)."""
from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from shiva_bids.preprocessing import registration
from shiva_bids.preprocessing.antsio import to_ants
from shiva_bids.preprocessing.conform import conform
from shiva_bids.preprocessing.crop import crop, crop_array, crop_box
from shiva_bids.preprocessing.workers import ITK_THREADS_VARIABLE, Workers
from shiva_bids.synthetic import generate_dataset
from shiva_bids.volume import Volume

MODEL_SHAPE = (160, 214, 176)


def _rigid(degrees, mm) -> np.ndarray:
    t = np.eye(4)
    t[:3, :3] = Rotation.from_euler("xyz", degrees, degrees=True).as_matrix()
    t[:3, 3] = mm
    return t


def _upper_part(volume: Volume, fraction: float) -> Volume:
    """The slices of `volume` in the upper `fraction` of its most superior voxel axis."""
    axis = int(np.argmax(np.abs(volume.affine[2, :3])))
    n = volume.shape[axis]
    keep = round(fraction * n)
    first = n - keep if volume.affine[2, axis] > 0 else 0
    index = [slice(None)] * 3
    index[axis] = slice(first, first + keep)
    shift = np.zeros(3)
    shift[axis] = first
    affine = volume.affine.copy()
    affine[:3, 3] += affine[:3, :3] @ shift
    return Volume(np.ascontiguousarray(volume.data[tuple(index)]), affine)


def _load(path) -> Volume:
    img = nib.load(path)
    return Volume(np.asarray(img.dataobj, np.float32), img.affine)


@pytest.fixture(scope="module")
def workers():
    with Workers(2) as pool:
        yield pool


@pytest.fixture(scope="module")
def cut_flair(tmp_path_factory):
    """Cropped T1w (not normalised, as SHiVAi registers it) with its true brain mask; the
    FLAIR cut to its upper 70 % and moved by 4/-3/5 degrees and (3, -4, 2.5) mm; that
    transform; the lesion centroids (world mm); the whole FLAIR, moved the same way."""
    root = tmp_path_factory.mktemp("fov")
    unit = generate_dataset(root, n_participants=1, seed=7, loads=["severe"],
                            modalities=["T1w", "FLAIR"]).units[0]
    conformed = conform(_load(unit.images["T1w"]))
    mask = conform(_load(unit.brain_masks["T1w"]), is_mask=True).data > 0.5
    box = crop_box(mask, MODEL_SHAPE)
    fixed_mask = crop_array(mask.astype(np.uint8), box)
    fixed = crop(conformed, box)
    moved = _rigid((4.0, -3.0, 5.0), (3.0, -4.0, 2.5))
    whole = _load(unit.images["FLAIR"])
    flair = _upper_part(whole, 0.7)
    moving = Volume(flair.data, moved @ flair.affine)
    centroids = np.array([les.centroid_mm for les in unit.lesions])
    return fixed, fixed_mask, moving, moved, centroids, Volume(whole.data, moved @ whole.affine)


def test_workers_run_itk_single_threaded(workers):
    assert workers.submit(os.getenv, ITK_THREADS_VARIABLE).result() == "1"


def test_flair_with_a_cut_field_of_view_registers_within_1mm(cut_flair, workers, tmp_path):
    fixed, fixed_mask, moving, moved, centroids, _ = cut_flair
    job = registration.shivai_job(fixed, fixed_mask, moving, "FLAIR")
    result = workers.submit(registration.register, job, tmp_path / "flair.mat").result()
    want = centroids @ moved[:3, :3].T + moved[:3, 3]
    error = np.linalg.norm(registration.map_points(result.transform, centroids) - want, axis=1)
    assert error.mean() <= 1.0
    # From the centres of mass the optimiser ends far off (MI 0.04); the headers' alignment
    # alone scores better (0.11), so the header start runs (0.93) and, clearly better, is kept.
    scores = result.scores
    assert scores["headers"] > scores["com"]
    assert result.start == "header"
    assert scores["header"] > scores["com"] + registration.CLEARLY_BETTER


def test_ordinary_field_of_view_keeps_the_centre_of_mass_start(cut_flair, workers, tmp_path):
    """With the whole FLAIR the centre-of-mass result beats the headers' alignment: one start,
    SHiVAi's."""
    fixed, fixed_mask, _, moved, centroids, whole = cut_flair
    job = registration.shivai_job(fixed, fixed_mask, whole, "FLAIR")
    result = workers.submit(registration.register, job, tmp_path / "whole.mat").result()
    assert result.start == "com" and set(result.scores) == {"com", "headers"}
    want = centroids @ moved[:3, :3].T + moved[:3, 3]
    error = np.linalg.norm(registration.map_points(result.transform, centroids) - want, axis=1)
    assert error.mean() <= 0.5


def test_alignment_score_prefers_the_true_transform(cut_flair, tmp_path):
    fixed, fixed_mask, moving, moved, _, _ = cut_flair
    # a fixed point p shows the anatomy the moving image has at `moved @ p`
    registration.write_rigid(moved, tmp_path / "true.mat")
    registration.write_rigid(_rigid((0, 0, 0), (0, 0, 8.0)) @ moved, tmp_path / "off.mat")
    good = registration.alignment_score(fixed, moving, tmp_path / "true.mat", fixed_mask)
    bad = registration.alignment_score(fixed, moving, tmp_path / "off.mat", fixed_mask)
    assert good > bad > 0


def _blobs(centres, shape=(40, 40, 40), spacing=2.0) -> Volume:
    """Gaussian blobs (sigma 4 mm) at `centres` (world mm) on a 2 mm grid at the origin."""
    ijk = np.indices(shape, dtype=np.float32) * spacing
    data = sum(100 * np.exp(-sum((ijk[k] - c[k]) ** 2 for k in range(3)) / 32.0)
               for c in centres)
    return Volume(data.astype(np.float32), np.diag([spacing] * 3 + [1.0]))


def test_the_fixed_mask_decides_what_is_registered(tmp_path):
    """Blob A moves 3 mm to the right, blob B 3 mm to the left: with the fixed mask around A
    the transform follows A. antsRegistration reads a mask passed by pointer as unsigned char
    without converting it, so the float mask this code passed before reached ANTs as an empty
    mask here and the registration silently returned the identity (issue #24)."""
    a, b = np.array([40.0, 40.0, 60.0]), np.array([40.0, 40.0, 20.0])
    shift = np.array([3.0, 0.0, 0.0])
    fixed, moving = _blobs([a, b]), _blobs([a + shift, b - shift])
    ijk = np.indices(fixed.shape) * 2.0
    around_a = np.linalg.norm(ijk - a[:, None, None, None], axis=0) < 14
    stage = registration.Stage("test", (200, 200), (2, 1), (2, 0), bins=32, sampling_rate=1.0)
    found = {}
    for name, mask in (("A", around_a), ("none", None)):
        prefix = str(tmp_path / f"{name}_")
        registration.run_ants(to_ants(fixed), to_ants(moving), prefix, [stage], mask,
                              start="header")
        found[name] = registration.rigid_matrix(Path(prefix + "0GenericAffine.mat"))[:3, 3]
    assert 1.5 < found["A"][0] < 4.0 and np.abs(found["A"][1:]).max() < 1.0  # A's shift
    assert found["none"][0] < 0  # without the mask, B's side wins here
