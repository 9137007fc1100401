"""Read a Wikipedia pages-articles dump (`.xml`, `.xml.bz2`, multistream + index) into cook documents.

Streaming, constant memory, parallel:

- The XML is never given to an XML parser: a `str.find` scanner cuts the decompressed stream into
  `<page>` blocks and reads the few fields we need. Only the five predefined XML entities and numeric
  character references are decoded; a DTD (`<!DOCTYPE`, `<!ENTITY`) or any other entity reference is
  refused with a CookError, so entity-expansion bombs and external entities are never expanded.
- Namespace 0 only; redirects are skipped; wikitext becomes plain text (`tasks.sources.wikitext`).
- A plain `.xml` / `.xml.bz2` is read (and decompressed) by one process that cuts it into segments of
  whole pages; worker processes parse and clean the segments. A multistream dump with its index
  (`X-multistream.xml.bz2` + `X-multistream-index.txt.bz2`) is split on its bz2 stream offsets and the
  workers decompress their own streams too, so every core decompresses. Output keeps dump order either way,
  and at most a few segments per worker are in flight.
- A truncated dump yields every complete page before the cut; the summary says `truncated: True` and a
  warning is logged. That run still succeeds (exit code 0): the pages before the cut are good.

Output: document parquet shards (`wiki-NNNNN.parquet`, rolled every SHARD_DOCS documents) in a folder
written atomically, plus `summary.json`. Columns: the document schema + `license` + `revid`.
"""

from __future__ import annotations

import bz2
import collections
import json
import logging
import multiprocessing
import os
import re
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import pyarrow as pa

from model.atomic import atomic_dir, atomic_write_text
from model.errors import CookError
from tasks.corpus.documents import SCHEMA as DOC_SCHEMA
from tasks.corpus.documents import DocumentWriter, read_documents
from tasks.core.progress import progress
from tasks.core.spawn import can_spawn
from tasks.sources.wikitext import clean_wikitext

__all__ = [
    "SCHEMA", "LICENSE", "check_wiki_dump_args", "find_index", "dump_lang", "iter_dump_tables",
    "iter_dump_documents", "extract_dump", "read_dump_task", "dump_titles",
]

log = logging.getLogger("cook.wikidump")

LICENSE = "CC BY-SA 4.0"
SCHEMA = pa.schema(list(DOC_SCHEMA) + [pa.field("license", pa.string()), pa.field("revid", pa.int64())])
SHARD_DOCS = 50_000  # documents per output shard
SEGMENT_BYTES = 4 << 20  # decompressed XML per work item (plain / bz2 dumps)
STREAMS_PER_ITEM = 8  # multistream: bz2 streams (of ~100 pages) per work item
READ_BYTES = 1 << 20  # compressed bytes read at a time
PROCESS_MIN_BYTES = 32 << 20  # smaller dumps (on disk) are read in-process: workers take ~1 s to start
MAX_PAGE_BYTES = 256 << 20  # a "page" larger than this is not a page: refuse instead of buffering on
SUMMARY = "summary.json"

