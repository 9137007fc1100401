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

On object storage (model/storage.py): a dump at a URL is copied once per machine into the cache (`local_dump`:
keyed by its size and ETag, its multistream index found beside it by name and copied too, under a file lock);
an output at a URL is written shard by shard from a local staging folder under the cache to a temp prefix
beside it, and published whole with `summary.json` last (`storage.staged_dir`). The task takes the dump and the
output as they are given (URLs stay URLs), so a Dask worker that shares only the bucket can run it.
"""

from __future__ import annotations

import bz2
import json
import logging
import os
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import quote

import pyarrow as pa

from model import storage
from model.atomic import atomic_dir, atomic_write, atomic_write_text
from model.errors import CookError
from tasks.corpus.documents import SCHEMA as DOC_SCHEMA
from tasks.corpus.documents import DocumentWriter, read_documents
from tasks.core.progress import progress
from tasks.core.spawn import can_spawn
from tasks.sources import dumpio
from tasks.sources.wikitext import PageTimeout, clean_wikitext

__all__ = [
    "SCHEMA", "LICENSE", "check_wiki_dump_args", "dump_kind", "find_index", "dump_lang", "iter_dump_tables",
    "iter_dump_documents", "extract_dump", "read_dump_task", "dump_titles", "skipped_names", "local_dump",
]

log = logging.getLogger("cook.wikidump")

LICENSE = "CC BY-SA 4.0"
SCHEMA = pa.schema(list(DOC_SCHEMA) + [pa.field("license", pa.string()), pa.field("revid", pa.int64())])
SHARD_DOCS = 50_000  # documents per output shard
STREAMS_PER_ITEM = 8  # multistream: bz2 streams (of ~100 pages) per work item
PROCESS_MIN_BYTES = 16 << 20  # smaller dumps (of XML; bz2 counted x BZ2_RATIO) are read in-process
BZ2_RATIO = 4  # about how much a pages-articles dump shrinks in bz2
SUMMARY = "summary.json"
PAGE_SECONDS = 30.0  # a page cleaning longer is skipped (COOK_WIKI_PAGE_SECONDS overrides)
BUDGET_MIN_CHARS = 1 << 16  # smaller pages are never timed: they cannot take long
FAILED_LISTED = 50  # skipped pages named in the counts and the summary (all are counted)
COPY_LOCK_WAIT_S = 6 * 3600.0  # another process on this machine copying the same dump from the store

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
    m = _LANG.match(storage.name(path))
    return m.group(1).replace("_", "-") if m else "en"


_BZ2_MAGIC = re.compile(rb"BZh[1-9]")
_SPLIT = re.compile(r"^(.*?)(\d*)\.xml(-p\d+p\d+)?\.bz2$")
_XML_PROLOG = re.compile(rb"(?:\s+|<\?xml[^>]*\?>|<!--.*?-->)*", re.S)
HEAD_BYTES = 8192  # decompressed bytes looked at to recognise a dump


def _xml_head_kind(head: bytes, path: Path | str) -> None:
    """Raise unless `head` (the first decompressed bytes) opens a MediaWiki XML dump."""
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    rest = head[_XML_PROLOG.match(head).end():]
    if rest.startswith(b"<mediawiki"):
        return
    if _DTD.match(rest):
        raise UnsafeDump(f"{path}: the dump declares a DTD (<!DOCTYPE or <!ENTITY): refused, entities are never expanded")
    raise CookError(f"{path}: not a MediaWiki XML dump (no <mediawiki> root at its start)")


def dump_kind(path: str | os.PathLike) -> str:
    """"bz2" or "xml": what `path` holds, told by its content, never its name.

    bz2: the magic `BZh1`..`BZh9`, and its first decompressed bytes open a `<mediawiki` root. XML: `<mediawiki`
    after an optional BOM, XML declaration, comments and whitespace. Anything else is a one-line CookError naming
    the file (a DTD is refused as UnsafeDump). A URL is read through the store (its first block only)."""
    p = storage.redact(path) if storage.is_remote(path) else Path(path)
    try:
        with storage.open_read(path) if storage.is_remote(path) else open(p, "rb") as f:
            head = f.read(HEAD_BYTES)
            if not _BZ2_MAGIC.match(head):
                _xml_head_kind(head, p)
                return "xml"
            d, out, chunk = bz2.BZ2Decompressor(), b"", head
            while len(out) < HEAD_BYTES and not d.eof:  # a bz2 block (<= 900 kB) must be read whole first
                if not chunk and d.needs_input:
                    chunk = f.read(1 << 16)
                    if not chunk:
                        break
                out += d.decompress(chunk, HEAD_BYTES - len(out))
                chunk = b""
    except OSError as e:
        if isinstance(e, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise CookError(f"{p}: cannot read the dump ({type(e).__name__})") from None
        raise CookError(f"{p}: not a valid bz2 file ({e})") from None
    except EOFError as e:
        raise CookError(f"{p}: not a valid bz2 file ({e})") from None
    except CookError:
        raise
    except Exception as e:  # noqa: BLE001 - a store's own errors (refused credentials, no endpoint): one line
        raise CookError(f"{p}: cannot read the dump ({type(e).__name__}: {_first_line(e)})") from None
    if not out and not d.eof:
        raise CookError(f"{p}: the bz2 data ends before its first block is complete (a truncated dump?)")
    _xml_head_kind(out, p)
    return "bz2"


def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def find_index(path: str | os.PathLike) -> Path | str | None:
    """The multistream index beside a multistream dump, if present:
    `X-multistream.xml.bz2` -> `X-multistream-index.txt[.bz2]`, and the split files
    `X-multistream1.xml-p1p41242.bz2` -> `X-multistream-index1.txt-p1p41242[.bz2]`. A dump at a URL: the index
    object beside it on the store (its URL)."""
    if storage.is_remote(path):
        url = os.fspath(path)
        for name in _index_names(storage.name(url)):
            if storage.isfile(storage.join(storage.parent(url), name)):
                return storage.join(storage.parent(url), name)
        return None
    p = Path(path)
    for name in _index_names(p.name):
        if (p.parent / name).is_file():
            return p.parent / name
    return None


def _index_names(dump_name: str) -> list[str]:
    """The names a multistream dump's index may have, in the order they are looked for."""
    m = _SPLIT.match(dump_name)
    if not m:
        return []
    prefix, num, span = m.group(1), m.group(2), m.group(3) or ""
    stems = [f"{prefix}-index{num}.txt{span}"]
    if num:  # a name that merely ends in digits (`dump2024.xml.bz2`)
        stems.append(f"{prefix}{num}-index.txt{span}")
    return [name for stem in stems for name in (stem + ".bz2", stem)]


