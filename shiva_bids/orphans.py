"""Worker processes that end when the process that started them is gone.

A spawned worker does not die with its parent: a job killed with SIGKILL (a scheduler's time
limit, `kill -9`, the out-of-memory killer) would leave its ANTs or OpenVINO workers running a
registration or a conversion for minutes, burning the node's CPU and holding the job's output
pipes open. Each worker therefore watches its parent's pid and leaves as soon as it changes
(the orphan is re-parented), with exit code 75 (temporary failure, shiva_bids.errors).
"""
from __future__ import annotations

import os
import threading
import time

ORPHAN_EXIT_CODE = 75
_POLL_S = 0.5


def exit_with_parent() -> None:
    """In a worker: end this process within ~0.5 s of its parent's death (daemon thread)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_POLL_S)
        os._exit(ORPHAN_EXIT_CODE)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
