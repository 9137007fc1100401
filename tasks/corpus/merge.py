"""Merge document files from every source into size-capped shards: cleaned, filtered, deduplicated.

Every input document ends up in exactly one place:

- kept, normalized (`tasks.corpus.filters.normalize`), in `OUT/shard_NNNNN.parquet` (the document format),
  or `OUT/shard_NNNNN.txt` with `--format text` (each document followed by the separator line of
  `tasks.corpus.unparquet`, `"\\n<|endoftext|>\\n"`, with the same escaping, so it reads back exactly);
- or rejected, unchanged, in `OUT/rejects/shard_NNNNN.parquet`: the document format plus `reason`
  (e.g. "too-short", "repetition:dup-line-frac", "exact-duplicate", "invalid-utf8") and `duplicate_of` (for
  duplicates, the id of the earlier kept document). A text that is not valid UTF-8 (a parquet string column
  holding other bytes, a latin-1 .txt file) is the one change: its bad bytes are stored as U+FFFD.

Who does what: worker processes (`tasks.corpus.merge_work`, which imports no Prefect) read the inputs in
bounded record batches and do all the per-document work: the length check on the raw text (over 3 x
`max_chars` characters is too-long without normalizing), normalization, filters, exact keys and MinHash
signatures. This process makes the dedup decisions in input order (`decide`) and writes. The worker count
comes from the inputs' uncompressed text size (`merge_work.auto_workers`; `workers=` overrides); the output
is byte-identical whatever it is, and memory stays flat whatever the size of a row group or of the input.

Dedup memory is bounded by a setting (`dedup_memory`, `--dedup-memory`, default 1GB). When the expected
documents (parquet footers) fit in it at the memory path's bytes per document, dedup is in memory
(`dedup.MemoryDedup`, batch by batch). Otherwise it is on disk (`dedup.DiskDedup`), in two passes that judge
each document once: pass 1 keeps every judged batch (text, normalized text, verdict, keys, band keys) in a
scratch folder beside OUT, lz4-compressed, and adds its keys to dedup in input order; pass 2 reads the batches
back in the same order with dedup's decisions and writes. The output is the same byte for byte either way.
The scratch folder takes about the uncompressed input text on disk, and goes at the end or on an error.

Order is deterministic: inputs sorted by path, rows in file order; the first occurrence of a text is
the one kept. Documents sharing an `id` (a page a scraper fetched again after it changed) are one document:
the copies older than the newest `fetched_at` go to rejects with reason "superseded" (and `duplicate_of` their
id), whatever the file order; copies as new as the newest are judged as usual (equal ones: exact duplicates).
Nothing in the output depends on when it ran, so a re-run gives byte-identical files.
Shards roll before `shard_size` bytes of text (a document is never split). The whole of OUT is
built in a temp folder beside it and renamed into place at the end (`model.atomic.atomic_dir`): a
re-run replaces it, never appends, and a crash leaves nothing that looks whole. `OUT/stats.json`,
written last, counts documents and bytes in and out per source, rejects by reason and duplicates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from itertools import islice
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task

from model import storage
from model.atomic import atomic_dir, atomic_write
from model.errors import CookError
from tasks.core.caching import PERSISTED, OutputsCache
from tasks.corpus.dedup import EXACT_BYTES_PER_DOC, NEAR_BYTES_PER_DOC, DiskDedup, MemoryDedup, HashPartitions, open_dedup
from tasks.corpus.documents import (
    REJECTS_DIR,
    REQUIRED,
    SCHEMA,
    TEXT_ESCAPE,
    TEXT_SEPARATOR,
    expand_inputs,
    file_size,
    is_text_documents,
    open_documents,
    suffix,
    text_array,
)
from tasks.corpus.filters import check_languages, default_filters, span_hashes
from tasks.corpus.merge_work import KEY, NORM, SIG, VERDICT, Item, Judge, Pool, auto_workers, conform, plan, read_spill
from tasks.core.progress import progress

FORMATS = ("parquet", "text")
MIN_CHARS = 100
MAX_CHARS = 5_000_000
REJECTS = REJECTS_DIR
STATS = "stats.json"
ROW_GROUP_ROWS = 4096
ROW_GROUP_BYTES = 64 << 20  # a row group is flushed at this much text too: memory stays flat with long documents
REJECT_FIELDS = [pa.field("reason", pa.string()), pa.field("duplicate_of", pa.string())]
DEDUP_MEMORY = "1GB"  # the dedup indexes' memory: past it (expected documents x bytes per document), dedup is on disk
TEXT_DOC_BYTES = 1000  # a cook text file is taken to hold one document per this many bytes (to pick the dedup path)
SPILL_COMPRESSION = "lz4"  # the disk path keeps every judged batch until pass 2: compressed (~2x less disk, ~1 GB/s)

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


def _inputs(inputs, out: str | Path) -> list[Path | str]:
    """Expand inputs, leaving out OUT and its temp folders: a re-run must not eat its own output. Inputs and OUT
    may be URLs (model/storage.py): a URL input is a str."""
    if not inputs:
        raise CookError("no inputs: give document files, folders or globs to merge")
    if storage.is_remote(out):
        return _remote_inputs(inputs, str(out))
    out = Path(out).resolve()
    files = []
    for f in expand_inputs(inputs):
        if isinstance(f, str):  # a URL input: never inside a local OUT
            files.append(f)
            continue
        r = f.resolve()
        if r.is_relative_to(out) or (r.is_relative_to(out.parent) and r.relative_to(out.parent).parts[0].startswith(f".{out.name}.")):
            continue
        files.append(f)
    if not files:
        raise CookError(f"no inputs: every input is inside the output folder {out}")
    return files


def _remote_inputs(inputs, out: str) -> list[Path | str]:
    """`_inputs` for a URL OUT: leave out what is under it or under its temp prefixes (`.NAME.*` beside it)."""
    out = out.rstrip("/")
    temps = storage.join(storage.parent(out), f".{storage.name(out)}.")
    files = [f for f in expand_inputs(inputs)
             if not (isinstance(f, str) and (f.startswith(out + "/") or f.startswith(temps)))]
    if not files:
        raise CookError(f"no inputs: every input is inside the output folder {storage.redact(out)}")
    return files


def _metadata(f: Path | str) -> pq.FileMetaData:
    """A parquet input's footer (a URL: read through fsspec)."""
    return pq.ParquetFile(f).metadata if isinstance(f, Path) else open_documents(f).metadata


