"""Read a dump's bytes fast: decompression, segmenting into whole pages, ordered parallel map.

How a dump reader uses the cores (tasks/sources/wikidump.py parses; this module moves bytes):

- A plain or single-stream `.xml.bz2` dump is decompressed and cut into segments of whole `<page>` blocks by a
  reader thread that runs ahead of the consumer (`ahead`): both bz2 decoders release the GIL, so decompression
  overlaps with parsing even when everything runs in one process.
- bz2 is decoded by the standard library on that thread (libbz2 releases the GIL). With 4 or more workers,
  one decoder thread cannot keep up with the parsers (~30 MB/s of XML per core), so when `indexed_bzip2` is
  installed it decodes the blocks of the single stream on `workers // 2` threads (it releases the GIL in that
  mode; with one thread it does not, so one thread is always libbz2). A file that does not end with a bz2
  end-of-stream marker (a cut-off download) is read by the standard library from the start; a decoding error
  part-way falls back to it from the same byte. Either way the bytes are those the standard library gives, and
  so are the truncation and corruption verdicts (`ReadState`).
- `ordered` maps the segments over spawned worker processes (no Prefect imported there), at most
  2 x workers in flight, results in input order. Workers are warmed up (spawned, parsing module imported) while
  the first segment is being decompressed.
- A multistream dump (bz2 streams + index) needs none of this: each worker decompresses its own byte range
  (`decompress_streams`), so every core decompresses.

Memory stays constant: at most `AHEAD` segments wait in the reader's queue, and 2 x workers are in flight.
"""

from __future__ import annotations

import bz2
import collections
import importlib
import os
import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

from model.errors import CookError
from tasks.core.spawn import process_pool

try:  # optional: a faster (and parallel) bz2 decoder; the standard library is the fallback
    import indexed_bzip2
except ImportError:  # pragma: no cover - depends on the install
    indexed_bzip2 = None

READ_BYTES = 1 << 20  # compressed (or plain) bytes read at a time by the standard-library path
IBZ2_READ_BYTES = 4 << 20  # decompressed bytes asked of indexed_bzip2 at a time
SEGMENT_BYTES = 4 << 20  # decompressed XML per work item (plain / bz2 dumps)
MAX_PAGE_BYTES = 256 << 20  # a "page" larger than this is not a page: refuse instead of buffering on
AHEAD = 2  # segments the reader thread may hold ready beyond the one being cut
HEADER_BYTES = 1 << 20  # decompressed bytes that must show the dump's header (before the first <page>)

_EOS_MAGIC = 0x177245385090  # bz2 end-of-stream marker (sqrt(pi)), then a 32-bit CRC and 0-7 pad bits


class ReadState:
    """What the reader learnt: compressed bytes read so far, whether the dump ended cleanly, which decoder."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.truncated = False
        self.reason = ""
        self.decoder = ""


# --- decompression -------------------------------------------------------------------------------


def ends_with_stream_end(path: str | os.PathLike) -> bool:
    """Whether the file's last bytes are a bz2 end-of-stream marker: a cut-off download's are not
    (a cut exactly at a stream boundary of a multistream file is, and reads the same either way)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size < 14:
            return False
        f.seek(size - 11)
        tail = int.from_bytes(f.read(11), "big")
    return any((tail >> (32 + pad)) & 0xFFFFFFFFFFFF == _EOS_MAGIC for pad in range(8))


def _stdlib_bz2_chunks(path: Path, state: ReadState, skip: int = 0) -> Iterator[bytes]:
    """Decompressed bytes of a bz2 (possibly multi-stream) file by the standard library, less the first `skip`;
    flags a cut-off or corrupt stream on `state`; a file that is no bz2 at all is a CookError."""
    with open(path, "rb") as f:
        d, fed = bz2.BZ2Decompressor(), False
        while True:
            c = f.read(READ_BYTES)
            if not c:
                break
            state.bytes_read = f.tell()
            while c is not None:
                try:  # at most SEGMENT_BYTES out per call: a bz2 bomb (50 MB from 81 bytes) never lands whole
                    out = d.decompress(c, max_length=SEGMENT_BYTES)
                except OSError as e:
                    if state.bytes_read <= READ_BYTES and not fed:
                        raise CookError(f"{path}: not a valid bz2 file ({e})") from None
                    state.truncated, state.reason = True, f"corrupt bz2 data near byte {state.bytes_read} ({e})"
                    return
                fed = True
                if skip:
                    drop = min(skip, len(out))
                    out, skip = out[drop:], skip - drop
                if out:
                    yield out
                if d.eof:  # the next stream, if this chunk holds one
                    rest, d, fed = d.unused_data, bz2.BZ2Decompressor(), False
                    c = rest or None
                else:  # more output from the input already given, or the next chunk
                    c = None if d.needs_input else b""
        if fed:
            state.truncated, state.reason = True, "the bz2 stream ends before its end-of-stream marker"


