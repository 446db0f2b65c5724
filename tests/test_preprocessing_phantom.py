"""Preprocessing accuracy on a phantom with skull (issue #5): template brain mask, FLAIR/SWI
rigid registration against a known misalignment, native <-> model round trips, and the
SWI-space (CMB) branch. One phantom, one full preprocessing run, shared by every test; and a
second run with another number of workers and job order, which must give the same bytes
(issue #19)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.transform import Rotation

from shiva_bids.bids.inputs import InputSet
from shiva_bids.preprocessing import PreprocessedUnit, PreprocOptions, preprocess_unit
from shiva_bids.preprocessing.native import resample_world
from shiva_bids.preprocessing.registration import map_points
from shiva_bids.synthetic import generate_dataset

MISALIGN = (Rotation.from_euler("xyz", (4.0, -3.0, 5.0), degrees=True).as_matrix(),
            np.array([3.0, -4.0, 2.5]))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * (a & b).sum() / (a.sum() + b.sum())


def _misalignment() -> np.ndarray:
    t = np.eye(4)
    t[:3, :3], t[:3, 3] = MISALIGN
    return t


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """One participant with T1w, FLAIR and SWI (2 mm slices); the FLAIR header moved by a known
    rigid transform (a FLAIR with a cut field of view: tests/test_registration.py)."""
    root = tmp_path_factory.mktemp("phantom")
    ds = generate_dataset(root / "raw", n_participants=1, seed=7, loads=["severe"],
                          modalities=["T1w", "FLAIR", "T2starw"], segmentation=True)
    unit = ds.units[0]
    flair = nib.load(unit.images["FLAIR"])
    moved = nib.Nifti1Image(np.asarray(flair.dataobj), _misalignment() @ flair.affine)
    flair_path = root / "sub-01_FLAIR.nii.gz"
    nib.save(moved, flair_path)
    inputs = InputSet(unit.subject, t1w=unit.images["T1w"], flair=flair_path,
                      swi=unit.images["T2starw"])
    return unit, inputs, root


@pytest.fixture(scope="module")
def processed(phantom) -> PreprocessedUnit:
    unit, inputs, root = phantom
    return preprocess_unit(inputs, {"t1", "flair", "swi"}, PreprocOptions(threads=2),
                           root / "work")


def test_template_brain_mask_matches_truth(phantom, processed):
    unit, _, _ = phantom
    truth = np.asarray(nib.load(unit.brain_masks["T1w"]).dataobj)
    native = processed.native_brain_mask("T1w")
    assert native.shape == truth.shape
    np.testing.assert_allclose(native.affine, nib.load(unit.images["T1w"]).affine, atol=1e-4)
    assert processed.brain_mask_method == "template:ICBM152NLin2009aSymHead"
    assert _dice(native.data, truth) >= 0.95


def test_flair_registration_recovers_known_misalignment(phantom, processed):
    unit, inputs, _ = phantom
    path = processed.transforms["FLAIR->T1w"]
    assert path.name == "sub-01_from-FLAIR_to-T1w_mode-image_xfm.mat" and path.is_file()
    centroids = np.array([les.centroid_mm for les in unit.lesions])
    t = _misalignment()
    want = centroids @ t[:3, :3].T + t[:3, 3]
    error = np.linalg.norm(map_points(path, centroids) - want, axis=1)
    assert error.mean() <= 1.0
    assert processed.qc["rotation_flair_reg"] == pytest.approx(12.0, abs=1.0)


def test_model_space_channels(processed):
    space = processed.spaces["T1w"]
    x = space.stack(["t1", "flair"])
    assert x.shape == (160, 214, 176, 2) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert space.brain_mask.dtype == np.uint8 and space.brain_mask.sum() > 1e6
    inside = space.brain_mask > 0
    # p99 inside the mask maps to 1/1.3 (SHIVA.md §5.7)
    assert np.percentile(x[..., 0][inside], 99) == pytest.approx(1 / 1.3, abs=0.01)
    assert np.percentile(x[..., 1][inside], 99) == pytest.approx(1 / 1.3, abs=0.01)
    assert 0 < processed.qc["main_norm_peak"] < 1


def test_swi_space_gets_the_t1_mask(phantom, processed):
    unit, _, _ = phantom
    swi = processed.spaces["SWI"]
    assert swi.channels["swi"].shape == (160, 214, 176)
    assert swi.native_reference == unit.images["T2starw"]
    truth = np.asarray(nib.load(unit.brain_masks["T2starw"]).dataobj)
    assert _dice(processed.native_brain_mask("SWI").data, truth) >= 0.93
    centroids = np.array([les.centroid_mm for les in unit.lesions])
    error = np.linalg.norm(map_points(processed.transforms["SWI->T1w"], centroids)
                           - centroids, axis=1)
    assert error.mean() <= 1.0


def _balls(shape, affine, radii_mm, rng):
    """Label image with balls of the given radii (mm) at random places inside the volume."""
    labels = np.zeros(shape, np.int16)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(0))
    grid = np.indices(shape, dtype=np.float32)
    centre = np.array(shape) / 2
    for label, radius in enumerate(radii_mm, start=1):
        c = centre + rng.uniform(-0.2, 0.2, 3) * np.array(shape)
        dist2 = sum(((grid[k] - c[k]) * zooms[k]) ** 2 for k in range(3))
        labels[dist2 <= radius ** 2] = label
    return labels


def test_round_trip_native_model_native(phantom, processed):
    unit, _, _ = phantom
    t1 = nib.load(unit.images["T1w"])
    space = processed.spaces["T1w"]
    rng = np.random.default_rng(0)
    labels = _balls(t1.shape, t1.affine, (2.5, 4.0, 7.0), rng)  # 5-14 voxels wide
    model = resample_world(labels, t1.affine, space.brain_mask.shape, space.affine, "nearest")
    back = processed.to_native("T1w", model, "nearest")
    assert back.data.dtype == np.int16
    for label in range(1, 4):
        assert _dice(back.data == label, labels == label) >= 0.95, label
    prob = ndimage.gaussian_filter((labels > 0).astype(np.float32), 2.0)
    voxel = abs(np.linalg.det(t1.affine[:3, :3]))
    model_p = resample_world(prob, t1.affine, space.brain_mask.shape, space.affine, "linear")
    back_p = processed.to_native("T1w", model_p, "linear")
    assert model_p.sum() == pytest.approx(prob.sum() * voxel, rel=0.02)  # 1 mm^3 voxels
    assert back_p.data.sum() == pytest.approx(prob.sum(), rel=0.02)


def test_warnings_and_qc_are_recorded(processed):
    for key in ("brain_mask_size", "brain_mask_volume_ml", "main_norm_peak", "flair_norm_peak",
                "swi_norm_peak", "rotation_swi_reg", "translation_flair_reg"):
        assert key in processed.qc
    assert processed.template_transform is not None
    assert all(Path(p).is_file() for p in processed.template_transform.transforms)


def test_atlas_regions_agree_with_the_phantom_truth(phantom, processed):
    """Issue #17, the pinned case of benchmarks/bench_regions.py: the template atlas brought
    through this unit's template registration puts the centroid of >= 90 % of the lesions
    lying more than 3 mm inside their true region (phantom truth) in that region, for every
    scheme; CMB on the SWI grid through the inverse SWI -> T1w rigid."""
    from shiva_bids.markers import MARKERS
    from shiva_bids.postprocessing.regions import build_regions
    from shiva_bids.postprocessing.sources import atlas_grid, unit_parcellation
    from shiva_bids.synthetic.segmentation import atlas_cache_dir
    unit, _, _ = phantom
    grid = atlas_grid(processed.spaces["T1w"].conformed_mask)
    parcellation = unit_parcellation("atlas", unit.unit_id, None, "",
                                     processed.template_transform, grid,
                                     atlas_cache_dir())
    assert parcellation.source == "atlas:DesikanKilliany" and parcellation.approximate
    agree = []
    for marker, spec in MARKERS.items():
        swi = spec.space == "SWI"
        regions = build_regions(spec.region_scheme, processed.native_brain_mask(spec.space),
                                parcellation=parcellation,
                                dseg_transforms=[str(processed.transforms["SWI->T1w"])]
                                if swi else [], dseg_invert=[True] if swi else None)
        to_voxel = np.linalg.inv(regions.labels.affine)
        for lesion in unit.lesions_of(marker):
            if lesion.boundary_mm > 3.0:
                ijk = np.rint(to_voxel[:3, :3] @ lesion.centroid_mm + to_voxel[:3, 3])
                label = regions.labels.data[tuple(ijk.astype(int))]
                agree.append(regions.name(int(label)) == lesion.scheme_region)
    assert len(agree) >= 50 and np.mean(agree) >= 0.9, (len(agree), np.mean(agree))


def test_phantom_truth_segmentation_is_a_valid_derivative(phantom):
    """The true segmentation (`desc-aparcaseg_dseg`, found by --derivatives) keeps the
    reference dataset validator-clean and says where its labels come from (licence)."""
    import json

    from shiva_bids.bids.validation import ValidatorUnavailable, validate_dataset
    unit, _, root = phantom
    sidecar = json.loads(unit.segmentation.with_name(
        unit.segmentation.name.replace(".nii.gz", ".json")).read_text())
    assert "FreeSurfer" in sidecar["Atlas"]["License"]
    labels = np.asarray(nib.load(unit.segmentation).dataobj)
    assert {2, 41, 4, 17, 1028, 2028} <= set(np.unique(labels).tolist())
    try:
        report = validate_dataset(root / "raw" / "derivatives" / "reference")
    except ValidatorUnavailable as exc:
        pytest.skip(str(exc))
    assert report.ok, report.summary()


def _with_mask_from_derivatives(phantom, processed) -> InputSet:
    """The phantom's inputs with the template mask of `processed` given as a --derivatives
    mask (the derivatives cleaning keeps it voxel for voxel)."""
    _, inputs, root = phantom
    path = root / "sub-01_desc-brain_mask.nii.gz"
    nib.save(processed.spaces["T1w"].conformed_mask.to_nifti(np.uint8), path)
    return InputSet(inputs.unit_id, t1w=inputs.t1w, flair=inputs.flair, swi=inputs.swi,
                    brain_mask=path)


def test_one_template_registration_serves_the_mask_and_the_atlas(phantom, processed,
                                                                 monkeypatch):
    """Issue #24: a mask from --derivatives with atlas regions needs the template
    registration; in the work folder where the template mask method made it, it is reused
    (not registered again), whichever method asked first."""
    from shiva_bids.preprocessing import brainmask
    _, _, root = phantom
    started = []
    start = brainmask.start_template_registration
    monkeypatch.setattr(brainmask, "start_template_registration",
                        lambda *args: (started.append(args), start(*args))[1])
    again = preprocess_unit(_with_mask_from_derivatives(phantom, processed), {"t1"},
                            PreprocOptions(threads=1, template_registration=True), root / "work")
    assert again.brain_mask_method == "derivatives" and not started
    assert again.template_transform == processed.template_transform
    np.testing.assert_array_equal(again.spaces["T1w"].brain_mask,
                                  processed.spaces["T1w"].brain_mask)


@pytest.mark.slow
def test_atlas_registration_beside_the_rigid_ones_gives_the_same_bytes(phantom, processed):
    """The atlas regions' template registration now runs in a worker beside the FLAIR
    registration (issue #24): in a fresh work folder, with the same mask given as
    --derivatives and 3 workers instead of 2, the template transforms, the FLAIR transform and
    channels are the bytes of the template-mask run (other order of jobs, another number of
    workers: issue #19 item 2; the SWI branch run twice: tests/test_end_to_end.py)."""
    _, _, root = phantom
    again = preprocess_unit(_with_mask_from_derivatives(phantom, processed), {"t1", "flair"},
                            PreprocOptions(threads=3, template_registration=True),
                            root / "work_derivatives")
    assert again.template_transform.transforms != processed.template_transform.transforms
    (warp, affine), (their_warp, their_affine) = (t.template_transform.transforms
                                                  for t in (again, processed))
    np.testing.assert_array_equal(np.asarray(nib.load(warp).dataobj),
                                  np.asarray(nib.load(their_warp).dataobj))
    assert affine.read_bytes() == their_affine.read_bytes()
    assert (again.transforms["FLAIR->T1w"].read_bytes()
            == processed.transforms["FLAIR->T1w"].read_bytes())
    for channel in ("t1", "flair"):
        np.testing.assert_array_equal(again.spaces["T1w"].channels[channel],
                                      processed.spaces["T1w"].channels[channel])
