"""Tokenize a corpus into llm.c-style binary shards (train/val) plus meta.json, on every core, with flat memory.

Shard content is `doc1 eot doc2 eot ...`. Documents go to val by a hash of their text (so the split is
deterministic and stable when documents are added), and val always holds at least one document.
meta.json records each split's UTF-8 bytes of text (for bits per byte) and a smoothed bigram baseline
(model/baseline.py), fitted on the first train tokens as they are written and scored on val once it is.
The output folder is built beside `out` and renamed into place at the end: it is whole or absent.

The input is cut into pieces of about TASK_BYTES of text: runs of parquet row groups, byte ranges of
text-format .txt files (cut where a document starts), byte ranges of a large plain .txt file (cut where the
tokenizers' split patterns cut anyway, so the ids are those of the whole text). Worker processes (spawned,
`--workers`, by default one per WORKER_MIN_BYTES of text up to every core) each read their own pieces and
do all the per-document work: UTF-8 checks, encoding, and each document's byte count and val-split hash.
They return numpy arrays; the main process puts the results back in input order and writes the shards, so
the output is byte-identical whatever the worker count. Workers import no Prefect: this module builds its
Prefect task only on first use (`tokenize_task`).
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from model import storage
from model.atomic import atomic_dir
from model import baseline
from model.baseline import KneserNeyBigram, score_baseline
from model.errors import CookError
from model.shards import HEADER_BYTES, META_NAME, ShardStream, ShardWriter, dtype_for_vocab, write_meta
from model.tokenizer import (TiktokenTokenizer, Tokenizer, default_threads, get_tokenizer, known_vocab_size, load_tokenizer,
                             split_pieces)
from tasks.corpus.documents import (TEXT_SEPARATOR, TEXT_SUFFIXES, expand_inputs, file_size, is_text_documents, open_documents,
                                    suffix, text_array)
from tasks.core.progress import progress
from tasks.core.spawn import can_spawn, process_pool

DTYPES = ("auto", "uint16", "uint32")
TASK_BYTES = 4 << 20  # text one worker reads and encodes at a time: many pieces per worker, flat memory
WORKER_MIN_BYTES = 16 << 20  # one worker per this much text (a spawned worker takes about a second to start)
READ_ROWS = 1024  # parquet rows per record batch (memory follows the batch, not the row group)
TOKENIZER_SUBDIR = "tokenizer"
_U16_MAX_IDS = 65536
_SEP = TEXT_SEPARATOR.encode()  # ASCII: a byte search finds it exactly
_CHAIN = _SEP + _SEP[1:]  # two separators sharing a newline: never written by cook (the marker is escaped)
_UNESCAPE = re.compile(r"<\|(\|+endoftext\|>)")  # undoes documents.escape_text
# Where a plain text may be cut: after a newline that follows a printable ASCII character and precedes an ASCII
# letter. A subset of model.tokenizer's safe cuts: the GPT-2/GPT-4 split patterns end a piece there whether
# the text goes on or not, so the pieces' ids are the whole text's.
_CUT = re.compile(rb"[\x21-\x7e]\n[A-Za-z]")
_SCAN = 1 << 16  # bytes read at a time while looking for a cut or a separator
_EMPTY_I64 = np.zeros(0, dtype=np.int64)

log = logging.getLogger("cook.tokenize")


# ---- pieces: what one worker reads and encodes --------------------------------------------------------

ROWS, DOCS, WHOLE, PART, HASH = "rows", "docs", "whole", "part", "hash"


class Piece(NamedTuple):
    """One unit of work. ROWS: row groups [a, b) of a parquet file; DOCS: the documents of a text-format file
    that start in bytes [a, b); WHOLE: a plain .txt file, one document; PART: bytes [a, b) of a large plain .txt
    file moved to the nearest cuts (`last`: the document's final part); HASH: that file's size and hash."""

    kind: str
    path: str
    a: int = 0
    b: int = 0
    last: bool = False


class Encoded(NamedTuple):
    """A piece's documents: `ids` is `doc1 eot doc2 eot ...` in the shard dtype, `lens` each document's tokens
    (its eot included), `sizes` its UTF-8 bytes, `hashes` the blake2b of those bytes (the val split's input),
    `skipped` the rows left out as not UTF-8. A PART holds its tokens (no eot) and its bytes in `sizes`; a
    HASH the file's bytes and hash."""

    ids: np.ndarray
    lens: np.ndarray
    sizes: np.ndarray
    hashes: np.ndarray
    skipped: int = 0


def _parquet_text_leaf(pf: pq.ParquetFile) -> int:
    md = pf.metadata
    for j in range(md.num_columns):
        if md.schema.column(j).path.split(".")[0] == "text":
            return j
    return -1


def plan_pieces(files: list[Path], task_bytes: int = TASK_BYTES) -> list[Piece]:
    """The pieces of `files`, in corpus order (from file sizes and parquet metadata; no text is read)."""
    pieces: list[Piece] = []
    for f in files:
        path = str(f)
        if suffix(f) in TEXT_SUFFIXES:
            size = file_size(f)
            if size == 0:
                continue
            if is_text_documents(f):
                pieces += [Piece(DOCS, path, a, min(a + task_bytes, size)) for a in range(0, size, task_bytes)]
            elif size <= task_bytes:
                pieces.append(Piece(WHOLE, path, 0, size))
            else:
                starts = list(range(0, size, task_bytes))
                pieces.append(Piece(HASH, path, 0, size))
                pieces += [Piece(PART, path, a, min(a + task_bytes, size), a == starts[-1]) for a in starts]
            continue
        pf = open_documents(f)
        leaf, md = _parquet_text_leaf(pf), pf.metadata
        start, acc = 0, 0
        for i in range(md.num_row_groups):
            acc += md.row_group(i).column(leaf).total_uncompressed_size if leaf >= 0 else 0
            if acc >= task_bytes or i == md.num_row_groups - 1:
                pieces.append(Piece(ROWS, path, start, i + 1))
                start, acc = i + 1, 0
    return pieces


def _decode(data: bytes, path: str, at: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CookError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {at + e.start}); cook reads .txt "
                        "files as UTF-8: convert it first, e.g. iconv -f latin1 -t utf-8") from None


def _find(f, pattern: re.Pattern, pos: int, size: int, width: int) -> int:
    """Offset of the first match of `pattern` (matches are `width` bytes) starting at or after `pos`, or -1."""
    while pos < size:
        f.seek(pos)
        m = pattern.search(f.read(_SCAN + width - 1))
        if m is not None and m.start() < _SCAN:
            return pos + m.start()
        pos += _SCAN
    return -1


_SEP_RE = re.compile(re.escape(_SEP))


def _next_doc(f, p: int, size: int, path: str) -> int:
    """The first document start (0, or just after a separator) at or after byte `p` of a text-format file."""
    if p <= 0:
        return 0
    s = _find(f, _SEP_RE, max(0, p - len(_SEP)), size, len(_SEP))
    if s < 0:
        return size
    f.seek(max(0, s - len(_SEP) + 1))
    if _CHAIN in f.read(3 * len(_SEP)):
        raise CookError(f"{path}: separators overlap near byte {s} (not a cook text file)")
    return s + len(_SEP)


def _next_cut(f, p: int, size: int) -> int:
    """The first cut (see _CUT) at or after byte `p` of a plain text file; `size` when there is none."""
    if p <= 0:
        return 0
    q = _find(f, _CUT, max(0, p - 2), size, 3)
    return size if q < 0 else q + 2


def _open_input(path: str):
    """An input file for reading: a local file, or a URL's fsspec file (seek and ranged reads)."""
    return storage.open_read(path) if storage.is_remote(path) else open(path, "rb")


def _read_range(path: str, a: int, b: int, boundary) -> tuple[int, bytes]:
    if storage.is_remote(path):
        with storage.open_read(path) as f:
            return _read_range_of(f, storage.size(path), a, b, boundary)
    with open(path, "rb") as f:
        return _read_range_of(f, os.fstat(f.fileno()).st_size, a, b, boundary)


def _read_range_of(f, size: int, a: int, b: int, boundary) -> tuple[int, bytes]:
    start = boundary(f, a, size)
    end = boundary(f, b, size) if b < size else size
    if start >= end:
        return start, b""
    f.seek(start)
    return start, f.read(end - start)


def _key(data) -> int:
    """The val split's input: blake2b of a document's UTF-8 bytes, as an int (see `_val_hash`)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _val_hash(data: bytes) -> float:
    """A document's place in [0, 1): val when below val_fraction."""
    return _key(data) / 2.0**64


class _Batch(NamedTuple):
    texts: list[str]
    sizes: list[int]  # UTF-8 bytes of each text
    keys: list[int]  # `_key` of each text (empty when not asked for)
    skipped: int = 0  # rows left out: not valid UTF-8


def _views(texts: pa.Array) -> list[memoryview]:
    """Each row's UTF-8 bytes, as views of the array's data buffer (no copy)."""
    _, offsets, data = texts.buffers()[:3]
    width = np.int64 if pa.types.is_large_string(texts.type) else np.int32
    offs = np.frombuffer(offsets, dtype=width)[texts.offset : texts.offset + len(texts) + 1].tolist()
    view = memoryview(data) if data is not None else memoryview(b"")
    return [view[i:j] for i, j in zip(offs[:-1], offs[1:])]


def _keys_of(texts: pa.Array) -> tuple[list[int], list[int]]:
    """Sizes and keys of each row's UTF-8 bytes, read in place."""
    views = _views(texts)
    return [len(v) for v in views], [_key(v) for v in views]


def _parquet_batches(path: str, a: int, b: int, keys: bool) -> Iterator[_Batch]:
    pf = open_documents(path)
    for batch in pf.iter_batches(batch_size=READ_ROWS, row_groups=range(a, b), columns=["text"], use_threads=False):
        texts, bad = text_array(batch.column(0), path)
        del batch
        skipped = 0
        if bad is not None:
            skipped = int(bad.sum())
            texts = texts.filter(pa.array(~bad))
        if texts.null_count or (len(texts) and pc.min(pc.binary_length(texts)).as_py() == 0):
            texts = texts.filter(pc.greater(pc.binary_length(texts), 0))  # nulls and empty texts are no documents
        sizes, hashes = _keys_of(texts) if keys else (pc.binary_length(texts).to_pylist(), [])
        big = texts.nbytes > (64 << 20)
        strings = [str(v, "utf-8") for v in _views(texts)] if big else texts.to_pylist()  # big: no temporary copy
        del texts
        if big:  # a huge row: give its Arrow memory back before the text is encoded
            pa.default_memory_pool().release_unused()
        if strings or skipped:
            yield _Batch(strings, sizes, hashes, skipped)


def _text_docs(path: str, a: int, b: int, keys: bool) -> Iterator[_Batch]:
    start, data = _read_range(path, a, b, lambda f, p, size: _next_doc(f, p, size, path))
    if not data:
        return
    at = data.find(_CHAIN)
    if at >= 0:
        raise CookError(f"{path}: separators overlap at byte {start + at} (not a cook text file)")
    docs = data.split(_SEP)
    del data
    if docs.pop():  # the range ends just after a separator
        raise CookError(f"{path}: text after the last separator (not a complete cook text file)")
    out = _Batch([], [], [])
    for k, raw in enumerate(docs):
        docs[k] = None  # each document's bytes are let go once decoded
        n = len(raw)
        if n:
            text = _decode(raw, path, start)
            if "endoftext|>" in text:
                unescaped = _UNESCAPE.sub(r"<\1", text)
                if unescaped != text:
                    text, raw = unescaped, unescaped.encode("utf-8")
            out.texts.append(text)
            out.sizes.append(len(raw))
            if keys:
                out.keys.append(_key(raw))
        start += n + len(_SEP)
    yield out


def _doc_batches(piece: Piece, keys: bool = True) -> Iterator[_Batch]:
    """A piece's documents, a bounded batch at a time (a PART: its text). `keys`: compute each one's `_key`."""
    if piece.kind == ROWS:
        yield from _parquet_batches(piece.path, piece.a, piece.b, keys)
    elif piece.kind == DOCS:
        yield from _text_docs(piece.path, piece.a, piece.b, keys)
    elif piece.kind in (WHOLE, PART):
        start, data = _read_range(piece.path, piece.a, piece.b, _next_cut)
        if data:
            key = [_key(data)] if keys else []
            text = _decode(data, piece.path, start)
            yield _Batch([text], [len(data)], key)


def _hash_file(path: str) -> Encoded:
    h, size = hashlib.blake2b(digest_size=8), 0
    with _open_input(path) as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    key = int.from_bytes(h.digest(), "little")
    return Encoded(_EMPTY_I64, _EMPTY_I64, np.array([size], dtype=np.int64), np.array([key], dtype=np.uint64))


def encode_piece(piece: Piece, tok: Tokenizer, dtype: np.dtype) -> Encoded:
    """Read and encode one piece (in a worker process, a thread, or inline: the result is the same)."""
    try:
        if piece.kind == HASH:
            return _hash_file(piece.path)
        eot = np.array([tok.eot_id], dtype=dtype)
        parts: list[np.ndarray] = []
        lens, sizes, keys, skipped = [], [], [], 0
        for batch in _doc_batches(piece, keys=piece.kind != PART):
            skipped += batch.skipped
            sizes += batch.sizes
            keys += batch.keys
            texts = batch.texts
            del batch
            for k, text in enumerate(texts):
                texts[k] = None
                n = 0
                for chunk in split_pieces(text):  # a huge document in bounded memory
                    ids = tok.encode_array(chunk).astype(dtype, copy=False)
                    parts.append(ids)
                    n += ids.size
                if piece.kind != PART:
                    parts.append(eot)
                    lens.append(n + 1)
    except (OSError, pa.ArrowException) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise CookError(f"{piece.path}: unreadable ({type(e).__name__}: {first})") from None
    if piece.kind == PART:
        sizes = [sum(sizes)]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    return Encoded(ids, np.array(lens, dtype=np.int64), np.array(sizes, dtype=np.int64), np.array(keys, dtype=np.uint64), skipped)


_worker_state: tuple[Tokenizer, np.dtype] | None = None


def _init_worker(tok: Tokenizer, dtype: np.dtype) -> None:
    global _worker_state
    _worker_state = (tok, np.dtype(dtype))
    pa.set_cpu_count(1)  # one core per worker: the parallelism is the workers


def _encode_in_worker(piece: Piece) -> Encoded:
    return encode_piece(piece, *_worker_state)


def encoded_pieces(pieces: list[Piece], tok: Tokenizer, dtype: np.dtype, workers: int,
                   processes: bool = True) -> Iterator[tuple[Piece, Encoded]]:
    """`(piece, encode_piece(piece))` for every piece, in the order given, encoding up to 2 x `workers` pieces ahead.

    `workers` > 1: spawned processes when `processes` (they start with the tokenizer, and read their pieces
    themselves), else threads (tiktoken releases the GIL). Results are taken in submission order, never in
    completion order: that is what makes the output independent of the worker count.
    """
    dtype = np.dtype(dtype)
    workers = min(workers, len(pieces))  # no worker started for nothing to do
    if workers <= 1:
        for p in pieces:
            yield p, encode_piece(p, tok, dtype)
        return
    if processes:
        pool = process_pool(workers, _init_worker, (tok, dtype))

        def submit(p: Piece):
            return pool.submit(_encode_in_worker, p)
    else:
        # tiktoken's first encode coming from threads started before any in this one runs them at a fraction of
        # their speed for the whole pass (benchmarks/RESULTS.md: 2 threads slower than 1); one tiny encode here
        # avoids it (a char vocabulary need not hold these characters, and has nothing to warm)
        if isinstance(tok, TiktokenTokenizer):
            tok.enc.encode_ordinary("warm up")
        pool = ThreadPoolExecutor(workers, thread_name_prefix="tokenize")

        def submit(p: Piece):
            return pool.submit(encode_piece, p, tok, dtype)

    inflight: collections.deque = collections.deque()
    try:
        for p in pieces:
            inflight.append((p, submit(p)))
            if len(inflight) > 2 * workers:
                q, fut = inflight.popleft()
                yield q, fut.result()
        while inflight:
            q, fut = inflight.popleft()
            yield q, fut.result()
    except BrokenProcessPool:
        raise CookError(f"tokenize: a worker process died (killed, or out of memory?); try fewer --workers than {workers}") from None
    finally:
        for _, fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def default_workers(text_bytes: int) -> int:
    """Worker count for `text_bytes` of (uncompressed) text: one per WORKER_MIN_BYTES, at most every core."""
    return max(1, min(default_threads(), text_bytes // WORKER_MIN_BYTES))


# ---- checks, the corpus as texts ----------------------------------------------------------------------


def _iter_corpus(files: list[Path]) -> Iterator[str]:
    """Every document's text, in order, as the workers read it (a large plain text in parts cut where the
    split patterns cut anyway: a vocabulary built from the parts is the whole text's)."""
    for piece in plan_pieces(files):
        if piece.kind != HASH:
            for batch in _doc_batches(piece, keys=False):
                yield from batch.texts


def _file_has_text(path: Path | str) -> bool:
    if suffix(path) in TEXT_SUFFIXES:
        size = file_size(path)
        if not size or not is_text_documents(path):
            return size > 0
        block = _SEP * (1 << 14)  # a text-format file holds text unless it is separators only
        with _open_input(str(path)) as f:
            while chunk := f.read(len(block)):
                if chunk != block[: len(chunk)]:
                    return True
        return False
    pf = open_documents(path)
    for batch in pf.iter_batches(batch_size=READ_ROWS, columns=["text"]):
        texts, bad = text_array(batch.column(0), str(path))
        lengths = pc.fill_null(pc.binary_length(texts), 0).to_numpy()
        if (lengths[~bad] if bad is not None else lengths).any():
            return True
    return False


def _has_text(files: list[Path]) -> bool:
    return any(_file_has_text(f) for f in files)


def _text_bytes(path: Path | str) -> int:
    """Approximate text bytes of an input, for progress: a .txt's size, a parquet's uncompressed text column."""
    if suffix(path) != ".parquet":
        return file_size(path)
    try:
        pf = pq.ParquetFile(path) if isinstance(path, Path) else open_documents(path)
        col, md = _parquet_text_leaf(pf), pf.metadata
        return sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups)) if col >= 0 else 0
    except Exception:
        return file_size(path)


def _check_dtype(dtype: str, vocab_size: int | None) -> None:
    if dtype not in DTYPES:
        raise CookError(f"unknown dtype '{dtype}' (choose auto, uint16 or uint32)")
    if dtype == "uint16" and vocab_size is not None and vocab_size > _U16_MAX_IDS:
        raise CookError(f"vocabulary of {vocab_size} ids does not fit uint16 (max {_U16_MAX_IDS}); use --dtype uint32 or auto")


def load_tokenizer_at(loc: str | os.PathLike) -> Tokenizer:
    """A saved tokenizer (its folder, or a token folder holding `tokenizer/`), local or at a URL (copied to a temp
    folder under the cache, read, and removed)."""
    if not storage.is_remote(loc):
        return load_tokenizer(loc)
    import shutil

    from model.tokenizer import TOKENIZER_JSON

    loc = str(loc).rstrip("/")
    if not storage.exists(storage.join(loc, TOKENIZER_JSON)):
        loc = storage.join(loc, TOKENIZER_SUBDIR)  # a token folder: only its tokenizer/ is fetched
        if not storage.exists(storage.join(loc, TOKENIZER_JSON)):
            raise CookError(f"{storage.redact(loc)}: no {TOKENIZER_JSON} — not a saved tokenizer folder")
    work = Path(storage.temp_dir("tokenizer"))
    try:
        storage.get_dir(loc, work / "t")
        return load_tokenizer(work / "t")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_tokenize_args(inputs, encoding: str, dtype: str = "auto", tokenizer_dir: str | Path | None = None,
                        workers: int | None = None) -> list[Path]:
    """Validate arguments before any work starts; return the input files. Raises a one-line CookError.

    With `tokenizer_dir`, the saved tokenizer decides the ids and `encoding` is not used.
    """
    if workers is not None and workers < 0:
        raise CookError(f"--workers must be 0 or more (got {workers})")
    files = expand_inputs(inputs)
    if tokenizer_dir is not None:
        vocab = load_tokenizer_at(tokenizer_dir).vocab_size
    else:
        vocab = known_vocab_size(encoding)  # also rejects unknown encodings
    _check_dtype(dtype, vocab)
    if not _has_text(files):
        raise CookError(f"empty corpus: no text in {len(files)} input file(s)")
    return files


def _token_bytes(tok: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes that `ids` stand for (exact even where they cut a character: tiktoken decodes to bytes)."""
    enc = getattr(tok, "enc", None)
    if enc is not None:
        return len(enc.decode_bytes([int(i) for i in ids]))
    return len(tok.decode(ids).encode("utf-8", "surrogatepass"))


def _input_signature(files: list[Path]) -> list[dict]:
    from tasks.core.caching import file_fingerprint

    return [file_fingerprint(f) for f in files]


def _warn(message: str) -> None:
    """A warning in the Prefect run's log when inside one, else in Python's logging."""
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:
        log.warning(message)


# ---- the stage --------------------------------------------------------------------------------------


def tokenize_corpus(
    inputs: list[Path],
    encoding: str = "gpt2",
    out: Path = Path("data/tokens"),
    tokenizer_dir: Path | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
    workers: int | None = None,
    processes: bool | None = None,
    *,
    num_threads: int | None = None,
) -> Path:
    """Tokenize `inputs` (document parquet files / .txt, folders, globs) into `out`; return `out`.

    Writes `train_NNNNNN.bin`, `val_NNNNNN.bin`, `tokenizer/` and, last, `meta.json`.
    `workers`: how many pieces are encoded at once (default `default_workers` of the text size; 0 or 1 encode
    in this process). They are spawned processes unless `processes` is False, or this process is daemonic (a
    Dask worker may not start any): threads there. `num_threads`: the former name of `workers`.
    The output is the same whatever the worker count and kind.
    """
    out = out if storage.is_remote(out) else Path(out)  # a URL: see `_tokenize_to_store`
    workers = workers if workers is not None else num_threads
    files = check_tokenize_args(inputs, encoding, dtype, tokenizer_dir, workers)
    if not 0.0 <= val_fraction < 1.0:
        raise CookError(f"val fraction must be in [0, 1) (got {val_fraction})")
    if shard_tokens < 1:
        raise CookError(f"shard size must be at least 1 token (got {shard_tokens})")
    total_bytes = sum(_text_bytes(f) for f in files)
    workers = default_workers(total_bytes) if workers is None else max(1, workers)
    processes = (processes is None or processes) and can_spawn()

    if tokenizer_dir is not None:
        tok = load_tokenizer_at(tokenizer_dir)
    elif encoding == "char" or encoding.startswith("bpe:"):
        with progress(f"tokenize: build {encoding} vocabulary", total=total_bytes) as bar:

            def texts() -> Iterator[str]:
                for t in _iter_corpus(files):
                    bar.advance(len(t))
                    yield t

            tok = get_tokenizer(encoding, texts)
    else:
        tok = get_tokenizer(encoding)
    _check_dtype(dtype, tok.vocab_size)
    np_dtype = dtype_for_vocab(tok.vocab_size) if dtype == "auto" else np.dtype(dtype)

    if storage.is_remote(out):
        skipped = _tokenize_to_store(str(out).rstrip("/"), files, tok, np_dtype, shard_tokens, val_fraction, workers,
                                     processes, total_bytes)
    else:
        with atomic_dir(out) as tmp:
            tok.save(tmp / TOKENIZER_SUBDIR)
            pieces = plan_pieces(files)
            stats, skipped, bigram = _write_splits(pieces, tok, tmp, np_dtype, shard_tokens, val_fraction, workers,
                                                   processes, total_bytes)
            val = ShardStream(stats["val"]["paths"])
            write_meta(tmp, _meta(tok, np_dtype, stats, _baseline(bigram, stats, val), val_fraction, files, skipped))
    for path, n in skipped.items():
        _warn(f"tokenize: left out {n} row(s) of {storage.redact(path)} whose text is not valid UTF-8 (`cook merge` rejects "
              "them as invalid-utf8)")
    return out


def _baseline(bigram: KneserNeyBigram, stats: dict, val) -> dict:
    """meta.json's bigram baseline: `bigram` (fitted while the shards were written) scored on the val split."""
    with progress("tokenize: bigram baseline", total=min(val.tokens, baseline.SCORE_TOKENS)) as bar:
        return score_baseline(bigram, val, stats["val"]["bytes"], baseline.SCORE_TOKENS, advance=bar.advance)


def _meta(tok: Tokenizer, np_dtype: np.dtype, stats: dict, bigram: dict, val_fraction: float, files: list,
          skipped: dict[str, int]) -> dict:
    """meta.json's content."""
    meta = {
        "format": 1,
        "encoding": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        "dtype": np_dtype.name,
        "splits": {s: {"shards": [p.name for p in st["paths"]], "tokens": st["tokens"], "documents": st["documents"],
                       "bytes": st["bytes"]} for s, st in stats.items()},
        "baseline": {"bigram": bigram},
        "val_fraction": val_fraction,
        "inputs": _input_signature(files),
        # identity of the token stream: same tokenizer and same tokens <=> same fingerprint
        "fingerprint": hashlib.sha256(
            json.dumps({"tokenizer": tok.hash, "splits": {s: st["digest"] for s, st in stats.items()}}, sort_keys=True).encode()
        ).hexdigest(),
        "tokenizer": {"name": tok.name, "dir": TOKENIZER_SUBDIR, "hash": tok.hash},
    }
    if skipped:
        meta["skipped"] = {"invalid-utf8": sum(skipped.values())}
    return meta


def _tokenize_to_store(out: str, files: list, tok: Tokenizer, np_dtype: np.dtype, shard_tokens: int, val_fraction: float,
                       workers: int, processes: bool, total_bytes: int) -> dict[str, int]:
    """`tokenize_corpus` into a URL: each shard is written to a local temp file under the cache, uploaded once
    whole and deleted (this machine holds one open shard per split, never the output); the baseline is scored on
    the val shards read back from the store; meta.json goes last. The folder is published by `storage.staged_dir`: a temp
    prefix beside `out`, copied over `out` with meta.json after every other object. Returns the rows skipped per
    file."""
    work = Path(storage.temp_dir("tokenize"))
    try:
        with storage.staged_dir(out, last=META_NAME) as tmp:
            tok.save(work / TOKENIZER_SUBDIR)
            for f in sorted(p for p in (work / TOKENIZER_SUBDIR).rglob("*") if p.is_file()):
                storage.put_file(f, storage.join(tmp, *f.relative_to(work).parts))
            pieces = plan_pieces(files)
            stats, skipped, bigram = _write_splits(pieces, tok, work, np_dtype, shard_tokens, val_fraction, workers,
                                                   processes, total_bytes, upload_to=tmp)
            val = _StoredSplit(tmp, stats["val"]["paths"], stats["val"]["counts"], np_dtype)
            write_meta(work, _meta(tok, np_dtype, stats, _baseline(bigram, stats, val), val_fraction, files, skipped))
            storage.put_file(work / META_NAME, storage.join(tmp, META_NAME))
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return skipped


class _UploadingWriter(ShardWriter):
    """A ShardWriter whose every finished shard is uploaded to `url` (storage.put_file: whole or not at all), then
    deleted here; `counts` holds each shard's tokens."""

    def __init__(self, folder: Path, split: str, dtype, shard_tokens: int, url: str):
        super().__init__(folder, split, dtype, shard_tokens)
        self.url = url
        self.counts: list[int] = []

    def _finish(self) -> None:
        n = self._fill
        super()._finish()
        path = self.paths[-1]
        storage.put_file(path, storage.join(self.url, path.name))
        path.unlink()
        self.counts.append(n)


class _StoredSplit:
    """A split's shards on a store as one token stream, for scoring the bigram baseline: `tokens`, and `chunks` cut
    exactly as `ShardStream.chunks` cuts them (so the baseline's sums, and meta.json, are the same bytes)."""

    def __init__(self, folder: str, paths: list[Path], counts: list[int], dtype: np.dtype):
        self.urls = [storage.join(folder, p.name) for p in paths]
        self.counts = counts
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tokens = int(sum(counts))

    def _pieces(self, end: int) -> Iterator[np.ndarray]:
        left = end
        for url, count in zip(self.urls, self.counts):
            if left <= 0:
                return
            with storage.open_read(url) as f:
                f.seek(HEADER_BYTES)
                n = min(count, left)
                done = 0
                while done < n:
                    k = min(n - done, 1 << 22)
                    raw = f.read(k * self.dtype.itemsize)
                    if len(raw) != k * self.dtype.itemsize:
                        raise CookError(f"{storage.redact(url)}: truncated token shard")
                    yield np.frombuffer(raw, dtype=self.dtype)
                    done += k
            left -= n

    def chunks(self, size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        end = self.tokens if limit is None else min(self.tokens, int(limit))
        buf = np.empty(0, dtype=np.int64)
        for piece in self._pieces(end):
            buf = np.concatenate([buf, piece.astype(np.int64)]) if buf.size else piece.astype(np.int64)
            while buf.size >= size:
                yield buf[:size]
                buf = buf[size:]
        if buf.size:
            yield buf


def _write_splits(pieces: list[Piece], tok: Tokenizer, folder: Path, np_dtype, shard_tokens: int, val_fraction: float,
                  workers: int, processes: bool, total_bytes: int,
                  upload_to: str | None = None) -> tuple[dict, dict[str, int], KneserNeyBigram]:
    """Put the encoded pieces, in order, into the train/val shard writers; return their stats, the rows skipped
    per file and the bigram fitted on the first FIT_TOKENS train tokens. `upload_to`: a URL each finished shard
    goes to (`_UploadingWriter`; stats get `counts`)."""
    if upload_to is None:
        writers = {s: ShardWriter(folder, s, np_dtype, shard_tokens) for s in ("train", "val")}
    else:
        writers = {s: _UploadingWriter(folder, s, np_dtype, shard_tokens, upload_to) for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    nbytes = {"train": 0, "val": 0}  # UTF-8 bytes of the documents' text (eot separators not counted)
    skipped: dict[str, int] = {}
    eot = np.array([tok.eot_id], dtype=np_dtype)
    pending: np.ndarray | None = None  # the last train document (with its eot), held back in case val ends up empty
    pending_bytes = 0
    # the bigram baseline is fitted on the first FIT_TOKENS train tokens as they are written, while the workers
    # encode (this process would only wait), not read back from the shards afterwards
    bigram, fit_left = KneserNeyBigram(tok.vocab_size), baseline.FIT_TOKENS

    def to_train(ids: np.ndarray) -> None:
        nonlocal fit_left
        writers["train"].add(ids)
        if fit_left > 0:
            bigram.update(ids[:fit_left])
            fit_left -= min(ids.size, fit_left)

    def emit(ids: np.ndarray, lens: np.ndarray, sizes: np.ndarray, hashes: np.ndarray) -> None:
        """Documents `ids` (each with its eot) to their splits, in order; the last train one is held back."""
        nonlocal pending, pending_bytes
        n = lens.size
        if n == 0:
            return
        ends = np.cumsum(lens)
        to_val = [h / 2.0**64 < val_fraction for h in hashes.tolist()]  # exactly _val_hash's arithmetic
        val_idx = [i for i, v in enumerate(to_val) if v]
        for i in val_idx:
            writers["val"].add(ids[ends[i] - lens[i] : ends[i]])
        val_bytes = int(sizes[val_idx].sum()) if val_idx else 0
        docs["val"] += len(val_idx)
        nbytes["val"] += val_bytes
        if len(val_idx) == n:
            return
        docs["train"] += n - len(val_idx)
        nbytes["train"] += int(sizes.sum()) - val_bytes
        starts = ends - lens
        val_set = set(val_idx)
        last = n - 1  # the last train document: held back
        while last in val_set:
            last -= 1
        if pending is not None:
            to_train(pending)
        prev = 0  # runs of train documents between val ones, up to `last`
        for j in [i for i in val_idx if i < last] + [last]:
            if j > prev:
                to_train(ids[starts[prev] : starts[j]])
            prev = j + 1
        pending, pending_bytes = ids[starts[last] : ends[last]], int(sizes[last])

    with progress("tokenize", total=total_bytes) as bar:
        parts: list[np.ndarray] = []
        part_bytes, doc_hash, doc_size = 0, 0, 0
        for piece, res in encoded_pieces(pieces, tok, np_dtype, workers, processes):
            if res.skipped:
                skipped[piece.path] = skipped.get(piece.path, 0) + res.skipped
            if piece.kind == HASH:  # a large plain text: its parts follow
                doc_hash, doc_size = int(res.hashes[0]), int(res.sizes[0])
                parts, part_bytes = [], 0
                continue
            if piece.kind == PART:
                parts.append(res.ids)
                part_bytes += int(res.sizes[0])
                bar.advance(int(res.sizes[0]))
                if not piece.last:
                    continue
                if part_bytes != doc_size:
                    raise CookError(f"{piece.path}: changed while it was read")
                ids = np.concatenate(parts + [eot])
                parts = []
                emit(ids, np.array([ids.size]), np.array([doc_size]), np.array([doc_hash], dtype=np.uint64))
                continue
            emit(res.ids, res.lens, res.sizes, res.hashes)
            bar.advance(int(res.sizes.sum()))

    if docs["train"] + docs["val"] == 0:
        raise CookError(f"empty corpus: no text in {len({p.path for p in pieces})} input file(s)")
    if docs["val"] == 0:
        if docs["train"] >= 2:  # the last document becomes val
            writers["val"].add(pending)
            docs["train"] -= 1
            docs["val"] += 1
            nbytes["train"] -= pending_bytes
            nbytes["val"] += pending_bytes
        else:  # one document: its last tokens become val
            n = pending.size
            n_val = min(max(2, math.ceil(n * val_fraction)), max(1, n // 2))
            to_train(pending[: n - n_val])
            writers["val"].add(pending[n - n_val :])
            docs["val"] = 1  # the document's tail; train holds its head
            tail = _token_bytes(tok, pending[n - n_val : -1])  # the tail's text bytes (its eot excluded)
            nbytes["train"] -= tail
            nbytes["val"] += tail
        pending = None
    if pending is not None:
        to_train(pending)
    stats = {}
    for s, w in writers.items():
        stats[s] = {"paths": w.close(), "tokens": w.tokens, "documents": docs[s], "bytes": nbytes[s], "digest": w.digest()}
        if upload_to is not None:
            stats[s]["counts"] = w.counts
    return stats, skipped, bigram.finish()


# ---- the Prefect task, built on first use (worker processes import this module and never Prefect) --------


def _tokenize(
    inputs: list[Path],
    encoding: str,
    out: Path,
    tokenizer_dir: Path | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
    workers: int | None = None,
    tokenizer_hash: str | None = None,
) -> Path:
    """Prefect wrapper of `tokenize_corpus`; cached on input fingerprints while out/meta.json exists.

    `tokenizer_hash` (of a reused `tokenizer_dir`) only feeds the cache key, so an edited tokenizer re-runs.
    `workers` is not part of the key: the output does not depend on it.
    """
    return tokenize_corpus(inputs, encoding, out, tokenizer_dir, val_fraction, dtype, shard_tokens, workers)


def __getattr__(name: str):
    """`tokenize_task`, the Prefect task, is built on first use (see `_tokenize`)."""
    if name != "tokenize_task":
        raise AttributeError(name)
    from prefect import task

    from tasks.core.caching import PERSISTED, OutputsCache

    t = task(
        name="tokenize",
        cache_policy=OutputsCache(outputs=lambda i: [storage.join(i["out"], "meta.json") if storage.is_remote(i["out"])
                                                     else Path(i["out"]) / "meta.json"], version="2", exclude=("workers",)),
        **PERSISTED,
    )(_tokenize)
    globals()["tokenize_task"] = t
    return t
