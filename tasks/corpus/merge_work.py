"""The per-document work of `cook merge`, done in worker processes that import no Prefect.

`tasks.corpus.merge` plans the inputs as work items (`plan`): a run of record batches of one parquet row
group, or one whole .txt file. A `Judge` reads an item in bounded record batches (about READ_BATCH_BYTES
each; one longer document is a batch of its own) and does everything that depends on one document only:

- the text column as UTF-8 strings (`documents.text_array`: dictionaries decoded, invalid UTF-8 found);
- the length check on the raw text: a text over LONG_FACTOR x `max_chars` characters is "too-long" without
  being normalized (normalization only removes \\r of \\r\\n, control characters and composable marks, so
  a text it shrinks three times is not prose; and its cost and memory stay bounded whatever comes in);
- `filters.normalize`, the filter chain (`first_rejections`), the exact-dedup key (`dedup.text_key`) and,
  with near-dedup, the MinHash signature of each document the filters keep;
- the other columns cast to the output schema (missing ids made from the file name and row).

It returns Arrow record batches: the output columns (text as it came in), then NORM (the normalized text,
null where normalization changed nothing), VERDICT (the filter's or reader's reason, null when kept), KEY
(null: no dedup for this row, the verdict stands) and SIG (near-dedup only). The main process makes the
ordered dedup decisions from these and writes.

`Pool` runs Judges in `python -m tasks.corpus.merge_work` processes (not multiprocessing's spawn, which
imports the parent's `__main__`, and with it Prefect, into every worker). Each worker spills an item's
batches to an Arrow IPC stream file in a scratch folder and reports it; `Pool.imap` hands the files back in
item order, at most `ahead` items beyond the one being consumed: the output never depends on which worker
finished first, and memory stays one batch per process whatever the size of a row group or of the input.
The memory path deletes each file once read; the dedup disk path keeps them all for its second pass
(`merge._merge_two_passes`), lz4-compressed (`spill_compression`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import traceback
from dataclasses import astuple, dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model import storage
from model.errors import CookError
from tasks.corpus.dedup import band_keys, text_key
from tasks.corpus.documents import file_size, is_text_documents, open_documents, read_text_documents, suffix, text_array
from tasks.corpus.filters import default_filters, first_rejections, normalize

# Text judged at once (a longer document is a batch of its own): the filters use ~40x their batch in temporary
# arrays; 1 MB is as fast as 4 (per-batch costs are small) for a third of the memory.
READ_BATCH_BYTES = 1 << 20
# Rows per read at most: the footer's sizes are of the encoded data (a dictionary hides repeated texts), so a
# read is bounded in rows too, and reads are gathered up to READ_BATCH_BYTES of decoded data before judging.
READ_ROWS = 1024
ITEM_BATCHES = 8  # reads per work item: a big row group is shared between workers
ITEMS_PER_GROUP = 8  # ...by at most this many items, since iter_batches cannot skip rows (decoding 4.5x it at most)
LONG_FACTOR = 3  # raw text over LONG_FACTOR x max_chars characters: too-long, not normalized
WORKER_MIN_BYTES = 16 << 20  # uncompressed text per worker process (one starts in ~0.4 s)
MAX_WORKERS = 8
NORM, VERDICT, KEY, SIG = "_norm", "_verdict", "_key", "_sig"
TXT_SOURCE = "text"


@dataclass(frozen=True)
class Item:
    """A slice of one input: batches [first_batch, first_batch + batches) of a row group (`batch_rows` rows
    each), whose first row is row `first_row` of its file; or (row_group -1) a whole .txt file."""

    path: str
    row_group: int = -1
    first_row: int = 0
    batch_rows: int = 0
    first_batch: int = 0
    batches: int = 1
    text_bytes: int = 0

    @property
    def where(self) -> str:
        return self.path if self.row_group < 0 else f"{self.path} (row group {self.row_group})"


def plan(files: list[Path | str]) -> list[Item]:
    """The work items of `files` (paths, or URLs that every worker opens itself), in input order (from the parquet
    metadata: nothing is read but footers)."""
    items = []
    for path in files:
        path = path if storage.is_remote(path) else Path(path).absolute()
        if suffix(path) != ".parquet":
            items.append(Item(str(path), text_bytes=file_size(path)))
            continue
        md = open_documents(path).metadata
        row = 0
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            rows = rg.num_rows
            if rows == 0:
                continue
            text = sum(rg.column(j).total_uncompressed_size for j in range(rg.num_columns)
                       if rg.column(j).path_in_schema.split(".")[0] == "text")
            batch_rows = max(1, min(rows, READ_ROWS, READ_BATCH_BYTES * rows // max(rg.total_byte_size, 1)))
            n = -(-rows // batch_rows)
            # an item after the first re-reads (and drops) the batches before it: at most ITEMS_PER_GROUP items
            per_item = max(ITEM_BATCHES, -(-n // ITEMS_PER_GROUP))
            for first in range(0, n, per_item):
                k = min(per_item, n - first)
                items.append(Item(str(path), g, row, batch_rows, first, k, text * k // n))
            row += rows
    return items


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_workers(text_bytes: int) -> int:
    """Worker processes for this much uncompressed text: one per WORKER_MIN_BYTES, at most one per core (and 8)."""
    return max(1, min(cpu_count(), MAX_WORKERS, text_bytes // WORKER_MIN_BYTES))


def _fail(where: str, column: str, col, field: pa.Field, e: Exception) -> CookError:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return CookError(f"{where}: documents do not fit the document format (column '{column}' is {col.type}, "
                     f"not {field.type}: {line})")


def conform(col, field: pa.Field, where: str):
    """A column cast to its output type; CookError naming the file and column when it cannot be."""
    if col.type == field.type:
        return col
    try:
        return col.cast(field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise _fail(where, field.name, col, field, e) from None


def _utf8_repaired(texts: pa.Array, bad: np.ndarray) -> pa.Array:
    """`texts` with each invalid UTF-8 row decoded with U+FFFD replacements (a string column must hold UTF-8)."""
    idx = pa.array(np.flatnonzero(bad))
    binary = pa.large_binary() if pa.types.is_large_string(texts.type) else pa.binary()
    fixed = [b.decode("utf-8", "replace") for b in texts.take(idx).cast(binary).to_pylist()]
    return pc.replace_with_mask(texts, pa.array(bad), pa.array(fixed, texts.type))


class Judge:
    """Does the per-document work of a merge for any work item (see the module's docstring)."""

    def __init__(self, schema: pa.Schema, min_chars: int, max_chars: int, languages: list[str] | None, near_dedup: bool,
                 spill_compression: str | None = None):
        self.schema = schema
        self.spill_options = pa.ipc.IpcWriteOptions(compression=spill_compression)  # the disk path keeps its spills: lz4
        self.filters = default_filters(min_chars, max_chars, languages)
        self.near = near_dedup
        self.long = LONG_FACTOR * max_chars
        extra = [pa.field(NORM, pa.string()), pa.field(VERDICT, pa.string()), pa.field(KEY, pa.binary())]
        if self.near:  # LSH band keys (dedup.band_keys), uint64
            extra.append(pa.field(SIG, pa.binary(), metadata={"dtype": np.dtype(np.uint64).str}))
        self.out_schema = pa.schema(list(schema) + extra)
        self._pf = (None, None)

    # --- reading -----------------------------------------------------------------------------------------

    def _parquet(self, path: str):
        if self._pf[0] != path:
            self._pf = (path, open_documents(path))
        return self._pf[1]

    def _read(self, item: Item) -> Iterator[tuple[pa.RecordBatch, int]]:
        """(raw batch, its first row in the file) for each batch of `item`."""
        if item.row_group < 0:
            yield from self._read_txt(item.path if storage.is_remote(item.path) else Path(item.path))
            return
        pf = self._parquet(item.path)
        names = pf.schema_arrow.names
        cols = [c for c in self.schema.names if c in names]
        row = item.first_row
        if item.first_batch == 0 and item.batch_rows >= pf.metadata.row_group(item.row_group).num_rows:
            # the whole row group is one batch (one long document): read it whole, so the reader's page and
            # dictionary buffers are freed before the batch goes on, not held beside it
            for b in pf.read_row_group(item.row_group, columns=cols, use_threads=False).to_batches():
                yield b, row
                row += b.num_rows
            return
        batches = pf.iter_batches(batch_size=item.batch_rows, row_groups=[item.row_group], columns=cols, use_threads=False)
        try:
            for k, b in enumerate(batches):
                if k >= item.first_batch + item.batches:
                    break
                if k >= item.first_batch:
                    yield b, row
                row += b.num_rows
        finally:
            batches.close()

    def _read_txt(self, path: Path | str) -> Iterator[tuple[pa.RecordBatch, int]]:
        """A cook text file (a path or a URL): its documents (ids `NAME:i`), in bounded batches; any other .txt: one
        document, whose bytes are wrapped as a string array, unchecked, until `text_array` checks them (invalid
        UTF-8 is a reject, not an error)."""
        name = storage.name(path)
        base = {"source": TXT_SOURCE, "url": "", "title": PurePosixPath(name).stem}

        def batch(texts, ids):
            n = len(ids)
            cols = {k: pa.array([v] * n, pa.string()) for k, v in base.items()}
            return pa.record_batch({"id": pa.array(ids, pa.string()), **cols, "text": texts})

        if not is_text_documents(path):
            data = pa.py_buffer(path.read_bytes() if isinstance(path, Path) else storage.read_bytes(path))  # wrapped, not copied
            large = data.size >> 31
            offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64 if large else np.int32).tobytes())
            yield batch(pa.Array.from_buffers(pa.large_string() if large else pa.string(), 1, [None, offsets, data]), [name]), 0
            return
        texts, size, first, i = [], 0, 0, 0
        for i, t in enumerate(read_text_documents(path)):
            texts.append(t)
            size += len(t)
            if size >= READ_BATCH_BYTES:
                yield batch(pa.array(texts, pa.string()), [f"{name}:{j}" for j in range(first, i + 1)]), first
                texts, size, first = [], 0, i + 1
        if texts:
            yield batch(pa.array(texts, pa.string()), [f"{name}:{j}" for j in range(first, first + len(texts))]), first

    # --- judging -------------------------------------------------------------------------------------------

    def batches(self, item: Item) -> Iterator[pa.RecordBatch]:
        """The judged batches of one work item (columns: `out_schema`): reads gathered up to READ_BATCH_BYTES."""
        gathered: list[pa.RecordBatch] = []
        size = first = 0
        for raw, row in self._read(item):
            if not gathered:
                first = row
            gathered.append(raw)
            size += raw.nbytes
            if size >= READ_BATCH_BYTES:
                yield self.judge(gathered[0] if len(gathered) == 1 else pa.concat_batches(gathered), first, item.path)
                gathered, size = [], 0
        if gathered:
            yield self.judge(gathered[0] if len(gathered) == 1 else pa.concat_batches(gathered), first, item.path)

    def judge(self, raw: pa.RecordBatch, first_row: int, where: str) -> pa.RecordBatch:
        n = raw.num_rows
        texts, bad = text_array(raw.column("text"), where)  # a bare .txt file's bytes are checked here too
        if bad is not None:
            texts = _utf8_repaired(texts, bad)
        if not pa.types.is_string(texts.type):
            texts = conform(texts, self.schema.field("text"), where)
        verdict: list[str | None] = [None] * n
        lengths = pc.utf8_length(texts).fill_null(0).to_numpy(zero_copy_only=False)
        skip = lengths == 0
        for i in np.flatnonzero(skip):
            verdict[i] = "empty"
        if bad is not None:
            for i in np.flatnonzero(bad):
                verdict[i] = "invalid-utf8"
            skip |= bad
        long = ~skip & (lengths > self.long)
        for i in np.flatnonzero(long):
            verdict[i] = "too-long"
        todo = np.flatnonzero(~(skip | long))

        columns = self._columns(raw, texts, first_row, where)
        sources = columns[self.schema.get_field_index("source")]
        norm: list[str | None] = [None] * n
        keys: list[bytes | None] = [None] * n
        sigs: list[bytes | None] = [None] * n
        live, docs = [], []
        if todo.size:
            src = sources.take(pa.array(todo)).to_pylist()
            for i, s, t in zip(todo.tolist(), src, texts.take(pa.array(todo)).to_pylist()):
                u = normalize(t)
                if not u or u.isspace():
                    verdict[i] = "empty"
                    continue
                if u is not t and u != t:
                    norm[i] = u
                live.append(i)
                docs.append({"source": s, "text": u})
        passing = []
        for i, d, r in zip(live, docs, first_rejections(docs, self.filters)):
            verdict[i] = r or None
            keys[i] = text_key(d["text"])
            if r is None:
                passing.append((i, d["text"]))
        if self.near and passing:  # one vectorized call for the batch
            for (i, _), row in zip(passing, band_keys([t for _, t in passing])):
                sigs[i] = row.tobytes()
        extra = [pa.array(norm, pa.string()), pa.array(verdict, pa.string()), pa.array(keys, pa.binary())]
        if self.near:
            extra.append(pa.array(sigs, pa.binary()))
        return pa.RecordBatch.from_arrays(columns + extra, schema=self.out_schema)

    def _columns(self, raw: pa.RecordBatch, texts: pa.Array, first_row: int, where: str) -> list:
        """The output columns of a raw batch: cast to the schema, missing ones null, ids filled in, source set."""
        n = raw.num_rows
        names = raw.schema.names
        name = Path(where).name
        out = []
        for field in self.schema:
            if field.name == "text":
                out.append(texts)
                continue
            col = conform(raw.column(field.name), field, where) if field.name in names else pa.nulls(n, field.type)
            if field.name == "id" and col.null_count:
                ids = col.to_pylist()
                col = pa.array([v if v is not None else f"{name}:{first_row + k}" for k, v in enumerate(ids)], pa.string())
            elif field.name == "source" and col.null_count:
                col = col.fill_null("unknown")
            out.append(col)
        return out

    # --- in a worker process -------------------------------------------------------------------------------

    def spill(self, item: Item, path: str) -> int:
        """Judge `item` into an Arrow IPC stream file at `path`; return its rows."""
        rows = 0
        with pa.OSFile(path, "wb") as f, pa.ipc.new_stream(f, self.out_schema, options=self.spill_options) as w:
            for b in self.batches(item):
                w.write_batch(b)
                rows += b.num_rows
        return rows


