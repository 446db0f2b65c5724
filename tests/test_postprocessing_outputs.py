"""Native-space derivatives of a unit: names, dtypes, sidecars, determinism, BIDS validator."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shiva_bids.bids import derivatives as deriv
from shiva_bids.bids.inputs import InputSet
from shiva_bids.postprocessing import build_regions, postprocess_marker, write_marker_outputs
from shiva_bids.volume import Volume

RAW_T1 = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
RAW_SWI = "sub-01/ses-1/anat/sub-01_ses-1_swi.nii.gz"
SEG_PATH = "sub-01/ses-1/anat/sub-01_ses-1_desc-aparcaseg_dseg.nii.gz"


def _validator() -> str:
    candidate = Path(sys.executable).with_name("bids-validator-deno")
    found = str(candidate) if candidate.exists() else shutil.which("bids-validator-deno")
    if not found:
        pytest.skip("bids-validator-deno is not installed")
    return found


def _unit_volumes():
    affine = np.diag([1.0, 1.0, 1.2, 1.0])
    rng = np.random.default_rng(0)
    prob = rng.random((24, 24, 20)).astype(np.float32) * 0.3
    prob[5:8, 5:8, 5:8] = 0.9
    prob[15, 15, 10:13] = 0.7
    prob[0, 0, 0] = 1.2  # out of range on purpose: written clipped to [0, 1]
    brain = np.zeros(prob.shape, np.uint8)
    brain[2:22, 2:22, 2:18] = 1
    seg = np.where(brain > 0, 2, 0).astype(np.int32)
    seg[12:, :, :][brain[12:] > 0] = 41
    seg[2:4][brain[2:4] > 0] = 1028
    seg[20:22][brain[20:22] > 0] = 2028
    return Volume(prob, affine), Volume(brain, affine), Volume(seg, affine)


def _write_unit(out: Path, bids: Path):
    prob, brain, seg = _unit_volumes()
    inputs = InputSet("01", "1", t1w=bids / RAW_T1, swi=bids / RAW_SWI)
    paths = {}
    empty = prob.with_data(np.zeros(prob.shape, np.float32))
    for marker, raw, probability in (("PVS", RAW_T1, prob), ("CMB", RAW_SWI, prob),
                                     ("LAC", RAW_T1, empty)):
        scheme = {"PVS": "pvs", "CMB": "mars", "LAC": "mars"}[marker]
        regions = build_regions(scheme, prob, dseg=seg, brain=brain,
                                dseg_source=f"bids:fs:{SEG_PATH}")
        result = postprocess_marker(marker, probability, brain, 0.5, 1,
                                    prob.with_data(prob.data / 10), regions)
        write = lambda params: write_marker_outputs(  # noqa: E731
            out, inputs, marker, probability, None, result.clusters, result.census, result.stats,
            brain, [f"bids:raw:{raw}"], f"bids:raw:{raw}",
            {"name": "demo-" + marker, "checksums": {"fold0": "abc"}, "demo": True},
            {"min_cluster_size": 1, "census_grid": result.grid, **params})
        paths[marker] = write({})
        if marker == "PVS":  # the --keep-model-space copy (here on the same grid)
            paths["PVS model"] = write({"res": "model", "resolution": "1 mm model grid",
                                        "write_stats": False})
    return paths


@pytest.fixture()
def unit(tmp_path):
    bids = tmp_path / "raw"
    (bids / RAW_T1).parent.mkdir(parents=True)
    out = tmp_path / "derivatives" / "shiva-bids"
    deriv.write_dataset_description(deriv.DatasetInfo(bids, out))
    (out / "README").write_text("shiva-bids derivatives written by the post-processing test.\n")
    return out, bids, _write_unit(out, bids)


def test_files_names_and_dtypes(unit):
    out, _, paths = unit
    anat = out / "sub-01" / "ses-1" / "anat"
    names = sorted(p.name for p in anat.iterdir())
    assert "sub-01_ses-1_space-T1w_label-PVS_probseg.nii.gz" in names
    assert "sub-01_ses-1_space-SWI_label-CMB_mask.nii.gz" in names
    assert "sub-01_ses-1_space-SWI_seg-CMB_dseg.tsv" in names
    assert "sub-01_ses-1_space-T1w_desc-brain_mask.nii.gz" in names
    assert "sub-01_ses-1_space-T1w_seg-PVS_stats.tsv" in names
    pvs = paths["PVS"]
    probseg = nib.load(pvs["probseg"])
    assert probseg.get_data_dtype() == np.float32
    data = np.asarray(probseg.dataobj)
    assert data.min() >= 0.0 and data.max() == 1.0
    mask = nib.load(pvs["mask"])
    assert mask.get_data_dtype() == np.uint8 and set(np.unique(mask.dataobj)) == {0, 1}
    dseg = nib.load(pvs["dseg"])
    assert dseg.get_data_dtype() == np.int16
    lines = pvs["dseg_tsv"].read_text().splitlines()
    assert len(lines) - 1 == int(np.asarray(dseg.dataobj).max())
    assert "*_stats.tsv" in (out / ".bidsignore").read_text().split()
    empty = paths["LAC"]  # a marker without clusters: header-only census, zero stats
    assert empty["dseg_tsv"].read_text().count("\n") == 1
    assert "LAC\tWhole brain\t-1\t0\t0.0\t" in empty["stats"].read_text()
    model = paths["PVS model"]
    assert model["probseg"].name == "sub-01_ses-1_space-T1w_res-model_label-PVS_probseg.nii.gz"
    assert model["dseg"].name == "sub-01_ses-1_space-T1w_seg-PVS_res-model_dseg.nii.gz"
    assert model["dseg_tsv"].read_text() == pvs["dseg_tsv"].read_text()
    assert "stats" not in model and len(list(anat.glob("*_stats.tsv"))) == 3


def test_sidecars(unit):
    _, _, paths = unit
    mask = json.loads(paths["PVS"]["mask"].with_name(
        "sub-01_ses-1_space-T1w_label-PVS_mask.json").read_text())
    assert mask["Type"] == "ROI" and mask["Threshold"] == 0.5
    assert mask["MinimumClusterSizeVoxels1mm"] == 1 and mask["MinimumClusterVolume"] == 1.0
    assert mask["SpatialReference"] == f"bids:raw:{RAW_T1}" and mask["DemoModels"] is True
    assert mask["Sources"][0] == \
        "bids::sub-01/ses-1/anat/sub-01_ses-1_space-T1w_label-PVS_probseg.nii.gz"
    assert mask["SoftwareVersion"].startswith("shiva-bids ")
    cmb = json.loads(deriv.sidecar_path(paths["CMB"]["mask"]).read_text())
    assert cmb["Type"] == "Lesion" and cmb["SpatialReference"] == f"bids:raw:{RAW_SWI}"
    probseg = json.loads(deriv.sidecar_path(paths["PVS"]["probseg"]).read_text())
    assert probseg["Sources"] == [f"bids:raw:{RAW_T1}"]
    assert probseg["Model"]["checksums"] == {"fold0": "abc"}
    dseg = json.loads(deriv.sidecar_path(paths["PVS"]["dseg"]).read_text())
    assert dseg["RegionSource"] == f"dseg:bids:fs:{SEG_PATH}" and "volume_mm3" in dseg
    assert dseg["Sources"][-1] == f"bids:fs:{SEG_PATH}"
    assert "index" not in dseg
    stats = json.loads(paths["PVS"]["stats_json"].read_text())
    assert stats["WholeBrainOnly"] is False and stats["Marker"] == "PVS"
    brain = json.loads(deriv.sidecar_path(paths["PVS"]["brain_mask"]).read_text())
    assert brain["Type"] == "Brain" and "Resolution" not in brain
    assert stats["CensusGrid"]["Shape"] == [24, 24, 20] and dseg["CensusGrid"] == \
        stats["CensusGrid"]
    for kind in ("probseg", "mask", "dseg", "brain_mask"):
        model = json.loads(deriv.sidecar_path(paths["PVS model"][kind]).read_text())
        assert model["Resolution"] == "1 mm model grid"


def test_outputs_are_byte_identical_on_rerun(unit, tmp_path):
    out, bids, paths = unit
    before = {p: p.read_bytes() for p in paths["PVS"].values()}
    _write_unit(out, bids)
    assert all(p.read_bytes() == content for p, content in before.items())


def test_derivative_dataset_passes_the_bids_validator(unit):
    out, _, _ = unit
    result = subprocess.run([_validator(), str(out), "--format", "json"], capture_output=True,
                            text=True, timeout=120)
    report = json.loads(result.stdout)
    errors = [issue for issue in report["issues"]["issues"] if issue["severity"] == "error"]
    assert errors == []
    codes = {issue["code"] for issue in report["issues"]["issues"]}
    assert "NIFTI_UNIT" not in codes and "TSV_COLUMN_TYPE_REDEFINED" not in codes
