"""The machinery behind the exit codes and the one-line messages, tested directly: the rule that
combines unit failures, failure classes across worker processes, a full disk under the unit's
outputs, its log file and atomic writes, header warnings logged once, and no TensorFlow or
ANTsPy import on the paths that fail early."""
from __future__ import annotations

import errno
import logging
import pickle
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from kit import REPO, anat_file, leftovers, make_dataset, small_disk, write_image
from shiva_bids.errors import (BadInputError, ExitCode, MissingInputError, OutputError,
                               ShivaError, TemporaryError, combined_exit_code, exit_class)

C = ExitCode


@pytest.mark.parametrize("codes, expected", [
    ([], C.OK), ([C.OK, C.OK], C.OK),
    ([C.BAD_INPUT], C.BAD_INPUT), ([C.BAD_INPUT, C.OK, C.BAD_INPUT], C.BAD_INPUT),
    ([C.NO_INPUT, C.NO_INPUT], C.NO_INPUT), ([C.CANNOT_CREATE_OUTPUT], C.CANNOT_CREATE_OUTPUT),
    ([C.BAD_INPUT, C.NO_INPUT], C.FAILURE), ([C.FAILURE], C.FAILURE),
    ([C.TEMPORARY, C.FAILURE], C.FAILURE),
])
def test_the_run_code_is_the_shared_class_else_1(codes, expected):
    assert combined_exit_code(codes) == expected


def test_exit_classes_of_errors():
    assert exit_class(BadInputError("x")) == C.BAD_INPUT
    assert exit_class(ShivaError("x", C.NO_INPUT)) == C.NO_INPUT
    assert exit_class(OSError(errno.ENOSPC, "No space left on device")) == \
        C.CANNOT_CREATE_OUTPUT
    assert exit_class(OSError(errno.EROFS, "Read-only file system")) == C.CANNOT_CREATE_OUTPUT
    assert exit_class(PermissionError(errno.EACCES, "denied")) == C.FAILURE
    assert exit_class(ValueError("a bug")) == C.FAILURE
    again = pickle.loads(pickle.dumps(ShivaError("x", C.NO_INPUT)))
    assert again.exit_code == C.NO_INPUT  # an explicit class survives pickling


def test_worker_failures_keep_their_class_and_a_killed_worker_fails_only_its_units():
    from shiva_bids.runner import parallel_map
    from workers import corrupt_input, killed
    results = parallel_map(corrupt_input, ["a.nii.gz", "b.nii.gz"], processes=2)
    assert [type(r) for r in results] == [BadInputError, BadInputError]
    assert [exit_class(r) for r in results] == [C.BAD_INPUT, C.BAD_INPUT]
    assert "image is constant" in results[0].traceback_text
    results = parallel_map(killed, ["a", "b"], processes=2)
    assert all(isinstance(r, TemporaryError) and "stopped abruptly" in str(r) for r in results)


Config = namedtuple("Config", "output_dir work_dir stop_on_first_crash")


def test_a_unit_failing_on_a_full_disk_loses_its_partial_outputs(tmp_path, monkeypatch,
                                                                  capsys):
    """ENOSPC from a write names no file: the line names the full folder; exit class 73;
    what the unit had written is removed; a crash file that cannot be written is not an
    error of its own."""
    from shiva_bids import runner
    from shiva_bids.bids.inputs import InputSet
    from shiva_bids.log import setup_logging
    setup_logging(0)  # the console writes to this test's capsys
    out, work = tmp_path / "out", tmp_path / "work"
    partial = out / "sub-01" / "anat" / "sub-01_space-T1w_label-PVS_probseg.nii.gz"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half")
    (out / "sub-01.html").write_text("<html>")
    full = {out}
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: namedtuple("U", "free")(
        0 if Path(path) in full else 1 << 30))

    def no_room(*args):
        raise OutputError(f"{out}/logs: cannot write crash-sub-01.txt (No space left on device)")
    monkeypatch.setattr(runner, "write_crash", no_room)
    outcome = runner.RunOutcome()
    runner.record_failure(Config(out, work, False), InputSet("01"), "post-processing", outcome,
                          OSError(errno.ENOSPC, "No space left on device"))
    assert outcome.failed[0].exit_code == C.CANNOT_CREATE_OUTPUT
    assert not partial.exists() and not (out / "sub-01.html").exists()
    err = capsys.readouterr().err
    line = next(line for line in err.splitlines() if "sub-01: failed" in line)
    assert f"{out}: cannot write (No space left on device)" in line
    assert "no crash file written" in line and "Traceback" not in err
    # a library that does not say ENOSPC (ITK, matplotlib) while the disk is full
    runner.record_failure(Config(out, work, False), InputSet("02"), "preprocessing", outcome,
                          RuntimeError("itk::ERROR: could not write"))
    assert outcome.failed[1].exit_code == C.CANNOT_CREATE_OUTPUT
    full.clear()  # with room on the disks the same error is internal
    runner.record_failure(Config(out, work, False), InputSet("03"), "preprocessing", outcome,
                          RuntimeError("itk::ERROR: could not write"))
    assert outcome.failed[2].exit_code == C.FAILURE


