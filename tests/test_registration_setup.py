"""Parity of the rigid registrations with SHiVAi's set-up (issue #20 items 1 and 5; reference
SHIVA.md §5.6), checked without running a registration: the antsRegistration command line
against a hand-written copy of §5.6, and what the pipeline hands to it (fixed image, masks,
moving images, output interpolator) on small hand-made images."""
from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.bids.inputs import InputSet
from shiva_bids.preprocessing import PreprocOptions, pipeline, preprocess_unit, registration
from shiva_bids.preprocessing.antsio import to_ants
from shiva_bids.preprocessing.brainmask import head_mask
from shiva_bids.preprocessing.conform import conform, conformed_affine
from shiva_bids.preprocessing.crop import crop
from shiva_bids.preprocessing.headers import load_image
from shiva_bids.preprocessing.normalise import normalise

# SHIVA.md §5.6, written out by hand: Rigid, gradient step 0.1; MI, 64 bins, weight 1, Regular
# sampling 25 %; shrink 4x2x1x1; sigmas 4x2x1x0 mm; iterations 1000x500x250x125; convergence
# 1e-6 over 10; winsorize [0.005, 0.995]; no histogram matching; centre-of-mass start; float.
# Ours: a seed (1 = our --random-seed 0; ANTs would take 0 as "use the clock").
SHIVAI_FLAIR_COMMAND = [
    "--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
    "--random-seed", "1", "--write-composite-transform", "0",
    "--initial-moving-transform", "[fixed,moving,1]",
    "--metric", "MI[fixed,moving,1,64,Regular,0.25]",
    "--transform", "Rigid[0.1]",
    "--convergence", "[1000x500x250x125,1e-06,10]",
    "--shrink-factors", "4x2x1x1",
    "--smoothing-sigmas", "4x2x1x0mm",
    "--masks", "[mask,NA]",
    "--winsorize-image-intensities", "[0.005,0.995]",
    "--use-histogram-matching", "0",
    "--output", "flair_to_t1_",
]
MODEL_SHAPE = (64, 80, 64)  # holds the whole head: the SWI mask can be checked


def test_ants_seed_is_never_zero_and_keeps_seeds_apart():
    assert registration.ants_seed(0) == 1
    seeds = [registration.ants_seed(s) for s in (0, 1, 2, 42, 2 ** 31 - 2)]
    assert 0 not in seeds and len(set(seeds)) == len(seeds)


def _image(path: Path, shape, zooms, brain: float, scalp: float, noise_seed: int) -> Path:
    """A small head on its own grid (centred on the origin): brain ellipsoid (25 x 30 x 22 mm
    semi-axes), a dark gap, a bright scalp shell; a little noise everywhere."""
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * np.asarray(zooms) / 2
    ijk = np.indices(shape, dtype=np.float32)
    r = np.sqrt(sum(((ijk[k] * zooms[k] + affine[k, 3]) / a) ** 2
                    for k, a in enumerate((25.0, 30.0, 22.0))))
    data = np.where(r <= 1, brain * (1.1 - 0.2 * r), 0) + np.where((r > 1.12) & (r <= 1.25),
                                                                    scalp, 0)
    data += np.random.default_rng(noise_seed).normal(2.0, 1.0, shape)
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return path


