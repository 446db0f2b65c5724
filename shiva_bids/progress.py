"""Progress per unit and per stage: a progress bar on a terminal, plain log lines otherwise.

Progress lines go to the `shiva_bids.progress` logger, which the console shows at every
verbosity (see :func:`shiva_bids.log.setup_logging`), so a batch job's log still says which
unit is at which stage.
"""
from __future__ import annotations

import logging
import sys

from tqdm import tqdm

log = logging.getLogger("shiva_bids.progress")


class Progress:
    """Track `total` units through the stages of a run."""

    def __init__(self, total: int, what: str = "units"):
        self.total = total
        self.finished = 0
        self.bar = tqdm(total=total, desc=what, unit="unit", file=sys.stderr,
                        dynamic_ncols=True) if sys.stderr.isatty() else None

    def stage(self, unit_id: str, stage: str) -> None:
        """A unit (or `all` units of a chunk) entering a stage."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{unit_id}: {stage}", refresh=True)
        else:
            log.info("%s: %s", unit_id, stage)

    def done(self, unit_id: str, status: str) -> None:
        """A unit finished (done, skipped or failed)."""
        self.finished += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.write(f"{unit_id}: {status}")
        else:
            log.info("[%d/%d] %s: %s", self.finished, self.total, unit_id, status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
