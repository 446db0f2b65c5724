"""Input discovery on dataset layouts built here: no sessions, sessions, runs/acq/ce/rec,
missing modalities, derivatives with brain masks and segmentations, many participants."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from bids_builder import BidsBuilder, many_participants
from shiva_bids.bids.discovery import (Candidate, choose, database_path, discover_inputs,
                                       find_inputs, open_layout, role_queries, select_units)
from shiva_bids.config import RunConfig
from shiva_bids.errors import MissingInputError, NothingSelectedError, OutputError


def names(inputs) -> dict[str, dict[str, str | None]]:
    """unit id -> role -> file name (None when missing)."""
    roles = ("t1w", "flair", "swi", "t2w", "brain_mask", "dseg")
    return {i.unit_id: {r: getattr(i, r).name if getattr(i, r) else None for r in roles}
            for i in inputs}


# --------------------------------------------------------------------------- layout 1

@pytest.fixture
def flat(tmp_path: Path) -> Path:
    """No sessions; participants missing modalities; a non-standard `_swi`, phase images,
    and files that must never be inputs (derivatives/, sourcedata/, func/)."""
    ds = BidsBuilder(tmp_path / "flat")
    ds.add_unit("01", suffixes=("T1w", "FLAIR", "swi", "T2w"))
    ds.add("01", "T2starw", part="phase")
    ds.add_unit("02", suffixes=("FLAIR",))
    ds.add_unit("03", suffixes=("T1w",))
    ds.add("03", "T2starw", part="phase")  # phase only: no SWI-like input
    ds.add("03", "T1w", datatype="func", task="rest")  # wrong datatype
    ds.add("03", "bold", datatype="func", task="rest")
    ds.derivative("fmriprep").add("02", "T1w", desc="preproc")
    (ds.root / "sourcedata" / "sub-02" / "anat").mkdir(parents=True)
    (ds.root / "sourcedata" / "sub-02" / "anat" / "sub-02_T1w.nii.gz").write_bytes(b"x")
    return ds.root


def test_no_sessions_missing_modalities_and_swi(flat):
    inputs = find_inputs(open_layout(flat))
    assert all(not i.choices for i in inputs)  # func/, sourcedata/, derivatives/ not seen
    found = names(inputs)
    assert found == {
        "sub-01": {"t1w": "sub-01_T1w.nii.gz", "flair": "sub-01_FLAIR.nii.gz",
                   "swi": "sub-01_swi.nii.gz", "t2w": "sub-01_T2w.nii.gz",
                   "brain_mask": None, "dseg": None},
        "sub-02": {"t1w": None, "flair": "sub-02_FLAIR.nii.gz", "swi": None, "t2w": None,
                   "brain_mask": None, "dseg": None},
        "sub-03": {"t1w": "sub-03_T1w.nii.gz", "flair": None, "swi": None, "t2w": None,
                   "brain_mask": None, "dseg": None},
    }


def test_participant_labels_select_and_unknown_labels_name_the_label(flat):
    layout = open_layout(flat)
    assert [i.unit_id for i in find_inputs(layout, ["03", "01"])] == ["sub-01", "sub-03"]
    with pytest.raises(NothingSelectedError, match="sub-7, sub-8") as error:
        find_inputs(layout, ["01", "7", "8"])
    assert error.value.exit_code == 18
    with pytest.raises(NothingSelectedError, match="ses-1"):
        find_inputs(layout, session_labels=["1"])


def test_filter_file_semantics_null_and_star(flat):
    layout = open_layout(flat)
    # null: the entity must be absent -> the phase image (part-phase) is excluded anyway, and
    # part null keeps the non-standard _swi only.
    only = find_inputs(layout, ["01"], filters={"swi": {"part": None}})
    assert only[0].swi.name == "sub-01_swi.nii.gz"
    # "*": the entity must be present -> only the part-phase file of sub-01 matches.
    star = find_inputs(layout, ["01"], filters={"swi": {"part": "*", "suffix": "T2starw"}})
    assert star[0].swi.name == "sub-01_part-phase_T2starw.nii.gz"
    queries = role_queries({"t1w": {"run": None, "acquisition": "*", "subject": "x"}})
    assert str(queries["t1w"]["run"]) == "Query.NONE"
    assert str(queries["t1w"]["acquisition"]) == "Query.REQUIRED"
    assert "subject" not in queries["t1w"]


# --------------------------------------------------------------------------- layout 2

@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    """Sessions, with a participant whose second session has no T1w."""
    ds = BidsBuilder(tmp_path / "sessions")
    ds.add_unit("A", "pre", ("T1w", "FLAIR"))
    ds.add_unit("A", "post", ("FLAIR",))
    ds.add_unit("B", "pre", ("T1w", "T2starw"))
    return ds.root


def test_each_session_is_a_unit(sessions):
    found = names(find_inputs(open_layout(sessions)))
    assert list(found) == ["sub-A_ses-post", "sub-A_ses-pre", "sub-B_ses-pre"]
    assert found["sub-A_ses-post"]["t1w"] is None
    assert found["sub-A_ses-pre"]["t1w"] == "sub-A_ses-pre_T1w.nii.gz"
    assert found["sub-B_ses-pre"]["swi"] == "sub-B_ses-pre_T2starw.nii.gz"


def test_session_labels_filter_and_unknown_session(sessions):
    units = select_units(sessions, session_labels=["pre"])
    assert [(u.subject, u.session) for u in units] == [("A", "pre"), ("B", "pre")]
    with pytest.raises(NothingSelectedError, match="ses-post"):
        select_units(sessions, ["B"], ["post"])
    with pytest.raises(NothingSelectedError, match="ses-mid"):
        select_units(sessions, session_labels=["pre", "mid"])


# --------------------------------------------------------------------------- layout 3

@pytest.fixture
def entities(tmp_path: Path) -> Path:
    """Several candidates per role: runs, acquisitions, contrast, reconstruction."""
    ds = BidsBuilder(tmp_path / "entities")
    ds.add("01", "T1w", ses="1", run=2)
    ds.add("01", "T1w", ses="1", run=1)
    ds.add("01", "T1w", ses="1", rec="norm")
    ds.add("01", "T1w", ses="1", ce="gadolinium")
    ds.add("01", "T1w", ses="1", acq="mprage", run=3)
    ds.add("01", "FLAIR", ses="1", acq="3d")
    ds.add("01", "FLAIR", ses="1", acq="2d")
    ds.add("01", "T2starw", ses="1")
    ds.add("01", "swi", ses="1")
    return ds.root


def test_multiple_matches_are_chosen_deterministically_and_recorded(entities, caplog):
    with caplog.at_level(logging.INFO, logger="shiva_bids"):
        (unit,) = find_inputs(open_layout(entities))
    assert unit.t1w.name == "sub-01_ses-1_run-1_T1w.nii.gz"  # no ce/rec/acq, lowest run
    assert unit.flair.name == "sub-01_ses-1_acq-2d_FLAIR.nii.gz"  # alphabetical acq
    assert unit.swi.name == "sub-01_ses-1_swi.nii.gz"  # swi before T2starw
    assert "among 5 matches" in unit.choices["t1w"]
    assert "sub-01_ses-1_ce-gadolinium_T1w.nii.gz" in unit.choices["t1w"]
    assert "t2w" not in unit.choices  # nothing to choose
    assert "sub-01_ses-1 t1w: chose sub-01_ses-1_run-1_T1w.nii.gz" in caplog.text


def test_filter_file_narrows_the_choice(entities):
    layout = open_layout(entities)
    (unit,) = find_inputs(layout, filters={"t1w": {"acquisition": "mprage"},
                                           "flair": {"acquisition": "3d"}})
    assert unit.t1w.name == "sub-01_ses-1_acq-mprage_run-3_T1w.nii.gz"
    assert unit.flair.name == "sub-01_ses-1_acq-3d_FLAIR.nii.gz"
    assert "t1w" not in unit.choices
    # every T1w without run has rec or ce: a filter that selects nothing is 18, naming it
    with pytest.raises(NothingSelectedError, match='the t1w filter {"run": null'):
        find_inputs(layout, filters={"t1w": {"run": None, "reconstruction": None,
                                             "ceagent": None}})


def test_choice_rule_is_order_independent(tmp_path):
    files = [Candidate(tmp_path / n, e) for n, e in [
        ("sub-1_run-10_T1w.nii.gz", {"run": "10"}), ("sub-1_run-2_T1w.nii.gz", {"run": "2"}),
        ("sub-1_rec-x_T1w.nii.gz", {"rec": "x"})]]
    assert choose(files)[0].path.name == choose(files[::-1])[0].path.name \
        == "sub-1_run-2_T1w.nii.gz"
    assert choose([]) is None and choose(files[:1])[1] == "only match"


# --------------------------------------------------------------------------- layout 4

@pytest.fixture
def with_derivatives(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    """fMRIPrep-like masks/asegs (session and subject level, template space to ignore),
    a FreeSurfer subjects directory and a SynthSeg output."""
    ds = BidsBuilder(tmp_path / "raw")
    for sub, ses in (("01", "1"), ("01", "2"), ("02", None), ("03", None)):
        ds.add_unit(sub, ses, ("T1w",))
    fp = ds.derivative("fmriprep")
    fp.add("01", "mask", desc="brain")  # subject level: used for ses-2
    fp.add("01", "mask", ses="1", desc="brain")  # session level wins for ses-1
    fp.add("01", "mask", ses="1", space="MNI152NLin2009cAsym", desc="brain")
    fp.add("01", "dseg", ses="1")  # 3-class tissue map: not a parcellation, ignored
    fp.add("01", "dseg", ses="1", desc="aparcaseg")
    fp.add("01", "dseg", ses="1", desc="aseg")
    fp.add("02", "mask", space="T1w", desc="brain")
    fp.add("02", "mask", desc="brain")  # no space before space-T1w
    fp.add("02", "mask", space="MNI152NLin2009cAsym", label="GM")
    fs = tmp_path / "freesurfer"
    for sub in ("02", "03"):
        (fs / f"sub-{sub}" / "mri").mkdir(parents=True)
        (fs / f"sub-{sub}" / "mri" / "aseg.mgz").write_bytes(b"mgz")
    (fs / "sub-03" / "mri" / "aparc+aseg.mgz").write_bytes(b"mgz")
    synthseg = BidsBuilder(tmp_path / "synthseg", derivative=True)
    synthseg.add("03", "dseg", desc="synthseg")
    return ds.root, {"fmriprep": fp.root, "freesurfer": fs, "synthseg": synthseg.root}


def test_brain_masks_and_segmentations_from_derivatives(with_derivatives):
    raw, derivatives = with_derivatives
    found = names(find_inputs(open_layout(raw), derivatives=derivatives))
    assert found["sub-01_ses-1"]["brain_mask"] == "sub-01_ses-1_desc-brain_mask.nii.gz"
    assert found["sub-01_ses-1"]["dseg"] == "sub-01_ses-1_desc-aseg_dseg.nii.gz"
    assert found["sub-01_ses-2"]["brain_mask"] == "sub-01_desc-brain_mask.nii.gz"
    assert found["sub-01_ses-2"]["dseg"] is None
    assert found["sub-02"]["brain_mask"] == "sub-02_desc-brain_mask.nii.gz"
    assert found["sub-02"]["dseg"] == "aseg.mgz"  # FreeSurfer, fMRIPrep has none
    assert found["sub-03"]["brain_mask"] is None
    assert found["sub-03"]["dseg"] == "aparc+aseg.mgz"  # first dataset given wins


def test_derivative_choices_are_recorded_and_order_matters(with_derivatives):
    raw, derivatives = with_derivatives
    reordered = {"synthseg": derivatives["synthseg"], "fmriprep": derivatives["fmriprep"]}
    units = {i.unit_id: i for i in find_inputs(open_layout(raw), derivatives=reordered)}
    assert units["sub-03"].dseg.name == "sub-03_desc-synthseg_dseg.nii.gz"
    assert "subject (used for this session)" in units["sub-01_ses-2"].choices["brain_mask"]
    assert units["sub-03"].choices["dseg"].startswith("from --derivatives synthseg")


def test_missing_derivatives_folder_is_66(with_derivatives, tmp_path):
    raw, _ = with_derivatives
    with pytest.raises(MissingInputError, match="nowhere"):
        find_inputs(open_layout(raw), derivatives={"x": tmp_path / "nowhere"})


# --------------------------------------------------------------------------- layout 5

def test_many_participants_with_a_reused_database(tmp_path):
    root = many_participants(tmp_path / "many", 40, sessions=("1", "2")).root
    (root / "sub-007" / "ses-2" / "anat" / "sub-007_ses-2_T1w.nii.gz").unlink()
    config = RunConfig(bids_dir=root, output_dir=tmp_path / "out",
                       analysis_level="participant", bids_database_dir=tmp_path / "db")
    first = discover_inputs(config)
    database = database_path(tmp_path / "db", root)
    assert (database / "layout_index.sqlite").is_file()
    assert not list((tmp_path / "db").glob(".building-*"))
    stamp = (database / "layout_index.sqlite").stat().st_mtime_ns
    second = discover_inputs(config)
    assert (database / "layout_index.sqlite").stat().st_mtime_ns == stamp  # not re-indexed
    assert first == second and len(first) == 80
    assert [i.unit_id for i in first[:3]] == ["sub-001_ses-1", "sub-001_ses-2", "sub-002_ses-1"]
    missing = [i.unit_id for i in first if i.t1w is None]
    assert missing == ["sub-007_ses-2"]
    assert all(i.flair is not None for i in first)


def test_empty_dataset_is_66(tmp_path):
    root = BidsBuilder(tmp_path / "empty").root
    with pytest.raises(MissingInputError, match="no sub-"):
        find_inputs(open_layout(root))


def test_unwritable_database_dir_is_73(flat, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError, match="--bids-database-dir") as error:
        open_layout(flat, blocker / "db")
    assert error.value.exit_code == 73


def test_database_is_keyed_by_dataset(tmp_path):
    a = database_path(tmp_path / "db", tmp_path / "a")
    assert a != database_path(tmp_path / "db", tmp_path / "b")
    assert a == database_path(tmp_path / "db", tmp_path / "x" / ".." / "a")
    assert json.dumps(str(a)).count("shiva-bids-") == 1
