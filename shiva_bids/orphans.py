"""Worker processes that end when the process that started them is gone.

A spawned worker does not die with its parent: a job killed with SIGKILL (a scheduler's time
limit, `kill -9`, the out-of-memory killer) would leave its ANTs or OpenVINO workers running a
registration or a conversion for minutes, burning the node's CPU and holding the job's output
pipes open.

On Linux each worker asks the kernel for SIGKILL when its parent dies (prctl
PR_SET_PDEATHSIG). That is the only way that works while the worker is inside a long ANTs
call: ANTsPy keeps the GIL during a registration (45-105 s here), so no Python thread of the
worker can run meanwhile. The kernel sends the signal when the *thread* that started the
worker ends; every pool of the app is started and shut down by its process's main thread, so
that is the parent's death. Elsewhere a daemon thread watches the parent's pid and leaves with
exit code 75 (temporary failure, shiva_bids.errors) once the worker is re-parented.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time

ORPHAN_EXIT_CODE = 75
_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def exit_with_parent() -> None:
    """In a worker: end this process when its parent dies (at once on Linux, else ~0.5 s)."""
    parent = multiprocessing.parent_process()
    parent_pid = parent.pid if parent is not None else os.getppid()
    if sys.platform.startswith("linux") and _kill_me_with_parent():
        if os.getppid() != parent_pid:  # the parent died before the request took effect
            os._exit(ORPHAN_EXIT_CODE)
        return
    threading.Thread(target=_watch, args=(parent_pid,), name="exit-with-parent",
                     daemon=True).start()


def _kill_me_with_parent() -> bool:
    """Ask the Linux kernel for SIGKILL at the parent's death; False where prctl fails."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_S)
    os._exit(ORPHAN_EXIT_CODE)
