"""Whether this process may start worker processes of its own, and the process pools it starts.

A daemonic process may not have children (`multiprocessing` refuses: "daemonic processes are not
allowed to have children"), and Dask workers are daemonic by default (`distributed.worker.daemon`;
`--dask local` starts them non-daemonic). Stages that parse or encode in spawned processes check
`can_spawn()` and work in-process (or on threads) there instead.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable


def can_spawn() -> bool:
    """False inside a daemonic process, such as a Dask worker."""
    return not multiprocessing.current_process().daemon


def process_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor of `workers` spawned processes (never forked from a process with threads) that end
    with this process: each runs `initializer(*initargs)` after starting its watch on this one (`_end_with`)."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    _end_with(parent)
    if initializer is not None:
        initializer(*initargs)


def _end_with(parent: int, interval: float = 0.5) -> None:
    """In a pool worker: end this process once `parent` (the process that started the pool) is gone, at once if
    it already is.

    A ProcessPoolExecutor worker waits on a queue whose write end it holds itself, so when its parent dies
    without shutting the pool down (a SIGKILLed `cook`, a Dask worker stopped mid-task) it would wait forever.
    The pid is passed in, not read here: a worker that starts just after its parent died is already reparented.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()