class RecordingWorkers:
    """Stands in for workers.Workers: runs everything in this process, except the rigid
    registrations, which are recorded and answered with the identity transform."""

    jobs: dict[str, registration.RigidJob] = {}  # by transform file name

    def __init__(self, processes: int):
        pass

    def warm_up(self) -> None:
        pass

    def submit(self, function, *args, **kwargs) -> Future:
        future = Future()
        if function is registration.register:
            job, path = args
            self.jobs[path.name] = job
            path.parent.mkdir(parents=True, exist_ok=True)
            registration.write_rigid(np.eye(4), path)
            future.set_result(registration.RigidResult(path, 0.0, 0.0))
            return future
        future.set_result(function(*args, **kwargs))
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One unit (T1w 1 mm with a given brain mask, FLAIR 1x1x3 mm, SWI 0.9x0.9x2.5 mm)
    preprocessed with the registrations recorded instead of run."""
    root = tmp_path_factory.mktemp("setup")
    t1 = _image(root / "sub-01_T1w.nii.gz", (80, 96, 76), (1.0, 1.0, 1.0), 100, 160, 1)
    head = nib.load(t1)
    values = np.asarray(head.dataobj)
    brain = ((values > 60) & (values < 130)).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, head.affine), root / "sub-01_desc-brain_mask.nii.gz")
    flair = _image(root / "sub-01_FLAIR.nii.gz", (84, 100, 26), (1.0, 1.0, 3.0), 80, 120, 2)
    swi = _image(root / "sub-01_T2starw.nii.gz", (92, 110, 32), (0.9, 0.9, 2.5), 90, 60, 3)
    inputs = InputSet("01", t1w=t1, flair=flair, swi=swi,
                      brain_mask=root / "sub-01_desc-brain_mask.nii.gz")
    RecordingWorkers.jobs = {}
    warps = []
    warp = registration.warp

    def recording_warp(workers, moving, shape, affine, transform, interpolator):
        warps.append((moving, shape, affine, interpolator))
        return warp(workers, moving, shape, affine, transform, interpolator)

    patch = pytest.MonkeyPatch()
    patch.setattr(pipeline, "Workers", RecordingWorkers)
    patch.setattr(registration, "warp", recording_warp)
    try:
        unit = preprocess_unit(inputs, {"t1", "flair", "swi"},
                               PreprocOptions(model_shape=MODEL_SHAPE), root / "work")
    finally:
        patch.undo()
    jobs = {modality: RecordingWorkers.jobs[f"sub-01_from-{modality}_to-T1w_mode-image_xfm.mat"]
            for modality in ("FLAIR", "SWI")}
    assert len(RecordingWorkers.jobs) == 2
    return inputs, unit, jobs, warps


def test_fixed_image_is_the_cropped_t1w_not_normalised(recorded):
    inputs, unit, jobs, _ = recorded
    space = unit.spaces["T1w"]
    expected = crop(conform(load_image(inputs.t1w).volume), space.box)
    for modality in ("FLAIR", "SWI"):
        fixed = jobs[modality].fixed
        np.testing.assert_array_equal(fixed.data, expected.data)
        np.testing.assert_allclose(fixed.affine, space.affine)
        assert fixed.data.max() > 100  # raw intensities: the normalised channel is <= 1
    # the model's channel 0 is this very image, normalised inside the cropped brain mask
    np.testing.assert_array_equal(normalise(expected.data, space.brain_mask),
                                  space.channels["t1"])


def test_fixed_masks_flair_brain_swi_head(recorded):
    _, unit, jobs, _ = recorded
    brain = unit.spaces["T1w"].brain_mask
    np.testing.assert_array_equal(jobs["FLAIR"].fixed_mask, brain)  # SHiVAi: cropped brain mask
    swi_mask = jobs["SWI"].fixed_mask  # SHiVAi: none; here the head (PreprocOptions default)
    np.testing.assert_array_equal(swi_mask, head_mask(jobs["SWI"].fixed.data))
    assert swi_mask[brain > 0].all() and swi_mask.sum() > 1.5 * brain.sum()
    assert 0 < swi_mask.sum() < swi_mask.size
    for job in jobs.values():
        np.testing.assert_array_equal(job.score_mask, brain)
    shivai = registration.shivai_job(jobs["SWI"].fixed, brain, jobs["SWI"].moving, "SWI")
    assert shivai.fixed_mask is None and "[NA,NA]" in shivai.arguments("swi_to_t1_")


def test_moving_images_flair_as_loaded_swi_conformed(recorded):
    inputs, unit, jobs, _ = recorded
    flair = load_image(inputs.flair).volume
    np.testing.assert_array_equal(jobs["FLAIR"].moving.data, flair.data)
    np.testing.assert_allclose(jobs["FLAIR"].moving.affine, flair.affine)
    native = load_image(inputs.swi).volume
    moving = jobs["SWI"].moving
    assert moving.shape == (256, 256, 256)
    np.testing.assert_allclose(moving.affine, conformed_affine(native.shape, native.affine))
    # the very image the SWI model channel is cut from (SHIVA.md §6, CMB steps 9-15)
    space = unit.spaces["SWI"]
    np.testing.assert_array_equal(normalise(crop(moving, space.box).data, space.brain_mask),
                                  space.channels["swi"])


def test_command_line_is_shivai_s(recorded):
    _, _, jobs, _ = recorded
    for job in jobs.values():
        assert job.stage == registration.REFERENCE and job.seed == 0
    assert jobs["FLAIR"].arguments("flair_to_t1_") == SHIVAI_FLAIR_COMMAND
    swi = jobs["SWI"].arguments("swi_to_t1_")
    assert swi[:-1] == SHIVAI_FLAIR_COMMAND[:-1] and swi[-1] == "swi_to_t1_"


def test_sloppy_drops_the_unsmoothed_level_and_samples_10_percent():
    """`--sloppy` (testing only) changes SHiVAi's command line in these four values alone."""
    stage = registration.SETTINGS["sloppy"]
    job = registration.RigidJob(None, None, np.ones(1), np.ones(1), stage)
    changed = [(a, b) for a, b in zip(SHIVAI_FLAIR_COMMAND, job.arguments("flair_to_t1_"))
               if a != b]
    assert changed == [("MI[fixed,moving,1,64,Regular,0.25]",
                        "MI[fixed,moving,1,64,Regular,0.1]"),
                       ("[1000x500x250x125,1e-06,10]", "[1000x500x250,1e-06,10]"),
                       ("4x2x1x1", "4x2x1"), ("4x2x1x0mm", "4x2x1mm")]


def test_flair_is_resampled_with_welch_windowed_sinc_onto_the_cropped_grid(recorded):
    _, unit, jobs, warps = recorded
    (moving, shape, affine, interpolator), = warps  # the FLAIR's; the SWI is not resampled
    assert moving is jobs["FLAIR"].moving and interpolator == "welchWindowedSinc"
    space = unit.spaces["T1w"]
    assert tuple(shape) == MODEL_SHAPE and np.allclose(affine, space.affine)


def test_fixed_mask_reaches_ants_as_unsigned_char(recorded):
    """antsRegistration reads a mask passed by pointer as unsigned char without converting it:
    a float mask becomes another mask (issue #24; the registration itself:
    tests/test_registration.py::test_the_fixed_mask_decides_what_is_registered)."""
    _, unit, jobs, _ = recorded
    fixed = to_ants(jobs["FLAIR"].fixed)
    image = registration.mask_image(fixed, jobs["FLAIR"].fixed_mask)
    assert image.pixeltype == "unsigned char"
    np.testing.assert_array_equal(image.numpy(), unit.spaces["T1w"].brain_mask != 0)
    np.testing.assert_allclose(image.origin, fixed.origin)
    np.testing.assert_allclose(image.direction, fixed.direction)
