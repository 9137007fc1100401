"""Cache keys for file-producing tasks, and where their results live: a hit counts only while the task's outputs exist.

The key holds the task's name, a version, its inputs (files by fingerprint, not by name alone) and
its output location, never the run id: a new run, a nightly schedule and a retried flow run all hit
it. When the outputs are gone, the stored record under that key is dropped, so the task runs again.

Results (small: paths and summaries, as JSON) are stored under `<data_dir>/.cook/results`, beside
the data they describe, so a flow-run retry on any worker that shares the data dir finds them.
`PERSISTED` is the task options that say so; flows take `FLOW_RESULTS`. When COOK_DATA_DIR is a URL
(`s3://bucket/data`), results and cache records go to `URL/.cook/results` (a Prefect RemoteFileSystem
block, credentials from the environment), inputs and outputs may be URLs too (model/storage.py): a URL
counts by its size and ETag (or modification time), and "the outputs exist" is asked of the store, so a
retry on another machine that shares only the bucket reuses finished work.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from prefect.cache_policies import CachePolicy

from model import storage
from model import storage as _store  # `_forget` has a local named storage
from model.errors import CookError

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


def result_storage(pinned: bool = False) -> Path | str:
    """Where task and flow results go for this process's COOK_DATA_DIR: the local `results_dir()` (a
    `_ResultsPath` that follows the setting, or with `pinned` the folder it names now), or when COOK_DATA_DIR is a
    URL and a Prefect server is set (PREFECT_API_URL), a RemoteFileSystem block at `URL/.cook/results`
    (`results_block`)."""
    from tasks.core.settings import get_settings

    url = get_settings().data_url
    # a block needs a Prefect server to be saved on: with the temporary local API (no PREFECT_API_URL) there is no
    # other machine to share results with, and saving would start that API just to import this module
    if url and os.environ.get("PREFECT_API_URL"):
        slug = results_block(url)
        if slug is not None:
            return slug
    return results_dir() if pinned else _ResultsPath()


@functools.lru_cache(maxsize=None)
def results_block(url: str) -> str | None:
    """The slug (`remote-file-system/cook-results-<hash>`) of a RemoteFileSystem block whose basepath is
    `URL/.cook/results`, saved on the Prefect API (Prefect takes a block for result storage only once saved;
    the block holds the location, never credentials: the store's client reads them from the environment at
    every use). None, with a warning, when it cannot be saved: results then stay on this machine."""
    name = "cook-results-" + hashlib.sha256(storage.redact(url).encode()).hexdigest()[:12]
    try:
        from prefect.filesystems import RemoteFileSystem

        # credentials never go into the block: the store's client reads them from the environment
        RemoteFileSystem(basepath=storage.join(storage.redact(url), ".cook", "results")).save(name, overwrite=True)
    except Exception as e:  # noqa: BLE001 - no API to save it on: results stay local (finished work still counts)
        import logging

        logging.getLogger("cook.caching").warning(
            "cannot save the result storage block for %s (%s): task results stay under %s on this machine",
            storage.redact(url), (str(e).splitlines() or [type(e).__name__])[0][:200], results_dir())
        return None
    return f"remote-file-system/{name}"


# Chosen when this module is imported (Prefect takes a Path, or a block, and builds its storage from it at
# every run): a local data dir is followed as COOK_DATA_DIR changes; a URL data dir is the import's.
RESULTS = result_storage()
# options for a cached task: persist a JSON result under the data dir, never keep it in memory
PERSISTED = dict(persist_result=True, cache_result_in_memory=False, result_storage=RESULTS, result_serializer="json")
# options for a flow: its (small) return value persisted too, so a parent's retry reuses a finished subflow
FLOW_RESULTS = dict(persist_result=True, result_storage=RESULTS, result_serializer="json")


def file_fingerprint(path: str | os.PathLike) -> dict:
    """Path, size, mtime and a hash of the first and last MiB: cheap, and changes when the file does.
    A URL: its (redacted) URL, size and the store's content tag (ETag; else its modification time and the sampled
    hash), from one metadata request, plus two ranged reads where the store gives no ETag."""
    if storage.is_remote(path):
        return _remote_fingerprint(str(path))
    p = Path(path)
    st = p.stat()
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        h.update(f.read(_SAMPLE))
        if st.st_size > 2 * _SAMPLE:
            f.seek(-_SAMPLE, os.SEEK_END)
            h.update(f.read(_SAMPLE))
    return {"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sample": h.hexdigest()}


# URLs a key takes by name: Hub paths (unparquet passes their blob id itself) and plain web addresses
_NOT_FINGERPRINTED = {"hf", "http", "https"}


def _url_value(url: str) -> Any:
    """A URL among a task's inputs: a file counts by its fingerprint, anything else (a folder, nothing yet, a store
    that does not answer) by its name without credentials."""
    try:
        info = storage.info(url)
    except Exception:  # noqa: BLE001 - not there (or not reachable): the task itself says what is wrong
        return storage.redact(url)
    return _remote_fingerprint(url, info) if info.get("type") == "file" else storage.redact(url)


def _remote_fingerprint(url: str, info: dict | None = None) -> dict:
    if info is None:
        try:
            info = storage.info(url)
        except FileNotFoundError:
            raise CookError(f"{storage.redact(url)}: file not found") from None
    out = {"path": storage.redact(url), "size": int(info.get("size") or 0)}
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("content_md5")
    if etag:  # the store's content tag: enough (a listing and a HEAD give its time at different precisions)
        out["etag"] = str(etag).strip('"')
        return out
    when = info.get("LastModified") or info.get("last_modified") or info.get("mtime") or info.get("updated") or info.get("created")
    if when is not None:
        out["mtime"] = str(when)
    h = hashlib.blake2b(digest_size=16)
    with storage.open_read(url) as f:
        h.update(f.read(_SAMPLE))
        if out["size"] > 2 * _SAMPLE:
            f.seek(out["size"] - _SAMPLE)
            h.update(f.read(_SAMPLE))
    out["sample"] = h.hexdigest()
    return out


def _stable(value: Any, urls: bool = True) -> Any:
    """`value` as plain data for a key: Paths to files by their fingerprint, and (`urls`: not inside a dict, whose
    strings are data such as a fingerprint's own "path") URL strings that name a file too."""
    if isinstance(value, _Name):
        return str(value)
    if urls and isinstance(value, str) and storage.is_remote(value) and storage.protocol(value) not in _NOT_FINGERPRINTED:
        return _url_value(value)
    if isinstance(value, os.PathLike):
        p = Path(value)
        return file_fingerprint(p) if p.is_file() else {"path": str(p.resolve())}
    if isinstance(value, dict):
        return {str(k): _stable(v, urls=False) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [_stable(v, urls) for v in value]
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
        outs = [_location(p) for p in self.outputs(inputs)]
        out_names = {_name(p) for p in outs}
        # an output passed as an input counts by its name: its content is what the task makes, not what it takes
        kept = {k: (_Name(_name(v)) if isinstance(v, (str, os.PathLike)) and v and _name(v) in out_names else v)
                for k, v in inputs.items() if k not in self.exclude}
        kept = {k: _stable(v) for k, v in kept.items()}  # each input: a URL to a file by its fingerprint (see _stable)
        task_name = getattr(getattr(task_ctx, "task", None), "name", "task")
        key = "cook-" + stable_hash({"task": task_name, "v": self.version, "in": kept, "out": [_Name(_name(p)) for p in outs]})
        if not all(_exists(p) for p in outs) or (self.valid is not None and not self.valid(inputs)):
            _forget(task_ctx, key)
        return key


class _Name(str):
    """An output's name among a task's inputs: kept as it is (never fingerprinted)."""


def _location(p: str | os.PathLike) -> Path | str:
    return str(p) if storage.is_remote(p) else Path(p)


def _name(p: str | os.PathLike) -> str:
    """The name an output counts by in a key: the resolved path, or the URL without credentials."""
    return storage.redact(str(p)).rstrip("/") if storage.is_remote(p) else str(Path(p).resolve())


def _exists(p: Path | str) -> bool:
    """Whether an output is there: on the store for a URL (one metadata request)."""
    return storage.exists(p) if isinstance(p, str) else p.exists()


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
            where = str(r(key))
            if _store.is_remote(where):  # a RemoteFileSystem block: the record is an object in the bucket
                _store.remove(where)
            else:
                Path(where).unlink(missing_ok=True)