def _open_index(path: Path):
    return bz2.open(path, "rt", encoding="utf-8") if path.suffix == ".bz2" else open(path, encoding="utf-8")


def _first_index_line(index: Path | str) -> str:
    """The first line of a multistream index, local or on a store (a dump is read from its local copy: the check
    before the run only reads this line)."""
    if not storage.is_remote(index):
        with _open_index(Path(index)) as f:
            return f.readline()
    import io

    with storage.open_read(index) as raw:
        if str(index).endswith(".bz2"):
            with bz2.open(raw, "rt", encoding="utf-8") as f:
                return f.readline()
        return io.TextIOWrapper(raw, encoding="utf-8").readline()


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


def newest_dump() -> Path | str:
    """The newest `*pages-articles*.xml[.bz2]` under DATA/dumps: what a deployment reads when given no dump.
    With COOK_DATA_DIR a URL, under its `dumps/` on the store (the newest by the store's modification time)."""
    from tasks.core.settings import get_settings

    settings = get_settings()
    if settings.data_url:
        folder = settings.location("dumps")
        try:
            found = [u for u in storage.glob(storage.join(folder, "*pages-articles*.xml*"))
                     if u.endswith((".xml", ".bz2"))]
            dated = [(str(_modified(storage.info(u))), storage.name(u), u) for u in found]
        except CookError:
            raise
        except Exception as e:  # noqa: BLE001 - the store's own errors: one line
            raise CookError(f"{storage.redact(folder)}: cannot list the dumps "
                            f"({type(e).__name__}: {_first_line(e)})") from None
        if not dated:
            raise CookError(f"no dump given and none in {storage.redact(folder)} (upload a *pages-articles*.xml.bz2 "
                            "there, or pass one)")
        return max(dated)[2]
    folder = settings.data_dir / "dumps"
    found = [p for p in folder.glob("*pages-articles*.xml*") if p.name.endswith(".xml") or p.name.endswith(".bz2")]
    if not found:
        raise CookError(f"no dump given and none in {folder} (download a *pages-articles*.xml.bz2 there, or pass one)")
    return max(found, key=lambda p: (p.stat().st_mtime, p.name))


