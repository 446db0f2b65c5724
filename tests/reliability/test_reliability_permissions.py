"""Files and folders the user cannot read or write, broken links, read-only and full disks.

These cases need the operating system to refuse: they run the CLI in a subprocess without the
capabilities that let root ignore permissions (kit.run_isolated), and skip with a reason where
that is impossible. Disks are small tmpfs mounts, made only where this process may mount.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from kit import (anat_file, assert_clean_failure, fill, freeze, leftovers, looks_complete,
                 make_dataset, run_inprocess, run_isolated, small_disk, tree_state)
from shiva_bids.errors import ExitCode
from shiva_bids.summary import summary_path
from summary_factory import write_unit

MISSING, CANNOT_WRITE = ExitCode.NO_INPUT, ExitCode.CANNOT_CREATE_OUTPUT


def participant(bids: Path, tmp_path: Path, models: Path, *extra: object) -> list:
    return [bids, tmp_path / "out", "participant", "--models-dir", models,
            "-w", tmp_path / "work", "--skip-bids-validation", "--nprocs", "1", *extra]


# --------------------------------------------------------------------------- unit level

def test_unreadable_files_folders_and_broken_links_fail_their_unit_with_66(tmp_path,
                                                                          fake_models_dir):
    """Nine participants, each with one problem, in one run: every unit fails with one line
    naming its file or folder and saying what is wrong; the run exits 66 (one class). A tenth,
    complete before its folder became unreadable, keeps its results."""
    bids = make_dataset(tmp_path / "bids", {
        "01": ("T1w",), "02": ("T1w", "FLAIR"), "03": ("T1w",), "04": ("T1w",),
        "05": ("T1w",), "06/1": ("T1w",), "07": (), "08": ("T1w",), "09": (), "10": ("T1w",)})
    complete = write_unit(tmp_path / "out", "10", None, [5.0])
    hidden = tmp_path / "private" / "t1.nii.gz"
    hidden.parent.mkdir()
    shutil.copy(anat_file(bids, "01", "T1w"), hidden)
    hidden.chmod(0)
    anat_file(bids, "01", "T1w").chmod(0)
    anat_file(bids, "02", "FLAIR").chmod(0)
    # (a dangling link into .git/annex/objects is un-fetched content: tests/test_annex.py)
    anat_file(bids, "07", "T1w").symlink_to("../../sourcedata/sub-07_T1w.nii.gz")
    anat_file(bids, "08", "swi").symlink_to(tmp_path / "moved" / "swi.nii.gz")
    anat_file(bids, "09", "T1w").symlink_to(hidden)
    freeze(bids)
    (bids / "sub-03" / "anat").chmod(0)
    (bids / "sub-04" / "anat").chmod(0o444)  # listable but not enterable
    (bids / "sub-05").chmod(0)
    (bids / "sub-06" / "ses-1").chmod(0)
    (bids / "sub-10" / "anat").chmod(0)
    before = tree_state(bids)
    result = run_isolated(*participant(bids, tmp_path, fake_models_dir))
    expected = {
        "sub-01_T1w.nii.gz": "permission denied (the file cannot be read",
        "sub-02_FLAIR.nii.gz": "permission denied (the file cannot be read",
        f"{bids}/sub-03/anat:": "permission denied",
        f"{bids}/sub-04/anat:": "permission denied",
        f"{bids}/sub-05:": "permission denied",
        f"{bids}/sub-06/ses-1:": "permission denied",
        "sub-07_T1w.nii.gz": "broken symbolic link",
        "sub-08_swi.nii.gz": "broken symbolic link",
        "sub-09_T1w.nii.gz": "permission denied",
    }
    for name, phrase in expected.items():
        assert_clean_failure(result, MISSING, name, phrase)
    out = tmp_path / "out"
    kept = looks_complete(out)  # only the complete unit's results
    assert summary_path(out, complete.entities) in kept
    assert all(path.is_relative_to(out / "sub-10") for path in kept)
    assert "sub-10: already complete" in result.err and leftovers(out) == []
    assert len(list((out / "logs").glob("crash-*.txt"))) == len(expected)
    assert tree_state(bids) == before


# --------------------------------------------------------------------------- run level

def _unreadable_bids(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    bids.chmod(0)
    return [], f"bids_dir {bids}:", "cannot be read"


def _unreadable_description(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (bids / "dataset_description.json").chmod(0)
    return [], "dataset_description.json", "permission denied"


def _unwritable_output(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (tmp_path / "out").mkdir(mode=0o555)
    return [], f"output_dir {tmp_path / 'out'}:", "permission denied"


def _unwritable_output_parent(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (tmp_path / "locked").mkdir(mode=0o555)
    return (["--participant-label", "01"], f"output_dir {tmp_path / 'locked' / 'out'}:",
            "permission denied")


def _unwritable_work(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (tmp_path / "work").mkdir(mode=0o555)
    return [], f"--work-dir {tmp_path / 'work'}:", "permission denied"


def _unwritable_logs(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (tmp_path / "out" / "logs").mkdir(parents=True)
    (tmp_path / "out" / "logs").chmod(0o555)
    return [], f"the logs folder {tmp_path / 'out' / 'logs'}:", "permission denied"


def _unwritable_database(bids: Path, tmp_path: Path) -> tuple[list, str, str]:
    (tmp_path / "db").mkdir(mode=0o555)
    return ["--bids-database-dir", tmp_path / "db"], "--bids-database-dir", "permission denied"


RUN_CASES = {
    "unreadable-bids-dir": (_unreadable_bids, MISSING),
    "unreadable-dataset-description": (_unreadable_description, MISSING),
    "unwritable-output-dir": (_unwritable_output, CANNOT_WRITE),
    "unwritable-output-parent": (_unwritable_output_parent, CANNOT_WRITE),
    "unwritable-work-dir": (_unwritable_work, CANNOT_WRITE),
    "unwritable-logs-folder": (_unwritable_logs, CANNOT_WRITE),
    "unwritable-database-dir": (_unwritable_database, CANNOT_WRITE),
}


@pytest.mark.parametrize("case", sorted(RUN_CASES))
def test_run_level_permission_problems_stop_with_one_line(case, tmp_path, fake_models_dir):
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    freeze(bids)
    setup, code = RUN_CASES[case]
    extra, name, phrase = setup(bids, tmp_path)
    before = tree_state(bids) if os.access(bids, os.R_OK) else None
    args = participant(bids, tmp_path, fake_models_dir, *extra)
    if case == "unwritable-output-parent":
        args[1] = tmp_path / "locked" / "out"
    result = run_isolated(*args)
    assert_clean_failure(result, code, name, phrase)
    assert looks_complete(tmp_path / "out") == []
    bids.chmod(0o555)
    if before is not None:
        assert tree_state(bids) == before


# --------------------------------------------------------------------------- small disks

def test_a_read_only_output_disk_is_73(tmp_path, fake_models_dir, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    with small_disk(tmp_path / "out", 256, read_only=True):  # refuses root too: in-process
        result = run_inprocess(capfd, *participant(bids, tmp_path, fake_models_dir))
    assert_clean_failure(result, CANNOT_WRITE, f"output_dir {tmp_path / 'out'}:",
                         "read-only file system")


@pytest.mark.parametrize("level", ["participant", "group"])
def test_a_full_output_disk_is_73_naming_the_folder(level, tmp_path, fake_models_dir, capfd):
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    with small_disk(tmp_path / "out", 256) as disk:
        if level == "group":  # a participant level that left a trace, then the disk filled
            (disk / "logs").mkdir()
            (disk / "logs" / "sub-01.log").write_text("started\n")
        fill(disk)
        args = participant(bids, tmp_path, fake_models_dir) if level == "participant" \
            else [bids, disk, "group"]
        result = run_inprocess(capfd, *args)  # a full disk refuses root too
        folder = f"output_dir {disk}:" if level == "participant" else f"{disk}/group:"
        assert_clean_failure(result, CANNOT_WRITE, folder, "no space left on device")
        assert looks_complete(disk) == [] and leftovers(disk) == []
