"""Cache keys for file-producing tasks, and where their results live: a hit counts only while the task's outputs exist.

The key holds the task's name, a version, its inputs (files by fingerprint, not by name alone) and
its output location, never the run id: a new run, a nightly schedule and a retried flow run all hit
it. When the outputs are gone, the stored record under that key is dropped, so the task runs again.

Results (small: paths and summaries, as JSON) are stored under `<data_dir>/.cook/results`, beside
the data they describe, so a flow-run retry on any worker that shares the data dir finds them.
`PERSISTED` is the task options that say so; flows take `FLOW_RESULTS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect.cache_policies import CachePolicy

_SAMPLE = 1 << 20  # bytes hashed from each end of a file


def results_dir() -> Path:
    """`<data_dir>/.cook/results`, read from the settings each time it is used."""
    from tasks.core.settings import get_settings

    return (get_settings().data_dir / ".cook" / "results").resolve()


class _ResultsPath(type(Path())):
    """A Path that names `results_dir()` whenever Prefect reads it (it builds its storage from `str(path)` at
    every task run), so results follow COOK_DATA_DIR of the process that runs the task, not of the one that
    imported it. Prefect accepts a Path as result storage without a saved block."""

    def __str__(self) -> str:
        return str(results_dir())

    def __fspath__(self) -> str:
        return str(results_dir())


RESULTS = _ResultsPath()
# options for a cached task: persist a JSON result under the data dir, never keep it in memory
PERSISTED = dict(persist_result=True, cache_result_in_memory=False, result_storage=RESULTS, result_serializer="json")
# options for a flow: its (small) return value persisted too, so a parent's retry reuses a finished subflow
FLOW_RESULTS = dict(persist_result=True, result_storage=RESULTS, result_serializer="json")


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Path, size, mtime and a hash of the first and last MiB: cheap, and changes when the file does."""
    p = Path(path)
    st = p.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        h.update(f.read(_SAMPLE))
        if st.st_size > 2 * _SAMPLE:
            f.seek(-_SAMPLE, os.SEEK_END)
            h.update(f.read(_SAMPLE))
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()}


def _stable(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        p = Path(value)
        return file_fingerprint(p) if p.is_file() else {"path": str(p.resolve())}
    if isinstance(value, dict):
        return {str(k): _stable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_stable(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def stable_hash(value: Any) -> str:
    """A hash of plain data where Paths to files count by their fingerprint."""
    return hashlib.sha256(json.dumps(_stable(value), sort_keys=True).encode()).hexdigest()


@dataclass
class OutputsCache(CachePolicy):
    """Cache on (task, version, inputs, outputs location); a hit only while every output exists.

    `outputs(inputs) -> paths` names what the task writes. Inputs named in `exclude` (clients,
    progress callbacks) are left out of the key. `valid(inputs)`, when given, can also refuse a hit (a record
    that is too old, or of a run that left failures): the key stays the same, so the new result replaces it.
    """

    outputs: Callable[[dict[str, Any]], Iterable[str | os.PathLike]] = lambda inputs: ()
    version: str = "1"
    exclude: tuple[str, ...] = field(default_factory=tuple)
    # optional: `valid(inputs) -> bool`, read with the outputs; False drops the stored result (the task runs again)
    valid: Callable[[dict[str, Any]], bool] | None = None

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        outs = [Path(p) for p in self.outputs(inputs)]
        out_names = {str(p.resolve()) for p in outs}
        # an output passed as an input counts by its name: its content is what the task makes, not what it takes
        kept = {k: (str(Path(v).resolve()) if isinstance(v, (str, os.PathLike)) and v and str(Path(v).resolve()) in out_names else v)
                for k, v in inputs.items() if k not in self.exclude}
        task_name = getattr(getattr(task_ctx, "task", None), "name", "task")
        key = "cook-" + stable_hash({"task": task_name, "v": self.version, "in": kept, "out": [str(p.resolve()) for p in outs]})
        if not all(p.exists() for p in outs) or (self.valid is not None and not self.valid(inputs)):
            _forget(task_ctx, key)
        return key


def _forget(task_ctx, key: str) -> None:
    """Drop the stored result record under `key` (local result storage), so the task runs again."""
    store = getattr(task_ctx, "result_store", None)
    storage = getattr(store, "result_storage", None) if store is not None else None
    resolve = getattr(storage, "_resolve_path", None)
    if resolve is None:
        return
    for s in (storage, getattr(store, "metadata_storage", None)):
        r = getattr(s, "_resolve_path", None)
        if r is None:
            continue
        with contextlib.suppress(Exception):
            Path(r(key)).unlink(missing_ok=True)