def _output_schema(files: list[Path]) -> pa.Schema:
    """The document columns, then every extra column of the inputs (first seen first); CookError on a type clash."""
    fields = list(SCHEMA)
    extra: dict[str, pa.Field] = {}
    for f in files:
        if suffix(f) != ".parquet":
            continue
        arrow = open_documents(f).schema_arrow
        text_array(pa.array([], arrow.field("text").type), str(f))  # a text column that is not text: one line
        for field in arrow:
            if field.name in REQUIRED or field.name in ("reason", "duplicate_of"):
                continue
            seen = extra.get(field.name)
            if seen is None:
                extra[field.name] = pa.field(field.name, field.type)
            elif seen.type != field.type:
                raise CookError(f"{f}: column '{field.name}' is {field.type}, but {seen.type} in an earlier input")
    return pa.schema(fields + list(extra.values()))


def check_merge_args(inputs, out: str | Path, shard_size: str | int = "2GB", fmt: str = "parquet",
                     languages: list[str] | None = None, dedup_memory: str | int = DEDUP_MEMORY) -> list[Path]:
    """Validate before any work starts; return the input files. Raises a one-line CookError."""
    parse_size(shard_size)
    parse_size(dedup_memory)
    if fmt not in FORMATS:
        raise CookError(f"unknown format '{fmt}' (choose {' or '.join(FORMATS)})")
    check_languages(languages)
    files = _inputs(inputs, out)
    _output_schema(files)
    return files


