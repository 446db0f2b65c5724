"""Pre-flight: the input files of every unit are checked before any model is loaded.

A participant job whose T1w is unreadable, a broken link, not NIfTI, 4D or without a usable
affine fails in about a second with one line naming the file, instead of after TensorFlow and
the models were loaded (or after the other units' preprocessing). Only headers are read
(shiva_bids.preprocessing.headers.open_image); problems that need the voxels (truncated data,
constant images) are found when preprocessing loads the image. A unit that fails here is
recorded like any failed unit (crash file, exit class; shiva_bids.runner.record_failure) and
the others go on.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from shiva_bids.bids.inputs import input_roles
from shiva_bids.config import RunConfig
from shiva_bids.errors import ShivaError
from shiva_bids.log import unit_log
from shiva_bids.checks import required_roles
from shiva_bids.preprocessing.headers import open_image
from shiva_bids.runner import RunOutcome, record_failure

log = logging.getLogger(__name__)


def unit_files(plan, config: RunConfig) -> list[Path]:
    """Every file the unit will read: the images of its model channels, the brain mask from
    `--derivatives` when it will be used, and the segmentation."""
    inputs = plan.inputs
    main_role = required_roles(config)[0]
    files = [inputs.image(role) for role in sorted(input_roles(plan.channels, main_role))
             if inputs.has(role)]
    if inputs.brain_mask is not None and config.brain_mask == "auto" and not config.premasked:
        files.append(inputs.brain_mask)
    if inputs.dseg is not None:
        files.append(inputs.dseg)
    return files


def check_unit_inputs(config: RunConfig, plans: Sequence, outcome: RunOutcome) -> list:
    """The plans whose input files pass the header checks; the others are recorded as failed
    (with their exit class) in `outcome`."""
    ready = []
    for plan in plans:
        try:
            for path in unit_files(plan, config):
                open_image(path)
        except ShivaError as exc:
            with unit_log(config, plan.inputs.unit_id):
                record_failure(config, plan.inputs, "input check", outcome, exc)
            continue
        ready.append(plan)
    return ready


__all__ = ["check_unit_inputs", "unit_files"]
