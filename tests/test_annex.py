"""DataLad / git-annex datasets: un-fetched content stops the participant level with exit 66
before anything is written, naming the files and the `datalad get` command
(shiva_bids/bids/annex.py; reference/BIDS_APPS.md §5).

Layouts are made by hand (tests/annex_layout.py: locked links into `.git/annex/objects`,
unlocked pointer files), so these tests run everywhere; the same checks run on a real git-annex
repository when `git-annex` is installed (CI does not install it). A dataset whose annexed
content is present runs end to end in tests/test_end_to_end.py (its phantom is annexed).
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from annex_layout import annex_all, drop, unlock_unfetched
from bids_builder import BidsBuilder
from shiva_bids.bids.annex import SHOWN_FILES, is_unfetched, selected_files, tolerate_unfetched
from shiva_bids.bids.discovery import discover_inputs
from shiva_bids.bids.validation import ValidationIssue, ValidationReport
from shiva_bids.cli import main, parse_args
from shiva_bids.participant import units_to_read
from summary_factory import write_unit

GIT_ANNEX = shutil.which("git-annex")


def build(root: Path, subjects=("01", "02")) -> Path:
    """T1w (+ sidecar) and FLAIR per participant, every image with its own content."""
    ds = BidsBuilder(root)
    for index, sub in enumerate(subjects):
        ds.add(sub, "T1w", shape=(4, 4, 4 + index), sidecar={"RepetitionTime": 2.0 + index})
        ds.add(sub, "FLAIR", shape=(5, 4, 4 + index))
    return root


def run(bids: Path, tmp_path: Path, *extra: str) -> int:
    """The participant level (no model is needed: the check comes before any work)."""
    return main([str(bids), str(tmp_path / "out"), "participant", "--models-dir",
                 str(tmp_path / "models"), "-w", str(tmp_path / "work"), *extra])


def error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.rglob("*"))


# --------------------------------------------------------------------------- detection

def test_locked_unlocked_present_and_other_files(tmp_path):
    bids = build(tmp_path / "ds")
    objects = annex_all(bids)
    t1, flair = (bids / "sub-01" / "anat" / f"sub-01_{s}.nii.gz" for s in ("T1w", "FLAIR"))
    assert t1.is_symlink() and ".git/annex/objects/" in str(t1.readlink())
    assert not is_unfetched(t1) and t1.read_bytes() == objects[1].read_bytes()  # present
    drop(t1)
    assert is_unfetched(t1)  # locked, dangling
    chained = tmp_path / "link-to-link.nii.gz"
    chained.symlink_to(t1)
    assert is_unfetched(chained)  # e.g. a tree of links made over a DataLad clone
    unlock_unfetched(flair)
    assert not flair.is_symlink() and is_unfetched(flair)  # unlocked pointer file
    plain = bids / "sub-02" / "anat" / "sub-02_T1w.json"
    assert not is_unfetched(plain)
    elsewhere = bids / "sub-02" / "anat" / "broken.nii.gz"
    elsewhere.symlink_to("/nonexistent/file.nii.gz")
    assert not is_unfetched(elsewhere)  # a broken link, not annexed: the header checks say so


def test_selected_files_are_images_sidecars_and_derivatives(tmp_path):
    bids = build(tmp_path / "ds")
    masks = BidsBuilder(tmp_path / "masks", derivative=True)
    masks.add("01", "mask", desc="brain")
    config = parse_args([str(bids), str(tmp_path / "out"), "participant",
                         "--participant-label", "01", "--derivatives",
                         f"m={tmp_path / 'masks'}"])
    files = {p.relative_to(tmp_path).as_posix() for p in selected_files(discover_inputs(config))}
    assert files == {"ds/sub-01/anat/sub-01_T1w.nii.gz", "ds/sub-01/anat/sub-01_T1w.json",
                     "ds/sub-01/anat/sub-01_FLAIR.nii.gz",
                     "masks/sub-01/anat/sub-01_desc-brain_mask.nii.gz"}


# --------------------------------------------------------------------------- the CLI

def test_unfetched_selected_files_exit_66_with_the_get_command(tmp_path, capsys):
    bids = build(tmp_path / "ds")
    annex_all(bids, "*.*")
    drop(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    drop(bids / "sub-01" / "anat" / "sub-01_T1w.json")
    code = run(bids, tmp_path, "--participant_label", "01", "--skip-bids-validation")  # 1.0 form
    assert code == 66
    line = error_line(capsys)
    assert "2 selected input file(s) are annexed but not fetched" in line
    command = line.split("fetch them with: ")[1]
    assert shlex.split(command) == ["datalad", "-C", str(bids), "get", "--",
                                    "sub-01/anat/sub-01_T1w.nii.gz",
                                    "sub-01/anat/sub-01_T1w.json"]
    assert nothing_written(tmp_path / "out")
    listed = (tmp_path / "work" / "unfetched-annexed-files.txt").read_text().split()
    assert listed == ["sub-01/anat/sub-01_T1w.nii.gz", "sub-01/anat/sub-01_T1w.json"]


def test_many_unfetched_files_are_listed_in_the_work_folder(tmp_path, capsys):
    subjects = [f"{i:02d}" for i in range(1, 5)]
    bids = build(tmp_path / "ds", subjects)
    annex_all(bids)
    for path in sorted(bids.glob("sub-*/anat/*.nii.gz")):
        drop(path)
    code = run(bids, tmp_path, "--skip-bids-validation")
    assert code == 66
    line = error_line(capsys)
    listed = tmp_path / "work" / "unfetched-annexed-files.txt"
    assert "8 selected input file(s)" in line and f"and {8 - SHOWN_FILES} more" in line
    assert f"(all 8 listed in {listed})" in line
    assert line.count(".nii.gz") == SHOWN_FILES  # the terminal names the first few only
    assert len(listed.read_text().splitlines()) == 8
    assert line.endswith(f"xargs -d '\\n' -a {listed} datalad -C {bids} get --")
    assert nothing_written(tmp_path / "out")


def test_validator_errors_about_unfetched_files_are_set_aside(tmp_path):
    """The validator cannot read un-fetched headers (NIFTI_HEADER_UNREADABLE, seen on a real
    clone below); those errors are dropped, so participants whose content is present can run
    while others are not fetched. Errors about other files stay."""
    bids = build(tmp_path / "ds")
    annex_all(bids)
    for path in (bids / "sub-02" / "anat").glob("*.nii.gz"):
        drop(path)
    unreadable = [ValidationIssue("NIFTI_HEADER_UNREADABLE", "error", (f"/{p}",))
                  for p in ("sub-02/anat/sub-02_T1w.nii.gz", "sub-02/anat/sub-02_FLAIR.nii.gz")]
    other = ValidationIssue("NIFTI_HEADER_UNREADABLE", "error", ("/sub-01/anat/sub-01_T1w.nii.gz",))
    report = ValidationReport(bids, errors=(*unreadable, other), warnings=())
    assert tolerate_unfetched(report, bids).errors == (other,)


def test_a_rerun_does_not_read_complete_units(tmp_path):
    """A complete unit's content may be dropped after processing; a rerun skips it, so only
    the others are checked (with --force every unit, with --reports-only the complete ones)."""
    bids = build(tmp_path / "ds")
    out = tmp_path / "out"
    write_unit(out, "01", None, [10.0])
    args = [str(bids), str(out), "participant"]
    units = discover_inputs(parse_args(args))
    ids = lambda extra: [u.unit_id for u in units_to_read(units, parse_args(args + extra))]
    assert ids([]) == ["sub-02"]
    assert ids(["--force"]) == ["sub-01", "sub-02"]
    assert ids(["--reports-only"]) == ["sub-01"]


def test_discovery_never_looks_in_git_sourcedata_or_derivatives(tmp_path):
    bids = build(tmp_path / "ds", ["01"])
    t1 = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    for folder in (".git/annex/objects/xx/yy/sub-01", "sourcedata/sub-01/anat",
                   "derivatives/prep/sub-01/anat", "sub-01/.git"):
        (bids / folder).mkdir(parents=True)
        shutil.copy(t1, bids / folder / t1.name)
    config = parse_args([str(bids), str(tmp_path / "out"), "participant"])
    (inputs,) = discover_inputs(config)
    assert inputs.t1w == t1 and "t1w" not in inputs.choices  # the only match


# --------------------------------------------------------------------------- real git-annex

def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
                        "HOME": str(repo.parent), "PATH": "/usr/bin:/bin"})


@pytest.mark.skipif(GIT_ANNEX is None, reason="git-annex is not installed "
                                              "(Debian: apt-get install git-annex)")
def test_real_git_annex_clone_before_and_after_get(tmp_path, capsys):
    """A clone of an annexed dataset, as `datalad clone` makes it: locked files are dangling
    links, an unlocked file is a pointer file; after `git annex get` the check passes."""
    origin = build(tmp_path / "origin")
    git(origin, "init", "-q")
    git(origin, "annex", "init", "-q", "origin")
    git(origin, "-c", "annex.largefiles=include=*.nii.gz", "annex", "add", "-q", ".")
    git(origin, "annex", "unlock", "sub-01/anat/sub-01_FLAIR.nii.gz")
    git(origin, "commit", "-q", "-m", "dataset")
    bids = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(bids))
    git(bids, "annex", "init", "-q", "clone")
    t1, flair = (bids / "sub-01" / "anat" / f"sub-01_{s}.nii.gz" for s in ("T1w", "FLAIR"))
    assert t1.is_symlink() and not t1.exists() and is_unfetched(t1)
    assert not flair.is_symlink() and is_unfetched(flair)  # git-annex's pointer file
    code = run(bids, tmp_path, "--participant-label", "01")  # validator on: sub-02 unfetched
    assert code == 66
    command = error_line(capsys).split("fetch them with: ")[1]
    assert shlex.split(command)[-2:] == ["sub-01/anat/sub-01_T1w.nii.gz",
                                         "sub-01/anat/sub-01_FLAIR.nii.gz"]
    assert nothing_written(tmp_path / "out")
    git(bids, "annex", "get", "-q", "sub-01")  # what the printed command does (from origin)
    assert not is_unfetched(t1) and not is_unfetched(flair)
    assert t1.read_bytes() == (origin / "sub-01" / "anat" / t1.name).read_bytes()