class _Shards:
    """Rolling output shards `shard_NNNNN.parquet|.txt` in one folder, each written atomically.

    `write(batch, nbytes)` takes documents as Arrow rows (`nbytes`: the UTF-8 bytes of each text). A shard rolls
    before a document that would take it past `shard_size` (a document is never split); parquet row groups end
    at ROW_GROUP_ROWS documents or ROW_GROUP_BYTES of text. Both depend only on the rows, never on how they
    were batched, so the bytes written are the same whatever the worker count.
    """

    def __init__(self, folder: Path, fmt: str, schema: pa.Schema, shard_size: int):
        self.folder, self.fmt, self.schema, self.shard_size = folder, fmt, schema, shard_size
        self.names: list[str] = []
        self._ctx = None
        self._file: IO | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[pa.RecordBatch] = []  # the open row group
        self._group_rows = 0
        self._group_bytes = 0
        self._bytes = 0  # text bytes in the open shard

    def write(self, batch: pa.RecordBatch, nbytes: np.ndarray) -> None:
        i, n = 0, batch.num_rows
        while i < n:
            if self._ctx is not None and self._bytes and self._bytes + int(nbytes[i]) > self.shard_size:
                self._close_shard()
            if self._ctx is None:
                self._open_shard()
            over = np.flatnonzero(self._bytes + np.cumsum(nbytes[i:]) > self.shard_size)
            take = n - i if over.size == 0 else max(int(over[0]), 1)
            self._add(batch.slice(i, take), nbytes[i : i + take])
            i += take

    def _add(self, batch: pa.RecordBatch, nbytes: np.ndarray) -> None:
        self._bytes += int(nbytes.sum())
        if self.fmt == "text":
            texts = batch.column("text")
            if texts.null_count:
                texts = texts.fill_null("")
            escaped = pc.replace_substring_regex(texts, TEXT_ESCAPE, r"<|\1")
            framed = pc.binary_join_element_wise(escaped, "", TEXT_SEPARATOR)  # each text + separator
            _, offsets, data = framed.buffers()
            width = 8 if pa.types.is_large_string(framed.type) else 4
            off = np.frombuffer(offsets, dtype=f"<i{width}")[framed.offset : framed.offset + len(framed) + 1]
            self._file.write(memoryview(data)[int(off[0]) : int(off[-1])])
            return
        i, n = 0, batch.num_rows
        while i < n:
            reached = np.flatnonzero(self._group_bytes + np.cumsum(nbytes[i:]) >= ROW_GROUP_BYTES)
            take = min(n - i, ROW_GROUP_ROWS - self._group_rows, int(reached[0]) + 1 if reached.size else n)
            self._rows.append(batch.slice(i, take))
            self._group_rows += take
            self._group_bytes += int(nbytes[i : i + take].sum())
            i += take
            if self._group_rows >= ROW_GROUP_ROWS or self._group_bytes >= ROW_GROUP_BYTES:
                self._flush()

    def _open_shard(self) -> None:
        name = f"shard_{len(self.names):05d}.{'txt' if self.fmt == 'text' else 'parquet'}"
        self.names.append(name)
        if isinstance(self.folder, str):  # a URL: streamed to the store, the object appears whole on close
            self._ctx = storage.atomic_open(storage.join(self.folder, name))
        else:
            self._ctx = atomic_write(self.folder / name, "wb")
        self._file = self._ctx.__enter__()
        if self.fmt == "parquet":
            # fixed options, no timestamps: the same rows give the same bytes; texts are unique and long,
            # so neither dictionaries nor min/max statistics of them pay
            others = [n for n in self.schema.names if n != "text"]
            self._writer = pq.ParquetWriter(self._file, self.schema, compression="zstd", compression_level=3,
                                            use_dictionary=others, write_statistics=others)
        self._bytes = 0

    def _flush(self) -> None:
        if self._rows:
            table = pa.Table.from_batches(self._rows, schema=self.schema).combine_chunks()
            self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
            big = self._group_bytes >= ROW_GROUP_BYTES
            self._rows, self._group_rows, self._group_bytes = [], 0, 0
            del table
            if big:  # hand the encoder's buffers back now: a few of these would hold several times their size
                pa.default_memory_pool().release_unused()

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
        self._rows = []
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        if self._ctx is not None:
            with contextlib.suppress(Exception):
                self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
            self._ctx = self._file = None


_NO_TIME = np.iinfo(np.int64).min  # a missing fetched_at: older than any


def _micros(col) -> np.ndarray:
    """fetched_at values (cast to the output type) as int64 microseconds; missing ones _NO_TIME."""
    return col.cast(pa.int64()).fill_null(_NO_TIME).to_numpy(zero_copy_only=False)


def _id_batches(files: list[Path], schema: pa.Schema) -> Iterator[tuple[pa.Array, pa.Array | None]]:
    """(non-null ids as strings, their fetched_at or None) of the parquet inputs, 65,536 rows at a time."""
    id_field, at_field = schema.field("id"), schema.field("fetched_at")
    for path in files:
        if suffix(path) != ".parquet":
            continue
        pf = open_documents(path)
        names = pf.schema_arrow.names
        if "id" not in names:
            continue
        cols = ["id"] + (["fetched_at"] if "fetched_at" in names else [])
        for b in pf.iter_batches(batch_size=1 << 16, columns=cols):
            i = conform(b.column("id"), id_field, str(path))
            keep = i.is_valid()
            t = conform(b.column("fetched_at"), at_field, str(path)).filter(keep) if "fetched_at" in names else None
            yield i.filter(keep), t


