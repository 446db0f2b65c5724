"""The BIDS-App command line: flags, aliases, labels, --help/--version, exit codes for bad
input (reference/BIDS_APPS.md §1.1-1.3), and that nothing is written into bids_dir."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bids_builder import BidsBuilder
from shiva_bids import __version__
from shiva_bids.cli import build_parser, main, parse_args
from shiva_bids.errors import ExitCode

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """sub-01 with T1w + FLAIR, sub-02 with FLAIR only (no T1w)."""
    ds = BidsBuilder(tmp_path / "ds")
    ds.add_unit("01", suffixes=("T1w", "FLAIR"))
    ds.add_unit("02", suffixes=("FLAIR",))
    return ds.root


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- parsing

def test_every_flag_parses_into_the_config(tmp_path: Path):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}, "swi": {"run": None}}))
    config = parse_args([
        str(tmp_path / "ds"), str(tmp_path / "out"), "participant",
        "--participant-label", "sub-01", "02", "--session-label", "ses-A", "--bids-filter-file",
        str(filters), "--bids-database-dir", str(tmp_path / "db"), "--skip-bids-validation",
        "--derivatives", f"fmriprep={tmp_path / 'fp'}", "--pipeline", "shiva",
        "--markers", "pvs", "WMH", "--models-dir", str(tmp_path / "models"),
        "--model", f"PVS={tmp_path / 'm.json'}", "--skip-model-checksum", "--tta", "flip",
        "--threshold", "PVS=0.4", "--min-cluster-size", "WMH=3", "--brain-mask", "template",
        "--premasked", "--replace-t1", "t2", "--inverse-t2", "--keep-model-space",
        "--fetal-largest-component", "-w", str(tmp_path / "work"), "--nprocs", "2",
        "--omp-nthreads", "1", "--mem", "8G",
        "--device", "cpu", "--reports-only", "--stop-on-first-crash", "--force",
        "--random-seed", "7", "-vv", "--notrack", "--regions", "atlas",
    ])
    assert config.participant_labels == ("01", "02")
    assert config.session_labels == ("A",)
    assert config.bids_filters == {"t1w": {"acquisition": "mprage"}, "swi": {"run": None}}
    assert config.bids_database_dir == tmp_path / "db"
    assert config.skip_bids_validation and config.skip_model_checksum and config.premasked
    assert config.derivatives == {"fmriprep": tmp_path / "fp"}
    assert config.markers == ("PVS", "WMH")
    assert config.models_dir == tmp_path / "models"
    assert config.model_overrides == {"PVS": tmp_path / "m.json"}
    assert (config.tta, config.brain_mask, config.device) == ("flip", "template", "cpu")
    assert config.threshold("PVS") == 0.4 and config.threshold("WMH") == 0.2
    assert config.min_cluster_size("WMH") == 3 and config.min_cluster_size("PVS") == 5
    assert config.replace_t1 == "t2" and config.inverse_t2 and config.keep_model_space
    assert config.fetal_largest_component
    assert config.work_dir == tmp_path / "work"
    assert (config.nprocs, config.omp_nthreads, config.mem_gb) == (2, 1, 8.0)
    assert config.inference_threads == 2  # inference runs alone: the whole --nprocs budget
    from shiva_bids.pipelines.shiva import preprocessing_workers
    assert preprocessing_workers(config, 2) == 1  # two units side by side: one worker each
    assert preprocessing_workers(config, 1) == 2  # a lone unit gets the spare process
    assert config.reports_only and config.stop_on_first_crash and config.force
    assert (config.random_seed, config.verbosity) == (7, 2)
    assert config.regions == "atlas"


def _long_options() -> list[tuple[object, str]]:
    return [(action, option) for action in build_parser()._actions
            for option in action.option_strings if option.startswith("--")]


def test_every_hyphenated_flag_has_an_underscore_alias():
    options = {option: action for action, option in _long_options()}
    for option, action in options.items():
        if "-" in option[2:]:
            twin = "--" + option[2:].replace("-", "_")
            assert options.get(twin) is action, f"{option} has no alias {twin}"


@pytest.mark.parametrize("hyphen, underscore, value", [
    ("--participant-label", "--participant_label", "01"),
    ("--session-label", "--session_label", "1"),
    ("--work-dir", "--work_dir", "/tmp/w"),
    ("--omp-nthreads", "--omp_nthreads", "1"),
    ("--min-cluster-size", "--min_cluster_size", "PVS=3"),
    ("--random-seed", "--random_seed", "3"),
])
def test_underscore_aliases_give_the_same_config(tmp_path, hyphen, underscore, value):
    base = [str(tmp_path / "ds"), str(tmp_path / "out"), "participant"]
    assert parse_args(base + [hyphen, value]) == parse_args(base + [underscore, value])


def test_labels_strip_prefixes_drop_duplicates_and_come_from_files(tmp_path: Path):
    labels = tmp_path / "labels.txt"
    labels.write_text("sub-03\n# a comment\n\n01\nsub-01\n")
    base = [str(tmp_path / "ds"), str(tmp_path / "out"), "participant"]
    assert parse_args(base + ["--participant-label", str(labels)]).participant_labels == \
        ("03", "01")
    assert parse_args(base + ["--session-label", "ses-1", "2"]).session_labels == ("1", "2")


def test_help_documents_every_flag(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for _, option in _long_options():
        assert option in out, option
    assert "-w" in out and "-v" in out and "exit codes" in out


def test_version_reads_the_version_file(capsys):
    code, out, _ = run_cli(capsys, "--version")
    expected = (REPO / "version").read_text().strip()
    assert code == 0 and out.strip() == f"shiva-bids {expected}" == f"shiva-bids {__version__}"


# --------------------------------------------------------------------------- bad input

def test_missing_bids_dir_is_66_in_one_clean_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope", tmp_path / "out", "participant")
    assert code == ExitCode.NO_INPUT == 66
    assert err.strip().splitlines() == [f"shiva-bids: error: bids_dir {tmp_path / 'nope'}: "
                                        "no such folder"]


def test_traceback_only_with_vv(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope", tmp_path / "out", "participant", "-vv")
    assert code == 66 and "Traceback" in err


def test_not_a_bids_dataset(tmp_path, capsys):
    (tmp_path / "notbids" / "sub-01").mkdir(parents=True)
    args = [tmp_path / "notbids", tmp_path / "out", "participant"]
    code, _, err = run_cli(capsys, *args)
    assert code == ExitCode.INVALID_BIDS and "dataset_description.json" in err
    code, _, err = run_cli(capsys, *args, "--skip-bids-validation")
    assert code == ExitCode.NO_INPUT and "dataset_description.json" in err


def test_validator_errors_give_16_with_the_summary(dataset, tmp_path, capsys):
    (dataset / "sub-01" / "anat" / "sub-01_T1w_typo.nii.gz").write_bytes(b"x")
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant")
    assert code == ExitCode.INVALID_BIDS
    assert "NOT_INCLUDED" in err and "sub-01_T1w_typo.nii.gz" in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_labels_are_18_naming_the_label(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--participant-label", "01", "sub-99", "--skip-bids-validation")
    assert code == ExitCode.NOTHING_SELECTED and "sub-99" in err and "sub-01" not in err
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--session-label", "ses-7", "--skip-bids-validation")
    assert code == ExitCode.NOTHING_SELECTED and "ses-7" in err


@pytest.mark.parametrize("content", [None, "", "  \n", "{not json", "[1]", '{"bold": {}}'])
def test_bad_filter_files_are_64(dataset, tmp_path, capsys, content):
    path = tmp_path / "filters.json"
    if content is None:
        path.mkdir()  # unreadable as a file
    else:
        path.write_text(content)
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--bids-filter-file", path)
    assert code == ExitCode.USAGE and str(path) in err


def test_missing_filter_file_is_64(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--bids-filter-file", tmp_path / "absent.json")
    assert code == 64 and "absent.json" in err


def test_unwritable_output_and_work_dirs_are_73(dataset, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(capsys, dataset, blocker / "out", "participant",
                           "--skip-bids-validation")
    assert code == ExitCode.CANNOT_CREATE_OUTPUT and "output_dir" in err
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--skip-bids-validation", "-w", blocker / "work")
    assert code == ExitCode.CANNOT_CREATE_OUTPUT and "--work-dir" in err


def test_output_inside_bids_dir_is_64_except_derivatives(dataset, tmp_path, capsys):
    for out in (dataset, dataset / "sub-01" / "out"):
        code, _, err = run_cli(capsys, dataset, out, "participant")
        assert code == ExitCode.USAGE and "input dataset" in err
    config = parse_args([str(dataset), str(dataset / "derivatives" / "shiva"), "participant"])
    assert config.output_dir == dataset / "derivatives" / "shiva"


def test_unknown_level_is_17_and_unknown_flag_64(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant2")
    assert code == ExitCode.UNKNOWN_LEVEL and "participant2" in err
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant", "--frobnicate")
    assert code == ExitCode.USAGE and "--frobnicate" in err


def test_unavailable_subcommand_is_a_clean_error(monkeypatch, capsys):
    from shiva_bids import cli
    monkeypatch.setitem(cli.SUBCOMMANDS, "nosuch", "shiva_bids.no_such_module:main")
    code, _, err = run_cli(capsys, "nosuch", "x")
    assert code == ExitCode.USAGE and "not available" in err and "Traceback" not in err


# --------------------------------------------------------------------------- a real run

def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def pipeline_calls(monkeypatch):
    """Replace the pipeline by a recorder: these tests cover what the participant level does
    around the units (checks, skips, logs, exit codes); tests/test_end_to_end.py runs the
    real pipeline."""
    from shiva_bids import participant
    calls = []

    def run_units(units, config):
        calls.append([u.unit_id for u in units])
        return [participant.UnitResult(u.unit_id, participant.DONE) for u in units]

    monkeypatch.setattr(participant, "run_units", run_units)
    return calls


def test_participant_run_writes_nothing_into_bids_dir(dataset, tmp_path, capsys,
                                                      pipeline_calls):
    before = _tree_digest(dataset)
    folders_before = sorted(p for p in dataset.rglob("*"))
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant", "-v",
                           "--bids-database-dir", tmp_path / "db", "-w", tmp_path / "work")
    assert _tree_digest(dataset) == before
    assert sorted(p for p in dataset.rglob("*")) == folders_before
    # sub-02 has no T1w: skipped with a reason, exit 66 (docs/usage.md "Exit codes")
    assert code == ExitCode.NO_INPUT
    assert "sub-02: skipped, no t1w image found" in err
    assert pipeline_calls == [["sub-01"]]
    out = tmp_path / "out"
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert "logs" in (out / ".bidsignore").read_text().split()
    assert "skipped" in (out / "logs" / "sub-02.log").read_text()


def test_participant_run_of_complete_units_exits_0(dataset, tmp_path, capsys,
                                                   pipeline_calls):
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, dataset, out, "participant", "--participant-label", "01",
                         "--skip-bids-validation")
    assert code == ExitCode.OK and pipeline_calls == [["sub-01"]]
    assert not (out / "logs" / "sub-02.log").exists()
    # the recorder wrote no unit outputs: the group level has nothing to gather
    code, _, err = run_cli(capsys, dataset, out, "group")
    assert code == ExitCode.NO_INPUT and "participant level first" in err


def test_no_models_dir_says_where_to_get_the_models(dataset, tmp_path, capsys):
    code, _, err = run_cli(capsys, dataset, tmp_path / "out", "participant",
                           "--participant-label", "01", "--skip-bids-validation")
    assert code == ExitCode.USAGE
    assert "--models-dir" in err and "SHIVA_PVS" in err and "shiva-bids demo" in err


def _unit_work(sub: str) -> str:
    if sub == "02":
        raise RuntimeError("kaboom")
    return sub


def test_a_failing_unit_writes_a_crash_file_and_does_not_stop_the_others(tmp_path):
    from shiva_bids.bids.inputs import InputSet
    from shiva_bids.config import RunConfig
    from shiva_bids.runner import RunOutcome, StopRun, parallel_map, record_failure

    config = RunConfig(bids_dir=tmp_path, output_dir=tmp_path / "out",
                       analysis_level="participant")
    outcome = RunOutcome()
    results = parallel_map(_unit_work, ["01", "02", "03"], 1)
    assert results[0] == "01" and results[2] == "03"
    assert isinstance(results[1], RuntimeError)  # returned in place, the others ran
    record_failure(config, InputSet("02"), "post-processing", outcome, results[1])
    assert [o.unit_id for o in outcome.failed] == ["sub-02"]
    assert outcome.failed[0].exit_code == ExitCode.FAILURE  # an internal error: class 1
    assert outcome.failed[0].message == "failed, exit class 1 (details: " \
                                        "logs/crash-sub-02.txt)"
    crash = (tmp_path / "out" / "logs" / "crash-sub-02.txt").read_text()
    assert "stage: post-processing" in crash and "Traceback" in crash and "kaboom" in crash
    stopping = RunConfig(bids_dir=tmp_path, output_dir=tmp_path / "out",
                         analysis_level="participant", stop_on_first_crash=True)
    with pytest.raises(StopRun):
        record_failure(stopping, InputSet("02"), "preprocessing", RunOutcome(), results[1])


def test_run_py_and_python_m_behave_the_same(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    results = []
    for entry in ([str(REPO / "run.py")], ["-m", "shiva_bids"]):
        for argv in (["--version"], [str(tmp_path / "nope"), str(tmp_path / "o"), "group"]):
            done = subprocess.run([sys.executable, *entry, *argv], capture_output=True,
                                  text=True, env=env, cwd=tmp_path, timeout=120)
            results.append((done.returncode, done.stdout, done.stderr))
    assert results[:2] == results[2:]
    assert results[0][0] == 0 and results[0][1].startswith("shiva-bids ")
    assert results[1][0] == ExitCode.NO_INPUT


def test_regions_derivatives_needs_a_derivatives_dataset(tmp_path, capsys):
    code = main([str(tmp_path), str(tmp_path / "out"), "participant", "--regions",
                 "derivatives"])
    assert code == 64 and "--regions derivatives needs" in capsys.readouterr().err
