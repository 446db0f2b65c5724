"""End to end from the CLI: participant then group on a phantom dataset with tiny models.

The dataset (issue 7 "Done when"): sub-01 with two sessions, sub-02 without FLAIR (WMH and LAC
skipped), sub-03 with a corrupt SWI (that unit fails with a crash file, the others finish).
Brain masks come from the phantom's reference derivatives (`--derivatives`), as they would
from fMRIPrep, and the rigid registrations are `--sloppy` (testing only, ~3.5x less CPU), which
keeps the test fast; template-based masking and SHiVAi's registration are tested with the
preprocessing and against SHiVAi itself (tests/test_shivai_parity.py).
The raw images are annexed as in a DataLad clone whose content is fetched (links into
`.git/annex/objects`; tests/annex_layout.py) and the whole dataset is read-only, which must run
as usual.
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
from markupsafe import escape

from annex_layout import annex_all, read_only
from fs_phantom import make_aparc_aseg
from shiva_bids.cli import main
from shiva_bids.models.testing import write_published_standins, write_tiny_model_folder
from shiva_bids.synthetic import generate_dataset

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
MODELS = {"PVS": ("t1",), "WMH": ("t1", "flair"), "CMB": ("swi",), "LAC": ("t1", "flair")}
UNITS = ("sub-01_ses-01", "sub-01_ses-02", "sub-02_ses-01")
# The tiny models take a smaller grid than SHIVA's 160x214x176 (the crop shape is read from the
# models): registration and resampling onto the crop grid cost 6x less, which keeps this test
# within the CI budget; the full grid runs in the demo and the preprocessing tests.
GRID = (112, 128, 112)
# With the published descriptors at hand, the models folder holds every SHIVA release (all 15,
# PVS v3 without md5s included) with tiny stand-in folds at the published names, unzipped side
# by side as users do (issue 15); without them, one tiny demo model per marker.
PUBLISHED = REPO.parent / "shared" / "fixtures" / "shiva_model_info"
STANDINS = PUBLISHED.is_dir()


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def output_data(folder: Path) -> dict[str, str]:
    """Digest of every NIfTI's header and data and every TSV's bytes under `folder` (what
    #19 item 2 requires to be identical between runs; JSON and HTML carry run times)."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".nii.gz"):
            image = nib.load(path)
            blob = image.header.binaryblock + np.asarray(image.dataobj).tobytes()
        elif path.suffix == ".tsv":
            blob = path.read_bytes()
        else:
            continue
        digests[str(path.relative_to(folder))] = hashlib.md5(blob).hexdigest()
    return digests


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
    # A FreeSurfer-like aparc+aseg beside the reference masks: regions from --derivatives
    # (--regions auto prefers it; the template-atlas path is pinned in
    # test_preprocessing_phantom.py, where the template registration already runs).
    seg = make_aparc_aseg().to_nifti(np.int16)
    for anat in (bids / "derivatives" / "reference").glob("sub-*/ses-*/anat"):
        nib.save(seg, anat / f"{anat.parent.parent.name}_{anat.parent.name}"
                             "_space-T1w_desc-aparcaseg_dseg.nii.gz")
    annex_all(bids)
    read_only(bids)
    models = root / "models"
    if STANDINS:
        write_published_standins(models, PUBLISHED, GRID)
    else:
        for marker, modalities in MODELS.items():
            write_tiny_model_folder(models, marker, modalities, n_folds=2, shape=GRID,
                                    demo=True)
    return root, bids, models


def participant_args(root: Path, bids: Path, models: Path, *extra: str) -> list[str]:
    return [str(bids), str(root / "out"), "participant", "--models-dir", str(models),
            "--derivatives", f"truth={bids / 'derivatives' / 'reference'}",
            "-w", str(root / "work"), "--skip-bids-validation", "--nprocs", "2", "--sloppy",
            *extra]


@pytest.fixture(scope="module")
def first_run(world):
    root, bids, models = world
    before = tree_digest(bids)
    code = main(participant_args(root, bids, models, "--keep-model-space"))
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
        assert record["status"] == "complete" and record["demo_models"] is not STANDINS
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
        sloppy = [w for w in record["warnings"] if "--sloppy, testing only" in w]
        assert len(sloppy) == 1 and str(escape(sloppy[0])) in (out / f"{unit}.html").read_text()
    # regional statistics for every marker (issue #17), from the --derivatives segmentation
    for marker, record in summary(out, "sub-01_ses-01")["markers"].items():
        assert record["region_source"].startswith(
            "dseg:bids:raw:derivatives/reference/sub-01/ses-01/anat/"), marker
        assert len(record["regions"]) > 9 and "Whole brain" in record["regions"]
        stats = (out / record["files"]["stats"]).read_text().splitlines()
        assert len(stats) == len(record["regions"]) + 1
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


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def _shiva_census(prob: np.ndarray, brain: np.ndarray, threshold: float, min_size: int):
    """SHIVA.md §8 written out with scipy: > threshold, 26-connected, >= min_size voxels,
    <= 25 % outside the brain, in order of first voxel."""
    from scipy import ndimage
    labels, n = ndimage.label(prob > threshold, structure=np.ones((3, 3, 3)))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    outside = np.bincount(labels.ravel(), weights=brain.ravel() == 0, minlength=n + 1)
    keep = [i for i in range(1, n + 1) if sizes[i] >= min_size and outside[i] <= sizes[i] / 4]
    return [int(sizes[i]) for i in keep]


def test_census_on_the_model_grid_and_native_labels_correspond(first_run):
    root, _, _, _, _ = first_run
    unit = "sub-01_ses-01"
    anat = root / "out" / "sub-01" / "ses-01" / "anat"
    record = summary(root / "out", unit)
    defaults = {"PVS": (0.5, 5), "WMH": (0.2, 1), "CMB": (0.5, 1), "LAC": (0.2, 3)}
    for marker, (threshold, min_size) in defaults.items():
        space = "SWI" if marker == "CMB" else "T1w"
        stem = anat / f"{unit}_space-{space}"
        rows = _read_tsv(Path(f"{stem}_seg-{marker}_dseg.tsv"))
        model_prob = nib.load(f"{stem}_res-model_label-{marker}_probseg.nii.gz")
        model = np.asarray(nib.load(f"{stem}_seg-{marker}_res-model_dseg.nii.gz").dataobj)
        brain = np.asarray(nib.load(f"{stem}_res-model_desc-brain_mask.nii.gz").dataobj)
        native = np.asarray(nib.load(f"{stem}_seg-{marker}_dseg.nii.gz").dataobj)
        assert model.shape == GRID and np.allclose(model_prob.header.get_zooms(), 1.0)
        counts = [int(r["voxel_count"]) for r in rows]
        # the census is SHIVA's, on the model grid ...
        assert counts == _shiva_census(model_prob.get_fdata(), brain, threshold, min_size)
        assert counts == np.bincount(model.ravel(), minlength=len(rows) + 1)[1:].tolist()
        # ... and each native cluster carries the label of its census row
        sidecar = json.loads(Path(f"{stem}_seg-{marker}_dseg.json").read_text())
        assert set(np.unique(native)) - {0} == \
            {int(r["index"]) for r in rows} - set(sidecar["ClustersWithoutNativeVoxel"])
        assert [int(r["native_voxel_count"]) for r in rows] == \
            np.bincount(native.ravel(), minlength=len(rows) + 1)[1:].tolist()
        assert sidecar["CensusGrid"]["Name"] == f"{space} model grid"
        stats = _read_tsv(Path(f"{stem}_seg-{marker}_stats.tsv"))
        assert float(stats[0]["total_volume_mm3"]) == pytest.approx(sum(counts))
        assert record["markers"][marker]["n_clusters"] == len(rows)
        model_sidecar = json.loads(Path(f"{stem}_seg-{marker}_res-model_dseg.json").read_text())
        assert "1 mm isotropic model grid" in model_sidecar["Resolution"]


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
    dictionary = json.loads((out / "group" / "shiva_group.json").read_text())
    for column in ("PVS_basal_ganglia_count", "PVS_centrum_semiovale_count",
                   "WMH_periventricular_volume_mm3", "WMH_deep_volume_mm3", "CMB_lobar_count",
                   "CMB_deep_count", "CMB_infratentorial_count", "LAC_deep_count"):
        assert rows[0][column] != "n/a" and float(rows[0][column]) >= 0, column
        assert dictionary[column]["Description"], column
    assert rows[2]["WMH_deep_volume_mm3"] == "n/a"  # WMH skipped there
    # #23: the CPU default engine, in the table, its dictionary, the sidecars and the report
    from shiva_bids.models.engines import openvino_version
    assert {r["PVS_engine"] for r in rows[:3]} == {f"openvino {openvino_version()} fp32"}
    assert "precision" in dictionary["PVS_engine"]["Description"]
    sidecar = json.loads(next((out / "sub-01" / "ses-01" / "anat").glob(
        "*label-PVS_probseg.json")).read_text())
    assert (sidecar["Model"]["engine"], sidecar["Model"]["precision"]) == ("openvino", "fp32")
    assert f"openvino {openvino_version()}, fp32" in (out / "sub-01_ses-01.html").read_text()
    page = (out / "group_report.html").read_text()
    assert "sub-03_ses-01" in page and ("DEMO MODELS" in page) is not STANDINS
    assert "centrum semiovale" in page and "periventricular" in page
    assert "standard region" in (out / "sub-01_ses-01.html").read_text()
    if STANDINS:
        assert ([(r["PVS_model"], r["PVS_model_md5"]) for r in rows[:3]]
                == [("PVS v4", "verified")] * 3)
        assert {r["WMH_model"] for r in rows[:2]} == {"WMH v2"}
    assert main([str(bids), str(out), "group", "--participant-label", "01", "02"]) == 0


def test_newest_published_releases_run_and_are_reported(first_run):
    """Issue 15 "Done when": every release present (PVS v3 without md5s too); the run uses
    PVS v4, WMH v2, CMB v2 and LAC v0, and the log, summary, sidecars and report say so."""
    if not STANDINS:
        pytest.skip("../shared/fixtures is absent: the models folder holds demo models")
    root, _, _, _, _ = first_run
    out = root / "out"
    expected = {"sub-01_ses-01": {"PVS": ("v4", ["t1", "flair"]), "WMH": ("v2", ["t1", "flair"]),
                                  "CMB": ("v2", ["swi"]), "LAC": ("v0", ["t1", "flair"])},
                "sub-02_ses-01": {"PVS": ("v4", ["t1"]), "CMB": ("v2", ["swi"])}}
    for unit, markers in expected.items():
        record = summary(out, unit)
        done = {m: v["model"] for m, v in record["markers"].items() if v["status"] == "done"}
        assert {m: (p["version"], p["modalities"]) for m, p in done.items()} == markers
        for marker, model in done.items():
            assert model["descriptor"].startswith(str(root / "models" / "model_info_"))
            assert model["checksums"] == "verified" and model["selection"]["reason"]
            space = "SWI" if marker == "CMB" else "T1w"
            sidecar = json.loads((out / unit.replace("_", "/") / "anat" /
                                  f"{unit}_space-{space}_label-{marker}_probseg.json").read_text())
            assert sidecar["Model"]["version"] == markers[marker][0]
        not_used = {o["model"]: o["reason"] for o in done["PVS"]["selection"]["not_used"]}
        assert len(not_used) == 7 and not_used["PVS v3 (t1)"] == "older release (v3 < v4)"
        if unit == "sub-01_ses-01":
            assert not_used["PVS v4 (t1)"].startswith("same version, uses fewer")
        else:
            assert not_used["PVS v4 (t1+flair)"].startswith("needs t1+flair; the unit has")
        page = (out / f"{unit}.html").read_text()
        assert "not used: PVS v3 (t1+flair)" in page and "why: newest release" in page
        unit_log = (out / "logs" / f"{unit}.log").read_text()
        pvs = "t1+flair" if unit == "sub-01_ses-01" else "t1"
        assert f"PVS: using PVS v4 ({pvs})" in unit_log
        assert "PVS: not using PVS v3 (t1+flair)" in unit_log


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
    first = output_data(record.parent)
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
    # #19 item 2: the unit ran with its own preprocessing workers and inference batch this time
    # (one unit, not three side by side); its images and tables are the same bytes (model-space
    # outputs aside: only the first run asked for them).
    native = {k: v for k, v in first.items() if "res-model" not in k}
    assert len(native) > 10 and output_data(record.parent) == native


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
