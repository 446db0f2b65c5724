"""End to end from the CLI: participant then group on a phantom dataset with tiny models.

The dataset (issue 7 "Done when"): sub-01 with two sessions, sub-02 without FLAIR (WMH and LAC
skipped), sub-03 with a corrupt SWI (that unit fails with a crash file, the others finish).
Brain masks come from the phantom's reference derivatives (`--derivatives`), as they would
from fMRIPrep, which keeps the test fast; template-based masking is tested with preprocessing.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.cli import main
from shiva_bids.models.testing import write_tiny_model_folder
from shiva_bids.synthetic import generate_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MODELS = {"PVS": ("t1",), "WMH": ("t1", "flair"), "CMB": ("swi",), "LAC": ("t1", "flair")}
UNITS = ("sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01")
# The tiny models take a smaller grid than SHIVA's 160x214x176 (the crop shape is read from the
# models): registration and resampling onto the crop grid cost 6x less, which keeps this test
# within the CI budget; the full grid runs in the demo and the preprocessing tests.
GRID = (112, 128, 112)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = generate_dataset(root / "bids", n_participants=3, n_sessions=2, seed=11,
                            loads=["mild", "severe", "mild"],
                            modalities=("T1w", "FLAIR", "T2starw"))
    bids = data.root
    for sub in ("02", "03"):  # only sub-01 keeps two sessions
        shutil.rmtree(bids / f"sub-{sub}" / "ses-02")
    for path in (bids / "sub-02" / "ses-01" / "anat").glob("*_FLAIR.*"):
        path.unlink()
    swi = next((bids / "sub-03" / "ses-01" / "anat").glob("*_T2starw.nii.gz"))
    swi.write_bytes(swi.read_bytes()[:4000])  # truncated gzip
    models = root / "models"
    for marker, modalities in MODELS.items():
        write_tiny_model_folder(models, marker, modalities, n_folds=2, shape=GRID, demo=True)
    return root, bids, models


def participant_args(root: Path, bids: Path, models: Path, *extra: str) -> list[str]:
    return [str(bids), str(root / "out"), "participant", "--models-dir", str(models),
            "--derivatives", f"truth={bids / 'derivatives' / 'reference'}",
            "-w", str(root / "work"), "--skip-bids-validation", "--nprocs", "2", *extra]


@pytest.fixture(scope="module")
def first_run(world):
    root, bids, models = world
    before = tree_digest(bids)
    code = main(participant_args(root, bids, models))
    return root, bids, models, code, before


def summary(out: Path, unit: str) -> dict:
    sub, ses = unit.split("_")
    return json.loads((out / sub / ses / f"{unit}_summary.json").read_text())


def test_participant_level_outputs_and_exit_code(first_run):
    root, bids, _, code, before = first_run
    out = root / "out"
    assert code == 65  # sub-03 failed, for bad input data (a truncated SWI): the run says so
    assert tree_digest(bids) == before  # nothing written into the input dataset
    for unit in UNITS:
        sub, ses = unit.split("_")
        anat = out / sub / ses / "anat"
        record = summary(out, unit)
        assert record["status"] == "complete" and record["demo_models"] is True
        done = [m for m, v in record["markers"].items() if v["status"] == "done"]
        for marker in done:
            space = "SWI" if marker == "CMB" else "T1w"
            for name in (f"space-{space}_label-{marker}_probseg.nii.gz",
                         f"space-{space}_label-{marker}_mask.nii.gz",
                         f"space-{space}_seg-{marker}_dseg.nii.gz",
                         f"space-{space}_seg-{marker}_dseg.tsv",
                         f"space-{space}_label-{marker}_probseg.json"):
                assert (anat / f"{unit}_{name}").is_file(), name
        native = nib.load(next((bids / sub / ses / "anat").glob("*_T1w.nii.gz")))
        prob = nib.load(anat / f"{unit}_space-T1w_label-PVS_probseg.nii.gz")
        assert prob.shape == native.shape and np.allclose(prob.affine, native.affine)
        assert (out / f"{unit}.html").is_file()
        assert (out / "logs" / f"{unit}.log").is_file()
    skipped = summary(out, "sub-02_ses-01")["markers"]
    assert skipped["WMH"]["status"] == "skipped" and "flair" in skipped["WMH"]["reason"]
    assert skipped["LAC"]["status"] == "skipped"
    assert set(summary(out, "sub-01_ses-01")["markers"]) == set(MODELS)
    crash = (out / "logs" / "crash-sub-03_ses-01.txt").read_text()
    assert "T2starw" in crash and "Traceback" in crash
    assert not (out / "sub-03" / "ses-01" / "sub-03_ses-01_summary.json").exists()
    assert "Front Neuroinform" in (out / "logs" / "CITATION.md").read_text()
    from shiva_bids.bids.validation import validate_dataset
    report = validate_dataset(out)
    assert report.ok, report.summary()


def test_group_level_gathers_every_unit(first_run):
    root, bids, _, _, _ = first_run
    out = root / "out"
    assert main([str(bids), str(out), "group"]) == 66  # sub-03 failed: not every unit is done
    with open(out / "group" / "shiva_group.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert [(r["participant_id"], r["session_id"], r["status"]) for r in rows] == [
        ("sub-01", "ses-01", "complete"), ("sub-01", "ses-02", "complete"),
        ("sub-02", "ses-01", "complete"), ("sub-03", "ses-01", "failed")]
    assert rows[2]["WMH_status"] == "skipped"
    page = (out / "group_report.html").read_text()
    assert "sub-03_ses-01" in page and "DEMO MODELS" in page
    assert main([str(bids), str(out), "group", "--participant-label", "01", "02"]) == 0


def test_rerun_skips_complete_units(first_run):
    root, bids, models, _, _ = first_run
    out = root / "out"
    stamp = (out / "sub-01" / "ses-01" / "sub-01_ses-01_summary.json").stat().st_mtime_ns
    assert main(participant_args(root, bids, models, "--participant-label", "01")) == 0
    assert (out / "sub-01" / "ses-01" / "sub-01_ses-01_summary.json").stat().st_mtime_ns == stamp
    assert "already complete" in (out / "logs" / "sub-01_ses-01.log").read_text()


def test_kill_then_rerun_finishes_the_job(first_run):
    root, bids, models, _, _ = first_run
    out = root / "out"
    record = out / "sub-02" / "ses-01" / "sub-02_ses-01_summary.json"
    log_file = out / "logs" / "sub-02_ses-01.log"
    started_before = log_file.read_text().count("preprocessing for")
    args = participant_args(root, bids, models, "--participant-label", "02", "--force")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "shiva_bids", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log_file.read_text().count("preprocessing for") > started_before:
            break  # the unit's old outputs are gone and its work has begun
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert not record.exists()  # nothing looks complete after the kill
    assert not (out / "sub-02_ses-01.html").exists()
    rerun = subprocess.run([sys.executable, "-m", "shiva_bids",
                            *participant_args(root, bids, models, "--participant-label", "02")],
                           env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert json.loads(record.read_text())["status"] == "complete"


def test_reports_only_rebuilds_the_page(first_run):
    root, bids, models, _, _ = first_run
    out = root / "out"
    page = out / "sub-01_ses-02.html"
    page.unlink()
    assert main(participant_args(root, bids, models, "--participant-label", "01",
                                 "--reports-only")) == 0
    assert "data:image/png;base64" in page.read_text()


def test_brain_mask_shiva_without_its_model_stops_up_front(world, tmp_path, capsys):
    root, bids, models = world
    code = main([str(bids), str(tmp_path / "out"), "participant", "--models-dir", str(models),
                 "--brain-mask", "shiva", "-w", str(tmp_path / "work"),
                 "--skip-bids-validation"])
    assert code == 66
    err = capsys.readouterr().err
    assert f"no model_info*.json with target 'brain_mask' under --models-dir {models}" in err
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").rglob("*.nii.gz"))