def _id_hashes(ids: pa.Array) -> np.ndarray:
    """A 64-bit hash of each id's UTF-8 bytes, vectorized over the Arrow buffers (equal ids, equal hashes)."""
    ids = ids.cast(pa.large_string())
    _, offsets, data = ids.buffers()
    offsets = np.frombuffer(offsets, dtype=np.int64)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, dtype=np.uint8)
    return span_hashes(data[: offsets[-1]], offsets[:-1], offsets[1:])


def _newest_copies(files: list[Path], schema: pa.Schema, scratch: Path, memory: int, prefix: str = ".ids-") -> dict[str, int]:
    """For each id found more than once in the parquet inputs: the newest `fetched_at` among its copies
    (microseconds; `_micros`).

    Two passes, so memory holds only the ids that repeat, not every id: first a 64-bit hash of every id, in memory
    while 16 B per id fit in `memory`, else in hash-partitioned files under `scratch` (removed after); the
    hashes seen twice are the candidates (a rare hash collision only adds one); then the candidates' ids are
    counted exactly."""
    expected = sum(_metadata(f).num_rows for f in files if suffix(f) == ".parquet")
    on_disk = expected * 16 > memory
    folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=scratch)) if on_disk else None
    try:
        if on_disk:
            parts = HashPartitions(folder, "ids", np.dtype([("h", np.uint64)]), 8, memory // 4)
            for ids, _ in _id_batches(files, schema):
                parts.extend(_id_hashes(ids).view(parts.dtype))
            parts.flush()
            chunks = (np.fromfile(f, dtype=np.uint64) for f in parts.files())
        else:
            chunks = iter([np.concatenate([_id_hashes(ids) for ids, _ in _id_batches(files, schema)] or [np.zeros(0, np.uint64)])])
        repeated = []
        for h in chunks:
            h.sort()
            repeated.append(np.unique(h[1:][h[1:] == h[:-1]]))
        candidates = np.unique(np.concatenate(repeated)) if repeated else np.zeros(0, np.uint64)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    if not candidates.size:
        return {}
    count: Counter = Counter()
    newest: dict[str, int] = {}
    for ids, times in _id_batches(files, schema):
        h = _id_hashes(ids)
        pos = np.minimum(np.searchsorted(candidates, h), candidates.size - 1)
        hit = np.flatnonzero(candidates[pos] == h)
        if not hit.size:
            continue
        names = ids.take(pa.array(hit)).to_pylist()
        when = _micros(times.take(pa.array(hit))) if times is not None else np.full(hit.size, _NO_TIME)
        for name, w in zip(names, when.tolist()):
            count[name] += 1
            newest[name] = max(newest.get(name, _NO_TIME), w)
    return {k: v for k, v in newest.items() if count[k] > 1}


def _source_stats() -> dict:
    return {"documents_in": 0, "bytes_in": 0, "documents_out": 0, "bytes_out": 0, "rejected": Counter()}


def _total_rows(files: list[Path]) -> int:
    return sum(_metadata(f).num_rows if suffix(f) == ".parquet" else 1 for f in files)


def _expected_docs(files: list[Path]) -> int:
    """Documents in `files` as far as is known without reading them: parquet rows from the footers; a cook text
    file one per TEXT_DOC_BYTES (an estimate: it only picks the dedup path); any other .txt file one."""
    n = 0
    for f in files:
        if suffix(f) == ".parquet":
            n += _metadata(f).num_rows
        else:
            n += max(1, file_size(f) // TEXT_DOC_BYTES) if is_text_documents(f) else 1
    return n


def dedup_bytes(docs: int, near_dedup: bool) -> int:
    """The memory path's dedup indexes at `docs` documents, at peak (tasks.corpus.dedup's per-document figures)."""
    return docs * (EXACT_BYTES_PER_DOC + (NEAR_BYTES_PER_DOC if near_dedup else 0))


def _human(n: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n / size:,.4g} {unit}"
    return f"{n} B"


def _logger() -> logging.Logger:
    """Prefect's run logger inside a task, the module's logger when called as a plain function."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return logging.getLogger(__name__)


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
    dedup_memory: int | str = DEDUP_MEMORY,
) -> dict:
    """Merge `inputs` (document files, folders, globs) into `out`; return the stats (also in OUT/stats.json).

    `workers`: processes doing the per-document work (reading, normalizing, filters, keys, signatures);
    default one per WORKER_MIN_BYTES of uncompressed text, at most one per core (and 8); 0 or 1: all in this
    process. The output does not depend on it. Dedup decisions stay in this process, in input order.

    `dedup_memory`: what the dedup indexes may take. When the expected documents (parquet footers) times the
    memory path's bytes per document (`dedup_bytes`) fit, dedup is in memory, batch by batch; otherwise it is on
    disk (`dedup.DiskDedup`) in two passes: the judged batches are kept in a scratch folder beside OUT while
    pass 1 feeds their keys to dedup, then pass 2 reads them back with the decisions and writes. Documents are
    judged once either way, and the output is the same byte for byte.
    """
    remote = storage.is_remote(out)
    out = str(out).rstrip("/") if remote else Path(out)
    files = check_merge_args(inputs, out, shard_size, fmt, languages, dedup_memory)
    size = parse_size(shard_size)
    dedup_limit = parse_size(dedup_memory)
    if min_chars < 0 or max_chars < max(min_chars, 1):
        raise CookError(f"bad length bounds: need 0 <= min chars <= max chars (got {min_chars}, {max_chars})")
    if workers is not None and workers < 0:
        raise CookError(f"bad worker count {workers}: use 0 or 1 (in this process) or more")
    schema = _output_schema(files)
    reject_schema = pa.schema(list(schema) + REJECT_FIELDS)
    config = {"schema": schema, "min_chars": min_chars, "max_chars": max_chars,
              "languages": list(languages) if languages else None, "near_dedup": near_dedup}
    default_filters(min_chars, max_chars, config["languages"])  # fail early on bad filter settings
    items = plan(files)
    if workers is None:
        workers = auto_workers(sum(i.text_bytes for i in items))
    sources: dict[str, dict] = {}
    expected = _expected_docs(files)
    if remote:
        # OUT on object storage: its shards are streamed to a temp prefix beside it, published with stats.json
        # last (storage.staged_dir); the scratch that dedup and the workers need is local, under the cache
        storage.clean_stale(storage.parent(out), re.compile(rf"\.{re.escape(storage.name(out))}\.[a-z0-9_]+\.tmp").fullmatch)
        scratch_root = Path(storage.temp_dir("merge"))
        beside = scratch_root / storage.name(out)  # scratch names as beside a local OUT, in the scratch folder
    else:
        for stale in out.parent.glob(f".{out.name}.*"):  # temp folders of a crashed earlier run
            if stale.is_dir() and (stale.name.endswith(".tmp") or ".old-" in stale.name):
                shutil.rmtree(stale, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch_root, beside = None, out
    try:
        return _merge(files, out, beside, fmt, schema, reject_schema, config, items, workers, sources, expected, size,
                      dedup_limit, near_dedup, min_chars, max_chars, languages)
    finally:
        if scratch_root is not None:
            shutil.rmtree(scratch_root, ignore_errors=True)


def _merge(files, out, beside: Path, fmt, schema, reject_schema, config, items, workers, sources, expected, size,
           dedup_limit, near_dedup, min_chars, max_chars, languages) -> dict:
    """The merge proper (see merge_documents): `out` a Path or a URL; `beside` names the scratch folders, made in
    its parent (OUT itself when local)."""
    newest = _newest_copies(files, schema, beside.parent, dedup_limit, prefix=f".{beside.name}.ids-")
    staged = atomic_dir(out) if isinstance(out, Path) else storage.staged_dir(out, last=STATS)
    with staged as tmp, \
            open_dedup(beside.parent, near=near_dedup, expected_docs=expected, memory=dedup_limit,
                       prefix=f".{beside.name}.dedup-") as dedup:
        on_disk = isinstance(dedup, DiskDedup)
        _logger().info(
            "merge: dedup %s: %s documents expected x %s B each %s the %s setting (--dedup-memory)%s",
            "on disk, two passes" if on_disk else "in memory", f"{expected:,}",
            dedup_bytes(1, near_dedup), "exceed" if on_disk else "fit in",
            _human(dedup_limit), "; the judged batches wait in a scratch folder beside the output for pass 2"
            if on_disk else "")
        remote = isinstance(tmp, str)
        kept = _Shards(tmp, fmt, schema, size)
        rejects = _Shards(storage.join(tmp, REJECTS) if remote else tmp / REJECTS, "parquet", reject_schema, size)
        if not remote:
            (tmp / REJECTS).mkdir()
        rows = _total_rows(files)
        try:
            with progress("merge", total=2 * rows if on_disk else rows) as bar:
                if on_disk:
                    _merge_two_passes(items, {**config, "spill_compression": SPILL_COMPRESSION}, workers, beside, schema,
                                      kept, rejects, dedup, sources, bar, newest)
                else:
                    batches = _judged(items, config, workers, beside)
                    try:
                        _merge_into(batches, schema, kept, rejects, dedup, sources, bar, newest)
                    finally:
                        batches.close()  # stops the workers, removes their scratch folder
            shards, reject_shards = kept.close(), rejects.close()
        except BaseException:
            kept.abort()
            rejects.abort()
            raise
        stats = _summary(sources, files, shards, reject_shards, fmt, near_dedup, min_chars, max_chars, languages)
        with (storage.atomic_open(storage.join(tmp, STATS), "w") if remote else atomic_write(tmp / STATS, "w")) as f:
            json.dump(stats, f, indent=2, sort_keys=True)
            f.write("\n")
    return stats


def _dedup_inputs(stale: list[bool] | None, verdicts: list, keys: list, sigs: list | None, near: bool, bands_per_doc: int):
    """What dedup is given for a batch: (keys, None where the verdict stands without dedup: no key or a stale copy;
    band keys (n, bands) of the eligible documents, zeros elsewhere (None without near-dedup); eligible mask)."""
    n = len(keys)
    live = [None if (stale is not None and stale[i]) else keys[i] for i in range(n)]
    eligible = np.fromiter((live[i] is not None and verdicts[i] is None for i in range(n)), dtype=bool, count=n)
    bands = None
    if near:
        bands = np.zeros((n, bands_per_doc), dtype=np.uint64)
        for i in np.flatnonzero(eligible):
            bands[i] = sigs[i]
    return live, bands, eligible


def _outcome(ids: list[str], stale: list[bool] | None, verdicts: list, live: list, judged) -> tuple[list, list]:
    """(reason or None if kept, duplicate_of) per document from the worker's verdicts and dedup's answers."""
    reasons: list[str | None] = []
    dups: list[str | None] = []
    for i, doc_id in enumerate(ids):
        if stale is not None and stale[i]:
            reason, dup = "superseded", doc_id
        elif live[i] is None:
            reason, dup = verdicts[i], None
        elif judged[i][0] == "exact-duplicate" or (verdicts[i] is None and judged[i][0] is not None):
            reason, dup = judged[i]
        else:
            reason, dup = verdicts[i], None
        reasons.append(reason)
        dups.append(dup)
    return reasons, dups


def decide(ids: list[str], stale: list[bool] | None, verdicts: list, keys: list, sigs: list | None,
           dedup: MemoryDedup) -> tuple[list[str | None], list[str | None]]:
    """The ordered part of a merge: (reason or None if kept, duplicate_of) per document, in input order.

    A stale copy of an id is "superseded"; a document without a dedup key keeps the verdict its worker gave
    (empty, invalid-utf8, too-long before normalization); otherwise an exact duplicate of an earlier document
    that passed the filters, else the filters' verdict, else (near-dedup) a near duplicate of an earlier
    document that passed them, else kept. `duplicate_of` is the root: the earliest kept document of the chain.
    The rule is dedup's (tasks/corpus/dedup.py): it decides a whole batch at once. (The disk path gives dedup
    the same inputs in pass 1 and combines its answers the same way in pass 2: `_merge_two_passes`.)
    """
    live, bands, eligible = _dedup_inputs(stale, verdicts, keys, sigs, dedup.near, dedup.config.bands)
    return _outcome(ids, stale, verdicts, live, dedup.judge(live, bands, eligible, ids))


def _judged(items: list[Item], config: dict, workers: int, scratch_beside: Path) -> Iterator[pa.RecordBatch]:
    """The judged batches of every item, in input order: in this process, or from `workers` worker processes
    (whose results are spilled to a scratch folder beside the output, removed at the end). The workers are
    plain subprocesses (merge_work.Pool), which a daemonic process (a Dask worker) may start too."""
    if workers <= 1 or len(items) <= 1:
        judge = Judge(**config)
        for item in items:
            yield from judge.batches(item)
        return
    with _scratch(scratch_beside) as scratch, Pool(min(workers, len(items)), config, scratch) as pool:
        for _, spill in pool.imap(items):
            yield from read_spill(spill)
            os.unlink(spill)


def _scratch(beside: Path) -> tempfile.TemporaryDirectory:
    """A scratch folder `.OUT.work-*.tmp` beside the output, removed when left (also after an error)."""
    return tempfile.TemporaryDirectory(prefix=f".{beside.name}.work-", suffix=".tmp", dir=beside.parent)


def _spills(items: list[Item], config: dict, workers: int, scratch: Path) -> Iterator[Path]:
    """The judged batches of every item as one Arrow IPC file per item in `scratch`, in input order: written
    by worker processes, or here (one worker or none)."""
    if workers <= 1 or len(items) <= 1:
        judge = Judge(**config)
        for k, item in enumerate(items):
            spill = scratch / f"item-{k:08d}.arrows"
            judge.spill(item, str(spill))
            yield spill
        return
    with Pool(min(workers, len(items)), config, scratch) as pool:
        for _, spill in pool.imap(items):
            yield spill


def _columns(b: pa.RecordBatch, newest: dict[str, int], sig_dtype: np.dtype | None):
    """(ids, stale, verdicts, keys, band keys or None) of a judged batch."""
    ids = b.column("id").to_pylist()
    sigs = None
    if sig_dtype is not None:
        sigs = [None if s is None else np.frombuffer(s, sig_dtype) for s in b.column(SIG).to_pylist()]
    return ids, _stale(b, ids, newest), b.column(VERDICT).to_pylist(), b.column(KEY).to_pylist(), sigs


def _sig_dtype(b: pa.RecordBatch) -> np.dtype:
    return np.dtype(b.schema.field(SIG).metadata[b"dtype"].decode())


def _merge_two_passes(items: list[Item], config: dict, workers: int, out: Path, schema: pa.Schema, kept: _Shards,
                      rejects: _Shards, dedup: DiskDedup, sources: dict, bar, newest: dict[str, int]) -> None:
    """The disk path: every document is judged once. Pass 1 keeps the judged batches (scratch files beside OUT)
    and adds their keys to `dedup` in input order; pass 2 reads them back in the same order, with `dedup`'s
    decisions, and writes them as `_merge_into` does. The scratch folder is removed at the end, or on an error."""
    names = schema.names
    with _scratch(out) as scratch:
        scratch = Path(scratch)
        spills: list[Path] = []
        sig_dtype = None
        made = _spills(items, config, workers, scratch)
        try:
            for spill in made:  # pass 1
                spills.append(spill)
                for b in read_spill(spill):
                    if dedup.near and sig_dtype is None:
                        sig_dtype = _sig_dtype(b)
                    _, stale, verdicts, keys, sigs = _columns(b, newest, sig_dtype)
                    live, bands, eligible = _dedup_inputs(stale, verdicts, keys, sigs, dedup.near, dedup.config.bands)
                    dedup.add(live, bands, eligible, b.column("id").to_pylist())
                    bar.advance(b.num_rows)
        finally:
            made.close()  # stops the workers
        decisions = dedup.decisions()
        for spill in spills:  # pass 2
            for b in read_spill(spill):
                n = b.num_rows
                ids, stale, verdicts, keys, _ = _columns(b, newest, None)
                live = [None if (stale is not None and stale[i]) else keys[i] for i in range(n)]
                judged = list(islice(decisions, n))
                if len(judged) != n:
                    raise RuntimeError(f"dedup gave {len(judged)} decisions for a batch of {n} documents")
                reasons, dups = _outcome(ids, stale, verdicts, live, judged)
                _route(b, names, reasons, dups, kept, rejects, sources)
                bar.advance(n)
            os.unlink(spill)
        if next(decisions, None) is not None:
            raise RuntimeError("dedup gave more decisions than there were documents")


def _stale(batch: pa.RecordBatch, ids: list[str], newest: dict[str, int]) -> list[bool] | None:
    """Which rows are copies of an id older than its newest copy (None: none are)."""
    if not newest:
        return None
    at = [i for i, doc_id in enumerate(ids) if doc_id in newest]
    if not at:
        return None
    when = _micros(batch.column("fetched_at"))
    stale = [False] * len(ids)
    for i in at:
        stale[i] = bool(when[i] < newest[ids[i]])
    return stale


def _merge_into(batches: Iterator[pa.RecordBatch], schema: pa.Schema, kept: _Shards, rejects: _Shards,
                dedup: MemoryDedup, sources: dict, bar, newest: dict[str, int] | None = None) -> None:
    """Route every judged document, in order, to `kept` (normalized) or `rejects` (as it came, with its reason),
    counting per source. The decisions are `decide`'s; everything per document was done by the workers."""
    newest = newest or {}
    names = schema.names
    sig_dtype = None
    for b in batches:
        if dedup.near and sig_dtype is None:
            sig_dtype = _sig_dtype(b)
        reasons, dups = decide(*_columns(b, newest, sig_dtype), dedup)
        _route(b, names, reasons, dups, kept, rejects, sources)
        bar.advance(b.num_rows)


def _route(b: pa.RecordBatch, names: list[str], reasons: list, dups: list, kept: _Shards, rejects: _Shards,
           sources: dict) -> None:
    """Write one judged batch: kept rows (normalized) to `kept`, the others as they came, with their reason and
    `duplicate_of`, to `rejects`; count them per source."""
    n = b.num_rows
    keep = np.fromiter((r is None for r in reasons), dtype=bool, count=n)
    bytes_in = pc.binary_length(b.column("text")).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    bytes_out = np.zeros(0, dtype=np.int64)
    if keep.any():
        rows = b if keep.all() else b.filter(pa.array(keep))
        norm = rows.column(NORM)
        text = rows.column("text") if norm.null_count == len(norm) else pc.coalesce(norm, rows.column("text"))
        bytes_out = pc.binary_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
        kept.write(pa.RecordBatch.from_arrays([text if c == "text" else rows.column(c) for c in names], schema=kept.schema),
                   bytes_out)
    if not keep.all():
        drop = ~keep
        at = np.flatnonzero(drop)
        rows = b if not keep.any() else b.filter(pa.array(drop))
        why = [pa.array([reasons[i] for i in at], pa.string()), pa.array([dups[i] for i in at], pa.string())]
        rejects.write(pa.RecordBatch.from_arrays([rows.column(c) for c in names] + why, schema=rejects.schema),
                      bytes_in[drop])
    _count(sources, b.column("source"), keep, bytes_in, bytes_out, reasons)


def _count(sources: dict, source: pa.Array, keep: np.ndarray, bytes_in: np.ndarray, bytes_out: np.ndarray,
           reasons: list) -> None:
    """Add one batch to the per-source counts (`bytes_out`: of the kept rows only)."""
    enc = pc.dictionary_encode(source)
    idx = enc.indices.to_numpy(zero_copy_only=False)
    names = enc.dictionary.to_pylist()
    k = len(names)
    docs_in, docs_out = np.bincount(idx, minlength=k), np.bincount(idx[keep], minlength=k)
    b_in = np.bincount(idx, weights=bytes_in, minlength=k)  # float64: exact below 2**53 bytes a batch
    b_out = np.bincount(idx[keep], weights=bytes_out, minlength=k)
    for j, name in enumerate(names):
        st = sources.get(name) or sources.setdefault(name, _source_stats())
        st["documents_in"] += int(docs_in[j])
        st["bytes_in"] += int(round(b_in[j]))
        st["documents_out"] += int(docs_out[j])
        st["bytes_out"] += int(round(b_out[j]))
    for i in np.flatnonzero(~keep):
        sources[names[idx[i]]]["rejected"][reasons[i]] += 1


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
        "inputs": [storage.redact(str(f)) for f in files],
        "format": fmt,
        "near_dedup": near_dedup,
        "min_chars": min_chars,
        "max_chars": max_chars,
        "languages": list(languages) if languages else None,
    }


@task(
    name="merge",
    cache_policy=OutputsCache(outputs=lambda i: [storage.join(i["out"], STATS) if storage.is_remote(i["out"]) else Path(i["out"]) / STATS],
                              version="2", exclude=("workers", "dedup_memory")),
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
    workers: int | None = None,
    dedup_memory: int | str = DEDUP_MEMORY,
) -> dict:
    """Prefect wrapper of `merge_documents`; cached on input fingerprints and parameters (not `workers` nor
    `dedup_memory`: the output depends on neither) while OUT/stats.json exists."""
    return merge_documents(inputs, out, shard_size, fmt, near_dedup, min_chars, max_chars, languages, workers,
                           dedup_memory)
