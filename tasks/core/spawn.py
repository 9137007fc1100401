"""Whether this process may start worker processes of its own.

A daemonic process may not have children (`multiprocessing` refuses: "daemonic processes are not
allowed to have children"), and Dask workers are daemonic by default (`distributed.worker.daemon`;
`--dask local` starts them non-daemonic). Stages that parse or encode in spawned processes check
`can_spawn()` and work in-process (or on threads) there instead.
"""

from __future__ import annotations

import multiprocessing


def can_spawn() -> bool:
    """False inside a daemonic process, such as a Dask worker."""
    return not multiprocessing.current_process().daemon
