"""Fixtures of the reliability suite (tools in kit.py)."""
from __future__ import annotations

from pathlib import Path

import logging

import pytest

from kit import fake_models
from shiva_bids.log import LOGGER_NAME, setup_logging


@pytest.fixture(autouse=True)
def console_of_this_test():
    """The console log handler writes to this test's captured stderr, and is gone after it
    (a handler left on a closed capture stream would print 'Logging error' later)."""
    setup_logging(0)
    yield
    logger = logging.getLogger(LOGGER_NAME)
    for handler in [h for h in logger.handlers if getattr(h, "_shiva_console", False)]:
        logger.removeHandler(handler)


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