def _modified(info: dict):
    """A store object's modification time from its details (whichever key the store gives), else ""."""
    for k in ("LastModified", "last_modified", "mtime", "updated", "created"):
        if info.get(k) is not None:
            return info[k]
    return ""


def check_wiki_dump_args(dump: str, out: str | None = None, workers: int | None = None) -> Path | str:
    """Validate before any task runs; return the dump's path (its URL, a str, for a dump on a store). One-line
    CookError for a missing or wrong file, a bad index, a bad worker count or an `--out` that is a file."""
    if storage.is_remote(dump):
        p: Path | str = os.fspath(dump)
        shown = storage.redact(p)
        try:
            kind = storage.info(p).get("type")
        except FileNotFoundError:
            raise CookError(f"dump not found: {shown}") from None
        except CookError:
            raise
        except Exception as e:  # noqa: BLE001 - refused credentials, an unreachable endpoint: one line
            raise CookError(f"{shown}: cannot read the dump ({type(e).__name__}: {_first_line(e)})") from None
        if kind != "file":
            raise CookError(f"dump not found: {shown} (not a file)")
    else:
        p = Path(dump)
        if not p.is_file():
            raise CookError(f"dump not found: {dump}")
    dump_kind(p)
    if workers is not None and workers < 1:
        raise CookError(f"--workers must be at least 1 (got {workers})")
    if out is not None and storage.is_remote(out):
        if _quiet(storage.isfile, out):
            raise CookError(f"--out {storage.redact(out)} is a file, not a folder")
    elif out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CookError(f"--out {out} is a file, not a folder")
    index = find_index(p)
    if index is not None:
        shown = storage.redact(index) if storage.is_remote(index) else index
        try:
            first = _first_index_line(index)
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise CookError(f"{shown}: unreadable multistream index ({type(e).__name__}: {e})") from None
        off, sep, _ = first.partition(":")
        if not sep or not off.isdigit():
            raise CookError(f"{shown}: first line is not 'offset:pageid:title' (bad multistream index)")
    return p


def _quiet(fn, *args) -> bool:
    try:
        return bool(fn(*args))
    except Exception:  # noqa: BLE001 - a store that does not answer here: the stage says what is wrong
        return False


# --- a dump on object storage: this machine's copy ------------------------------------------------


