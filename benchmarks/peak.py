"""Peak memory of one process as Linux counts it for that process alone, for benchmarks and tests.

`ru_maxrss` is not that: Linux carries a parent's peak over fork and exec, so a child of pytest (or of a
benchmark holding a corpus) reports its parent's. `VmHWM` in /proc/PID/status is the process's own.
Run measuring code in a fresh process with the repository as its working directory, then:

    from benchmarks.peak import ChildPeaks, hwm_mb
    with ChildPeaks() as workers:   # each child's own peak, polled while it runs
        work()
    print(hwm_mb(), workers.peak_mb)
"""

from __future__ import annotations

import threading


def hwm_mb(pid: int | str = "self") -> float:
    """The peak resident memory (VmHWM) of process `pid`, in MB (MiB)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


class ChildPeaks:
    """While inside, polls this process's children every `every` s for their own peaks: `peak_mb` (the largest),
    `count` (how many were seen). The polling thread stops on leaving."""

    def __init__(self, every: float = 0.02):
        self.every, self.peaks, self._done = every, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._done.wait(self.every):
            for c in me.children():
                try:
                    self.peaks[c.pid] = max(self.peaks.get(c.pid, 0), hwm_mb(c.pid))
                except (OSError, StopIteration):  # gone, or a zombie without a status
                    pass

    @property
    def peak_mb(self) -> float:
        return max(self.peaks.values(), default=0)

    @property
    def count(self) -> int:
        return len(self.peaks)

    def __enter__(self) -> "ChildPeaks":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
