"""Merge document files from every source into size-capped shards: cleaned, filtered, deduplicated.

Every input document ends up in exactly one place:

- kept, normalized (`tasks.corpus.filters.normalize`), in `OUT/shard_NNNNN.parquet` (the document format),
  or `OUT/shard_NNNNN.txt` with `--format text` (each document followed by the separator line of
  `tasks.corpus.unparquet`, `"\\n<|endoftext|>\\n"`, with the same escaping, so it reads back exactly);
- or rejected, unchanged, in `OUT/rejects/shard_NNNNN.parquet`: the document format plus `reason`
  (e.g. "too-short", "repetition:dup-line-frac", "exact-duplicate") and `duplicate_of` (for
  duplicates, the id of the earlier kept document).

Order is deterministic: inputs sorted by path, rows in file order; the first occurrence of a text is
the one kept. Documents sharing an `id` (a page a scraper fetched again after it changed) are one document:
the copies older than the newest `fetched_at` go to rejects with reason "superseded" (and `duplicate_of` their
id), whatever the file order; copies as new as the newest are judged as usual (equal ones: exact duplicates). Nothing in the output depends on when it ran, so a re-run gives byte-identical files.
Shards roll before `shard_size` bytes of text (a document is never split). The whole of OUT is
built in a temp folder beside it and renamed into place at the end (`model.atomic.atomic_dir`): a
re-run replaces it, never appends, and a crash leaves nothing that looks whole. `OUT/stats.json`,
written last, counts documents and bytes in and out per source, rejects by reason and duplicates.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import shutil
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from model.atomic import atomic_dir, atomic_write
from model.errors import CookError
from tasks.core.caching import PERSISTED, OutputsCache
from tasks.corpus.dedup import ExactDedup, MinHashDedup, text_key
from tasks.corpus.documents import (
    REJECTS_DIR,
    REQUIRED,
    SCHEMA,
    TEXT_SEPARATOR,
    escape_text,
    expand_inputs,
    is_text_documents,
    open_documents,
    read_text_documents,
)
from tasks.corpus.filters import check_languages, default_filters, first_rejections, normalize
from tasks.core.progress import progress
from tasks.core.spawn import can_spawn

FORMATS = ("parquet", "text")
MIN_CHARS = 100
MAX_CHARS = 5_000_000
PARALLEL_MIN_BYTES = 64 << 20  # input size from which the filters run in worker processes (they start in ~1 s)
REJECTS = REJECTS_DIR
STATS = "stats.json"
ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 64 << 20  # a row group is flushed at this much text too: memory stays flat with long documents
REJECT_FIELDS = [pa.field("reason", pa.string()), pa.field("duplicate_of", pa.string())]

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(size: str | int) -> int:
    """'2GB', '500MB', '2.5GB', '64KiB' or a number of bytes -> bytes (decimal units, KiB/MiB/GiB binary)."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    else:
        m = _SIZE.match(str(size))
        unit = m.group(2).lower() if m else None
        if m is None or unit not in _UNITS:
            raise CookError(f"bad size '{size}': use a number with an optional unit, such as 2GB, 500MB or 2.5GB")
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < 1:
        raise CookError(f"bad size '{size}': must be at least 1 byte")
    return n


def _inputs(inputs, out: str | Path) -> list[Path]:
    """Expand inputs, leaving out OUT and its temp folders: a re-run must not eat its own output."""
    if not inputs:
        raise CookError("no inputs: give document files, folders or globs to merge")
    out = Path(out).resolve()
    files = []
    for f in expand_inputs(inputs):
        r = f.resolve()
        if r.is_relative_to(out) or (r.is_relative_to(out.parent) and r.relative_to(out.parent).parts[0].startswith(f".{out.name}.")):
            continue
        files.append(f)
    if not files:
        raise CookError(f"no inputs: every input is inside the output folder {out}")
    return files


def _output_schema(files: list[Path]) -> pa.Schema:
    """The document columns, then every extra column of the inputs (first seen first); CookError on a type clash."""
    fields = list(SCHEMA)
    extra: dict[str, pa.Field] = {}
    for f in files:
        if f.suffix != ".parquet":
            continue
        for field in open_documents(f).schema_arrow:
            if field.name in REQUIRED or field.name in ("reason", "duplicate_of"):
                continue
            seen = extra.get(field.name)
            if seen is None:
                extra[field.name] = pa.field(field.name, field.type)
            elif seen.type != field.type:
                raise CookError(f"{f}: column '{field.name}' is {field.type}, but {seen.type} in an earlier input")
    return pa.schema(fields + list(extra.values()))