def _object_tag(info: dict) -> str:
    """An object's identity on its store: size and content tag (ETag; else its modification time)."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("content_md5")
    tag = str(etag).strip('"') if etag else str(_modified(info))
    return f"{int(info.get('size') or 0)}:{tag}"


def local_dump(dump: str | os.PathLike) -> Path:
    """A dump as a local file: itself, or for a URL this machine's copy under the cache (COOK_CACHE_DIR).

    The copy is `CACHE/dumps/<url key>/<fingerprint>/<name>`, with the multistream index (found beside the dump
    on the store by name) copied beside it under its own name, so `find_index` finds it. The fingerprint is the
    size and ETag of both objects: the same dump is copied once per machine, a dump uploaded again under the same
    URL is copied again (and the older copy removed). Processes on one machine take a file lock around the copy:
    one copies, the others wait and reuse it. The dump file appears last (atomically): it is there only once
    both are whole."""
    if not storage.is_remote(dump):
        return storage.local_path(dump)
    import hashlib
    import shutil

    from model.runsync import machine_lock

    url = os.fspath(dump)
    shown = storage.redact(url)
    index = find_index(url)
    tags = [_object_tag(_info(url))] + ([_object_tag(_info(index))] if index is not None else [])
    home = storage.cache_dir() / "dumps" / storage.cache_key(url)
    target = home / hashlib.sha256("\0".join(tags).encode()).hexdigest()[:16]
    local = target / storage.name(url)
    if local.is_file():
        return local
    busy = f"{shown}: another process on this machine has been copying it for over {COPY_LOCK_WAIT_S / 3600:.0f} h"
    with machine_lock(home.parent / f".{home.name}.lock", COPY_LOCK_WAIT_S, busy):
        if local.is_file():  # another process copied it while we waited
            return local
        home.mkdir(parents=True, exist_ok=True)
        for old in home.iterdir():  # copies of what the URL held before
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        target.mkdir(exist_ok=True)
        if index is not None:
            _copy(index, target / storage.name(index))
        _copy(url, local)
        now = [_object_tag(_info(url))] + ([_object_tag(_info(index))] if index is not None else [])
        if now != tags or local.stat().st_size != int(tags[0].split(":")[0]):
            shutil.rmtree(target, ignore_errors=True)
            raise CookError(f"{shown} changed while it was being copied; run the command again")
    return local


def _info(url: str) -> dict:
    try:
        return storage.info(url)
    except FileNotFoundError:
        raise CookError(f"dump not found: {storage.redact(url)}") from None
    except CookError:
        raise
    except Exception as e:  # noqa: BLE001 - the store's own errors: one line
        raise CookError(f"{storage.redact(url)}: cannot read the dump ({type(e).__name__}: {_first_line(e)})") from None


def _copy(url: str, dest: Path) -> None:
    """Copy one object to a local file that appears whole, with a progress bar (a dump is tens of GB)."""
    size = int(_info(url).get("size") or 0)
    log.info("wiki-dump: copying %s (%.1f MB) to this machine's cache %s", storage.redact(url), size / 1e6, dest.parent)
    try:
        with progress(f"copy {storage.name(url)}", total=size) as bar, storage.open_read(url) as src, \
                atomic_write(dest, "wb") as dst:
            while chunk := src.read(8 << 20):
                dst.write(chunk)
                bar.advance(len(chunk))
    except FileNotFoundError:
        raise CookError(f"dump not found: {storage.redact(url)} (gone while it was being copied)") from None


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
    return {"pages": 0, "kept": 0, "namespace": 0, "redirect": 0, "empty": 0, "failed": 0, "failed_pages": [],
            "xml_bytes": 0, "truncated": False}


def _page_seconds() -> float:
    """The time one page may take to clean (COOK_WIKI_PAGE_SECONDS, default PAGE_SECONDS)."""
    try:
        return float(os.environ.get("COOK_WIKI_PAGE_SECONDS") or PAGE_SECONDS)
    except ValueError:
        return PAGE_SECONDS


def parse_segment(data: bytes, lang: str) -> tuple[pa.Table, dict]:
    """Documents of the whole `<page>` blocks in `data` (decompressed XML), and counts of what was skipped.

    Every page is isolated: one that raises, or that runs past its time budget (pages over BUDGET_MIN_CHARS of
    wikitext only: smaller ones cannot), is skipped and listed in `failed_pages` (id, title, reason; the first
    FAILED_LISTED), and the others go on. An entity the dump does not define (UnsafeDump) still stops the run."""
    if _DTD.search(data):
        raise UnsafeDump("the dump declares a DTD (<!DOCTYPE or <!ENTITY): refused, entities are never expanded")
    stats = _empty_stats()
    stats["xml_bytes"] = len(data)
    s = data.decode("utf-8", errors="replace")
    cols: dict[str, list] = {k: [] for k in SCHEMA.names}
    base = f"https://{lang}.wikipedia.org/wiki/"
    budget = _page_seconds()
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
        title, _ = _between(block, "<title>", "</title>")
        pageid, _ = _between(block, "<id>", "</id>")
        try:
            title = xml_unescape(title)
            revid, _ = _between(block, "<id>", "</id>", rev_at) if rev_at >= 0 else ("", -1)
            ts, _ = _between(block, "<timestamp>", "</timestamp>", max(rev_at, 0))
            raw = ""
            t = block.find("<text", max(rev_at, 0))
            if t >= 0:
                gt = block.find(">", t)
                if gt > 0 and block[gt - 1] != "/":
                    end = block.find("</text>", gt)
                    raw = block[gt + 1: end if end >= 0 else len(block)]
            if raw:
                deadline = time.monotonic() + budget if len(raw) > BUDGET_MIN_CHARS else None
                text = clean_wikitext(xml_unescape(raw), deadline)
            else:
                text = ""
            if not text:
                stats["empty"] += 1
                continue
            pid = pageid.strip()
            row = (f"wikipedia:{lang}:{pid}", base + quote(title.replace(" ", "_"), safe=";@$!*(),/~:"), title, text,
                   _timestamp(ts), int(revid) if revid.strip().isdigit() else None)
        except UnsafeDump:
            raise
        except Exception as e:  # this page only: skipped, named in the summary, and the run goes on
            reason = f"over its {budget:g} s time budget" if isinstance(e, PageTimeout) else f"{type(e).__name__}: {e}"
            stats["failed"] += 1
            if len(stats["failed_pages"]) < FAILED_LISTED:
                stats["failed_pages"].append({"id": pageid.strip(), "title": title, "reason": reason[:200]})
            continue
        cols["id"].append(row[0])
        cols["source"].append("wikipedia")
        cols["url"].append(row[1])
        cols["title"].append(row[2])
        cols["text"].append(row[3])
        cols["fetched_at"].append(row[4])
        cols["license"].append(LICENSE)
        cols["revid"].append(row[5])
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


def parse_streams(path: str, start: int, end: int, lang: str) -> tuple[pa.Table, dict]:
    """Multistream worker: decompress the bz2 streams in bytes [start, end) of `path` and parse their pages."""
    xml, complete, compressed = dumpio.read_streams(path, start, end)
    cut = xml.rfind(b"</page>")
    table, stats = parse_segment(xml[: cut + 7] if cut >= 0 else b"", lang)
    rest = xml[cut + 7:] if cut >= 0 else xml
    if not complete or b"<page>" in rest:
        stats["truncated"] = True
    stats["xml_bytes"] = len(xml)
    stats["compressed"] = compressed
    return table, stats


# --- producing work items (main process) ---------------------------------------------------------


def _check_header(head: bytes, path: Path) -> None:
    if _DTD.search(head):
        raise UnsafeDump(f"{path}: the dump declares a DTD (<!DOCTYPE or <!ENTITY): refused, entities are never expanded")
    if b"<mediawiki" not in head:
        raise CookError(f"{path}: not a MediaWiki XML dump (no <mediawiki> element at its start)")


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


# --- reading (bytes: tasks/sources/dumpio.py) ------------------------------------------------------


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def iter_dump_tables(
    dump: str | os.PathLike, workers: int | None = None, on_bytes: Callable[[int], None] | None = None,
    use_index: bool = True, processes: bool | None = None, decoder_threads: int | None = None,
    use_ibz2: bool = True,
) -> Iterator[tuple[pa.Table, dict]]:
    """Yield `(documents table, counts)` per work item, in dump order. The last counts carry `truncated` and
    `reason` for the whole dump (and `decoder`). `on_bytes(n)` is told each time more compressed bytes were read.

    `processes`: parse in `workers` processes (default: when the dump holds at least PROCESS_MIN_BYTES of XML,
    a bz2 file counted x BZ2_RATIO); never in a daemonic process (a Dask worker), which may not start any: there
    the parsing stays in-process. Either way a plain or single-stream bz2 dump is read and decompressed on a
    thread ahead of the parsing. `decoder_threads`: bz2 decoder threads (default `dumpio.decoder_threads`);
    `use_ibz2=False` decodes with the standard library only."""
    path = Path(dump)
    lang = dump_lang(path)
    kind = dump_kind(path)
    workers = workers or default_workers()
    if processes is None:
        processes = path.stat().st_size * (BZ2_RATIO if kind == "bz2" else 1) >= PROCESS_MIN_BYTES
    if not processes or not can_spawn():
        workers = 1
    index = find_index(path) if use_index and kind == "bz2" else None
    final: dict = {"truncated": False, "reason": ""}
    if index is not None:
        header_end, ranges, past_end = _stream_ranges(path, index)
        with open(path, "rb") as f:
            head, _ = dumpio.decompress_streams(f.read(header_end))
        _check_header(head[: dumpio.HEADER_BYTES], path)
        items = ((str(path), a, b, lang) for a, b in ranges)
        results = dumpio.ordered(parse_streams, items, workers)
        try:
            for table, stats in results:
                if on_bytes:
                    on_bytes(stats["compressed"])
                if stats["truncated"]:
                    final = {"truncated": True, "reason": "the last bz2 stream is cut off"}
                yield table, stats
        finally:
            results.close()
        if past_end and not final["truncated"]:
            final = {"truncated": True, "reason": "the index lists streams past the end of the file"}
        final["decoder"] = "bz2 (multistream, in the workers)"
    else:
        state = dumpio.ReadState()
        threads = decoder_threads or dumpio.decoder_threads(workers)
        chunks = dumpio.decompressed_chunks(path, state, kind, threads, use_ibz2=use_ibz2)
        segs = dumpio.ahead(dumpio.segments(chunks, state, path, _check_header))
        results = dumpio.ordered(parse_segment, ((seg, lang) for seg in segs), workers)
        last = 0
        try:
            for table, stats in results:
                if on_bytes and state.bytes_read > last:
                    on_bytes(state.bytes_read - last)
                    last = state.bytes_read
                yield table, stats
        finally:
            results.close()
            segs.close()
        final = {"truncated": state.truncated, "reason": state.reason, "decoder": state.decoder}
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
    use_index: bool = True, processes: bool | None = None, source: str | None = None,
) -> dict:
    """Read `dump` (a local file) into document shards in `out` (the folder is replaced atomically); return the
    summary. `out` may be a URL: the shards are written to a staging folder under the cache, each uploaded once
    whole to a temp prefix beside `out` and deleted here, and the folder is published with summary.json last
    (`storage.staged_dir`). `source`: the dump as the summary names it (its URL when `dump` is a local copy)."""
    path = check_wiki_dump_args(str(dump), str(out), workers)
    if not isinstance(path, Path):
        raise CookError(f"{storage.redact(path)}: extract_dump reads a local file (see local_dump)")
    if not storage.is_remote(out):
        out = Path(out)
        with atomic_dir(out) as tmp:
            summary = _write_shards(path, tmp, str(out.resolve()), workers, shard_docs, use_index, processes, source)
            atomic_write_text(tmp / SUMMARY, json.dumps(summary, indent=1))
        return summary
    import shutil

    url = os.fspath(out).rstrip("/")
    work = Path(storage.temp_dir("wiki-dump"))
    try:
        with storage.staged_dir(url, last=SUMMARY) as tmp:
            def upload(shard: Path) -> None:
                storage.put_file(shard, storage.join(tmp, shard.name))
                shard.unlink()

            summary = _write_shards(path, work, storage.redact(url), workers, shard_docs, use_index, processes, source,
                                    on_shard=upload)
            atomic_write_text(work / SUMMARY, json.dumps(summary, indent=1))
            storage.put_file(work / SUMMARY, storage.join(tmp, SUMMARY))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def _write_shards(path: Path, folder: Path, shown_out: str, workers: int | None, shard_docs: int, use_index: bool,
                  processes: bool | None, source: str | None, on_shard: Callable[[Path], None] | None = None) -> dict:
    """Write the dump's documents as shards into `folder` (each handed to `on_shard` once closed); the summary."""
    t0 = time.perf_counter()
    totals = _empty_stats()
    final: dict = {}
    shards: list[str] = []
    writer: DocumentWriter | None = None

    def close() -> None:
        done = writer.close()
        shards.append(done.name)
        if on_shard is not None:
            on_shard(done)

    with progress(f"wiki-dump {path.name}", total=path.stat().st_size) as bar:
        try:
            for table, stats in iter_dump_tables(path, workers, on_bytes=bar.advance, use_index=use_index, processes=processes):
                if stats.get("final"):
                    final = stats
                    continue
                for k in ("pages", "kept", "namespace", "redirect", "empty", "failed", "xml_bytes"):
                    totals[k] += stats.get(k, 0)
                for page in stats.get("failed_pages", ()):
                    log.warning("wiki-dump: skipped page %r (id %s): %s", page["title"], page["id"], page["reason"])
                    if len(totals["failed_pages"]) < FAILED_LISTED:
                        totals["failed_pages"].append(page)
                start = 0
                while start < table.num_rows:
                    if writer is None:
                        writer = DocumentWriter(folder / f"wiki-{len(shards):05d}.parquet", SCHEMA)
                    take = min(shard_docs - writer.count, table.num_rows - start)
                    writer.write_table(table.slice(start, take))
                    start += take
                    if writer.count >= shard_docs:
                        close()
                        writer = None
            if writer is not None:
                close()
                writer = None
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    summary = {
        "dump": storage.redact(source) if source else str(path.resolve()),
        "out": shown_out,
        "lang": dump_lang(source or path),
        "multistream": use_index and find_index(path) is not None,
        "pages_seen": totals["pages"],
        "kept": totals["kept"],
        "skipped": {"namespace": totals["namespace"], "redirect": totals["redirect"], "empty": totals["empty"],
                    "failed": totals["failed"]},
        "skipped_pages": totals["failed_pages"],  # the first FAILED_LISTED pages that raised or ran too long
        "truncated": bool(final.get("truncated")),
        "truncation": final.get("reason", ""),
        "xml_mb": round(totals["xml_bytes"] / 1e6, 3),
        "seconds": round(time.perf_counter() - t0, 3),
        "shards": shards,
    }
    if summary["truncated"]:
        log.warning("wiki-dump: %s is truncated (%s): kept the %d complete pages before the cut",
                    summary["dump"], summary["truncation"], totals["pages"])
    return summary


