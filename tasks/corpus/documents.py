"""The document format every stage shares: zstd parquet shards, read row group by row group, written atomically."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model import storage
from model.atomic import make_readable
from model.errors import CookError

# Required columns, in order. Sources may add `license` and any extra columns after these.
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("url", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        ("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)
REQUIRED = tuple(SCHEMA.names)
DOC_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = (".txt",)

# The text format (`--format text`): UTF-8, every document followed by TEXT_SEPARATOR. A text that itself
# holds the marker gets one more `|` (`<|endoftext|>` -> `<||endoftext|>`, `<||…` -> `<|||…`), so the
# separator is unambiguous, reading undoes it exactly, and such files can be concatenated.
TEXT_MARKER = "<|endoftext|>"
TEXT_SEPARATOR = "\n" + TEXT_MARKER + "\n"
TEXT_ESCAPE = r"<(\|+endoftext\|>)"  # a regex (also for pyarrow.compute); replacement r"<|\1"
_ESCAPE_RE = re.compile(TEXT_ESCAPE)
_UNESCAPE_RE = re.compile(r"<\|(\|+endoftext\|>)")


REJECTS_DIR = "rejects"  # where `cook merge` puts what it rejected, beside its stats.json


def _wanted(rel: Path) -> bool:
    """Inside a folder input: skip hidden and temp files and folders, and a merge's rejects."""
    if any(part.startswith(".") for part in rel.parts):
        return False
    return not (len(rel.parts) >= 2 and rel.parts[-2] == REJECTS_DIR)


def expand_inputs(inputs: Iterable[str | os.PathLike], suffixes: tuple[str, ...] = DOC_SUFFIXES + TEXT_SUFFIXES) -> list[Path | str]:
    """Files, folders (searched recursively) and globs -> a sorted, de-duplicated list of files.

    Folders leave out hidden or temp entries and `rejects/` folders (documents a merge rejected).
    A URL (`s3://bucket/corpus/`, `gs://…/*.parquet`, see model/storage.py) is expanded on its store the same
    way and gives URLs (str); a local input gives Paths.

    Raises CookError naming the first input that matches nothing.
    """
    found: dict[str, Path | str] = {}
    for item in inputs:
        item = str(item)
        if storage.is_remote(item):
            for m in _expand_remote(item, suffixes):
                found.setdefault(m, m)
            continue
        if item.startswith("file://"):
            item = str(storage.local_path(item))
        p = Path(item)
        if p.is_file():
            matches = [p]
        elif p.is_dir():
            matches = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in suffixes and _wanted(q.relative_to(p)))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file())
        if not matches:
            raise CookError(f"input not found or empty: {item}")
        for m in matches:
            found.setdefault(str(m.resolve()), m)
    return [found[k] for k in sorted(found)]


def _expand_remote(item: str, suffixes: tuple[str, ...]) -> list[str]:
    """A URL input as its files (URLs): the file itself, a folder's wanted files, or a glob's files."""
    shown = storage.redact(item)
    try:
        if any(c in item for c in "*?["):
            matches = [m for m in storage.glob(item) if storage.isfile(m)]
        elif storage.isfile(item):
            matches = [item]
        else:
            base = item.rstrip("/")
            found = storage.find(base)
            rels = {m[len(base):].lstrip("/") for m in found}
            # a merge output is whole once its stats.json is there (written last): refuse one being (re)published
            if any(r.startswith("shard_") and "/" not in r for r in rels) and "stats.json" not in rels:
                raise CookError(f"{shown}: merge shards without their stats.json — an unfinished merge output "
                                "(one is being published, or one was cut off): run `cook merge` to the end first")
            matches = [m for m in found if suffix(m) in suffixes
                       and _wanted(Path(*m[len(base):].lstrip("/").split("/")))]
    except CookError:
        raise
    except Exception as e:  # no such bucket, no credentials, an unreachable endpoint
        raise CookError(f"cannot list {shown}: {type(e).__name__}: {_first_line(e)}") from None
    if not matches:
        raise CookError(f"input not found or empty: {shown}")
    return matches


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:200]


def suffix(f: str | os.PathLike) -> str:
    """A file's suffix (`.parquet`), for a path or a URL alike."""
    return PurePosixPath(storage.name(f)).suffix


def file_size(f: str | os.PathLike) -> int:
    """A file's size in bytes, for a path or a URL alike."""
    return f.stat().st_size if isinstance(f, Path) else storage.size(f)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


