"""BIDS-Derivatives output: names (reference/BIDS_APPS.md §2.6, §2.8), sidecars, dataset files,
and a derivative dataset with every kind of file the app writes checked by the official
validator (bids-validator-deno, offline)."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_builder import BidsBuilder
from shiva_bids.bids.derivatives import (NON_BIDS_PATTERNS, DatasetInfo, bids_uri,
                                         derivative_name, derivative_path, ensure_bidsignore,
                                         parse_entities, sidecar_path, source_entities,
                                         unit_dir, write_dataset_description, write_sidecar)
from shiva_bids.bids.validation import (ValidationReport, ValidatorUnavailable, parse_report,
                                        validate_dataset, validate_input)
from shiva_bids.errors import InvalidBIDSError
from shiva_bids.io import atomic_save_nifti, atomic_write_text
from shiva_bids.markers import MARKERS
from shiva_bids.postprocessing.atlases import default_atlas

SOURCE = {"sub": "01", "ses": "1"}


# --------------------------------------------------------------------------- naming rules

@pytest.mark.parametrize("suffix, entities, expected", [
    ("probseg", {"space": "T1w", "label": "PVS"}, "sub-01_ses-1_space-T1w_label-PVS_probseg"),
    ("mask", {"space": "SWI", "label": "CMB"}, "sub-01_ses-1_space-SWI_label-CMB_mask"),
    ("dseg", {"space": "T1w", "seg": "WMH"}, "sub-01_ses-1_space-T1w_seg-WMH_dseg"),
    ("dseg", {"desc": "clusters", "seg": "PVS", "space": "T1w"},
     "sub-01_ses-1_space-T1w_seg-PVS_desc-clusters_dseg"),
    ("probseg", {"desc": "ensemble", "label": "LAC", "res": "1", "space": "T1w"},
     "sub-01_ses-1_space-T1w_res-1_label-LAC_desc-ensemble_probseg"),
    ("mask", {"space": "T1w", "desc": "brain"}, "sub-01_ses-1_space-T1w_desc-brain_mask"),
])
def test_entities_follow_schema_order(suffix, entities, expected):
    assert derivative_name(SOURCE, suffix, ".nii.gz", **entities) == expected + ".nii.gz"


def test_label_is_not_allowed_on_dseg_and_values_must_be_alphanumeric():
    with pytest.raises(ValueError, match="label"):
        derivative_name(SOURCE, "dseg", ".nii.gz", space="T1w", label="PVS")
    with pytest.raises(ValueError, match="alphanumeric"):
        derivative_name(SOURCE, "mask", ".nii.gz", space="T1w", label="PVS_2")
    with pytest.raises(ValueError, match="sub"):
        derivative_name({"ses": "1"}, "mask", ".nii.gz", desc="brain")


def test_source_entities_are_kept_and_raw_only_ones_dropped():
    source = source_entities("sub-01_ses-1_acq-3d_ce-gad_run-2_part-mag_T2starw.nii.gz")
    assert source == {"sub": "01", "ses": "1", "acq": "3d", "ce": "gad", "run": "2",
                      "part": "mag"}
    assert derivative_name(source, "mask", ".nii.gz", space="SWI", label="CMB") == \
        "sub-01_ses-1_acq-3d_ce-gad_run-2_part-mag_space-SWI_label-CMB_mask.nii.gz"
    assert parse_entities("sub-01_task-x_bold.nii.gz") == {"sub": "01", "task": "x"}


def test_transform_names_and_sidecar_paths(tmp_path):
    xfm = derivative_path(tmp_path, SOURCE, "xfm", ".mat", from_="FLAIR", to="T1w")
    assert xfm == tmp_path / "sub-01/ses-1/anat/sub-01_ses-1_from-FLAIR_to-T1w_mode-image_xfm.mat"
    with pytest.raises(ValueError, match="from_ and to"):
        derivative_name(SOURCE, "xfm", ".mat", to="T1w")
    assert sidecar_path(Path("a_dseg.tsv")) == sidecar_path(Path("a_dseg.nii.gz")) == \
        Path("a_dseg.json")
    assert unit_dir(tmp_path, {"sub": "02"}) == tmp_path / "sub-02" / "anat"


def test_sidecar_requires_spatial_reference_for_native_spaces(tmp_path):
    image = tmp_path / "sub-01_space-T1w_label-PVS_mask.nii.gz"
    with pytest.raises(ValueError, match="SpatialReference"):
        write_sidecar(image, {"Type": "ROI"})
    assert not sidecar_path(image).exists()
    template = tmp_path / "sub-01_space-MNI152NLin2009cAsym_label-PVS_mask.nii.gz"
    payload = json.loads(write_sidecar(template, {"Type": "ROI"}).read_text())
    assert payload["Type"] == "ROI" and payload["SoftwareVersion"].startswith("shiva-bids ")


def test_bids_uri_and_bidsignore(tmp_path):
    assert bids_uri(tmp_path / "raw/sub-01/anat/x.nii.gz", tmp_path / "raw", "raw") == \
        "bids:raw:sub-01/anat/x.nii.gz"
    with pytest.raises(ValueError):
        bids_uri(tmp_path / "elsewhere.nii.gz", tmp_path / "raw")
    first = ensure_bidsignore(tmp_path, ["b/", "*_stats.tsv"]).read_text()
    again = ensure_bidsignore(tmp_path, ["*_stats.tsv", "b/"]).read_text()
    assert first == again == "*_stats.tsv\nb/\n"
    assert ensure_bidsignore(tmp_path, ["a"]).read_text() == "*_stats.tsv\na\nb/\n"


# --------------------------------------------------------------------------- validator

@pytest.fixture(scope="module")
def deno_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("deno")


def _image(path: Path, dtype=np.float32) -> Path:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), dtype), np.eye(4))
    img.header.set_xyzt_units("mm")
    return atomic_save_nifti(img, path)


def write_every_output_kind(raw: Path, out: Path) -> list[Path]:
    """A derivative dataset with every kind of file shiva-bids writes, named and described
    through shiva_bids.bids.derivatives (DESIGN.md "Conventions")."""
    write_dataset_description(DatasetInfo(bids_dir=raw, output_dir=out))
    ensure_bidsignore(out, NON_BIDS_PATTERNS)
    atomic_write_text(out / "README", "SHIVA small vessel disease markers (test output).\n" * 4)
    t1w = bids_uri(raw / "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", raw, "raw")
    swi = bids_uri(raw / "sub-01/ses-1/anat/sub-01_ses-1_swi.nii.gz", raw, "raw")
    written = []
    for marker, spec in MARKERS.items():
        reference = swi if spec.space == "SWI" else t1w
        common = {"SpatialReference": reference, "Description": f"{marker} test output"}
        prob = _image(derivative_path(out, SOURCE, "probseg", space=spec.space, label=marker))
        write_sidecar(prob, {**common, "Sources": [reference]})
        mask = _image(derivative_path(out, SOURCE, "mask", space=spec.space, label=marker),
                      np.uint8)
        write_sidecar(mask, {**common, "Type": spec.mask_type,
                             "Sources": [bids_uri(prob, out)]})
        dseg = _image(derivative_path(out, SOURCE, "dseg", space=spec.space, seg=marker),
                      np.int16)
        # template-atlas regions (issue #17): their provenance and licence in the sidecar
        write_sidecar(dseg, {**common, "Sources": [bids_uri(mask, out)],
                             "RegionSource": "atlas:DesikanKilliany",
                             "RegionAtlas": default_atlas().provenance()})
        atomic_write_text(dseg.with_name(dseg.name.replace(".nii.gz", ".tsv")),
                          f"index\tname\n1\t{marker}001\n")
        stats = unit_dir(out, SOURCE) / derivative_name(SOURCE, "stats", ".tsv",
                                                        space=spec.space, seg=marker)
        atomic_write_text(stats, "region\tcount\nall\t1\n")
        written += [prob, mask, dseg, stats]
        grid = {"space": spec.space, "res": "model"}  # --keep-model-space copies
        model = {**common, "Resolution": "1 mm model grid"}
        written.append(_image(derivative_path(out, SOURCE, "probseg", label=marker, **grid)))
        written.append(_image(derivative_path(out, SOURCE, "mask", label=marker, **grid),
                              np.uint8))
        written.append(_image(derivative_path(out, SOURCE, "dseg", seg=marker, **grid),
                              np.int16))
        for image in written[-3:]:
            write_sidecar(image, model)
        atomic_write_text(derivative_path(out, SOURCE, "dseg", ".tsv", seg=marker, **grid),
                          f"index\tname\n1\t{marker}001\n")
    brain = _image(derivative_path(out, SOURCE, "mask", space="T1w", desc="brain"), np.uint8)
    write_sidecar(brain, {"Type": "Brain", "SpatialReference": t1w, "Sources": [t1w]})
    for moving in ("FLAIR", "SWI"):
        xfm = derivative_path(out, SOURCE, "xfm", ".mat", from_=moving, to="T1w")
        atomic_write_text(xfm, "#Insight Transform File V1.0\n")
        write_sidecar(xfm, {"Sources": [t1w]})
        written.append(xfm)
    atomic_write_text(out / "sub-01_ses-1.html", "<html><body>report</body></html>\n")
    atomic_write_text(out / "logs" / "sub-01_ses-1.log", "log\n")
    atomic_write_text(out / "group" / "markers.tsv", "participant_id\nsub-01\n")
    atomic_write_text(out / "sub-01" / "figures" / "sub-01_ses-1_PVS.svg", "<svg/>\n")
    return written + [brain]


@pytest.fixture(scope="module")
def raw_dataset(tmp_path_factory) -> Path:
    ds = BidsBuilder(tmp_path_factory.mktemp("raw") / "ds")
    ds.add_unit("01", "1", ("T1w", "FLAIR", "T2starw"))
    ds.add("01", "swi", ses="1")
    return ds.root


def test_every_output_kind_passes_the_official_validator(raw_dataset, tmp_path, deno_cache):
    out = tmp_path / "shiva"
    written = write_every_output_kind(raw_dataset, out)
    assert len(written) == 31 and all(p.is_file() for p in written)
    report = validate_dataset(out, cache_dir=deno_cache)
    assert report.errors == (), report.summary()
    assert report.ok and "no BIDS errors" in report.summary()


def test_the_validator_catches_bad_names_and_missing_spatial_reference(raw_dataset, tmp_path,
                                                                       deno_cache):
    out = tmp_path / "shiva"
    write_every_output_kind(raw_dataset, out)
    folder = unit_dir(out, SOURCE)
    _image(folder / "sub-01_ses-1_space-T1w_label-PVS_dseg.nii.gz", np.int16)  # label on dseg
    nosr = _image(folder / "sub-01_ses-1_space-T1w_desc-test_mask.nii.gz", np.uint8)
    sidecar_path(nosr).write_text(json.dumps({"Type": "Brain"}))
    report = validate_dataset(out, cache_dir=deno_cache)
    bad = {f for issue in report.errors for f in issue.files}
    assert "/sub-01/ses-1/anat/sub-01_ses-1_space-T1w_label-PVS_dseg.nii.gz" in bad
    assert any("desc-test_mask" in f for f in bad)
    assert not report.ok and "BIDS error" in report.summary()


def test_input_validation(raw_dataset, tmp_path, deno_cache, caplog):
    validate_input(raw_dataset, cache_dir=deno_cache)  # valid apart from the `_swi` name
    assert "sub-01_ses-1_swi.nii.gz is not a BIDS name; used as the SWI image" in caplog.text
    broken = BidsBuilder(tmp_path / "broken")
    broken.add("01", "T1w")
    (broken.root / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a nifti")
    (broken.root / "sub-01" / "anat" / "notes.txt").write_text("x")
    with pytest.raises(InvalidBIDSError, match="NOT_INCLUDED") as error:
        validate_input(broken.root, cache_dir=deno_cache)
    assert error.value.exit_code == 16 and "\n" not in str(error.value)


def test_validator_unavailable_is_logged_not_fatal(raw_dataset, monkeypatch, caplog):
    from shiva_bids.bids import validation

    def unavailable():
        raise ValidatorUnavailable("the bids-validator-deno package is not installed (deno)")

    monkeypatch.setattr(validation, "validator_command", unavailable)
    validate_input(raw_dataset)
    assert "BIDS validation was skipped: the bids-validator-deno package" in caplog.text


def test_parse_report_reads_errors_warnings_and_rejects_garbage(tmp_path):
    output = json.dumps({"issues": {"issues": [
        {"code": "NOT_INCLUDED", "severity": "error", "location": "/a.txt"},
        {"code": "NOT_INCLUDED", "severity": "error", "affects": ["/b.txt"]},
        {"code": "README_FILE_MISSING", "severity": "warning"}],
        "codeMessages": {"NOT_INCLUDED": "not part of BIDS"}}, "summary": {}})
    report = parse_report(tmp_path, output)
    assert isinstance(report, ValidationReport)
    assert [i.files for i in report.errors] == [("/a.txt",), ("/b.txt",)]
    assert report.errors[0].message == "not part of BIDS"
    assert report.summary() == "2 BIDS error(s): NOT_INCLUDED x2 (e.g. /a.txt)"
    assert len(report.warnings) == 1
    with pytest.raises(ValidatorUnavailable):
        parse_report(tmp_path, "Error: something else")