def skipped_names(summary: dict) -> str:
    """`'Title' (id 12): reason; ...` for the listed skipped pages (the summary keeps the first FAILED_LISTED)."""
    pages = summary.get("skipped_pages") or []
    names = "; ".join(f"{p['title']!r} (id {p['id']}): {p['reason']}" for p in pages)
    more = summary["skipped"].get("failed", 0) - len(pages)
    return names + (f"; and {more} more" if more > 0 else "")


def _read_dump(dump: Path | str, out: str, workers: int | None = None) -> dict:
    """Prefect wrapper of `extract_dump`; cached on the dump's fingerprint (a URL's: its size and ETag) while
    `out/summary.json` exists. `dump` and `out` come as the flow was given them: a dump at a URL is copied to
    this machine's cache here (`local_dump`), so the task runs on a Dask worker that shares only the bucket."""
    remote = storage.is_remote(dump)
    summary = extract_dump(local_dump(dump), out, workers, source=os.fspath(dump) if remote else None)
    if summary["truncated"]:
        from prefect import get_run_logger

        get_run_logger().warning("wiki-dump: %s is truncated (%s): kept every complete page before the cut",
                                 summary["dump"], summary["truncation"])
    return summary


def _summary_location(out: str | os.PathLike) -> Path | str:
    return storage.join(out, SUMMARY) if storage.is_remote(out) else Path(out) / SUMMARY


def __getattr__(name: str):
    """`read_dump_task`, the Prefect task, is built on first use: worker processes import this module
    to parse, and must not pay for importing Prefect (about a second each)."""
    if name != "read_dump_task":
        raise AttributeError(name)
    from prefect import task

    from tasks.core.caching import PERSISTED, OutputsCache

    t = task(
        name="read-dump",
        cache_policy=OutputsCache(outputs=lambda i: [_summary_location(i["out"])], version="1", exclude=("workers",)),
        **PERSISTED,
    )(_read_dump)
    globals()["read_dump_task"] = t
    return t


def read_summary(out: str | os.PathLike) -> dict:
    return json.loads(storage.read_text(_summary_location(out)))


def read_output(out: str | os.PathLike) -> Iterator[dict]:
    """Every document written to `out` (a folder or a URL), in order."""
    for name in read_summary(out)["shards"]:
        yield from read_documents(storage.join(out, name) if storage.is_remote(out) else Path(out) / name)
