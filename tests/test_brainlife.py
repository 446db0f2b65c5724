"""The brainlife.io App (`brainlife/`): `main` runs offline on a phantom, the container call
replaced by the local command (SHIVA_BIDS_EXEC=env), and writes valid brainlife outputs.

One real participant run (a one-participant phantom, a tiny PVS model on a small grid, the
phantom's brain mask given as the App's `mask` input), then the aggregator mode on its output
and a prepared one. The conversion of several markers in two spaces (CMB on the SWI grid,
carried through the saved rigid transform) is tested on prepared outputs.
"""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.summary import read_summary, summary_path

REPO = Path(__file__).resolve().parent.parent
APP = REPO / "brainlife"
sys.path.insert(0, str(APP))
from shiva_brainlife import inputs as bl_inputs  # noqa: E402
from shiva_brainlife import outputs as bl_outputs  # noqa: E402
from shiva_brainlife.product import MAX_BYTES  # noqa: E402

GRID = (96, 112, 96)  # the tiny model's grid: small, so the run is cheap
LABEL_KEYS = {"name", "label", "voxel_value", "r", "g", "b"}


def run_main(task: Path, config: dict) -> subprocess.CompletedProcess:
    """Copy the App into `task` (as brainlife clones it), write config.json, run `./main`."""
    shutil.copytree(APP, task, ignore=shutil.ignore_patterns("__pycache__"))
    (task / "config.json").write_text(json.dumps(config, indent=2))
    env = {**os.environ, "SHIVA_BIDS_EXEC": "env",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": str(REPO)}
    return subprocess.run(["./main"], cwd=task, env=env, capture_output=True, text=True,
                          timeout=900)


def sample_config(**values) -> dict:
    """config.json.sample with the given keys set and the optional inputs it lacks removed."""
    config = json.loads((APP / "config.json.sample").read_text())
    for key in ("flair", "t2starw", "mask"):
        config.pop(key)
    config["_inputs"] = [e for e in config["_inputs"] if e["id"] == "t1"]
    config.update(values)
    return config


@pytest.fixture(scope="module")
def participant_task(tmp_path_factory):
    from shiva_bids.models.testing import write_tiny_model_folder  # TensorFlow: only here
    from shiva_bids.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("brainlife")
    data = generate_dataset(root / "phantom", n_participants=1, seed=21, loads=["severe"],
                            modalities=("T1w",))
    unit = data.units[0]
    write_tiny_model_folder(root / "models", "PVS", ("t1",), n_folds=1, shape=GRID,
                            out_bias=0.0, demo=True)
    mask = next((data.reference_root / "sub-01" / "anat").glob("*space-T1w_desc-brain_mask*"))
    config = sample_config(t1=str(unit.input_set().t1w), mask=str(mask),
                           models=str(root / "models"))
    config["_inputs"][0]["meta"] = {"subject": "sub-01_A"}  # brainlife names are free text
    done = run_main(root / "task", config)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "task", unit.input_set().t1w


@pytest.mark.slow
def test_participant_outputs_have_brainlife_layouts(participant_task):
    task, t1 = participant_task
    raw = task / "raw"
    summary = read_summary(summary_path(raw, {"sub": "01A"}))  # "sub-01_A" -> label 01A
    assert summary.status == "complete" and summary.brain_mask_method == "derivatives"
    pvs = summary.markers["PVS"]
    assert pvs.n_clusters > 0, "the tiny model should find a few clusters"
    # neuro/mask: one per marker that ran, the marker's mask as shiva-bids wrote it
    assert (task / "pvs" / "mask.nii.gz").read_bytes() == (raw / pvs.files["mask"]).read_bytes()
    assert not any((task / m).exists() for m in ("wmh", "cmb", "lac"))  # no FLAIR, no SWI
    # neuro/parcellation/volume on the T1w grid, labels as listed in label.json
    parc = nib.load(task / "parc" / "parc.nii.gz")
    native = nib.load(t1)
    assert parc.shape == native.shape and np.allclose(parc.affine, native.affine)
    assert np.issubdtype(parc.get_data_dtype(), np.integer)
    labels = json.loads((task / "parc" / "label.json").read_text())
    assert all(set(entry) == LABEL_KEYS for entry in labels)
    assert [e["name"] for e in labels] == [f"PVS{i:03d}" for i in range(1, pvs.n_clusters + 1)]
    assert all(e["label"] == e["voxel_value"] and (e["r"], e["g"], e["b"]) == (255, 215, 0)
               for e in labels)
    values = np.unique(np.asarray(parc.dataobj))
    assert set(values[values > 0]) == {e["voxel_value"] for e in labels}
    dseg = np.asarray(nib.load(raw / pvs.files["dseg"]).dataobj)
    assert np.array_equal(np.asarray(parc.dataobj), dseg)  # PVS alone: the dseg itself
    # raw: the derivative dataset; the input tree links to the inputs; scratch work removed
    assert (raw / "dataset_description.json").is_file() and (raw / "sub-01A.html").is_file()
    link = task / "shiva-work" / "bids" / "sub-01A" / "anat" / "sub-01A_T1w.nii.gz"
    assert link.is_symlink() and link.resolve() == t1.resolve()
    assert not (task / "shiva-work" / "work").exists()


@pytest.mark.slow
def test_product_json_is_small_and_says_what_was_found(participant_task):
    from PIL import Image

    task, _ = participant_task
    text = (task / "product.json").read_text()
    assert len(text.encode()) <= MAX_BYTES
    product = json.loads(text)
    summary = read_summary(summary_path(task / "raw", {"sub": "01A"}))
    record = product["shiva_bids"]["markers"]
    assert record["PVS"]["n_clusters"] == summary.markers["PVS"].n_clusters
    assert record["WMH"] == {"status": "skipped", "n_clusters": 0, "total_volume_mm3": 0.0,
                             "threshold": None, "reason": "no model descriptor with target WMH"}
    entries = product["brainlife"]
    success = [e["msg"] for e in entries if e["type"] == "success"]
    assert success == [f"sub-01A: PVS {summary.markers['PVS'].n_clusters} clusters "
                       f"({summary.markers['PVS'].total_volume_mm3:.1f} mm^3); "
                       + "; ".join(f"{m} not run ({summary.markers[m].reason})"
                                   for m in ("WMH", "CMB", "LAC"))]
    warnings = [e["msg"] for e in entries if e["type"] == "warning"]
    assert any("DEMO models" in w for w in warnings)
    assert all(w in warnings for w in summary.warnings)  # the run's warnings are shown
    (image,) = [e for e in entries if e["type"] == "image/png"]
    png = Image.open(io.BytesIO(base64.b64decode(image["base64"])))
    assert png.format == "PNG" and png.height == 96 and png.width > 2 * png.height
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert (pixels == (255, 215, 0)).all(axis=1).any()  # the PVS clusters are drawn


@pytest.mark.slow
def test_aggregator_mode_builds_the_group_table(participant_task, tmp_path):
    from summary_factory import write_unit

    task, _ = participant_task
    other = tmp_path / "other" / "raw"
    write_unit(other, "02", None, [9.0, 12.0])
    shutil.copyfile(task / "raw" / "dataset_description.json",
                    other / "dataset_description.json")
    done = run_main(tmp_path / "group-task", {"raw": [str(task / "raw"), str(other)],
                                              "_inputs": []})
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "group-task" / "group"
    assert sorted(p.name for p in out.iterdir()) == [
        "group_report.html", "shiva_clusters.tsv", "shiva_group.json", "shiva_group.tsv"]
    rows = (out / "shiva_group.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["sub-01A", "sub-02"]
    product = json.loads((tmp_path / "group-task" / "product.json").read_text())
    assert product["shiva_bids_group"]["units"] == 2
    assert product["brainlife"][0]["msg"].startswith("2 participant/session unit(s)")


def test_bad_config_is_one_line_and_exit_64(tmp_path):
    done = run_main(tmp_path / "task", sample_config(t1=str(tmp_path / "absent.nii.gz"),
                                                     models=str(tmp_path)))
    assert done.returncode == 64
    assert done.stderr.strip() == f"config.json: t1: {tmp_path / 'absent.nii.gz'} does not exist"


# --------------------------------------------------------------------------- conversion units

def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path.name


def test_parcellation_of_two_markers_in_two_spaces(tmp_path):
    """PVS on the T1w grid, CMB on a finer SWI grid mapped through a rigid transform (3 mm
    up, as ANTs maps T1w points to SWI points): offsets, colours, overlap count."""
    import ants

    from shiva_bids.summary import COMPLETE, MarkerSummary, UnitSummary

    raw = tmp_path / "raw"
    t1_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    swi_affine = np.diag([0.5, 0.5, 1.0, 1.0])
    pvs = np.zeros((20, 20, 20), np.int16)
    pvs[2:4, 2:4, 2:4], pvs[10, 10, 10] = 1, 2
    cmb = np.zeros((40, 40, 20), np.int16)
    cmb[20:22, 20:22, 13] = 1  # world (10-10.5, 10-10.5, 13): T1w voxel (10, 10, 10) once moved
    transform = ants.create_ants_transform(transform_type="AffineTransform", dimension=3,
                                           translation=(0.0, 0.0, 3.0))
    raw.mkdir()
    ants.write_transform(transform, str(raw / "xfm.mat"))
    files = {}
    for marker, data, affine, count in (("PVS", pvs, t1_affine, 2), ("CMB", cmb, swi_affine, 1)):
        dseg = _write(raw / f"{marker}_dseg.nii.gz", data, affine)
        census = raw / f"{marker}_dseg.tsv"
        census.write_text("index\tname\n" + "".join(f"{i}\t{marker}{i:03d}\n"
                                                     for i in range(1, count + 1)))
        files[marker] = MarkerSummary(marker, "done", n_clusters=count,
                                      files={"dseg": dseg, "census": census.name})
    summary = UnitSummary("01", None, COMPLETE, "0", markers=files,
                          extra={"transforms": {"SWI->T1w": "xfm.mat"}})
    reference = bl_outputs.Volume(np.zeros((20, 20, 20), np.float32), t1_affine)
    parc = bl_outputs.build_parcellation(raw, summary, reference)
    assert [(e["name"], e["voxel_value"]) for e in parc.labels] == [
        ("PVS001", 1), ("PVS002", 2), ("CMB001", 3)]
    assert [e["r"] for e in parc.labels] == [255, 255, 220]
    data = np.asarray(parc.volume.data)
    assert np.count_nonzero(data == 1) == 8  # PVS001 untouched
    assert data[10, 10, 10] == 3 and parc.overlap_voxels == 1  # CMB (later) over PVS002
    assert np.count_nonzero(data == 2) == 0


def test_config_labels_and_errors():
    assert bl_inputs.bids_label("sub-100_307", "sub-") == "100307"
    assert bl_inputs.unit_labels([{"keys": ["flair"], "meta": {"subject": "x"}},
                                  {"keys": ["t1"], "meta": {"subject": "7", "session": "ses-B"}}]
                                 ) == ("7", "B")
    with pytest.raises(bl_inputs.ConfigError, match="_inputs: no input has meta.subject"):
        bl_inputs.unit_labels([{"meta": {}}])


def test_main_runs_the_released_image_with_pbs_resources():
    main = (APP / "main").read_text()
    version = (REPO / "version").read_text().strip()
    assert f"docker://ghcr.io/shiva-bids/shiva-bids:{version}\n" in main
    assert "#PBS -l nodes=1:ppn=" in main and "singularity exec -e" in main
    assert os.access(APP / "main", os.X_OK)