_DTD = re.compile(rb"<!(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.I)
_BAD_AMP = re.compile(r"&(?!amp;|#[0-9]+;|#x[0-9a-fA-F]+;)")
_REFS = re.compile(r"&(?:amp|#([0-9]+)|#x([0-9a-fA-F]+));")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_LANG = re.compile(r"^([a-z][a-z_]*?)wiki(?:[-_.]|$)")


class UnsafeDump(CookError):
    """The dump declares a DTD or uses an entity we do not define: refused, never expanded."""


# --- naming --------------------------------------------------------------------------------------


def dump_lang(path: str | os.PathLike) -> str:
    """The wiki's language from a dump name like `enwiki-20240101-...` (`zh_yuewiki` -> `zh-yue`); default "en"."""
    m = _LANG.match(Path(path).name)
    return m.group(1).replace("_", "-") if m else "en"


def find_index(path: str | os.PathLike) -> Path | None:
    """The multistream index beside `X-multistream.xml.bz2` (`X-multistream-index.txt[.bz2]`), if present."""
    p = Path(path)
    if not p.name.endswith(".xml.bz2"):
        return None
    stem = p.name[: -len(".xml.bz2")]
    for name in (stem + "-index.txt.bz2", stem + "-index.txt"):
        if (p.parent / name).is_file():
            return p.parent / name
    return None


def _open_index(path: Path):
    return bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else open(path, encoding="utf-8")


def read_index_offsets(index: Path) -> list[int]:
    """The distinct stream offsets of a multistream index (lines `offset:pageid:title`), ascending."""
    offsets: list[int] = []
    try:
        with _open_index(index) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                off, sep, _ = line.partition(":")
                if not sep or not off.isdigit():
                    raise CookError(f"{index}: line {n} is not 'offset:pageid:title' (bad multistream index)")
                o = int(off)
                if offsets and o < offsets[-1]:
                    raise CookError(f"{index}: line {n}: offsets go backwards (bad multistream index)")
                if not offsets or o != offsets[-1]:
                    offsets.append(o)
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CookError(f"{index}: unreadable multistream index ({type(e).__name__}: {e})") from None
    if not offsets:
        raise CookError(f"{index}: empty multistream index")
    return offsets


def newest_dump() -> Path:
    """The newest `*pages-articles*.xml[.bz2]` under DATA/dumps: what a deployment reads when given no dump."""
    from tasks.core.settings import get_settings

    folder = get_settings().data_dir / "dumps"
    found = [p for pat in ("*pages-articles*.xml", "*pages-articles*.xml.bz2") for p in folder.glob(pat)]
    if not found:
        raise CookError(f"no dump given and none in {folder} (download a *pages-articles*.xml.bz2 there, or pass one)")
    return max(found, key=lambda p: (p.stat().st_mtime, p.name))


def check_wiki_dump_args(dump: str, out: str | None = None, workers: int | None = None) -> Path:
    """Validate before any task runs; return the dump's path. One-line CookError for a missing or wrong file,
    a bad index, a bad worker count or an `--out` that is a file."""
    p = Path(dump)
    if not p.is_file():
        raise CookError(f"dump not found: {dump}")
    if not (p.name.endswith(".xml") or p.name.endswith(".xml.bz2")):
        raise CookError(f"{dump}: not a pages-articles dump (expected a .xml or .xml.bz2 file)")
    with open(p, "rb") as f:
        head = f.read(4096)
    if p.name.endswith(".bz2"):
        if not head.startswith(b"BZh"):
            raise CookError(f"{dump}: not a bz2 file")
    elif not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise CookError(f"{dump}: not an XML file")
    if workers is not None and workers < 1:
        raise CookError(f"--workers must be at least 1 (got {workers})")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CookError(f"--out {out} is a file, not a folder")
    index = find_index(p)
    if index is not None:
        try:
            with _open_index(index) as f:
                first = f.readline()
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise CookError(f"{index}: unreadable multistream index ({type(e).__name__}: {e})") from None
        off, sep, _ = first.partition(":")
        if not sep or not off.isdigit():
            raise CookError(f"{index}: first line is not 'offset:pageid:title' (bad multistream index)")
    return p


# --- parsing (runs in worker processes) ----------------------------------------------------------


def xml_unescape(s: str) -> str:
    """Decode XML's predefined entities and character references; refuse any other entity reference."""
    if "&" not in s:
        return s
    s = s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'")
    m = _BAD_AMP.search(s)
    if m:
        ref = s[m.start(): m.start() + 40].split(";")[0]
        raise UnsafeDump(f"undefined XML entity reference {ref}; (entity declarations are refused, never expanded)")
    if "&#" in s:
        return _REFS.sub(lambda m: "&" if not m.lastindex else chr(int(m.group(1)) if m.group(1) else int(m.group(2), 16)), s)
    return s.replace("&amp;", "&")


def _between(block: str, open_: str, close: str, start: int = 0) -> tuple[str, int]:
    i = block.find(open_, start)
    if i < 0:
        return "", -1
    i += len(open_)
    j = block.find(close, i)
    return (block[i:j], j) if j >= 0 else ("", -1)


def _empty_stats() -> dict:
    return {"pages": 0, "kept": 0, "namespace": 0, "redirect": 0, "empty": 0, "xml_bytes": 0, "truncated": False}


def parse_segment(data: bytes, lang: str) -> tuple[pa.Table, dict]:
    """Documents of the whole `<page>` blocks in `data` (decompressed XML), and counts of what was skipped."""
    if _DTD.search(data):
        raise UnsafeDump("the dump declares a DTD (<!DOCTYPE or <!ENTITY): refused, entities are never expanded")
    stats = _empty_stats()
    stats["xml_bytes"] = len(data)
    s = data.decode("utf-8", errors="replace")
    cols: dict[str, list] = {k: [] for k in SCHEMA.names}
    base = f"https://{lang}.wikipedia.org/wiki/"
    pos = 0
    while True:
        a = s.find("<page>", pos)
        if a < 0:
            break
        b = s.find("</page>", a)
        if b < 0:
            break
        pos = b + 7
        block = s[a + 6: b]
        stats["pages"] += 1
        ns, _ = _between(block, "<ns>", "</ns>")
        if ns.strip() != "0":
            stats["namespace"] += 1
            continue
        rev_at = block.find("<revision")
        if "<redirect" in block[: rev_at if rev_at >= 0 else len(block)]:
            stats["redirect"] += 1
            continue
        title = xml_unescape(_between(block, "<title>", "</title>")[0])
        pageid, _ = _between(block, "<id>", "</id>")
        revid, _ = _between(block, "<id>", "</id>", rev_at) if rev_at >= 0 else ("", -1)
        ts, _ = _between(block, "<timestamp>", "</timestamp>", max(rev_at, 0))
        raw = ""
        t = block.find("<text", max(rev_at, 0))
        if t >= 0:
            gt = block.find(">", t)
            if gt > 0 and block[gt - 1] != "/":
                end = block.find("</text>", gt)
                raw = block[gt + 1: end if end >= 0 else len(block)]
        text = clean_wikitext(xml_unescape(raw)) if raw else ""
        if not text:
            stats["empty"] += 1
            continue
        pid = pageid.strip()
        cols["id"].append(f"wikipedia:{lang}:{pid}")
        cols["source"].append("wikipedia")
        cols["url"].append(base + quote(title.replace(" ", "_"), safe=";@$!*(),/~:"))
        cols["title"].append(title)
        cols["text"].append(text)
        cols["fetched_at"].append(_timestamp(ts))
        cols["license"].append(LICENSE)
        cols["revid"].append(int(revid) if revid.strip().isdigit() else None)
        stats["kept"] += 1
    # timestamps go in as microseconds: converting datetimes would import pandas in every worker
    fetched = pa.array(cols.pop("fetched_at"), pa.int64()).cast(SCHEMA.field("fetched_at").type)
    arrays = [fetched if name == "fetched_at" else pa.array(cols[name], SCHEMA.field(name).type) for name in SCHEMA.names]
    return pa.Table.from_arrays(arrays, schema=SCHEMA), stats


def _timestamp(ts: str) -> int | None:
    """Microseconds since the epoch of a dump timestamp (`2024-01-02T03:04:05Z`), or None."""
    ts = ts.strip()
    if not ts:
        return None
    try:
        dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - _EPOCH) // _US


