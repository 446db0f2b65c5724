"""Shared test fixtures."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")
# The user cache (shiva_bids/cache.py) of a test session is its own, removed at exit: tests
# neither read what an earlier session left in ~/.cache nor leave anything there.
_USER_CACHE = tempfile.mkdtemp(prefix="shiva-bids-test-cache-")
atexit.register(shutil.rmtree, _USER_CACHE, True)
os.environ["SHIVA_BIDS_CACHE_DIR"] = _USER_CACHE

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` (reference facts and published fixtures); skip when absent."""
    if not (SHARED / "fixtures").is_dir():
        pytest.skip("../shared/fixtures is absent (published fixtures are not in the repo)")
    return SHARED
