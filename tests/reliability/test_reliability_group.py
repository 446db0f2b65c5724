"""The group level on damaged, partial and still-running participant outputs: every expected
unit is listed with its status, each problem gets one line naming the unit and the file, and
the run exits 66 unless every selected unit is complete (docs/usage.md)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from kit import freeze, make_dataset, run_inprocess, run_isolated, tree_state
from shiva_bids.errors import ExitCode
from shiva_bids.summary import summary_path
from summary_factory import write_unit

NOT_COMPLETE = ExitCode.NO_INPUT


def table(out: Path) -> dict[str, dict]:
    with open(out / "group" / "shiva_group.tsv", newline="") as handle:
        return {row["participant_id"]: row for row in csv.DictReader(handle, delimiter="\t")}


def summary_file(out: Path, subject: str) -> Path:
    return summary_path(out, {"sub": subject})


def _rewrite(out: Path, subject: str, change) -> Path:
    """A complete unit whose summary is then replaced by `change(payload)` (text or JSON)."""
    write_unit(out, subject, None, [10.0, 20.0])
    path = summary_file(out, subject)
    changed = change(json.loads(path.read_text()))
    path.write_text(changed if isinstance(changed, str) else json.dumps(changed))
    return path


def _with(key, value):
    return lambda payload: {**payload, key: value}


# subject -> (how its outputs are damaged, expected status, words of its one line)
DAMAGE = {
    "02": ("killed: a log, no summary", "incomplete", "still running, or stopped"),
    "03": ("crash file", "failed", "logs/crash-sub-03.txt"),
    "04": ("skipped: no T1w", "not run", "skipped: no t1w image found"),
    "05": ("summary not JSON", "incomplete", "sub-05_summary.json: not a shiva-bids summary"),
    "06": ("summary is a list", "incomplete", "sub-06_summary.json: not a shiva-bids summary"),
    "07": ("markers is a list", "incomplete", "markers is not a JSON object"),
    "08": ("regions hold numbers", "incomplete", "regions holds a value"),
    "09": ("summary says running", "incomplete", "says 'running'"),
    "10": ("in the dataset, never run", "not run", "has not run it"),
    "11": ("qc is a list", "incomplete", "qc is not a JSON object"),
    "12": ("summary is empty", "incomplete", "sub-12_summary.json: not a shiva-bids summary"),
}


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[Path, Path]:
    bids = make_dataset(tmp_path / "bids", {f"{i:02d}": () for i in range(1, 13)})
    out = tmp_path / "out"
    write_unit(out, "01", None, [10.0, 30.0])
    logs = out / "logs"
    logs.mkdir()
    (logs / "sub-02.log").write_text("preprocessing for PVS\n")
    (logs / "crash-sub-03.txt").write_text("Traceback: boom\n")
    (logs / "skipped-sub-04.txt").write_text("no t1w image found\n")
    _rewrite(out, "05", lambda payload: '{"subject": "05", ')
    _rewrite(out, "06", lambda payload: [payload])
    _rewrite(out, "07", _with("markers", ["PVS"]))
    _rewrite(out, "08", lambda payload: {**payload, "markers": {"PVS": {
        **payload["markers"]["PVS"], "regions": {"Deep WM L": 3}}}})
    _rewrite(out, "09", _with("status", "running"))
    _rewrite(out, "11", _with("qc", [1, 2]))
    _rewrite(out, "12", lambda payload: "")
    freeze(bids)
    return bids, out


def test_every_expected_unit_is_listed_with_its_status(damaged, capfd):
    bids, out = damaged
    before = tree_state(bids)
    result = run_inprocess(capfd, bids, out, "group")
    assert result.code == NOT_COMPLETE and "Traceback" not in result.err
    rows = table(out)
    assert rows["sub-01"]["status"] == "complete" and rows["sub-01"]["PVS_n_clusters"] == "2"
    for subject, (what, status, words) in DAMAGE.items():
        assert rows[f"sub-{subject}"]["status"] == status, what
        assert rows[f"sub-{subject}"]["PVS_n_clusters"] == "n/a", what
        lines = [line for line in result.err.splitlines() if f"sub-{subject}:" in line]
        assert len(lines) == 1 and words in lines[0] and status in lines[0], (what, lines)
    report = (out / "group_report.html").read_text()
    assert "11 of 12 units not complete" in report
    assert all(f"sub-{s}" in report for s in DAMAGE)
    log = (out / "logs" / "group.log").read_text()
    assert "sub-05: incomplete" in log and "1 of 12 unit(s) complete" in log
    assert "1 of 12 unit(s) complete (1 failed, 8 incomplete, 2 not run)" in result.out
    assert tree_state(bids) == before


def test_labels_select_the_units_whose_status_counts(damaged, capfd):
    bids, out = damaged
    assert run_inprocess(capfd, bids, out, "group", "--participant-label", "01").code == 0
    assert list(table(out)) == ["sub-01"]
    assert run_inprocess(capfd, bids, out, "group", "--participant-label", "01", "03").code \
        == NOT_COMPLETE


def test_units_still_running_are_not_reported_as_never_run(tmp_path, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": (), "02": ()})
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "sub-01.log").write_text("preprocessing for PVS\n")
    result = run_inprocess(capfd, bids, out, "group")
    assert result.code == NOT_COMPLETE
    assert "run the participant level first" not in result.err
    assert "sub-01: incomplete: started (logs/sub-01.log)" in result.err
    assert "0 of 2 unit(s) complete (1 incomplete, 1 not run)" in result.out


def test_nothing_run_yet_or_no_output_folder(tmp_path, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": ()})
    result = run_inprocess(capfd, bids, tmp_path / "missing", "group")
    assert result.code == ExitCode.NO_INPUT and "no such folder" in result.err
    (tmp_path / "out").mkdir()
    result = run_inprocess(capfd, bids, tmp_path / "out", "group")
    assert result.code == ExitCode.NO_INPUT
    assert result.err.strip().endswith("no participant outputs found; run the participant "
                                       "level first")
    assert not (tmp_path / "out" / "group").exists()


def test_an_unreadable_summary_is_named(tmp_path):
    bids = make_dataset(tmp_path / "bids", {"01": (), "02": ()})
    out = tmp_path / "out"
    for subject in ("01", "02"):
        write_unit(out, subject, None, [5.0])
    summary_file(out, "02").chmod(0)
    result = run_isolated(bids, out, "group")
    assert result.code == NOT_COMPLETE and "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if "sub-02_summary.json" in line]
    assert len(lines) == 1 and "cannot be read (Permission denied)" in lines[0]


def test_the_participant_level_reads_a_damaged_summary_as_not_complete(tmp_path, capfd,
                                                                       fake_models_dir):
    """--reports-only finds no complete outputs for a unit whose summary has the wrong shape
    (it used to stop with an AttributeError): skipped, 66."""
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    out = tmp_path / "out"
    _rewrite(out, "01", _with("markers", ["PVS"]))
    result = run_inprocess(capfd, bids, out, "participant", "--models-dir", fake_models_dir,
                           "--skip-bids-validation", "--reports-only", "-w", tmp_path / "w")
    assert result.code == ExitCode.NO_INPUT and "Traceback" not in result.err
    assert "sub-01: no complete outputs, no report to rebuild" in result.err