_US = timedelta(microseconds=1)


def _decompress_all(data: bytes) -> tuple[bytes, bool]:
    """Decompress concatenated bz2 streams; (xml, complete). An incomplete last stream gives what it had."""
    parts: list[bytes] = []
    while data:
        d = bz2.BZ2Decompressor()
        try:
            parts.append(d.decompress(data))
        except OSError:
            return b"".join(parts), False
        if not d.eof:
            return b"".join(parts), False
        data = d.unused_data
    return b"".join(parts), True


def parse_streams(path: str, start: int, end: int, lang: str) -> tuple[pa.Table, dict]:
    """Multistream worker: decompress the bz2 streams in bytes [start, end) of `path` and parse their pages."""
    with open(path, "rb") as f:
        f.seek(start)
        raw = f.read(end - start)
    xml, complete = _decompress_all(raw)
    complete = complete and len(raw) == end - start
    cut = xml.rfind(b"</page>")
    table, stats = parse_segment(xml[: cut + 7] if cut >= 0 else b"", lang)
    rest = xml[cut + 7:] if cut >= 0 else xml
    if not complete or b"<page>" in rest:
        stats["truncated"] = True
    stats["xml_bytes"] = len(xml)
    stats["compressed"] = len(raw)
    return table, stats


# --- producing work items (main process) ---------------------------------------------------------


