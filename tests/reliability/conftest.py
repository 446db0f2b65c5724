"""Fixtures of the reliability suite (tools in kit.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from kit import fake_models


@pytest.fixture(scope="session")
def fake_models_dir(tmp_path_factory) -> Path:
    """Model descriptors that are never loaded (cases that stop before inference)."""
    return fake_models(tmp_path_factory.mktemp("fake-models"))


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A real tiny PVS model (one fold, 32^3 grid) for cases that reach preprocessing."""
    from shiva_bids.models.testing import write_tiny_model_folder

    root = tmp_path_factory.mktemp("tiny-models")
    write_tiny_model_folder(root, "PVS", ("t1",), n_folds=1, shape=(32, 32, 32), demo=True)
    return root
