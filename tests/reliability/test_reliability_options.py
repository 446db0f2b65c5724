"""Broken filter files, dataset descriptions and sidecars, misplaced folders and bad models:
each stops the run before any unit is processed, with its documented code and one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from kit import (anat_file, assert_clean_failure, freeze, looks_complete, make_dataset,
                 run_inprocess, tree_state)
from shiva_bids.errors import ExitCode


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "bids", {"01": ("T1w", "FLAIR"), "02": ("T1w",)})


def participant(bids: Path, tmp_path: Path, models: Path, *extra: object) -> list:
    return [bids, tmp_path / "out", "participant", "--models-dir", models,
            "-w", tmp_path / "work", "--skip-bids-validation", "--nprocs", "1", *extra]


def run_frozen(capfd, bids: Path, *argv: object):
    """Run with the input read-only; the input must come out byte-identical."""
    freeze(bids)
    before = tree_state(bids)
    result = run_inprocess(capfd, *argv)
    assert tree_state(bids) == before
    return result


FILTER_CASES = {  # content -> (exit code, the name on the line, what it says)
    "misspelt-entity": ({"t1w": {"acquisiton": "mprage"}}, ExitCode.USAGE,
                        "--bids-filter-file", "did you mean 'acquisition'"),
    "selects-nothing": ({"t1w": {"acquisition": "mprage"}}, ExitCode.NOTHING_SELECTED,
                        "--bids-filter-file", '{"acquisition": "mprage"} selects no file'),
    "flair-selects-nothing": ({"flair": {"run": 7}}, ExitCode.NOTHING_SELECTED,
                              "--bids-filter-file", "the flair filter"),
    "unknown-role": ({"bold": {"task": "rest"}}, ExitCode.USAGE, "filters.json",
                     "must map some of"),
    "not-an-object": (["t1w"], ExitCode.USAGE, "filters.json", "must map some of"),
    "invalid-json": ("{t1w: ", ExitCode.USAGE, "filters.json", "not valid JSON"),
    "empty": ("", ExitCode.USAGE, "filters.json", "is empty"),
}


@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_filter_file_mistakes(case, dataset, tmp_path, fake_models_dir, capfd):
    content, code, name, phrase = FILTER_CASES[case]
    filters = tmp_path / "filters.json"
    filters.write_text(content if isinstance(content, str) else json.dumps(content))
    result = run_frozen(capfd, dataset, *participant(dataset, tmp_path, fake_models_dir,
                                                     "--bids-filter-file", filters))
    assert_clean_failure(result, code, name, phrase)
    assert looks_complete(tmp_path / "out") == []


DESCRIPTION_CASES = {  # content -> (exit code of the run, what the line says)
    "empty-file": ("", "empty file"),
    "empty-object": ("{}", "lacks the required Name and BIDSVersion"),
    "invalid-json": ('{"Name": ', "not valid JSON"),
    "a-list": ("[1, 2]", "not a BIDS dataset description"),
}


@pytest.mark.parametrize("case", sorted(DESCRIPTION_CASES))
def test_a_broken_dataset_description_is_warned_about_or_refused(case, dataset, tmp_path,
                                                                 fake_models_dir, capfd):
    """Under --skip-bids-validation a weak description is warned about (the run goes on: here
    to the corrupt T1w of sub-01, 65); one pybids cannot read is refused (66)."""
    content, phrase = DESCRIPTION_CASES[case]
    (dataset / "dataset_description.json").write_text(content)
    anat_file(dataset, "01", "T1w").write_bytes(b"")
    result = run_frozen(capfd, dataset, *participant(dataset, tmp_path, fake_models_dir,
                                                     "--participant-label", "01"))
    code = ExitCode.NO_INPUT if case == "a-list" else ExitCode.BAD_INPUT
    assert_clean_failure(result, code, "dataset_description.json", phrase)


def test_a_broken_sidecar_fails_validation_with_16(dataset, tmp_path, fake_models_dir, capfd):
    from shiva_bids.bids.validation import ValidatorUnavailable, validator_command
    try:
        validator_command()
    except ValidatorUnavailable as exc:
        pytest.skip(f"the BIDS validator cannot run here: {exc}")
    anat_file(dataset, "01", "T1w", ".json").write_text('{"RepetitionTime": 2.3,')
    args = participant(dataset, tmp_path, fake_models_dir)
    args.remove("--skip-bids-validation")
    result = run_frozen(capfd, dataset, *args)
    assert_clean_failure(result, ExitCode.INVALID_BIDS, "sub-01_T1w.json", "JSON")


def test_labels_or_datasets_that_select_nothing(dataset, tmp_path, fake_models_dir, capfd):
    result = run_frozen(capfd, dataset, *participant(dataset, tmp_path, fake_models_dir,
                                                     "--participant-label", "07"))
    assert_clean_failure(result, ExitCode.NOTHING_SELECTED, "sub-07", "not found")
    empty = make_dataset(tmp_path / "empty", {})
    result = run_frozen(capfd, empty, *participant(empty, tmp_path, fake_models_dir))
    assert_clean_failure(result, ExitCode.NO_INPUT, "no sub-* folder", "")


@pytest.mark.parametrize("option", ["output_dir", "-w", "--bids-database-dir", "default-work"])
def test_nothing_may_be_written_inside_the_input_dataset(option, dataset, tmp_path,
                                                         fake_models_dir, capfd, monkeypatch):
    args = participant(dataset, tmp_path, fake_models_dir)
    if option == "output_dir":
        args[1] = dataset / "results"
    elif option == "-w":
        args[args.index("-w") + 1] = dataset / "work"
    elif option == "--bids-database-dir":
        args += ["--bids-database-dir", dataset / "code" / "index"]
    else:  # started from inside the dataset without -w: the default ./work is refused
        index = args.index("-w")
        del args[index:index + 2]
        monkeypatch.chdir(dataset / "sub-01")
    result = run_frozen(capfd, dataset, *args)
    name = {"output_dir": "output_dir", "-w": "--work-dir", "default-work": "--work-dir"}.get(
        option, option)
    assert_clean_failure(result, ExitCode.USAGE, name, "inside the input dataset")
    assert "derivatives" in result.err


def test_a_work_folder_under_derivatives_is_allowed(dataset, tmp_path, fake_models_dir, capfd):
    anat_file(dataset, "01", "T1w").write_bytes(b"")
    work = dataset / "derivatives" / "work"
    args = participant(dataset, tmp_path, fake_models_dir, "--participant-label", "01")
    args[args.index("-w") + 1] = work
    result = run_inprocess(capfd, *args)
    assert_clean_failure(result, ExitCode.BAD_INPUT, "sub-01_T1w.nii.gz", "empty file")
    assert work.is_dir()


def _no_models_dir(models: Path) -> Path:
    return models / "absent"


def _no_descriptor(models: Path) -> Path:
    (models / "empty").mkdir()
    return models / "empty"


def _descriptor_not_json(models: Path) -> Path:
    (models / "PVS-fake" / "model_info_pvs.json").write_text("{")
    return models


def _descriptor_without_files(models: Path) -> Path:
    path = models / "PVS-fake" / "model_info_pvs.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "files"}))
    return models


def _fold_missing(models: Path) -> Path:
    (models / "PVS-fake" / "fold_0.bin").unlink()
    return models


def _fold_altered(models: Path) -> Path:
    (models / "PVS-fake" / "fold_0.bin").write_bytes(b"tampered")
    return models


MODEL_CASES = {
    "models-dir-missing": (_no_models_dir, ExitCode.NO_INPUT, "absent", "not a folder"),
    "no-descriptor": (_no_descriptor, ExitCode.NO_INPUT, "empty", "no model_info"),
    "descriptor-not-json": (_descriptor_not_json, ExitCode.BAD_INPUT, "model_info_pvs.json",
                            "not valid JSON"),
    "descriptor-without-files": (_descriptor_without_files, ExitCode.BAD_INPUT,
                                 "model_info_pvs.json", "lacks files"),
    "fold-missing": (_fold_missing, ExitCode.NO_INPUT, "fold_0.bin", "not found"),
    "fold-checksum-mismatch": (_fold_altered, ExitCode.BAD_INPUT, "fold_0.bin", "md5"),
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_bad_models_stop_the_run_before_tensorflow(case, dataset, tmp_path, capfd):
    from kit import fake_models
    damage, code, name, phrase = MODEL_CASES[case]
    models = damage(fake_models(tmp_path / "models"))
    result = run_frozen(capfd, dataset, *participant(dataset, tmp_path, models,
                                                     "--markers", "PVS"))
    assert_clean_failure(result, code, name, phrase)
    assert looks_complete(tmp_path / "out") == []