def check_merge_args(inputs, out: str | Path, shard_size: str | int = "2GB", fmt: str = "parquet",
                     languages: list[str] | None = None) -> list[Path]:
    """Validate before any work starts; return the input files. Raises a one-line CookError."""
    parse_size(shard_size)
    if fmt not in FORMATS:
        raise CookError(f"unknown format '{fmt}' (choose {' or '.join(FORMATS)})")
    check_languages(languages)
    files = _inputs(inputs, out)
    _output_schema(files)
    return files


class _Shards:
    """Rolling output shards `PREFIX_NNNNN.parquet|.txt` in one folder, each written atomically."""

    def __init__(self, folder: Path, fmt: str, schema: pa.Schema, shard_size: int):
        self.folder, self.fmt, self.schema, self.shard_size = folder, fmt, schema, shard_size
        self.names: list[str] = []
        self._ctx = None
        self._file: IO | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[dict] = []
        self._row_bytes = 0
        self._bytes = 0  # text bytes in the open shard

    def write(self, doc: dict, nbytes: int) -> None:
        if self._ctx is not None and self._bytes and self._bytes + nbytes > self.shard_size:
            self._close_shard()
        if self._ctx is None:
            self._open_shard()
        self._bytes += nbytes
        if self.fmt == "text":
            self._file.write(escape_text(doc["text"]))
            self._file.write(TEXT_SEPARATOR)
            return
        self._rows.append(doc)
        self._row_bytes += nbytes
        if len(self._rows) >= ROW_GROUP_ROWS or self._row_bytes >= ROW_GROUP_BYTES:
            self._flush()

    def _open_shard(self) -> None:
        name = f"shard_{len(self.names):05d}.{'txt' if self.fmt == 'text' else 'parquet'}"
        self.names.append(name)
        self._ctx = atomic_write(self.folder / name, "w" if self.fmt == "text" else "wb")
        self._file = self._ctx.__enter__()
        if self.fmt == "parquet":
            # fixed options, no timestamps: the same rows give the same bytes
            self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd", compression_level=3)
        self._bytes = 0

    def _flush(self) -> None:
        if self._rows:
            try:
                table = pa.Table.from_pylist(self._rows, schema=self.schema)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                line = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise CookError(f"documents do not fit the document format ({line})") from None
            self._writer.write_table(table, row_group_size=len(self._rows))
            self._rows, self._row_bytes = [], 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None
        self._ctx.__exit__(None, None, None)
        self._ctx = self._file = None

    def close(self) -> list[str]:
        if self._ctx is not None:
            self._close_shard()
        return self.names

    def abort(self) -> None:
        """Drop the open shard (its temp file goes; nothing appears under a final name)."""
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._ctx = self._file = None


def _read(path: Path, columns: list[str]) -> Iterator[list[dict]]:
    """Row groups of an input as lists of dicts: a parquet file, a cook text file, or a .txt as one document."""
    if path.suffix == ".parquet":
        pf = open_documents(path)
        names = pf.schema_arrow.names
        cols = [c for c in columns if c in names]
        row = 0
        for i in range(pf.num_row_groups):
            docs = pf.read_row_group(i, columns=cols).to_pylist()
            for d in docs:  # fill what a bare parquet file may lack
                if d.get("id") is None:
                    d["id"] = f"{path.name}:{row}"
                elif not isinstance(d["id"], str):
                    d["id"] = str(d["id"])
                row += 1
            yield docs
        return
    base = {"source": "text", "url": "", "title": path.stem, "fetched_at": None}
    if is_text_documents(path):
        docs = [{**base, "id": f"{path.name}:{i}", "text": t} for i, t in enumerate(read_text_documents(path))]
    else:
        docs = [{**base, "id": path.name, "text": path.read_text(encoding="utf-8", errors="replace")}]
    yield docs


def _when(value) -> float:
    """A `fetched_at` as seconds, comparable across files (naive means UTC; missing is oldest)."""
    from datetime import datetime, timezone

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return float("-inf")
    if not isinstance(value, datetime):
        return float("-inf")
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.timestamp()


def _newest_copies(files: list[Path]) -> dict[str, float]:
    """For each id found more than once in the parquet inputs: the newest `fetched_at` among its copies."""
    best: dict[str, float] = {}
    repeated: set[str] = set()
    for path in files:
        if path.suffix != ".parquet":
            continue
        pf = open_documents(path)
        if "id" not in pf.schema_arrow.names:
            continue
        cols = ["id"] + (["fetched_at"] if "fetched_at" in pf.schema_arrow.names else [])
        for i in range(pf.num_row_groups):
            t = pf.read_row_group(i, columns=cols).to_pydict()
            for doc_id, when in zip(t["id"], t.get("fetched_at") or [None] * len(t["id"])):
                if doc_id is None:
                    continue
                doc_id, w = str(doc_id), _when(when)
                if doc_id in best:
                    repeated.add(doc_id)
                    best[doc_id] = max(best[doc_id], w)
                else:
                    best[doc_id] = w
    return {k: best[k] for k in repeated}


