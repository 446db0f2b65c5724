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
from shiva_bids.fetal.pipeline import fetal_group_rows, largest_component, load_t2w  # noqa: E402
from shiva_bids.fetal.synthetic import random_weights, write_checkpoint  # noqa: E402

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
    np.testing.assert_array_equal(largest_component(brain), brain)  # one component
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


def test_bad_t2w_inputs(tmp_path):
    four_d = tmp_path / "sub-01_T2w.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((50, 50, 50, 3), np.float32), AFFINE), four_d)
    with pytest.raises(BadInputError,
                       match=r"a 3-D T2w is needed, the image has shape \(50, 50, 50, 3\)"):
        load_t2w(four_d)
    small = tmp_path / "sub-02_T2w.nii.gz"
    nib.save(nib.Nifti1Image(_fetal_t2w((60, 60, 30)), AFFINE), small)
    with pytest.raises(BadInputError, match="smaller than one 45\\^3 DeepMedic segment"):
        load_t2w(small)


def test_cli_reports_bad_input_with_one_line(dataset, models, tmp_path, capsys):
    anat = dataset / "sub-01" / "ses-1" / "anat"
    for f in anat.glob("*.nii.gz"):
        f.unlink()
    nib.save(nib.Nifti1Image(np.ones((50, 50, 50, 2), np.float32), AFFINE),
             anat / "sub-01_ses-1_T2w.nii.gz")
    out = tmp_path / "out"
    code = main([str(dataset), str(out), "participant", "--pipeline", "fetal-cgm",
                 "--models-dir", str(models)])
    assert code == 65
    assert "sub-01_ses-1_T2w.nii.gz: a 3-D T2w is needed" in capsys.readouterr().err
    assert (out / "logs" / "crash-sub-01_ses-1.txt").is_file()


def test_missing_models_dir_is_a_usage_error(dataset, tmp_path, capsys):
    code = main([str(dataset), str(tmp_path / "o"), "participant", "--pipeline", "fetal-cgm"])
    assert code == 64
    assert "--models-dir" in capsys.readouterr().err
