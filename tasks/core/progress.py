"""Progress for long work: a rich bar in the CLI and a progress artifact in the Prefect UI, from one call.

    with progress("tokenize", total=n_bytes) as bar:
        bar.advance(k)

The CLI installs a rich `Progress` with `show_in(...)`; without one only the Prefect artifact (inside a
run) is updated. Updates to the API are throttled to whole percents.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from typing import Iterator

_lock = threading.Lock()
_artifact_lock = threading.Lock()
_active: dict = {"rich": None}


@contextlib.contextmanager
def show_in(rich_progress) -> Iterator[None]:
    """Route progress bars to a started rich.progress.Progress while the block runs."""
    prev = _active["rich"]
    _active["rich"] = rich_progress
    try:
        yield
    finally:
        _active["rich"] = prev


def _in_prefect_run() -> bool:
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        return bool(TaskRunContext.get() or FlowRunContext.get())
    except Exception:
        return False


class Bar:
    """One unit of long work: `advance(n)` or `update(done)`; `set_total` when the size is learnt late."""

    def __init__(self, description: str, total: float | None):
        self.description = description
        self.total = total
        self.done = 0.0
        self._rich = _active["rich"]
        self._rich_id = self._rich.add_task(description, total=total) if self._rich is not None else None
        self._artifact = _in_prefect_run()  # becomes the artifact id once created
        self._ctx = contextvars.copy_context()  # the run's context, for updates from worker threads
        self._last_pct = -1

    def advance(self, n: float = 1) -> None:
        with _lock:
            self.done += n
        self._show()

    def update(self, completed: float) -> None:
        """Set how much is done (for work that resumes part-way)."""
        with _lock:
            self.done = completed
        self._show()

    def set_total(self, total: float) -> None:
        self.total = total
        if self._rich is not None:
            self._rich.update(self._rich_id, total=total)

    def _show(self) -> None:
        if self._rich is not None:
            self._rich.update(self._rich_id, completed=self.done)
        if self._artifact and self.total:
            self._to_artifact(int(100 * min(self.done, self.total) / self.total))

    def _to_artifact(self, pct: int) -> None:
        """Publish `pct` if it is news; one thread at a time, so updates never go backwards."""
        with _artifact_lock:  # also: one thread at a time may enter the captured context
            if not self._artifact or pct <= self._last_pct:
                return
            self._last_pct = pct
            try:  # artifacts are a nicety: never fail the work over them
                self._ctx.run(self._write_artifact, float(pct))
            except Exception:
                self._artifact = False

    def _write_artifact(self, pct: float) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        if self._artifact is True:
            self._artifact = create_progress_artifact(progress=pct, description=self.description)
        else:
            update_progress_artifact(self._artifact, progress=pct)

    def close(self, finished: bool = True) -> None:
        """Finish the bar; a failed or interrupted piece of work stays where it stopped."""
        if not finished:
            return
        if self.total is None:
            self.set_total(self.done)
        if self._rich is not None:
            self._rich.update(self._rich_id, completed=self.total)
        self._to_artifact(100)


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Bar]:
    bar = Bar(description, total)
    try:
        yield bar
    except BaseException:
        bar.close(finished=False)
        raise
    bar.close()