def _source_stats() -> dict:
    return {"documents_in": 0, "bytes_in": 0, "documents_out": 0, "bytes_out": 0, "rejected": Counter()}


def _total_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows if f.suffix == ".parquet" else 1 for f in files)


def merge_documents(
    inputs: list[Path],
    out: Path,
    shard_size: int | str = 2_000_000_000,
    fmt: str = "parquet",
    near_dedup: bool = False,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    languages: list[str] | None = None,
    workers: int | None = None,
) -> dict:
    """Merge `inputs` (document files, folders, globs) into `out`; return the stats (also in OUT/stats.json).

    `workers`: processes running the filters and MinHash signatures (default: one per core, up to
    8, for inputs of PARALLEL_MIN_BYTES or more). The output does not depend on it. Dedup decisions
    stay in this process, in input order.
    """
    out = Path(out)
    files = check_merge_args(inputs, out, shard_size, fmt, languages)
    size = parse_size(shard_size)
    if min_chars < 0 or max_chars < max(min_chars, 1):
        raise CookError(f"bad length bounds: need 0 <= min chars <= max chars (got {min_chars}, {max_chars})")
    schema = _output_schema(files)
    reject_schema = pa.schema(list(schema) + REJECT_FIELDS)
    judge_args = (min_chars, max_chars, list(languages) if languages else None, near_dedup)
    default_filters(*judge_args[:3])  # fail early on bad filter settings
    if workers is None:
        big = sum(f.stat().st_size for f in files) >= PARALLEL_MIN_BYTES
        workers = min(os.cpu_count() or 1, 8) if big else 1
    exact = ExactDedup()
    near = MinHashDedup() if near_dedup else None
    sources: dict[str, dict] = {}
    newest = _newest_copies(files)
    for stale in out.parent.glob(f".{out.name}.*"):  # temp folders of a crashed earlier run
        if stale.is_dir() and (stale.name.endswith(".tmp") or ".old-" in stale.name):
            shutil.rmtree(stale, ignore_errors=True)

    with atomic_dir(out) as tmp, progress("merge", total=_total_rows(files)) as bar:
        kept = _Shards(tmp, fmt, schema, size)
        rejects = _Shards(tmp / REJECTS, "parquet", reject_schema, size)
        (tmp / REJECTS).mkdir()
        try:
            _merge_into(files, schema, kept, rejects, judge_args, workers, exact, near, sources, bar, newest)
            shards, reject_shards = kept.close(), rejects.close()
        except BaseException:
            kept.abort()
            rejects.abort()
            raise
        stats = _summary(sources, files, shards, reject_shards, fmt, near_dedup, min_chars, max_chars, languages)
        with atomic_write(tmp / STATS, "w") as f:
            json.dump(stats, f, indent=2, sort_keys=True)
            f.write("\n")
    return stats


_WORKER: dict = {}


def _init_worker(min_chars: int, max_chars: int, languages: list[str] | None, near_dedup: bool) -> None:
    _WORKER["filters"] = default_filters(min_chars, max_chars, languages)
    _WORKER["near"] = MinHashDedup() if near_dedup else None


def _judge(docs: list[dict]) -> list[tuple[str | None, object]]:
    """(filter verdict, MinHash signature or None) per document: the order-free part of the work."""
    near = _WORKER["near"]
    reasons = first_rejections(docs, _WORKER["filters"])
    return [(r, near.signature(d["text"]) if near is not None and r is None else None) for d, r in zip(docs, reasons)]


def _batches(files: list[Path], columns: list[str]) -> Iterator[tuple[list[dict], list[str]]]:
    for path in files:
        for docs in _read(path, columns):
            yield docs, [normalize(d["text"]) if d.get("text") else "" for d in docs]


def _with_verdicts(batches: Iterator, judge_args: tuple, workers: int) -> Iterator[tuple[list[dict], list[str], dict]]:
    """(docs, normalized texts, {index: (filter verdict, signature)} for non-empty texts) per batch, in input order.

    With workers > 1 filters and signatures are computed in worker processes, a few batches ahead;
    the order of the results (and so every decision after them) is the same as with one. Filters
    see each document's `source` and `text`. A daemonic process (a Dask worker) may not start
    processes: there the work stays in-process.
    """

    def job(docs, texts):
        live = [i for i, t in enumerate(texts) if t.strip()]
        return live, [{"source": docs[i].get("source"), "text": texts[i]} for i in live]

    if workers <= 1 or not can_spawn():
        _init_worker(*judge_args)
        for docs, texts in batches:
            live, todo = job(docs, texts)
            yield docs, texts, dict(zip(live, _judge(todo)))
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process holding Prefect's threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=judge_args) as pool:
        pending: deque = deque()
        for docs, texts in batches:
            live, todo = job(docs, texts)
            pending.append((docs, texts, live, pool.submit(_judge, todo)))
            if len(pending) > 2 * workers:  # bounded read-ahead: memory stays flat
                d, t, l, fut = pending.popleft()
                yield d, t, dict(zip(l, fut.result()))
        while pending:
            d, t, l, fut = pending.popleft()
            yield d, t, dict(zip(l, fut.result()))


