"""Single-threaded worker processes for every ITK (ANTs) computation of the preprocessing.

Why (issue #19, reproducibility): ITK sums the mutual-information histogram of a registration
over its threads in whatever order they finish, so a registration run with two threads gives
slightly different transforms from run to run (measured: 2 threads, fixed seed, same process
set-up: different brain masks and rigid transforms in two runs; 1 thread: identical bytes). ITK
reads its thread count (`ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`) once per process, when it is
first used, so it cannot be lowered in a process that has already run ITK. The preprocessing
therefore runs every ANTs call in worker processes started here with that variable set to 1
before ITK is loaded; the parent process only does NumPy/SciPy work. Results then never depend
on `--nprocs` or `--omp-nthreads`, which only decide how many workers run side by side.

Workers are spawned (not forked), like the run's other process pools, so no library state of
the parent is copied into them.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Callable

from shiva_bids.orphans import exit_with_parent

ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"


_IN_WORKER = False  # set in the workers by their initializer


def _single_threaded_itk() -> None:
    """Worker initializer: runs before the worker imports ANTs (this module does not)."""
    global _IN_WORKER
    os.environ[ITK_THREADS_VARIABLE] = "1"
    _IN_WORKER = True
    exit_with_parent()


def in_worker() -> bool:
    """True in a process started by `Workers` (single-threaded ITK): ANTs may run here."""
    return _IN_WORKER


def _load_ants() -> None:
    import ants  # noqa: F401 - warms the worker up while the parent works


class Workers:
    """Up to `processes` spawned workers with single-threaded ITK (a context manager).

    Workers start when work is submitted and no worker is free; `warm_up` starts the missing
    ones now, so that they import ANTs while the parent works. `submit(function, *args)` returns
    a Future; functions and arguments must be picklable (module-level functions, Volumes,
    arrays, paths). Leaving the context waits for the submitted work and stops the workers.
    """

    def __init__(self, processes: int):
        self.processes = max(1, int(processes))
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, function: Callable, *args, **kwargs) -> Future:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes,
                                             mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_single_threaded_itk)
        return self._pool.submit(function, *args, **kwargs)

    def warm_up(self) -> None:
        """Start every worker not started yet (busy workers leave the warm-up to new ones)."""
        for _ in range(self.processes):
            self.submit(_load_ants)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
