"""Faults around real runs, sharing ONE participant run of a one-unit dataset with a tiny model:

a job killed with SIGKILL mid-unit (the group level run meanwhile says the unit is still
running or stopped, not "run the participant level first"), the rerun that finishes it, a rerun
that skips it, the group level on the result, a report rebuilt onto a full disk, and two
participant jobs writing into one output folder at once.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kit import (REPO, TF_NOISE, anat_file, fill, freeze, image_data, leftovers,
                 looks_complete, make_dataset, run_inprocess, small_disk, tree_state,
                 write_image)
from shiva_bids.cli import main
from shiva_bids.errors import ExitCode

UNIT = "sub-01"
ROOM_LEFT = 96 * 1024  # more than the output folder checks write (64 KiB), less than a report


def participant_args(root: Path, models: Path, *extra: object) -> list[str]:
    return [str(a) for a in (root / "bids", root / "out", "participant", "--models-dir",
                             models, "--premasked", "-w", root / "work",
                             "--skip-bids-validation", "--nprocs", "1", *extra)]


def wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if path.is_file() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path} (exit {process.poll()})")


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models_dir):
    """Start the participant level, run the group level while the unit is preprocessing, kill
    the job (SIGKILL), then rerun it to the end in this process."""
    root = tmp_path_factory.mktemp("runs")
    bids = make_dataset(root / "bids", {"01": ()})
    write_image(anat_file(bids, "01", "T1w"), image_data((40, 48, 40)), zooms=(4.0,) * 3)
    freeze(bids)
    before = tree_state(bids)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the app's own default verbosity is under test
    job = subprocess.Popen([sys.executable, "-m", "shiva_bids",
                            *participant_args(root, tiny_models_dir)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(root / "out" / "logs" / f"{UNIT}.log", "preprocessing for", job)
    with contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()) as group_err:
        group_code = main([str(bids), str(root / "out"), "group"])
    job.send_signal(signal.SIGKILL)
    _, killed_err = job.communicate(timeout=60)
    after_kill = looks_complete(root / "out", group=False)  # the group level listed it
    code = main(participant_args(root, tiny_models_dir))
    return {"root": root, "bids": bids, "before": before, "killed_err": killed_err,
            "killed_code": job.returncode, "group_while_running": (group_code,
                                                                  group_err.getvalue()),
            "after_kill": after_kill, "code": code, "models": tiny_models_dir}


def test_a_killed_job_leaves_nothing_that_looks_complete(run):
    assert run["killed_code"] == -signal.SIGKILL
    assert run["after_kill"] == []


def test_tensorflow_prints_no_start_up_lines_at_default_verbosity(run):
    """The killed job had loaded TensorFlow (it was preprocessing): no cuInit error line and
    no oneDNN notes on a machine without a GPU."""
    noise = [line for line in run["killed_err"].splitlines()
             if any(word in line for word in TF_NOISE)]
    assert noise == []


def test_the_group_level_while_a_unit_runs_says_it_is_not_finished(run):
    code, err = run["group_while_running"]
    assert code == ExitCode.NO_INPUT and "Traceback" not in err
    assert "run the participant level first" not in err
    assert f"{UNIT}: incomplete: started (logs/{UNIT}.log)" in err


def test_the_rerun_completes_the_unit_and_leaves_the_input_untouched(run):
    root = run["root"]
    assert run["code"] == 0
    assert (root / "out" / UNIT / f"{UNIT}_summary.json").is_file()
    assert leftovers(root / "out") == []
    assert tree_state(run["bids"]) == run["before"]


def test_a_rerun_skips_the_complete_unit_and_the_group_level_exits_0(run, capfd):
    root = run["root"]
    rerun = run_inprocess(capfd, *participant_args(root, run["models"]))
    assert rerun.code == 0 and "already complete" in rerun.err
    group = run_inprocess(capfd, run["bids"], root / "out", "group")
    assert group.code == 0 and "1 of 1 unit(s) complete" in group.out


def test_a_report_rebuilt_onto_a_full_disk_is_73_and_keeps_the_old_report(run, tmp_path,
                                                                           capfd):
    root = run["root"]
    report = root / "out" / f"{UNIT}.html"
    size_kib = sum(p.stat().st_size for p in (root / "out").rglob("*") if p.is_file()) // 1024
    with small_disk(tmp_path / "disk", size_kib + 2048) as disk:
        out = disk / "out"
        shutil.copytree(root / "out", out)
        old = (out / report.name).read_bytes()
        (out / report.name).unlink()  # the report to rebuild is missing...
        fill(disk)
        with open(disk / "filler", "r+b") as filler:  # ...and only room for the checks left
            filler.truncate(max(0, filler.seek(0, 2) - ROOM_LEFT))
        assert len(old) > ROOM_LEFT + 16 * 1024  # so the report cannot fit
        args = participant_args(root, run["models"], "--reports-only")
        args[1] = str(out)
        result = run_inprocess(capfd, *args)  # a full disk refuses root too
        assert result.code == ExitCode.CANNOT_CREATE_OUTPUT and "Traceback" not in result.err
        lines = [line for line in result.err.splitlines() if report.name in line]
        assert len(lines) == 1 and "No space left on device" in lines[0]
        assert str(out) in lines[0]
        assert not (out / report.name).exists() and leftovers(out) == []


def test_two_participant_jobs_write_into_one_output_folder_at_once(tmp_path, fake_models_dir):
    """One job per participant, as on a cluster: both finish with their own code, crash file
    and log; the shared dataset files are whole."""
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",), "02": ("T1w",)})
    for subject in ("01", "02"):
        anat_file(bids, subject, "T1w").write_bytes(b"")
    freeze(bids)
    args = [bids, tmp_path / "out", "participant", "--models-dir", fake_models_dir,
            "--skip-bids-validation", "--nprocs", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [subprocess.Popen([sys.executable, "-m", "shiva_bids", *map(str, args),
                              "--participant-label", subject, "-w", str(tmp_path / subject)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for subject in ("01", "02")]
    results = [(job.wait(timeout=300), job.stderr.read()) for job in jobs]
    out = tmp_path / "out"
    for subject, (code, err) in zip(("01", "02"), results):
        assert code == ExitCode.BAD_INPUT and "Traceback" not in err
        assert (out / "logs" / f"crash-sub-{subject}.txt").is_file()
    assert json.loads((out / "dataset_description.json").read_text())["DatasetType"] \
        == "derivative"
    assert "logs" in (out / ".bidsignore").read_text().split()
    assert leftovers(out) == []