class _Progress:
    """What the producer learnt: compressed bytes read, whether the dump ended cleanly."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.truncated = False
        self.reason = ""


def _chunks(path: Path, state: _Progress) -> Iterator[bytes]:
    """Decompressed bytes of a plain or bz2 (possibly multi-stream) file; flags a cut-off bz2 stream."""
    with open(path, "rb") as f:
        if not path.name.endswith(".bz2"):
            while chunk := f.read(READ_BYTES):
                state.bytes_read = f.tell()
                yield chunk
            return
        d, fed = bz2.BZ2Decompressor(), False
        while True:
            c = f.read(READ_BYTES)
            if not c:
                break
            state.bytes_read = f.tell()
            while c:
                try:
                    out = d.decompress(c)
                except OSError as e:
                    if state.bytes_read <= READ_BYTES and not fed:
                        raise CookError(f"{path}: not a valid bz2 file ({e})") from None
                    state.truncated, state.reason = True, f"corrupt bz2 data near byte {state.bytes_read} ({e})"
                    return
                fed = True
                if out:
                    yield out
                if d.eof:
                    c, d, fed = d.unused_data, bz2.BZ2Decompressor(), False
                else:
                    c = b""
        if fed:
            state.truncated, state.reason = True, "the bz2 stream ends before its end-of-stream marker"


def _check_header(head: bytes, path: Path) -> None:
    if _DTD.search(head):
        raise UnsafeDump(f"{path}: the dump declares a DTD (<!DOCTYPE or <!ENTITY): refused, entities are never expanded")
    if b"<mediawiki" not in head:
        raise CookError(f"{path}: not a MediaWiki XML dump (no <mediawiki> element at its start)")


def _segments(path: Path, state: _Progress) -> Iterator[bytes]:
    """Cut the decompressed XML into segments of whole pages (~SEGMENT_BYTES each)."""
    buf = b""
    checked = False
    ended = False
    for chunk in _chunks(path, state):
        buf = buf + chunk if buf else chunk
        if not checked:
            first = buf.find(b"<page>")
            if first < 0 and len(buf) < (1 << 20):
                continue
            _check_header(buf[: first if first >= 0 else len(buf)], path)
            checked = True
        if len(buf) >= SEGMENT_BYTES:
            cut = buf.rfind(b"</page>")
            if cut >= 0:
                yield buf[: cut + 7]
                buf = buf[cut + 7:]
            elif len(buf) > MAX_PAGE_BYTES:
                raise CookError(f"{path}: a page over {MAX_PAGE_BYTES >> 20} MB near byte {state.bytes_read} (not a pages-articles dump?)")
    if not checked:
        _check_header(buf[: max(buf.find(b"<page>"), 0) or len(buf)], path)
    cut = buf.rfind(b"</page>")
    if cut >= 0:
        yield buf[: cut + 7]
        buf = buf[cut + 7:]
    ended = b"</mediawiki>" in buf
    if not ended and not state.truncated:
        state.truncated = True
        state.reason = "a page is cut off" if b"<page>" in buf else "no closing </mediawiki>"
    elif b"<page>" in buf and not state.truncated:
        state.truncated, state.reason = True, "a page is cut off"


def _stream_ranges(path: Path, index: Path) -> tuple[int, list[tuple[int, int]], bool]:
    """(header end, work ranges of STREAMS_PER_ITEM streams, whether the index points past the file's end)."""
    size = path.stat().st_size
    offsets = read_index_offsets(index)
    past_end = offsets[-1] >= size
    offsets = [o for o in offsets if o < size]
    if not offsets:
        raise CookError(f"{index}: no stream offset inside {path} (bad multistream index or wrong dump)")
    bounds = offsets[::STREAMS_PER_ITEM] + [size]
    return offsets[0], list(zip(bounds[:-1], bounds[1:])), past_end


# --- the ordered, bounded pool ------------------------------------------------------------------


def _ordered(fn: Callable, items: Iterator[tuple], workers: int) -> Iterator[tuple]:
    """`fn(*item)` for each item, in order; on `workers` spawned processes with at most 2×workers in flight."""
    if workers <= 1:
        for item in items:
            yield fn(*item)
        return
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    inflight: collections.deque = collections.deque()
    try:
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


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def iter_dump_tables(
    dump: str | os.PathLike, workers: int | None = None, on_bytes: Callable[[int], None] | None = None,
    use_index: bool = True, processes: bool | None = None,
) -> Iterator[tuple[pa.Table, dict]]:
    """Yield `(documents table, counts)` per work item, in dump order. The last counts carry `truncated` and
    `reason` for the whole dump. `on_bytes(n)` is told each time more compressed bytes were read.

    `processes`: work in `workers` processes (default: when the dump is at least PROCESS_MIN_BYTES); never in a
    daemonic process (a Dask worker), which may not start any: there the work stays in-process."""
    path = Path(dump)
    lang = dump_lang(path)
    workers = workers or default_workers()
    if processes is None:
        processes = path.stat().st_size >= PROCESS_MIN_BYTES
    if not processes or not can_spawn():
        workers = 1
    index = find_index(path) if use_index else None
    final = {"truncated": False, "reason": ""}
    if index is not None:
        header_end, ranges, past_end = _stream_ranges(path, index)
        with open(path, "rb") as f:
            head, _ = _decompress_all(f.read(header_end))
        _check_header(head[:1 << 20], path)
        items = ((str(path), a, b, lang) for a, b in ranges)
        for table, stats in _ordered(parse_streams, items, workers):
            if on_bytes:
                on_bytes(stats["compressed"])
            if stats["truncated"]:
                final = {"truncated": True, "reason": "the last bz2 stream is cut off"}
            yield table, stats
        if past_end and not final["truncated"]:
            final = {"truncated": True, "reason": "the index lists streams past the end of the file"}
    else:
        state = _Progress()
        last = [0]

        def items() -> Iterator[tuple]:
            for seg in _segments(path, state):
                yield seg, lang

        for table, stats in _ordered(parse_segment, items(), workers):
            if on_bytes and state.bytes_read > last[0]:
                on_bytes(state.bytes_read - last[0])
                last[0] = state.bytes_read
            yield table, stats
        final = {"truncated": state.truncated, "reason": state.reason}
    yield pa.table({k: [] for k in SCHEMA.names}, schema=SCHEMA), {**_empty_stats(), **final, "final": True}


def iter_dump_documents(dump: str | os.PathLike, workers: int | None = 1, use_index: bool = True,
                        processes: bool | None = None) -> Iterator[dict]:
    """The kept documents of a dump as dicts, in order (convenience for tests and small dumps)."""
    for table, _ in iter_dump_tables(dump, workers, use_index=use_index, processes=processes):
        yield from table.to_pylist()


def dump_titles(dump: str | os.PathLike, workers: int | None = None) -> Iterator[str]:
    """Titles of the kept (namespace 0, non-redirect, non-empty) pages, in dump order."""
    for table, _ in iter_dump_tables(dump, workers):
        yield from table.column("title").to_pylist()


# --- writing -------------------------------------------------------------------------------------


def extract_dump(
    dump: str | os.PathLike, out: str | os.PathLike, workers: int | None = None, shard_docs: int = SHARD_DOCS,
    use_index: bool = True, processes: bool | None = None,
) -> dict:
    """Read `dump` into document shards in `out` (the folder is replaced atomically); return the summary."""
    path = check_wiki_dump_args(str(dump), str(out), workers)
    out = Path(out)
    t0 = time.perf_counter()
    totals = _empty_stats()
    final: dict = {}
    shards: list[str] = []
    with atomic_dir(out) as tmp, progress(f"wiki-dump {path.name}", total=path.stat().st_size) as bar:
        writer: DocumentWriter | None = None
        try:
            for table, stats in iter_dump_tables(path, workers, on_bytes=bar.advance, use_index=use_index, processes=processes):
                if stats.get("final"):
                    final = stats
                    continue
                for k in ("pages", "kept", "namespace", "redirect", "empty", "xml_bytes"):
                    totals[k] += stats[k]
                start = 0
                while start < table.num_rows:
                    if writer is None:
                        writer = DocumentWriter(tmp / f"wiki-{len(shards):05d}.parquet", SCHEMA)
                    take = min(shard_docs - writer.count, table.num_rows - start)
                    writer.write_table(table.slice(start, take))
                    start += take
                    if writer.count >= shard_docs:
                        shards.append(writer.close().name)
                        writer = None
            if writer is not None:
                shards.append(writer.close().name)
                writer = None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        seconds = time.perf_counter() - t0
        summary = {
            "dump": str(path.resolve()),
            "out": str(out.resolve()),
            "lang": dump_lang(path),
            "multistream": use_index and find_index(path) is not None,
            "pages_seen": totals["pages"],
            "kept": totals["kept"],
            "skipped": {"namespace": totals["namespace"], "redirect": totals["redirect"], "empty": totals["empty"]},
            "truncated": bool(final.get("truncated")),
            "truncation": final.get("reason", ""),
            "xml_mb": round(totals["xml_bytes"] / 1e6, 3),
            "seconds": round(seconds, 3),
            "shards": shards,
        }
        atomic_write_text(tmp / SUMMARY, json.dumps(summary, indent=1))
    if summary["truncated"]:
        log.warning("wiki-dump: %s is truncated (%s): kept the %d complete pages before the cut",
                    path, summary["truncation"], totals["pages"])
    return summary


def _read_dump(dump: Path, out: str, workers: int | None = None) -> dict:
    """Prefect wrapper of `extract_dump`; cached on the dump's fingerprint while `out/summary.json` exists."""
    summary = extract_dump(dump, out, workers)
    if summary["truncated"]:
        from prefect import get_run_logger

        get_run_logger().warning("wiki-dump: %s is truncated (%s): kept every complete page before the cut",
                                 dump, summary["truncation"])
    return summary


def __getattr__(name: str):
    """`read_dump_task`, the Prefect task, is built on first use: worker processes import this module
    to parse, and must not pay for importing Prefect (about a second each)."""
    if name != "read_dump_task":
        raise AttributeError(name)
    from prefect import task

    from tasks.core.caching import PERSISTED, OutputsCache

    t = task(
        name="read-dump",
        cache_policy=OutputsCache(outputs=lambda i: [Path(i["out"]) / SUMMARY], version="1", exclude=("workers",)),
        **PERSISTED,
    )(_read_dump)
    globals()["read_dump_task"] = t
    return t


def read_summary(out: str | os.PathLike) -> dict:
    return json.loads((Path(out) / SUMMARY).read_text())


def read_output(out: str | os.PathLike) -> Iterator[dict]:
    """Every document written to `out`, in order."""
    for name in read_summary(out)["shards"]:
        yield from read_documents(Path(out) / name)
