"""The group level (filled in by the participant/group-level work)."""
from __future__ import annotations

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode


def run_group_level(config: RunConfig) -> ExitCode:
    raise NotImplementedError