READ_BUFFER = 1 << 20  # parquet column chunks are streamed through a buffer this size, not read whole


def open_documents(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a document parquet file (a path or a URL); CookError if it is not parquet or has no `text` column.

    Reads stream each column chunk through READ_BUFFER bytes (no pre-buffering): reading a few rows of a
    100 MB row group holds about a megabyte of it, not the whole compressed chunk. A URL is read through an
    fsspec file (ranged reads, READ_BUFFER at a time).
    """
    if storage.is_remote(path):
        source, shown = open_remote(path), storage.redact(path)
    else:
        path = Path(path)
        source, shown = path, path
    try:
        pf = pq.ParquetFile(source, buffer_size=READ_BUFFER, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as e:
        raise CookError(f"{shown}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise CookError(f"{shown}: no 'text' column (columns: {', '.join(names)})")
    return pf


def open_remote(url: str):
    """A remote file opened for ranged, buffered reads (READ_BUFFER per request); CookError when it cannot be."""
    try:
        fs, p = storage.filesystem(url)
        return fs.open(p, "rb", block_size=READ_BUFFER, cache_type="readahead")
    except CookError:
        raise
    except FileNotFoundError:
        raise CookError(f"{storage.redact(url)}: file not found") from None
    except Exception as e:
        raise CookError(f"cannot open {storage.redact(url)}: {type(e).__name__}: {_first_line(e)}") from None


def read_documents(path: str | os.PathLike, columns: list[str] | None = None, batch_rows: int = 1024) -> Iterator[dict]:
    """Stream one document parquet file as dicts, `batch_rows` rows at a time (memory stays flat, even with
    big row groups)."""
    pf = open_documents(path)
    names = pf.schema_arrow.names
    cols = [c for c in (columns or names) if c in names]
    for batch in pf.iter_batches(batch_size=batch_rows, columns=cols, use_threads=False):
        yield from batch.to_pylist()


_INT32_MAX = (1 << 31) - 1


def is_text_type(t: pa.DataType) -> bool:
    """Whether a column of type `t` holds text cook reads: string, large_string, string_view, or a dictionary of those."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def text_array(arr: pa.Array | pa.ChunkedArray, where: str, column: str = "text") -> tuple[pa.Array, np.ndarray | None]:
    """A text column chunk as one plain `string` (or `large_string`) array, and which of its rows are not valid UTF-8.

    `arr`: an Array or ChunkedArray of string, large_string, string_view or dictionary<…, string-like> (as read
    from parquet: Arrow itself does not check that parquet strings are UTF-8). Dictionaries are decoded and views
    cast; `large_string` is used only when the data passes 2 GiB or already was large. Nulls stay nulls.

    Returns `(texts, bad)`: `bad` is a numpy bool array, True for each non-null row whose bytes are not valid
    UTF-8 (callers drop those rows, reason `invalid-utf8`, or refuse naming the row), or None when every row is
    valid, which is the usual case and costs one validation pass. Never calls Python per row.

    Raises CookError "{where}: column '{column}' is int64, not text" for any other type.
    """
    chunks = arr.chunks if isinstance(arr, pa.ChunkedArray) else [arr]
    if not is_text_type(arr.type):
        raise CookError(f"{where}: column '{column}' is {arr.type}, not text")
    plain = [_plain_text(c) for c in chunks]
    if not plain:
        return pa.array([], pa.string()), None
    if len(plain) > 1:
        if any(pa.types.is_large_string(c.type) for c in plain) or sum(_data_bytes(c) for c in plain) > _INT32_MAX:
            plain = [c.cast(pa.large_string()) for c in plain]
        texts = pa.concat_arrays(plain)
    else:
        texts = plain[0]
    bad_rows = invalid_utf8_rows(texts)
    if not bad_rows:
        return texts, None
    bad = np.zeros(len(texts), dtype=bool)
    bad[bad_rows] = True
    if texts.null_count:
        bad &= ~np.asarray(texts.is_null().to_numpy(zero_copy_only=False))
    return texts, (bad if bad.any() else None)


def _data_bytes(a: pa.Array) -> int:
    return pc.sum(pc.binary_length(a)).as_py() or 0


def _plain_text(a: pa.Array) -> pa.Array:
    """One chunk as string/large_string: dictionaries decoded, views cast (no UTF-8 check: that comes after)."""
    if pa.types.is_dictionary(a.type):
        values = _unview(a.dictionary)
        try:
            a = values.take(a.indices)
        except (pa.ArrowCapacityError, pa.ArrowInvalid):  # decoded past 2 GiB of a `string` array
            a = values.cast(pa.large_string()).take(a.indices)
    return _unview(a)


def _unview(a: pa.Array) -> pa.Array:
    """A string_view array as string (large_string past 2 GiB); other arrays unchanged."""
    if not pa.types.is_string_view(a.type):
        return a
    try:
        return a.cast(pa.string())
    except (pa.ArrowCapacityError, pa.ArrowInvalid):
        return a.cast(pa.large_string())


UTF8_BLOCK_ROWS = 1024  # rows validated at once once an array is known to hold invalid UTF-8


def invalid_utf8_rows(texts: pa.Array) -> list[int]:
    """Indices of the non-null rows of a string/large_string array whose bytes are not valid UTF-8, in order.

    One Arrow full validation (C speed) of the whole array: the usual, all-valid case ends there. Otherwise
    blocks of UTF8_BLOCK_ROWS rows are validated the same way, and only the rows of a failing block are decoded
    one by one. Linear in the data whatever the number of bad rows (Arrow's error names only the first bad row,
    and validating a slice costs the whole slice, so skipping from error to error would be quadratic).
    """
    if _valid(texts):
        return []
    bad: list[int] = []
    n = len(texts)
    for start in range(0, n, UTF8_BLOCK_ROWS):
        block = texts.slice(start, UTF8_BLOCK_ROWS)
        if not _valid(block):
            bad += [start + i for i in _bad_rows_one_by_one(block)]
    return bad


def _valid(a: pa.Array) -> bool:
    try:
        a.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _bad_rows_one_by_one(block: pa.Array) -> list[int]:
    """The rows of a (small) string array whose bytes do not decode as UTF-8; nulls are never bad."""
    width = np.int64 if pa.types.is_large_string(block.type) else np.int32
    _, offsets_buf, data_buf = block.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=width)[block.offset : block.offset + len(block) + 1].tolist()
    data = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    nulls = block.is_null().to_pylist() if block.null_count else None
    bad = []
    for i in range(len(block)):
        if nulls is not None and nulls[i]:
            continue
        try:
            str(data[offsets[i] : offsets[i + 1]], "utf-8")
        except UnicodeDecodeError:
            bad.append(i)
    return bad


