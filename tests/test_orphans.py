"""A killed job leaves no worker behind (shiva_bids/orphans.py): the preprocessing workers
watch their parent and end when it is gone."""
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
import sys, time
from shiva_bids.preprocessing.workers import Workers
if __name__ == "__main__":
    with Workers(1) as workers:
        future = workers.submit(time.sleep, 120)
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
