"""Group level: the table, its dictionary, the cluster table, QC flags and the report."""
from __future__ import annotations

import csv
import json

import pytest

from shiva_bids.cli import main
from shiva_bids.group import engine_label, qc_flags, slug
from shiva_bids.unit_status import collect_statuses
from shiva_bids.summary import read_summary, summary_path
from summary_factory import write_unit


def _table(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.fixture
def cohort(tmp_path):
    """12 complete units (sub-02 has a PVS load far above the others), one failed unit and
    one unit whose summary is not complete."""
    out = tmp_path / "out"
    write_unit(out, "01", "1", [10.0, 30.0])
    write_unit(out, "02", None, [5.0] * 60)
    for i in range(3, 13):
        write_unit(out, f"{i:02d}", None, [10.0, 12.0, 9.0 + i % 3])
    (out / "logs").mkdir()
    (out / "logs" / "crash-sub-13.txt").write_text("Traceback: boom\n")
    incomplete = write_unit(out, "14", None, [10.0])
    path = summary_path(out, incomplete.entities)
    payload = json.loads(path.read_text())
    payload["status"] = "running"
    path.write_text(json.dumps(payload))
    return tmp_path / "bids", out


def test_group_level_writes_table_dictionary_clusters_and_report(cohort, capsys):
    bids, out = cohort
    bids.mkdir()
    # sub-13 failed and sub-14 is incomplete: listed with their status, exit 66
    assert main([str(bids), str(out), "group"]) == 66
    rows = _table(out / "group" / "shiva_group.tsv")
    assert [r["participant_id"] for r in rows] == [f"sub-{i:02d}" for i in range(1, 15)]
    assert [r["status"] for r in rows] == ["complete"] * 12 + ["failed", "incomplete"]
    assert rows[12]["status_detail"] == "see logs/crash-sub-13.txt"
    assert rows[13]["PVS_n_clusters"] == "n/a" and rows[13]["qc_flags"] == "n/a"
    assert rows[0]["session_id"] == "ses-1" and rows[1]["session_id"] == "n/a"
    assert rows[1]["PVS_n_clusters"] == "60" and float(rows[1]["PVS_volume_mm3"]) == 300
    assert "outlier_PVS_volume_mm3" in rows[1]["qc_flags"]
    assert all("outlier" not in r["qc_flags"] for r in rows[2:12])
    err = capsys.readouterr().err
    assert "sub-13: failed: see logs/crash-sub-13.txt" in err and "sub-14: incomplete" in err
    assert "sub-14: incomplete" in (out / "logs" / "group.log").read_text()
    dictionary = json.loads((out / "group" / "shiva_group.json").read_text())
    assert set(dictionary) == set(rows[0])
    assert dictionary["PVS_volume_mm3"]["Units"] == "mm^3"
    # #23: outputs written before the engine was recorded say n/a
    assert rows[1]["PVS_engine"] == "n/a" and "precision" in dictionary["PVS_engine"]["Description"]
    # standard regional columns (issue #17), each with a data-dictionary entry
    assert rows[1]["PVS_centrum_semiovale_count"] == "60"
    assert float(rows[1]["PVS_centrum_semiovale_volume_mm3"]) == 300
    assert rows[1]["PVS_basal_ganglia_count"] == "0"
    assert rows[1]["PVS_region_source"] == "atlas:DesikanKilliany"
    assert "basal ganglia" in dictionary["PVS_basal_ganglia_count"]["Description"]
    assert not any("centrum" in r["qc_flags"] for r in rows)  # no double outlier flags
    clusters = _table(out / "group" / "shiva_clusters.tsv")
    assert len(clusters) == 2 + 60 + 10 * 3
    assert {"participant_id", "session_id", "marker", "index", "volume_mm3"} <= set(clusters[0])
    report = (out / "group_report.html").read_text()
    assert report.index("sub-02.html") < report.index("sub-03.html")  # flagged first
    assert "sub-13" in report and "crash-sub-13.txt" in report
    assert "<td>sub-14</td>" not in report and "says &#39;running&#39;" in report
    assert "2 of 14 units not complete" in report
    assert "DEMO MODELS" in report
    assert "centrum semiovale 60" in report and "approximate" in report


def test_collect_statuses_separates_failed_and_incomplete(cohort):
    bids, out = cohort
    found = collect_statuses(out, bids)  # bids_dir absent: units from the outputs only
    assert len(found.summaries) == 12
    assert [s.unit_id for s in found.with_status("failed")] == ["sub-13"]
    assert [s.unit_id for s in found.with_status("incomplete")] == ["sub-14"]


def test_iqr_rule_needs_ten_units_hard_checks_always():
    rows = [{"brain_volume_mm3": 1.2e6, "PVS_volume_mm3": 10.0 + i} for i in range(8)]
    rows.append({"brain_volume_mm3": 3.0e5, "PVS_volume_mm3": 900.0,
                 "qc_main_norm_peak": 1.4, "qc_rotation_flair_reg": 45.0})
    flags = qc_flags(rows)  # 9 units: hard checks only
    assert {"brain_volume_out_of_range", "qc_main_norm_peak_outside_0_1",
            "qc_rotation_flair_reg_large"} <= set(flags[-1])
    assert not any(f.startswith("outlier") for row in flags for f in row)
    rows.append({"brain_volume_mm3": 1.2e6, "PVS_volume_mm3": 11.0})
    flags = qc_flags(rows)  # 10 units: the IQR rule applies
    assert "outlier_PVS_volume_mm3" in flags[-2]
    assert not any(f.startswith("outlier") for f in flags[0])


def test_group_level_without_outputs_is_exit_66(tmp_path):
    (tmp_path / "out").mkdir()
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "group"]) == 66


def test_summary_round_trip(tmp_path):
    summary = write_unit(tmp_path, "07", "2", [4.0, 8.0])
    again = read_summary(summary_path(tmp_path, summary.entities))
    assert again == summary
    assert slug("Deep WM L") == "deep_wm_l"


def test_engine_column_names_engine_version_and_precision():
    model = {"engine": "openvino", "engine_version": "2026.4.1", "precision": "bf16",
             "precision_requested": "bf16"}
    assert engine_label(model) == "openvino 2026.4.1 bf16"
    assert engine_label({"engine": "tensorflow", "engine_version": "2.21.0",
                         "precision": "fp32"}) == "tensorflow 2.21.0 fp32"
    assert engine_label({"target": "PVS"}) == "n/a"