def _ibz2_chunks(path: Path, state: ReadState, threads: int) -> Iterator[bytes]:
    """Decompressed bytes by indexed_bzip2; on any decoding error, the standard library from the same byte on."""
    size = path.stat().st_size
    done = 0
    failed = False
    try:
        f = indexed_bzip2.open(str(path), parallelization=threads)
    except Exception:  # noqa: BLE001 - not decodable by it: the standard library gives the verdict
        f, failed = None, True
    if f is not None:
        reader = getattr(getattr(f, "raw", None), "bz2reader", None)
        try:
            while True:
                try:
                    out = f.read(IBZ2_READ_BYTES)
                    bits = reader.tell_compressed() if reader is not None else 0
                except Exception:  # noqa: BLE001 - corrupt data: exact verdict from the standard library
                    failed = True
                    break
                if not out:
                    break
                done += len(out)
                state.bytes_read = min(size, bits // 8) if bits else state.bytes_read
                yield out
        finally:
            f.close()
    if failed:
        state.decoder = "bz2" if not done else state.decoder + "+bz2"
        yield from _stdlib_bz2_chunks(path, state, skip=done)
    else:
        state.bytes_read = size


def decompressed_chunks(path: str | os.PathLike, state: ReadState, kind: str, threads: int = 1,
                        use_ibz2: bool = True) -> Iterator[bytes]:
    """The decompressed bytes of a dump whose content is `kind` ("xml" or "bz2", see wikidump.dump_kind).

    bz2: by indexed_bzip2 on `threads` (>= 2) decoder threads when it is installed (and `use_ibz2`) and the file
    ends with an end-of-stream marker, else by the standard library; the bytes are the same either way. One
    thread is always the standard library's: indexed_bzip2 1.7 with `parallelization=1` holds the GIL while it
    decodes (the rest of the process, the pool feeding the workers included, stalls up to ~150 ms at a time),
    while libbz2 and indexed_bzip2's parallel mode release it."""
    path = Path(path)
    if kind == "xml":
        state.decoder = "none"
        with open(path, "rb") as f:
            while chunk := f.read(SEGMENT_BYTES):
                state.bytes_read = f.tell()
                yield chunk
        return
    if use_ibz2 and indexed_bzip2 is not None and threads >= 2 and ends_with_stream_end(path):
        state.decoder = f"indexed_bzip2x{threads}"
        yield from _ibz2_chunks(path, state, max(1, threads))
    else:
        state.decoder = "bz2"
        yield from _stdlib_bz2_chunks(path, state)


def decompress_streams(data: bytes, limit: int = MAX_PAGE_BYTES) -> tuple[bytes, bool]:
    """Decompress concatenated bz2 streams; (xml, complete). An incomplete last stream gives what it had.

    More than `limit` bytes out is a CookError, not a page: a bz2 bomb never lands whole in memory."""
    parts: list[bytes] = []
    total = 0
    while data:
        d = bz2.BZ2Decompressor()
        try:
            out = d.decompress(data, max_length=limit - total + 1)
        except OSError:
            return b"".join(parts), False
        total += len(out)
        if total > limit:
            raise CookError(f"bz2 streams of {len(data):,} bytes decompress to over {limit >> 20} MB "
                            "(not a pages-articles dump?)")
        parts.append(out)
        if not d.eof:
            return b"".join(parts), False
        data = d.unused_data
    return b"".join(parts), True


def read_streams(path: str | os.PathLike, start: int, end: int) -> tuple[bytes, bool, int]:
    """Multistream: (decompressed XML of the bz2 streams in bytes [start, end) of `path`, whether they were all
    complete, compressed bytes read)."""
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    try:
        xml, complete = decompress_streams(raw, MAX_PAGE_BYTES)
    except CookError as e:
        raise CookError(f"{path}: bytes {start}-{end}: {e}") from None
    return xml, complete and len(raw) == end - start, len(raw)


# --- segments of whole pages -----------------------------------------------------------------------


def segments(chunks: Iterable[bytes], state: ReadState, path: Path,
             check_header: Callable[[bytes, Path], None]) -> Iterator[bytes]:
    """Cut decompressed XML into segments of whole pages (~SEGMENT_BYTES each). `check_header(head, path)` sees
    the bytes before the first `<page>` (at most HEADER_BYTES) before any segment is given out. At the end,
    flags a cut-off page or a missing `</mediawiki>` on `state` (unless the decompressor already did)."""
    buf = b""
    checked = False
    for chunk in chunks:
        buf = buf + chunk if buf else chunk
        if not checked:
            first = buf.find(b"<page>")
            if first < 0 and len(buf) < HEADER_BYTES:
                continue
            check_header(buf[: first if first >= 0 else HEADER_BYTES], path)
            checked = True
        if len(buf) >= SEGMENT_BYTES:
            cut = buf.rfind(b"</page>")
            if cut >= 0:
                yield buf[: cut + 7]
                buf = buf[cut + 7:]
            elif len(buf) > MAX_PAGE_BYTES:
                raise CookError(f"{path}: a page over {MAX_PAGE_BYTES >> 20} MB near byte {state.bytes_read} "
                                "(not a pages-articles dump?)")
    if not checked:
        first = buf.find(b"<page>")
        check_header(buf[: first if first >= 0 else HEADER_BYTES], path)
    cut = buf.rfind(b"</page>")
    if cut >= 0:
        yield buf[: cut + 7]
        buf = buf[cut + 7:]
    if not state.truncated:
        if b"<page>" in buf:
            state.truncated, state.reason = True, "a page is cut off"
        elif b"</mediawiki>" not in buf:
            state.truncated, state.reason = True, "no closing </mediawiki>"


# --- running ahead on a thread ---------------------------------------------------------------------


def ahead(items: Iterator, depth: int = AHEAD, name: str = "cook-dump-reader") -> Iterator:
    """Iterate `items` on a thread, up to `depth` items ahead of the consumer (for work that releases the GIL,
    such as decompression). The thread's exceptions are raised here, in order; closing this generator (or an
    exception in the consumer) stops the thread and closes `items` before it returns."""
    q: queue.Queue = queue.Queue(max(1, depth))
    stop = threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, who raises it
            put(("error", e))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "item":
                yield item
            elif kind == "end":
                return
            else:
                raise item
    finally:
        stop.set()
        t.join()


# --- the ordered, bounded pool ------------------------------------------------------------------


def _warm(module: str) -> None:
    """Run in each new worker: import the module of the function it will run (while the first segment is read)."""
    importlib.import_module(module)


def ordered(fn: Callable, items: Iterable[tuple], workers: int) -> Iterator:
    """`fn(*item)` for each item, in order; on `workers` spawned processes with at most 2 x workers in flight.
    One worker or fewer: in this process."""
    if workers <= 1:
        for item in items:
            yield fn(*item)
        return
    pool = process_pool(workers)
    inflight: collections.deque = collections.deque()
    try:
        for _ in range(workers):  # spawn every worker now, not one per submit
            pool.submit(_warm, fn.__module__)
        for item in items:
            inflight.append(pool.submit(fn, *item))
            if len(inflight) >= 2 * workers:
                yield inflight.popleft().result()
        while inflight:
            yield inflight.popleft().result()
    finally:
        for fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def decoder_threads(workers: int) -> int:
    """bz2 decoder threads beside `workers` parsing processes: decoding a realistic dump costs about as much CPU
    as parsing it, so one thread per two workers keeps every core busy without starving the parsers. One (up to
    3 workers) means libbz2: a parallel decoder spends 40-60% more CPU, which 2 cores cannot spare."""
    return max(1, workers // 2)
