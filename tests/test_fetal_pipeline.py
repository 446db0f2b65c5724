"""The two-stage fetal pipeline end to end through the CLI on a tiny fetal-like T2w with
random-weight checkpoints, plus its bad-input handling and group rows."""
from __future__ import annotations

import json
import shutil
import subprocess

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from shiva_bids.cli import main  # noqa: E402
from shiva_bids.errors import BadInputError  # noqa: E402
from shiva_bids.pipelines.fetal.pipeline import fetal_group_rows, load_t2w, segment_fetal  # noqa: E402
from shiva_bids.pipelines.fetal.synthetic import random_weights, write_checkpoint  # noqa: E402

AFFINE = np.diag([0.8, 0.8, 0.8, 1.0])


def _fetal_t2w(shape=(45, 47, 45)):
    """A bright ellipsoidal 'brain' with a darker rim in a dark field of view."""
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.7, 0.8, 0.6])[:, None, None, None]) ** 2).sum(0))
    rng = np.random.default_rng(0)
    data = np.where(radius < 1, 300.0, 20.0) - np.where((radius > 0.8) & (radius < 1), 120, 0)
    return (data + rng.normal(0, 5, shape)).astype(np.int16)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for seed, name in enumerate(("bdn", "cgm")):
        write_checkpoint(root / name / f"{name}.model.ckpt", random_weights(seed=10 + seed))
    return root


@pytest.fixture
def dataset(tmp_path):
    bids = tmp_path / "bids"
    anat = bids / "sub-01" / "ses-1" / "anat"
    anat.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "fetal", "BIDSVersion": "1.9.0"}))
    (bids / "participants.tsv").write_text("participant_id\tsex\nsub-01\tF\n")
    (bids / "sub-01" / "sub-01_sessions.tsv").write_text("session_id\tscan_ga\nses-1\t29.4\n")
    nib.save(nib.Nifti1Image(_fetal_t2w(), AFFINE), anat / "sub-01_ses-1_rec-SVR_T2w.nii.gz")
    # a raw stack that the filter file excludes
    nib.save(nib.Nifti1Image(_fetal_t2w((45, 45, 45)), AFFINE),
             anat / "sub-01_ses-1_rec-stack_T2w.nii.gz")
    return bids


def test_end_to_end_cli(dataset, models, tmp_path):
    out = tmp_path / "out"
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t2w": {"reconstruction": "SVR"}}))
    args = [str(dataset), str(out), "participant", "--pipeline", "fetal-cgm",
            "--models-dir", str(models), "--bids-filter-file", str(filters),
            "-w", str(tmp_path / "work"), "--omp-nthreads", "2"]
    assert main(args) == 0
    anat = out / "sub-01" / "ses-1" / "anat"
    stem = "sub-01_ses-1_rec-SVR_space-T2w"
    brain_img = nib.load(anat / f"{stem}_desc-brain_mask.nii.gz")
    prob = nib.load(anat / f"{stem}_label-CGM_probseg.nii.gz").get_fdata()
    cgm = nib.load(anat / f"{stem}_label-CGM_mask.nii.gz").get_fdata()
    brain = brain_img.get_fdata()
    assert brain.shape == prob.shape == cgm.shape == (45, 47, 45)
    np.testing.assert_allclose(brain_img.affine, AFFINE)
    assert brain.any()
    assert not prob[brain == 0].any() and not cgm[brain == 0].any()  # ROI masking
    np.testing.assert_array_equal(cgm[brain == 1], prob[brain == 1] > 0.5)
    assert not list(anat.glob("*rec-stack*"))  # the filter file excluded the stack
    sidecar = json.loads((anat / f"{stem}_label-CGM_probseg.json").read_text())
    assert sidecar["SpatialReference"] == \
        "bids:raw:sub-01/ses-1/anat/sub-01_ses-1_rec-SVR_T2w.nii.gz"
    assert sidecar["Model"]["Checkpoint"] == "cgm.model.ckpt"
    assert len(sidecar["Model"]["DataFileMD5"]) == 32
    report = (out / "sub-01_ses-1_rec-SVR_desc-fetal_report.html").read_text()
    assert "data:image/png;base64," in report and "CGM volume" in report
    assert "BDN argmax (as published)" in report

    assert main([str(dataset), str(out), "group", "--pipeline", "fetal-cgm"]) == 0
    rows = fetal_group_rows(out)
    assert len(rows) == 1 and rows[0]["gestational_age"] == 29.4
    assert rows[0]["brain_volume_mm3"] == pytest.approx(brain.sum() * 0.512, rel=1e-6)
    assert rows[0]["cgm_volume_mm3"] == pytest.approx(cgm.sum() * 0.512, rel=1e-6)
    table = (out / "group" / "fetal-cgm_stats.tsv").read_text().splitlines()
    assert table[0].startswith("participant_id\tsession_id") and "29.4" in table[1]

    validator = shutil.which("bids-validator-deno")
    if validator:
        run = subprocess.run([validator, "--json", str(out)], capture_output=True, text=True)
        issues = json.loads(run.stdout)["issues"]["issues"]
        assert not [i for i in issues if i["severity"] == "error"], issues