def escape_text(text: str) -> str:
    """A text ready for the text format (the marker inside it escaped)."""
    return _ESCAPE_RE.sub(r"<|\1", text) if "endoftext|>" in text else text


def is_text_documents(path: str | os.PathLike) -> bool:
    """Whether a .txt file (a path or a URL) is in the text format (it ends with the separator)."""
    path = path if storage.is_remote(path) else Path(path)
    size = file_size(path)
    n = len(TEXT_SEPARATOR.encode())
    with storage.open_read(path) as f:
        f.seek(max(0, size - n))
        return size > 0 and f.read() == TEXT_SEPARATOR.encode()


def _decode(data: bytes | bytearray | memoryview, path: str | os.PathLike, at: int) -> str:
    """UTF-8 bytes that start at byte `at` of `path` as text; one CookError line naming the file and byte offset."""
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as e:
        raise CookError(
            f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {at + e.start}); cook reads .txt files as "
            "UTF-8: convert it first, e.g. iconv -f latin1 -t utf-8"
        ) from None


def read_text_file(path: str | os.PathLike) -> str:
    """A whole .txt file as one text. Strict UTF-8: a file that is not (latin-1, binary) is a CookError naming
    the file and the offset of the first bad byte, never a silent replacement."""
    return _decode(storage.read_bytes(path) if storage.is_remote(path) else Path(path).read_bytes(), path, 0)


