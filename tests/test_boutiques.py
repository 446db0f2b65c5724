"""The Boutiques descriptor matches the real CLI (reference/BIDS_APPS.md §1.2, §1.4).

`bosh validate` accepts it, `bosh exec simulate` turns invocations into command lines that the
real parser (:func:`shiva_bids.cli.parse_args`) reads back into the requested configuration, every
parser option has an input, and the committed file is what ``boutiques/make_descriptor.py`` makes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import sys
from pathlib import Path

import pytest

from shiva_bids import __version__
from shiva_bids.cli import build_parser, parse_args

boutiques = pytest.importorskip("boutiques", reason="boutiques (dev extra) is not installed")

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTOR = ROOT / "boutiques" / "descriptor.json"
INVOCATION = ROOT / "boutiques" / "invocation.json"


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_descriptor",
                                                  ROOT / "boutiques" / "make_descriptor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def _simulate(invocation: dict, tmp_path: Path) -> list[str]:
    """`bosh exec simulate DESCRIPTOR -i INVOCATION` -> the command line as argv (no program)."""
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    output = boutiques.bosh(["exec", "simulate", str(DESCRIPTOR), "-i", str(path)])
    argv = shlex.split(output.shell_command)
    assert argv[0] == "shiva-bids"
    return argv[1:]


def test_bosh_validate_accepts_descriptor_and_invocation():
    boutiques.bosh(["validate", str(DESCRIPTOR)])
    boutiques.bosh(["invocation", str(DESCRIPTOR), "-i", str(INVOCATION)])


def test_bosh_validate_rejects_a_broken_descriptor(tmp_path, descriptor):
    inputs = [dict(descriptor["inputs"][0], **{"value-key": "[NO_SUCH_KEY]"})]
    broken = dict(descriptor, inputs=inputs + descriptor["inputs"][1:])
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(boutiques.DescriptorValidationError, match="NO_SUCH_KEY"):
        boutiques.bosh(["validate", str(path)])


def test_committed_descriptor_is_generated_from_the_parser():
    generated = _load_generator().render()
    assert DESCRIPTOR.read_text() == generated, (
        "boutiques/descriptor.json is stale: run `PYTHONPATH=$PWD python "
        "boutiques/make_descriptor.py` after changing shiva_bids/cli.py")


def test_every_cli_option_has_an_input(descriptor):
    flags = {i.get("command-line-flag") for i in descriptor["inputs"]}
    ids = {i["id"] for i in descriptor["inputs"]}
    for action in build_parser()._actions:
        if action.dest == "verbose":
            assert "verbose" in ids
        elif action.option_strings:
            assert flags & set(action.option_strings), f"{action.option_strings} not described"
    positional = [i["id"] for i in descriptor["inputs"] if not i.get("optional")]
    assert positional == ["InputDataset", "OutputLocation", "AnalysisLevel"]
    assert descriptor["tool-version"] == __version__ == (ROOT / "version").read_text().strip()


def test_example_invocation_parses_with_the_real_parser(tmp_path):
    argv = _simulate(json.loads(INVOCATION.read_text()), tmp_path)
    config = parse_args(argv)
    assert config.bids_dir == Path("/data/ds")
    assert config.output_dir == Path("/data/out")
    assert config.analysis_level == "participant"
    assert config.participant_labels == ("01", "02")
    assert config.models_dir == Path("/models")


def test_every_input_round_trips_through_simulate_and_parse(tmp_path, descriptor):
    """Set every input to a non-default value; the parsed RunConfig must carry each one."""
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps({"t1w": {"acquisition": "mprage"}}))
    invocation = {
        "InputDataset": str(tmp_path / "ds"), "OutputLocation": str(tmp_path / "out"),
        "AnalysisLevel": "group", "SubjectLabel": ["sub-01", "02"], "SessionLabel": ["ses-1"],
        "bids_filter_file": str(filters), "bids_database_dir": str(tmp_path / "db"),
        "skip_bids_validation": True, "derivatives": ["masks=/deriv/masks"],
        "pipeline": "fetal-cgm", "markers": ["WMH", "PVS"], "models_dir": "/models",
        "model": ["PVS=/models/pvs/model_info.json"], "skip_model_checksum": True,
        "tta": "flip", "threshold": ["PVS=0.3", "WMH=0.25"], "min_cluster_size": ["LAC=4"],
        "brain_mask": "shiva", "premasked": True, "replace_t1": "t2", "inverse_t2": True,
        "regions": "atlas", "keep_model_space": True, "sloppy": True,
        "fetal_largest_component": True, "work_dir": str(tmp_path / "work"), "nprocs": 3,
        "omp_nthreads": 2, "mem": 12, "device": "cpu", "engine": "tensorflow",
        "precision": "bf16", "reports_only": True,
        "stop_on_first_crash": True, "force": True, "random_seed": 7, "verbose": "-vv",
        "notrack": True,
    }
    ids = {i["id"] for i in descriptor["inputs"]} - {"Help", "ToolVersion"}
    assert ids == set(invocation), "give the new input a value in this test"
    config = parse_args(_simulate(invocation, tmp_path))
    expected = {
        "bids_dir": tmp_path / "ds", "output_dir": tmp_path / "out", "analysis_level": "group",
        "participant_labels": ("01", "02"), "session_labels": ("1",),
        "bids_filters": {"t1w": {"acquisition": "mprage"}},
        "bids_database_dir": tmp_path / "db", "skip_bids_validation": True,
        "derivatives": {"masks": Path("/deriv/masks")}, "pipeline": "fetal-cgm",
        "markers": ("WMH", "PVS"), "models_dir": Path("/models"),
        "model_overrides": {"PVS": Path("/models/pvs/model_info.json")},
        "skip_model_checksum": True, "tta": "flip", "thresholds": {"PVS": 0.3, "WMH": 0.25},
        "min_cluster_sizes": {"LAC": 4}, "brain_mask": "shiva", "premasked": True,
        "regions": "atlas",
        "replace_t1": "t2", "inverse_t2": True, "keep_model_space": True, "sloppy": True,
        "fetal_largest_component": True, "work_dir": tmp_path / "work", "nprocs": 3,
        "omp_nthreads": 2, "mem_gb": 12.0,
        "device": "cpu", "engine": "tensorflow", "precision": "bf16", "reports_only": True,
        "stop_on_first_crash": True, "force": True, "random_seed": 7, "verbosity": 2,
    }
    for field, value in expected.items():
        got = getattr(config, field)
        assert (dict(got) if hasattr(got, "keys") else got) == value, field


@pytest.mark.parametrize(("input_id", "flag"), [("ToolVersion", "--version"), ("Help", "--help")])
def test_version_and_help_inputs_exit_cleanly(tmp_path, input_id, flag, capsys):
    argv = _simulate({"InputDataset": "/data/ds", "OutputLocation": "/data/out",
                      "AnalysisLevel": "participant", input_id: True}, tmp_path)
    assert flag in argv
    capsys.readouterr()  # drop bosh's own "Generated Command" print
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 0
    if flag == "--version":
        assert capsys.readouterr().out.strip() == f"shiva-bids {__version__}"


def test_bosh_exec_launch_runs_the_local_command(tmp_path, monkeypatch):
    """`bosh exec launch --no-container` runs the installed `shiva-bids` (this tree) from an
    invocation: the group level on a prepared participant output (cheap, no model)."""
    from summary_factory import write_unit

    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "shiva-bids").is_file():
        pytest.skip(f"no shiva-bids command next to {sys.executable} (pip install -e .)")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    out = tmp_path / "out"
    for subject, volumes in (("01", [12.0, 30.0]), ("02", [8.0])):
        write_unit(out, subject, None, volumes)
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "shiva-bids", "BIDSVersion": "1.10.0", "DatasetType": "derivative"}))
    invocation = tmp_path / "invocation.json"
    invocation.write_text(json.dumps({"InputDataset": str(tmp_path / "ds"),
                                      "OutputLocation": str(out), "AnalysisLevel": "group"}))
    result = boutiques.bosh(["exec", "launch", "--no-container", "--skip-data-collection",
                             str(DESCRIPTOR), str(invocation)])
    assert result.exit_code == 0, result.stderr
    assert not result.missing_files
    table = (out / "group" / "shiva_group.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in table[1:]] == ["sub-01", "sub-02"]
