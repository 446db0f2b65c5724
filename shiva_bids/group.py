"""The group level (filled in by the participant/group-level work)."""
from __future__ import annotations

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode


def run_group_level(config: RunConfig) -> ExitCode:
    if config.pipeline == "fetal-cgm":
        from shiva_bids.fetal.pipeline import run_fetal_group
        return run_fetal_group(config)
    raise NotImplementedError