def read_text_documents(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> Iterator[str]:
    """The documents of a text-format file, exactly as they went in (separators removed, escapes undone).

    Streams bytes: each chunk is searched for the separator once (plus the few bytes a separator can straddle), a
    document that spans chunks grows in one buffer and is decoded once, so time is linear in the file and memory
    about twice the largest document (its bytes, then its text). Not UTF-8 -> CookError naming the file and offset.
    """
    sep = TEXT_SEPARATOR.encode()  # ASCII: never inside a multi-byte UTF-8 sequence, so a byte search is exact
    tail = len(sep) - 1
    acc = bytearray()  # the current document so far, when it spans chunks
    doc_at = 0  # file offset where the current document starts
    buf_at = 0  # file offset of buf[0]
    pending = b""  # the end of the previous chunk, which may begin a separator
    with storage.open_read(path) as f:
        while chunk := f.read(chunk_bytes):
            buf = pending + chunk if pending else chunk
            view = memoryview(buf)
            start = 0
            while (j := buf.find(sep, start)) >= 0:
                if acc:
                    acc += view[start:j]
                    text = _decode(acc, path, doc_at)
                    acc = bytearray()
                else:
                    text = _decode(view[start:j], path, doc_at)
                yield _UNESCAPE_RE.sub(r"<\1", text) if "endoftext|>" in text else text
                del text
                start = j + len(sep)
                doc_at = buf_at + start
            keep = max(start, len(buf) - tail)
            acc += view[start:keep]
            pending = buf[keep:]
            buf_at += keep
            view.release()
    if acc or pending:
        raise CookError(f"{path}: text after the last separator (not a complete cook text file)")


def iter_texts(path: str | os.PathLike) -> Iterator[str]:
    """Texts of one input: each non-empty `text` of a document parquet file; the documents of a text-format
    file; any other .txt file whole, as one document (strict UTF-8: see `read_text_file`).

    A `text` column that is not text, or a row that is not valid UTF-8, is a CookError naming the file (and row).
    """
    path = path if storage.is_remote(path) else Path(path)
    if suffix(path) in TEXT_SUFFIXES:
        if is_text_documents(path):
            yield from filter(None, read_text_documents(path))
            return
        text = read_text_file(path)
        if text:
            yield text
        return
    pf = open_documents(path)
    row = 0
    for i in range(pf.num_row_groups):
        texts, bad = text_array(pf.read_row_group(i, columns=["text"]).column("text"), str(path))
        if bad is not None:
            raise CookError(f"{path}: row {row + int(np.argmax(bad))}: 'text' is not valid UTF-8")
        row += len(texts)
        yield from filter(None, texts.to_pylist())


class DocumentWriter:
    """Write documents to one parquet shard (zstd) atomically: the file appears only on close(). `path` may be a
    URL: the shard is then streamed to the store (model.storage.atomic_open: the object appears whole on close)."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema = SCHEMA, row_group_size: int = 4096,
                 row_group_chars: int = 64 << 20):
        self.remote = storage.is_remote(path)
        self.path = path if self.remote else Path(path)
        self.schema = schema
        self.row_group_size = row_group_size
        self.row_group_chars = row_group_chars  # a row group also ends at this much text: long documents stay bounded
        # no dictionary or min/max statistics for `text`: computing them costs ~5x a long document's size
        plain = [n for n in schema.names if n != "text"]
        if self.remote:
            self._tmp = None
            self._ctx = storage.atomic_open(path)
            sink = self._ctx.__enter__()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            make_readable(fd)  # 0644 under the usual umask, not mkstemp's 0600
            os.close(fd)
            sink = self._tmp
        self._writer = pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=plain, write_statistics=plain)
        self._rows: list[dict] = []
        self._chars = 0
        self.count = 0

    def write(self, doc: dict) -> None:
        if doc.get("fetched_at") is None:
            doc = {**doc, "fetched_at": now_utc()}
        self._rows.append(doc)
        self._chars += len(doc.get("text") or "")
        self.count += 1
        if len(self._rows) >= self.row_group_size or self._chars >= self.row_group_chars:
            self._flush()

    def write_table(self, table: pa.Table) -> None:
        """Append a table of documents at once (columns by name, cast to the schema): the fast path for bulk converters."""
        self._flush()
        table = table.select(self.schema.names).cast(self.schema)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self.count += table.num_rows

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=self.schema))
            self._rows, self._chars = [], 0

    def close(self) -> Path | str:
        self._flush()
        self._writer.close()
        if self.remote:
            self._ctx.__exit__(None, None, None)  # the object appears now, whole
            return self.path
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if self.remote:
                err = RuntimeError("aborted")
                with contextlib.suppress(BaseException):
                    self._ctx.__exit__(RuntimeError, err, None)  # the upload is discarded: no object appears
            elif os.path.exists(self._tmp):
                os.unlink(self._tmp)

    def __enter__(self) -> "DocumentWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_documents(path: str | os.PathLike, docs: Iterable[dict], schema: pa.Schema = SCHEMA) -> Path:
    """Write an iterable of documents to one shard atomically; return the path."""
    with DocumentWriter(path, schema) as w:
        for d in docs:
            w.write(d)
    return Path(path)