def read_spill(path: str | os.PathLike) -> Iterator[pa.RecordBatch]:
    """The batches a worker spilled, one at a time (read, not mapped: memory is one batch)."""
    with pa.OSFile(str(path)) as f:
        yield from pa.ipc.open_stream(f)


class Pool:
    """`workers` processes running `python -m tasks.corpus.merge_work`; `imap(items)` yields (item, spill file)
    in item order. Use as a context manager: on leaving, workers are stopped (killed on an error)."""

    def __init__(self, workers: int, config: dict, scratch: str | os.PathLike, ahead: int | None = None):
        self.scratch = Path(scratch)
        self.ahead = ahead or 2 * workers
        self._procs: list[tuple[subprocess.Popen, Connection, Connection]] = []
        root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        try:
            for _ in range(workers):
                c_in, p_out = os.pipe()
                p_in, c_out = os.pipe()
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "tasks.corpus.merge_work", str(c_in), str(c_out)],
                                            pass_fds=(c_in, c_out), env=env, cwd=root, stdin=subprocess.DEVNULL)
                except BaseException:
                    os.close(p_out)
                    os.close(p_in)
                    raise
                finally:
                    os.close(c_in)
                    os.close(c_out)
                send, recv = Connection(p_out, readable=False), Connection(p_in, writable=False)
                self._procs.append((proc, send, recv))
                send.send(config)
        except BaseException:
            self.close(kill=True)
            raise

    def imap(self, items: list[Item]) -> Iterator[tuple[Item, Path]]:
        idle = list(range(len(self._procs)))
        busy: dict[Connection, tuple[int, int]] = {}  # result pipe -> (worker, item index)
        done: dict[int, Path] = {}
        sent = 0
        for want in range(len(items)):
            while want not in done:
                while idle and sent < len(items) and sent - want < self.ahead:
                    k = idle.pop()
                    spill = self.scratch / f"item-{sent:08d}.arrows"
                    self._procs[k][1].send((sent, astuple(items[sent]), str(spill)))
                    busy[self._procs[k][2]] = (k, sent)
                    sent += 1
                for conn in wait(list(busy)):
                    k, index = busy.pop(conn)
                    try:
                        status, payload = conn.recv()
                    except (EOFError, OSError):
                        proc = self._procs[k][0]
                        raise CookError(f"a merge worker process died (exit code {proc.wait()}) "
                                        f"while reading {items[index].where}") from None
                    idle.append(k)
                    if status == "cook":
                        raise CookError(payload)
                    if status != "ok":
                        raise RuntimeError(f"merge worker failed on {items[index].where}: {payload}")
                    done[index] = self.scratch / f"item-{index:08d}.arrows"
            yield items[want], done.pop(want)

    def close(self, kill: bool = False) -> None:
        for proc, send, _ in self._procs:
            if kill:
                proc.kill()
            else:
                try:
                    send.send(None)
                except OSError:
                    proc.kill()
        for proc, send, recv in self._procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            send.close()
            recv.close()
        self._procs = []

    def __enter__(self) -> "Pool":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(kill=exc_type is not None)


def _serve(fd_in: int, fd_out: int) -> None:
    """A worker process: read the config, then judge items into spill files until told to stop (None)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle: it stops us
    recv, send = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    judge = Judge(**recv.recv())
    while (msg := recv.recv()) is not None:
        _, item, spill = msg
        item = Item(*item)
        try:
            send.send(("ok", judge.spill(item, spill)))
        except CookError as e:
            send.send(("cook", str(e)))
        except Exception as e:
            send.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))
