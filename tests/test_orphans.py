"""A killed job leaves no worker behind (shiva_bids/orphans.py), even a worker inside a long C
call that keeps the GIL, as ANTsPy does during a registration (a watcher thread cannot run
then: the previous code left such a worker running)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
_SCRIPT = """
import ctypes, sys, time
from shiva_bids.preprocessing.workers import Workers

def hold_the_gil():
    ctypes.PyDLL(None).sleep(120)  # libc sleep(3) called with the GIL held, like ANTsPy

if __name__ == "__main__":
    with Workers(1) as workers:
        future = workers.submit(hold_the_gil)
        time.sleep(3)
        print("ready", flush=True)
        future.result()
"""


def test_workers_end_when_their_job_is_killed(tmp_path):
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    job = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                           env=env, cwd=tmp_path)
    assert job.stdout.readline().strip() == "ready"
    workers = [p for p in psutil.Process(job.pid).children(recursive=True)
               if "resource_tracker" not in " ".join(p.cmdline())]
    assert workers, "the job started no worker process"
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=10)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"workers still running after their job was killed: {alive}"