def test_a_log_file_on_a_full_disk_is_reported_once(capfd):
    from shiva_bids.log import add_file_log, remove_file_log
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    handler = add_file_log(Path("/dev/full"))
    logger = logging.getLogger("shiva_bids.test")
    for index in range(3):
        logger.error("line %d", index)
    remove_file_log(handler)
    err = capfd.readouterr().err
    assert err.count("cannot write the log file /dev/full (No space left on device)") == 1
    assert "Traceback" not in err and "Logging error" not in err


def test_an_atomic_write_onto_a_full_disk_is_73_and_leaves_no_file(tmp_path):
    from shiva_bids.io import atomic_save_nifti
    from shiva_bids.volume import Volume
    with small_disk(tmp_path / "disk", 64) as disk:
        image = Volume(np.random.default_rng(0).random((64, 64, 64), np.float32), np.eye(4))
        with pytest.raises(OutputError, match=f"{disk}: cannot write big.nii.gz \\(No space"):
            atomic_save_nifti(image.to_nifti(), disk / "big.nii.gz")
        assert list(disk.iterdir()) == [] and leftovers(disk) == []


def test_header_warnings_are_logged_once_per_load(tmp_path, caplog):
    """check_inputs reads every image up front without logging; the load that uses the image
    logs its header warnings (they were printed twice)."""
    from shiva_bids.bids.inputs import InputSet
    from shiva_bids.preprocessing.headers import load_image
    from shiva_bids.preprocessing.pipeline import check_inputs
    t1 = write_image(tmp_path / "sub-01_T1w.nii.gz", qoffset_x=40.0)  # sform/qform disagree
    with caplog.at_level(logging.WARNING):
        check_inputs(InputSet("01", t1w=t1), {"t1"}, "t1w")
        assert caplog.records == []
        load_image(t1)
    assert [r.getMessage() for r in caplog.records] == [
        "sub-01_T1w.nii.gz: sform and qform disagree; using the sform"]


def test_early_failures_import_neither_tensorflow_nor_antspy(tmp_path):
    """A participant job with a corrupt T1w fails before the heavy libraries load."""
    bids = make_dataset(tmp_path / "bids", {"01": ("T1w",)})
    anat_file(bids, "01", "T1w").write_bytes(b"")
    from kit import fake_models
    models = fake_models(tmp_path / "models")
    argv = [str(bids), str(tmp_path / "out"), "participant", "--models-dir", str(models),
            "-w", str(tmp_path / "w"), "--skip-bids-validation"]
    script = ("import sys; from shiva_bids.cli import main; "
              f"code = main({argv!r}); "
              "print(code, sorted(m for m in ('tensorflow', 'ants', 'matplotlib') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.stdout.split("\n")[-2] == "65 []", done.stderr[-2000:]


def test_errors_name_what_is_wrong_with_a_path(tmp_path):
    from shiva_bids.bids.access import check_readable, folder_problem
    link = tmp_path / "link.nii.gz"
    link.symlink_to(tmp_path / "gone.nii.gz")
    with pytest.raises(MissingInputError, match="broken symbolic link"):
        check_readable(link)
    with pytest.raises(MissingInputError, match="no such file"):
        check_readable(tmp_path / "absent.nii.gz")
    with pytest.raises(MissingInputError, match="a folder, where a file is expected"):
        check_readable(tmp_path)
    assert folder_problem(tmp_path) == "" and folder_problem(link) == ""
    assert folder_problem(tmp_path / "absent") == ""
    (tmp_path / "file").write_text("x")
    assert folder_problem(tmp_path / "file") == "not a folder"
