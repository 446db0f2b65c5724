"""The participant level (filled in by the participant-level work)."""
from __future__ import annotations

from shiva_bids.config import RunConfig
from shiva_bids.errors import ExitCode


def run_participant_level(config: RunConfig) -> ExitCode:
    if config.pipeline == "fetal-cgm":
        from shiva_bids.fetal.pipeline import run_fetal_participant
        return run_fetal_participant(config)
    raise NotImplementedError
