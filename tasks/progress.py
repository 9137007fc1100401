"""Progress for long work: a rich bar in the CLI and a progress artifact in the Prefect UI, from one call.

    with progress("tokenize", total=n_bytes, unit="B") as bar:
        bar.advance(k)

The CLI installs a rich `Progress` with `show_in(...)`; without one only the Prefect artifact (inside a
run) is updated. Updates to the API are throttled to whole percents.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_lock = threading.Lock()
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


class Bar:
    def __init__(self, description: str, total: float | None):
        self.description = description
        self.total = total
        self.done = 0.0
        self._rich = _active["rich"]
        self._rich_id = self._rich.add_task(description, total=total) if self._rich is not None else None
        self._artifact_id = None
        self._last_pct = -1
        try:
            from prefect.context import TaskRunContext, FlowRunContext

            if (TaskRunContext.get() or FlowRunContext.get()) and total:
                from prefect.artifacts import create_progress_artifact

                self._artifact_id = create_progress_artifact(progress=0.0, description=description)
        except Exception:  # artifacts are a nicety; never fail the work over them
            self._artifact_id = None

    def advance(self, n: float = 1) -> None:
        with _lock:
            self.done += n
            done = self.done
        if self._rich is not None:
            self._rich.update(self._rich_id, completed=done)
        if self._artifact_id is not None and self.total:
            pct = int(100 * min(done, self.total) / self.total)
            if pct > self._last_pct:
                self._last_pct = pct
                try:
                    from prefect.artifacts import update_progress_artifact

                    update_progress_artifact(self._artifact_id, progress=float(pct))
                except Exception:
                    self._artifact_id = None

    def set_total(self, total: float) -> None:
        self.total = total
        if self._rich is not None:
            self._rich.update(self._rich_id, total=total)

    def close(self) -> None:
        if self._rich is not None:
            if self.total is None:
                self._rich.update(self._rich_id, total=self.done)
            self._rich.update(self._rich_id, completed=self.total if self.total is not None else self.done)
        if self._artifact_id is not None:
            try:
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self._artifact_id, progress=100.0)
            except Exception:
                pass


@contextlib.contextmanager
def progress(description: str, total: float | None = None) -> Iterator[Bar]:
    bar = Bar(description, total)
    try:
        yield bar
    finally:
        bar.close()
