"""Convert dataset parquet files (Cosmopedia and the like) into cook documents, one file at a time.

Each input file is streamed in small record batches, reading only the columns needed, selected by
name (Cosmopedia's column order differs between subsets), so peak memory does not grow with the
file. Each input gives exactly one output, named after it and written atomically.

Output formats:

- `parquet`: the document format (`tasks.corpus.documents.SCHEMA`) plus provenance columns
  `source_file`, `row` (row index in the source file), `subset`, `format`, `audience`,
  `text_token_length` (null where the source lacks the column).
- `text`: UTF-8, every document followed by the separator line: `doc + "\\n<|endoftext|>\\n"`.
  A text that itself contains `<|endoftext|>` is escaped by one extra `|` (`<||endoftext|>`, and
  `<||endoftext|>` becomes `<|||endoftext|>` ...), so the separator is unambiguous and
  `read_text_documents` gives back the exact texts. Files can be concatenated (`cat`) safely.
- `csv`: a header row, then columns `CSV_COLUMNS`; every string quoted (quotes doubled), numbers
  bare, nulls empty and unquoted, rows end with `\n`. Python's `csv.reader` (open with `newline=""`)
  reads it back exactly, newlines inside texts included, once its field limit is raised above the
  longest text (`csv.field_size_limit(2**31 - 1)`: the default, 131,072 characters, refuses longer
  documents); `pyarrow.csv.read_csv` needs no setting.

Lossless: the non-null, non-empty texts come out unchanged and in order; null and empty texts are
counted and skipped. The text column may be string, large_string, string_view or dictionary-encoded
(`tasks.corpus.documents.text_array`). Arrow does not check that parquet strings are UTF-8: a row that
is not is never written but rejected (reason `invalid-utf8`), counted in `invalid_utf8`, and its row
numbers are logged (the first few). Any other column type (an integer `text`) is one CookError line.

Memory: record batches are sized per row group from its text bytes (BATCH_BYTES, at most BATCH_ROWS
rows), so a row group of long documents is read a few MB at a time, not at once.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from prefect import task

from model import storage
from model.atomic import atomic_write
from model.errors import CookError
from tasks.core.caching import PERSISTED, OutputsCache, file_fingerprint
from tasks.corpus.documents import SCHEMA, TEXT_ESCAPE, TEXT_SEPARATOR, DocumentWriter, expand_inputs, is_text_type, open_remote, text_array
from tasks.core.progress import progress

FORMATS = ("parquet", "text", "csv")
SUFFIX = {"parquet": ".parquet", "text": ".txt", "csv": ".csv"}
SEPARATOR = TEXT_SEPARATOR  # follows every document in the text format
_SEP_BYTES = SEPARATOR.encode()
BATCH_ROWS = 1024  # rows per record batch at most: a few MB of Cosmopedia text
BATCH_BYTES = 8 << 20  # text bytes per record batch (from the row group's metadata): long documents, fewer rows
INVALID_UTF8 = "invalid-utf8"  # the reject reason of a row whose text is not UTF-8 (as `cook merge`'s)
LOGGED_ROWS = 5  # rejected row numbers named in the log, per file
READ_BUFFER = 1 << 20  # buffered column reads: memory independent of the row group size
COSMOPEDIA_COLUMNS = {"prompt", "text_token_length", "seed_data", "format", "audience"}

# Provenance kept beside the document columns; pass-through columns are copied from the source when present.
PASS_THROUGH = {"format": pa.string(), "audience": pa.string(), "text_token_length": pa.int64()}
OUT_SCHEMA = pa.schema(
    list(SCHEMA)
    + [
        pa.field("source_file", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("subset", pa.string()),
        *(pa.field(name, t) for name, t in PASS_THROUGH.items()),
    ]
)
CSV_COLUMNS = ("id", "text", "source_file", "row", "subset", "format", "audience", "text_token_length")



# --- naming --------------------------------------------------------------------------------------


def is_hub_path(src: str) -> bool:
    return str(src).startswith("hf://")


def _parts(src: str) -> tuple[str, ...]:
    s = str(src)
    if is_hub_path(s):
        return PurePosixPath(s[len("hf://"):]).parts
    if storage.is_remote(s):  # s3://bucket/data/<subset>/x.parquet -> ("bucket", "data", ...)
        return PurePosixPath(s.split("://", 1)[1].split("?", 1)[0]).parts
    return Path(s).parts


def subset_of(src: str) -> str:
    """The folder under `data/` (Cosmopedia's layout `data/<subset>/train-*.parquet`), else the parent folder's name."""
    parts = _parts(src)
    folders = parts[:-1]
    for i in range(len(folders) - 2, -1, -1):
        if folders[i] == "data":
            return folders[i + 1]
    return folders[-1] if folders else ""


def output_path(src: str, out_dir: str | os.PathLike, fmt: str = "parquet") -> Path | str:
    """Where `src` converts to: `OUT/<subset>__<stem><suffix>` (deterministic; a URL when OUT is one)."""
    stem = PurePosixPath(_parts(src)[-1]).stem
    subset = subset_of(src)
    name = f"{subset}__{stem}" if subset else stem
    if storage.is_remote(out_dir):
        return storage.join(out_dir, name + SUFFIX[fmt])
    return Path(out_dir) / (name + SUFFIX[fmt])


# --- reading -------------------------------------------------------------------------------------


def hub_filesystem():
    """An fsspec filesystem for `hf://` paths, on the configured endpoint (COOK_HF_ENDPOINT) and token."""
    from tasks.core.settings import get_settings

    settings = get_settings()
    try:
        from huggingface_hub import HfFileSystem
    except ImportError:
        raise CookError(
            "reading hf:// paths needs the huggingface_hub package (pip install huggingface_hub); "
            "or download the files and pass local paths"
        ) from None
    token = settings.hf_token.get_secret_value() if settings.hf_token is not None else None
    return HfFileSystem(endpoint=settings.hf_endpoint.rstrip("/"), token=token)


def _open(src: str, stack: list) -> pq.ParquetFile:
    """Open `src` as parquet (local path or hf://); CookError when it is not readable parquet."""
    if is_hub_path(src):
        f = hub_filesystem().open(src, "rb", block_size=8 << 20)
        stack.append(f)
        source: Any = f
    elif storage.is_remote(src):
        f = open_remote(src)  # ranged reads of READ_BUFFER through fsspec; CookError when it is not there
        stack.append(f)
        source = f
    else:
        if not Path(src).is_file():
            raise CookError(f"{src}: file not found")
        source = src
    try:
        return pq.ParquetFile(source, buffer_size=READ_BUFFER, pre_buffer=False)
    except pa.ArrowInvalid as e:
        raise CookError(f"{storage.redact(src)}: not a readable parquet file, truncated or not parquet ({_line(e)})") from None
    except OSError as e:
        if is_hub_path(src) or storage.is_remote(src):
            raise  # a network problem: the task retries
        raise CookError(f"{src}: cannot read ({_line(e)})") from None


def _line(e: BaseException, limit: int = 200) -> str:
    s = str(e).strip().splitlines()
    s = s[0] if s else type(e).__name__
    return s if len(s) <= limit else s[: limit - 1] + "…"


# --- inputs --------------------------------------------------------------------------------------


def _hub_error(src: str, e: BaseException) -> CookError:
    from tasks.core.settings import get_settings

    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    return CookError(
        f"cannot reach the Hugging Face Hub at {get_settings().hf_endpoint} for {src}: {type(e).__name__}: {reason}; "
        "download the files and pass local paths, or set COOK_HF_ENDPOINT to a mirror"
    )


def _expand_hub(src: str) -> list[str]:
    """`hf://` files or globs -> sorted `hf://` file paths (.parquet); one clear CookError line when offline."""
    fs = hub_filesystem()
    try:
        if any(c in src for c in "*?["):
            found = [p for p in fs.glob(src) if p.endswith(".parquet")]
        elif fs.isdir(src):
            found = [p for p in fs.find(src) if p.endswith(".parquet")]
        else:
            found = [src] if fs.isfile(src) else []
    except FileNotFoundError:
        found = []
    except Exception as e:  # connection refused, DNS, HTTP errors, offline mode
        raise _hub_error(src, e) from None
    files = sorted("hf://" + p.removeprefix("hf://") for p in found)
    if not files:
        raise CookError(f"input not found or empty: {src}")
    return files


def check_unparquet_args(sources: list[str], out: str, fmt: str = "parquet", column: str = "text") -> list[str]:
    """Validate before any task runs; return the input files (absolute local paths and `hf://` paths)."""
    if fmt not in FORMATS:
        raise CookError(f"unknown format '{fmt}' (choose {', '.join(FORMATS)})")
    if not column:
        raise CookError("--column must name the text column")
    if not sources:
        raise CookError("no input given")
    if storage.is_remote(out):
        if storage.isfile(out):
            raise CookError(f"--out {storage.redact(out)} is a file, not a folder")
    elif Path(out).exists() and not Path(out).is_dir():
        raise CookError(f"--out {out} is a file, not a folder")
    local = [s for s in map(str, sources) if not is_hub_path(s)]
    files = [p if isinstance(p, str) else str(p.resolve()) for p in expand_inputs(local, suffixes=(".parquet",))] if local else []
    for s in map(str, sources):
        if is_hub_path(s):
            files += [f for f in _expand_hub(s) if f not in files]
    seen: dict[Path | str, str] = {}
    for f in files:
        o = output_path(f, out, fmt)
        if o in seen:
            raise CookError(f"{storage.redact(seen[o])} and {storage.redact(f)} would both be written to {storage.name(o)}; "
                            "convert them into different --out folders")
        seen[o] = f
    return files


def source_fingerprint(src: str) -> dict:
    """What identifies a source's content for the cache: size/mtime/sample hash, or the Hub's blob id."""
    if not is_hub_path(src):
        return file_fingerprint(src)  # a path or a URL (model/storage.py)
    try:
        info = hub_filesystem().info(src)
    except Exception as e:
        raise _hub_error(src, e) from None
    lfs = info.get("lfs") or {}
    return {"path": src, "size": info.get("size"), "blob": info.get("blob_id"), "sha256": lfs.get("sha256")}


# --- converting ----------------------------------------------------------------------------------


def _string_buffers(texts: pa.StringArray) -> tuple[memoryview, memoryview]:
    """(offsets, UTF-8 data) of a string array without copying: text i is data[offsets[i]:offsets[i + 1]]."""
    offsets = memoryview(texts.buffers()[1]).cast("i")[texts.offset : texts.offset + len(texts) + 1]
    return offsets, memoryview(texts.buffers()[2])


class _Sink:
    """One output file of one format, written atomically: it exists only once complete."""

    def __init__(self, path: Path | str, fmt: str):
        self.fmt = fmt
        if fmt == "parquet":
            self._doc = DocumentWriter(path, OUT_SCHEMA)
            return
        self._ctx = storage.atomic_open(path) if storage.is_remote(path) else atomic_write(path, "wb")
        self._f: IO[bytes] = self._ctx.__enter__()
        if fmt == "csv":
            schema = pa.schema([OUT_SCHEMA.field(c) for c in CSV_COLUMNS])
            self._csv = pa_csv.CSVWriter(self._f, schema, write_options=pa_csv.WriteOptions(quoting_style="needed"))

    def write(self, table: pa.Table) -> None:
        if self.fmt == "parquet":
            self._doc.write_table(table)
        elif self.fmt == "csv":
            self._csv.write_table(table.select(list(CSV_COLUMNS)))
        else:
            self._write_text(table.column("text").combine_chunks())

    def _write_text(self, texts: pa.StringArray) -> None:
        """Each text then SEPARATOR, straight from Arrow's buffers; escape the marker only where it occurs."""
        offsets, data = _string_buffers(texts)
        if b"endoftext|>" in data[offsets[0] : offsets[-1]].tobytes():
            texts = pc.replace_substring_regex(texts, pattern=TEXT_ESCAPE, replacement=r"<|\1")
            offsets, data = _string_buffers(texts)
        parts = []
        for a, b in zip(offsets[:-1], offsets[1:]):
            parts += (data[a:b], _SEP_BYTES)
        self._f.writelines(parts)

    def close(self) -> None:
        if self.fmt == "parquet":
            self._doc.close()
            return
        if self.fmt == "csv":
            self._csv.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self.fmt == "parquet":
            self._doc.abort()
            return
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:
            pass


def _text_column(pf: pq.ParquetFile, src: str, column: str) -> None:
    names = pf.schema_arrow.names
    if column not in names:
        raise CookError(f"{src}: no '{column}' column (columns: {', '.join(names)})")
    t = pf.schema_arrow.field(column).type
    if not is_text_type(t):
        raise CookError(f"{src}: column '{column}' is {t}, not text")


def convert_file(src: str, out_dir: str | os.PathLike, fmt: str = "parquet", column: str = "text", subset: str | None = None) -> dict:
    """Convert one parquet file into one output under `out_dir` (see the module doc); return a summary.

    The summary: src, out, rows, written, null_or_empty, invalid_utf8 (rows rejected, `invalid-utf8`),
    bytes_in_text (UTF-8 bytes of the texts written), seconds. Raises CookError for a file that is not
    parquet, truncated, or lacks `column` or whose `column` is not text.
    """
    if fmt not in FORMATS:
        raise CookError(f"unknown format '{fmt}' (choose {', '.join(FORMATS)})")
    t0 = time.perf_counter()
    src = str(src)
    shown = storage.redact(src)  # what messages and the provenance columns say: a URL without credentials
    out = output_path(src, out_dir, fmt)
    subset = subset_of(src) if subset is None else subset
    stack: list = []
    try:
        pf = _open(src, stack)
        _text_column(pf, shown, column)
        names = set(pf.schema_arrow.names)
        present = [c for c in PASS_THROUGH if c in names and c != column]
        source = "cosmopedia" if "cosmopedia" in src.lower() or COSMOPEDIA_COLUMNS <= names else "parquet"
        stem = PurePosixPath(_parts(src)[-1]).stem
        id_prefix = f"{source}/{subset}/{stem}/" if subset else f"{source}/{stem}/"
        fetched_at = datetime.now(timezone.utc)
        total = pf.metadata.num_rows
        stats = {"rows": 0, "written": 0, "null_or_empty": 0, "invalid_utf8": 0, "bytes_in_text": 0}
        bad_rows: list[int] = []

        sink = _Sink(out, fmt)
        try:
            with progress(f"unparquet {PurePosixPath(_parts(src)[-1]).name}", total=total) as bar:
                for batch in _batches(pf, shown, [column, *present]):
                    table = _documents(batch, column, present, stats, id_prefix, source, shown, subset, fetched_at, bad_rows)
                    if table.num_rows:
                        sink.write(table)
                    bar.advance(batch.num_rows)
        except BaseException as e:
            sink.abort(e)
            raise
        sink.close()
    finally:
        for f in stack:
            f.close()
    if stats["invalid_utf8"]:
        more = ", …" if stats["invalid_utf8"] > len(bad_rows) else ""
        _logger().warning("%s: %d rows rejected (%s: text not valid UTF-8): row %s%s", shown, stats["invalid_utf8"],
                          INVALID_UTF8, ", ".join(map(str, bad_rows)), more)
    return {"src": shown, "out": storage.redact(out), **stats, "seconds": round(time.perf_counter() - t0, 3)}


def _logger() -> logging.Logger:
    """Prefect's run logger inside a task, the module's logger when called as a plain function."""
    try:
        from prefect import get_run_logger

        return get_run_logger()  # type: ignore[return-value]
    except Exception:
        return logging.getLogger(__name__)


def batch_rows(pf: pq.ParquetFile, group: int, column: str) -> int:
    """Rows per record batch for row group `group`: about BATCH_BYTES of `column`'s uncompressed data, at most
    BATCH_ROWS, at least 1 (from the file's metadata; BATCH_ROWS when it lacks the sizes)."""
    meta = pf.metadata.row_group(group)
    if meta.num_rows == 0:
        return BATCH_ROWS
    size = 0
    for j in range(meta.num_columns):
        c = meta.column(j)
        if c.path_in_schema.split(".")[0] == column:
            size += c.total_uncompressed_size or 0
    if size <= 0:
        return BATCH_ROWS
    return max(1, min(BATCH_ROWS, BATCH_BYTES * meta.num_rows // size))


def _batches(pf: pq.ParquetFile, src: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of `columns` only, row group after row group, each about BATCH_BYTES of text (see
    `batch_rows`); a corrupt file becomes a CookError."""
    for group in range(pf.num_row_groups):
        yield from _group_batches(pf, src, columns, group)


def _group_batches(pf: pq.ParquetFile, src: str, columns: list[str], group: int) -> Iterator[pa.RecordBatch]:
    it = pf.iter_batches(batch_size=batch_rows(pf, group, columns[0]), row_groups=[group], columns=columns, use_threads=False)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            raise CookError(f"{src}: corrupt parquet data ({_line(e)})") from None
        except OSError as e:
            if is_hub_path(src) or storage.is_remote(src):
                raise  # a network problem: the task retries
            raise CookError(f"{src}: cannot read parquet data, truncated? ({_line(e)})") from None
        yield batch


def _documents(batch: pa.RecordBatch, column: str, present: list[str], stats: dict, id_prefix: str, source: str,
               src: str, subset: str, fetched_at: datetime, bad_rows: list[int] | None = None) -> pa.Table:
    """Keep rows with a non-empty, valid UTF-8 text; build the output columns (OUT_SCHEMA) for them.

    Rows that are not UTF-8 are counted in stats["invalid_utf8"]; the first LOGGED_ROWS of them go to `bad_rows`."""
    n = batch.num_rows
    start = stats["rows"]
    stats["rows"] += n
    texts, bad = text_array(batch.column(column), src, column)
    if pa.types.is_large_string(texts.type):
        texts = texts.cast(pa.string())
    keep = pc.fill_null(pc.greater(pc.binary_length(texts), 0), False)
    invalid = 0
    if bad is not None:
        invalid = int(bad.sum())
        if bad_rows is not None and len(bad_rows) < LOGGED_ROWS:
            bad_rows += [start + int(i) for i in bad.nonzero()[0][: LOGGED_ROWS - len(bad_rows)]]
        keep = pc.and_(keep, pa.array(~bad))
    rows = pa.array(range(start, start + n), pa.int64())
    batch = batch.select(present)  # the pass-through columns (the text column is `texts`, plain now)
    if pc.all(keep).as_py() is not True:
        rows, texts = rows.filter(keep), texts.filter(keep)
        batch = batch.filter(keep)
    k = len(texts)
    stats["written"] += k
    stats["invalid_utf8"] += invalid
    stats["null_or_empty"] += n - k - invalid
    stats["bytes_in_text"] += pc.sum(pc.binary_length(texts)).as_py() or 0
    cols = {
        "id": pc.binary_join_element_wise(pa.scalar(id_prefix), pc.cast(rows, pa.string()), ""),
        "source": pa.repeat(pa.scalar(source), k),
        "url": pa.repeat(pa.scalar(src), k),
        "title": pa.nulls(k, pa.string()),
        "text": texts,
        "fetched_at": pa.repeat(pa.scalar(fetched_at, pa.timestamp("us", tz="UTC")), k),
        "source_file": pa.repeat(pa.scalar(src), k),
        "row": rows,
        "subset": pa.repeat(pa.scalar(subset), k),
    }
    for name, t in PASS_THROUGH.items():
        if name in present:
            try:
                cols[name] = batch.column(name).cast(t)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise CookError(f"{src}: column '{name}' holds {batch.column(name).type}, expected {t}") from None
        else:
            cols[name] = pa.nulls(k, t)
    return pa.Table.from_arrays([cols[f.name] for f in OUT_SCHEMA], schema=OUT_SCHEMA)


# --- Prefect -------------------------------------------------------------------------------------


def _retryable(task, task_run, state) -> bool:
    """Retry remote read failures; never a CookError (bad input stays bad)."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, Exception) and not isinstance(exc, CookError)


@task(
    name="unparquet",
    cache_policy=OutputsCache(outputs=lambda i: [output_path(i["src"], i["out_dir"], i["fmt"])], version="2"),  # 2: invalid UTF-8 rows rejected, `invalid_utf8` in the summary
    **PERSISTED,
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=_retryable,
)
def unparquet_task(src: str, out_dir: str, fmt: str = "parquet", column: str = "text", fingerprint: dict | None = None) -> dict:
    """Prefect wrapper of `convert_file`; cached on the source's `fingerprint`, parameters and output, while the output exists."""
    return convert_file(src, out_dir, fmt, column)
