"""Shared test fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` (reference facts and published fixtures); skip when absent."""
    if not (SHARED / "fixtures").is_dir():
        pytest.skip("../shared/fixtures is absent (published fixtures are not in the repo)")
    return SHARED