def test_t2w_loading_as_published(tmp_path, caplog):
    four_d = tmp_path / "sub-01_T2w.nii.gz"
    volumes = np.stack([_fetal_t2w((45, 47, 45)) + 1000 * k for k in range(3)], axis=-1)
    nib.save(nib.Nifti1Image(volumes, AFFINE), four_d)
    loaded = load_t2w(four_d)  # the first volume, as the dHCP normalisation script
    np.testing.assert_array_equal(loaded.volume.data, volumes[..., 0])
    assert loaded.warnings == ("sub-01_T2w.nii.gz: 4-D image with 3 volumes; the first is "
                               "segmented (as the dHCP normalisation script does)",)
    assert loaded.warnings[0] in caplog.text
    thin = tmp_path / "sub-02_T2w.nii.gz"  # 29-44 voxels: padded as DeepMedic pads them
    nib.save(nib.Nifti1Image(_fetal_t2w((60, 44, 29)), AFFINE), thin)
    assert load_t2w(thin).volume.shape == (60, 44, 29) and load_t2w(thin).warnings == ()
    small = tmp_path / "sub-03_T2w.nii.gz"
    nib.save(nib.Nifti1Image(_fetal_t2w((60, 60, 28)), AFFINE), small)
    with pytest.raises(BadInputError, match="fewer than 29 voxels"):
        load_t2w(small)
    five_d = tmp_path / "sub-04_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((50, 50, 50, 2, 2), np.float32), AFFINE), five_d)
    with pytest.raises(BadInputError, match=r"a 3-D T2w is needed, the image has shape"):
        load_t2w(five_d)


def _threshold_net(normal, sub3, sub5):
    """A stand-in network: class 1 where the centre of the segment's input is > 0."""
    p1 = (normal[:, 8:37, 8:37, 8:37, 0] > 0).astype(np.float32)
    return np.stack([1 - p1, p1], axis=-1)


def _everything_net(normal, sub3, sub5):
    """A stand-in CGM: class 1 everywhere (the result is then its ROI)."""
    ones = np.ones(normal[:, 8:37, 8:37, 8:37, 0].shape, np.float32)
    return np.stack([0 * ones, ones], axis=-1)


def test_bdn_argmax_is_cgms_roi_unless_the_component_filter_is_asked():
    t2w = np.zeros((50, 46, 45), np.float32)
    t2w[5:20, 5:20, 5:20] = 10.0  # the larger bright blob
    t2w[30:36, 30:36, 30:36] = 10.0  # a second, separate one
    published = segment_fetal(t2w, _threshold_net, _everything_net, 5)
    both = t2w > 0
    np.testing.assert_array_equal(published.brain, both)  # the plain argmax, two components
    np.testing.assert_array_equal(published.cgm, both)  # ... is CGM's ROI
    filtered = segment_fetal(t2w, _threshold_net, _everything_net, 5, largest=True)
    larger = np.zeros_like(both)
    larger[5:20, 5:20, 5:20] = True
    np.testing.assert_array_equal(filtered.brain, larger)
    np.testing.assert_array_equal(filtered.cgm, larger)


def test_cli_reports_bad_input_with_one_line(dataset, models, tmp_path, capsys):
    anat = dataset / "sub-01" / "ses-1" / "anat"
    for f in anat.glob("*.nii.gz"):
        f.unlink()
    nib.save(nib.Nifti1Image(_fetal_t2w((50, 50, 20)), AFFINE), anat / "sub-01_ses-1_T2w.nii.gz")
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "--pipeline", "fetal-cgm",
                 "--models-dir", str(models)])
    assert code == 65
    assert "sub-01_ses-1_T2w.nii.gz: shape (50, 50, 20) has fewer than 29 voxels" in \
        capsys.readouterr().err
    assert (out / "logs" / "crash-sub-01_ses-1.txt").is_file()


def test_missing_models_dir_is_a_usage_error(dataset, tmp_path, capsys):
    code = main([str(dataset), str(tmp_path / "o"), "participant", "--pipeline", "fetal-cgm"])
    assert code == 64
    assert "--models-dir" in capsys.readouterr().err