def _merge_into(files, schema, kept: _Shards, rejects: _Shards, judge_args: tuple, workers: int, exact: ExactDedup,
                near: MinHashDedup | None, sources: dict, bar, newest: dict[str, float] | None = None) -> None:
    """Route every document of `files`, in order, to `kept` or `rejects` (with its reason), counting per source.

    Per row group: normalize, run the filters over the whole group at once (vectorized, in worker
    processes when `workers` > 1), then decide document by document in order: exact duplicate of a
    kept one, else the filters' reason, else near duplicate, else kept (and remembered for dedup). Before all
    that, a copy of an id older than its newest (`newest`: id -> newest fetched_at) is "superseded".
    """
    newest = newest or {}
    for docs, texts, filtered in _with_verdicts(_batches(files, schema.names), judge_args, workers):
        for i, doc in enumerate(docs):
            src = doc.get("source") or "unknown"
            doc["source"] = src
            st = sources.get(src) or sources.setdefault(src, _source_stats())
            raw, text = doc.get("text"), texts[i]
            nbytes_in = len(raw.encode("utf-8", "surrogatepass")) if raw else 0
            st["documents_in"] += 1
            st["bytes_in"] += nbytes_in
            dup_of, sig = None, None
            doc_id = doc.get("id")
            if doc_id in newest and _when(doc.get("fetched_at")) < newest[doc_id]:
                reason, dup_of = "superseded", doc_id
            elif i not in filtered:
                reason = "empty"
            else:
                key = text_key(text)
                dup_of = exact.duplicate_of(key)
                verdict, sig = filtered[i]
                reason = "exact-duplicate" if dup_of is not None else verdict
                if reason is None and near is not None:
                    dup_of = near.duplicate_of(sig)
                    reason = "near-duplicate" if dup_of is not None else None
            if reason is not None:
                st["rejected"][reason] += 1
                rejects.write({**doc, "reason": reason, "duplicate_of": dup_of}, nbytes_in)
                continue
            exact.add(key, doc["id"])
            if near is not None:
                near.add(sig, doc["id"])
            doc["text"] = text
            nbytes = len(text.encode("utf-8", "surrogatepass"))
            st["documents_out"] += 1
            st["bytes_out"] += nbytes
            kept.write(doc, nbytes)
        bar.advance(len(docs))


def _summary(sources, files, shards, reject_shards, fmt, near_dedup, min_chars, max_chars, languages) -> dict:
    per_source = {s: {**v, "rejected": dict(sorted(v["rejected"].items()))} for s, v in sorted(sources.items())}
    rejected: Counter = Counter()
    for v in sources.values():
        rejected.update(v["rejected"])
    total = {k: sum(v[k] for v in sources.values()) for k in ("documents_in", "bytes_in", "documents_out", "bytes_out")}
    return {
        **total,
        "documents_rejected": sum(rejected.values()),
        "rejected": dict(sorted(rejected.items())),
        "exact_duplicates": rejected.get("exact-duplicate", 0),
        "near_duplicates": rejected.get("near-duplicate", 0),
        "sources": per_source,
        "shards": shards,
        "reject_shards": [f"{REJECTS}/{n}" for n in reject_shards],
        "inputs": [str(f) for f in files],
        "format": fmt,
        "near_dedup": near_dedup,
        "min_chars": min_chars,
        "max_chars": max_chars,
        "languages": list(languages) if languages else None,
    }


@task(
    name="merge",
    cache_policy=OutputsCache(outputs=lambda i: [Path(i["out"]) / STATS], version="1"),
    **PERSISTED,
)
def merge_task(
    inputs: list[Path],
    out: Path,
    shard_size: int = 2_000_000_000,
    fmt: str = "parquet",
    near_dedup: bool = False,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    languages: list[str] | None = None,
) -> dict:
    """Prefect wrapper of `merge_documents`; cached on input fingerprints and parameters while OUT/stats.json exists."""
    return merge_documents(inputs, out, shard_size, fmt, near_dedup, min_chars, max_chars, languages)
