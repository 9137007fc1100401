"""Whether this process may start worker processes of its own, and pool workers that end with their parent.

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


def can_spawn() -> bool:
    """False inside a daemonic process, such as a Dask worker."""
    return not multiprocessing.current_process().daemon


def exit_with_parent(parent: int, interval: float = 0.5) -> None:
    """Run in each pool worker process as it starts, with the pid of the process that started the pool: end this
    one once that one is gone (at once if it already is).

    A ProcessPoolExecutor worker waits on a queue whose write end it holds itself, so when its parent dies
    without shutting the pool down (a SIGKILLed `cook`, a Dask worker stopped mid-task) it would wait forever.
    The pid is passed in, not read here: a worker that starts just after its parent died is already reparented.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
