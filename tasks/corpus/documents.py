"""The document format every stage shares: zstd parquet shards, read row group by row group, written atomically."""

from __future__ import annotations

import glob
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

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


def expand_inputs(inputs: Iterable[str | os.PathLike], suffixes: tuple[str, ...] = DOC_SUFFIXES + TEXT_SUFFIXES) -> list[Path]:
    """Files, folders (searched recursively) and globs -> a sorted, de-duplicated list of files.

    Folders leave out hidden or temp entries and `rejects/` folders (documents a merge rejected).

    Raises CookError naming the first input that matches nothing.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        item = str(item)
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


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def open_documents(path: str | os.PathLike) -> pq.ParquetFile:
    """Open a document parquet file; CookError if it is not parquet or has no `text` column."""
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CookError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if "text" not in names:
        raise CookError(f"{path}: no 'text' column (columns: {', '.join(names)})")
    return pf


def read_documents(path: str | os.PathLike, columns: list[str] | None = None) -> Iterator[dict]:
    """Stream one document parquet file as dicts, one row group at a time (memory stays flat)."""
    pf = open_documents(path)
    names = pf.schema_arrow.names
    cols = [c for c in (columns or names) if c in names]
    for i in range(pf.num_row_groups):
        table = pf.read_row_group(i, columns=cols)
        yield from table.to_pylist()


def escape_text(text: str) -> str:
    """A text ready for the text format (the marker inside it escaped)."""
    return _ESCAPE_RE.sub(r"<|\1", text) if "endoftext|>" in text else text


def is_text_documents(path: str | os.PathLike) -> bool:
    """Whether a .txt file is in the text format (it ends with the separator)."""
    path = Path(path)
    size = path.stat().st_size
    n = len(TEXT_SEPARATOR.encode())
    with open(path, "rb") as f:
        f.seek(max(0, size - n))
        return size > 0 and f.read() == TEXT_SEPARATOR.encode()


def read_text_documents(path: str | os.PathLike, chunk_chars: int = 1 << 20) -> Iterator[str]:
    """The documents of a text-format file, exactly as they went in (separators removed, escapes undone)."""
    buf = ""
    with open(path, encoding="utf-8", newline="") as f:
        while True:
            chunk = f.read(chunk_chars)
            buf += chunk
            *docs, buf = buf.split(TEXT_SEPARATOR)
            for d in docs:
                yield _UNESCAPE_RE.sub(r"<\1", d)
            if not chunk:
                break
    if buf:
        raise CookError(f"{path}: text after the last separator (not a complete cook text file)")


def iter_texts(path: str | os.PathLike) -> Iterator[str]:
    """Texts of one input: each non-empty `text` of a document parquet file; the documents of a text-format
    file; any other .txt file whole, as one document."""
    path = Path(path)
    if path.suffix in TEXT_SUFFIXES:
        if is_text_documents(path):
            yield from filter(None, read_text_documents(path))
            return
        text = path.read_text(encoding="utf-8", errors="replace")
        if text:
            yield text
        return
    pf = open_documents(path)
    for i in range(pf.num_row_groups):
        yield from filter(None, pf.read_row_group(i, columns=["text"]).column("text").to_pylist())


class DocumentWriter:
    """Write documents to one parquet shard (zstd) atomically: the file appears only on close()."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema = SCHEMA, row_group_size: int = 4096):
        self.path = Path(path)
        self.schema = schema
        self.row_group_size = row_group_size
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        make_readable(fd)  # 0644 under the usual umask, not mkstemp's 0600
        os.close(fd)
        self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        self._rows: list[dict] = []
        self.count = 0

    def write(self, doc: dict) -> None:
        if doc.get("fetched_at") is None:
            doc = {**doc, "fetched_at": now_utc()}
        self._rows.append(doc)
        self.count += 1
        if len(self._rows) >= self.row_group_size:
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
            self._rows = []

    def close(self) -> Path:
        self._flush()
        self._writer.close()
        with open(self._tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            if os.path.exists(self._tmp):
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
