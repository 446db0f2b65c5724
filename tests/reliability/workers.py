"""Functions run in spawned worker processes by the reliability suite (kept free of heavy
imports, so that each worker starts quickly)."""
from __future__ import annotations

import os
import signal

from shiva_bids.errors import BadInputError


def corrupt_input(name: str) -> str:
    raise BadInputError(f"{name}: image is constant")


def killed(name: str) -> str:
    os.kill(os.getpid(), signal.SIGKILL)
    return name
