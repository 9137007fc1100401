"""Tokenize a corpus into llm.c-style binary shards (train/val) plus meta.json, streaming with flat memory.

Shard content is `doc1 eot doc2 eot ...`. Documents go to val by a hash of their text (so the split is
deterministic and stable when documents are added), and val always holds at least one document.
meta.json records each split's UTF-8 bytes of text (for bits per byte) and a smoothed bigram baseline fitted
on train and scored on val (model/baseline.py), read back from the shards once they are written.
The output folder is built beside `out` and renamed into place at the end: it is whole or absent.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow.parquet as pq
from prefect import task

from model.atomic import atomic_dir
from model.baseline import baseline_work, bigram_baseline
from model.errors import CookError
from model.shards import ShardStream, ShardWriter, dtype_for_vocab, write_meta
from model.tokenizer import Tokenizer, default_threads, encode_stream, get_tokenizer, known_vocab_size, load_tokenizer
from tasks.core.caching import PERSISTED, OutputsCache, file_fingerprint
from tasks.corpus.documents import expand_inputs, iter_texts
from tasks.core.progress import progress
from tasks.core.spawn import can_spawn

DTYPES = ("auto", "uint16", "uint32")
BATCH_CHARS = 4 << 20  # text encoded per batch: large enough to keep every core busy, small enough to stay flat
PROCESS_MIN_BYTES = 64 << 20  # from this much text on, encode in worker processes (they start in ~1 s)
TOKENIZER_SUBDIR = "tokenizer"
_U16_MAX_IDS = 65536


def _iter_corpus(files: list[Path]) -> Iterator[str]:
    for f in files:
        yield from iter_texts(f)


def _has_text(files: list[Path]) -> bool:
    return any(True for _ in _iter_corpus(files))


def _text_bytes(path: Path) -> int:
    """Approximate text bytes of an input, for progress: a .txt's size, a parquet's uncompressed text column."""
    if path.suffix != ".parquet":
        return path.stat().st_size
    try:
        md = pq.ParquetFile(path).metadata
        col = md.schema.to_arrow_schema().get_field_index("text")
        return sum(md.row_group(i).column(col).total_uncompressed_size for i in range(md.num_row_groups)) if col >= 0 else 0
    except Exception:
        return path.stat().st_size


def _check_dtype(dtype: str, vocab_size: int | None) -> None:
    if dtype not in DTYPES:
        raise CookError(f"unknown dtype '{dtype}' (choose auto, uint16 or uint32)")
    if dtype == "uint16" and vocab_size is not None and vocab_size > _U16_MAX_IDS:
        raise CookError(f"vocabulary of {vocab_size} ids does not fit uint16 (max {_U16_MAX_IDS}); use --dtype uint32 or auto")


def check_tokenize_args(inputs, encoding: str, dtype: str = "auto", tokenizer_dir: str | Path | None = None) -> list[Path]:
    """Validate arguments before any work starts; return the input files. Raises a one-line CookError.

    With `tokenizer_dir`, the saved tokenizer decides the ids and `encoding` is not used.
    """
    files = expand_inputs(inputs)
    if tokenizer_dir is not None:
        vocab = load_tokenizer(tokenizer_dir).vocab_size
    else:
        vocab = known_vocab_size(encoding)  # also rejects unknown encodings
    _check_dtype(dtype, vocab)
    if not _has_text(files):
        raise CookError(f"empty corpus: no text in {len(files)} input file(s)")
    return files


def _val_hash(data: bytes) -> float:
    """A document's place in [0, 1): val when below val_fraction."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") / 2.0**64


def _token_bytes(tok: Tokenizer, ids: np.ndarray) -> int:
    """UTF-8 bytes that `ids` stand for (exact even where they cut a character: tiktoken decodes to bytes)."""
    enc = getattr(tok, "enc", None)
    if enc is not None:
        return len(enc.decode_bytes([int(i) for i in ids]))
    return len(tok.decode(ids).encode("utf-8", "surrogatepass"))


def _input_signature(files: list[Path]) -> list[dict]:
    return [file_fingerprint(f) for f in files]


def tokenize_corpus(
    inputs: list[Path],
    encoding: str = "gpt2",
    out: Path = Path("data/tokens"),
    tokenizer_dir: Path | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
    num_threads: int | None = None,
    processes: bool | None = None,
) -> Path:
    """Tokenize `inputs` (document parquet files / .txt, folders, globs) into `out`; return `out`.

    Writes `train_NNNNNN.bin`, `val_NNNNNN.bin`, `tokenizer/` and, last, `meta.json`.
    `processes`: encode in spawned processes (default: from PROCESS_MIN_BYTES of text on); never inside a
    daemonic process such as a Dask worker, which may not start any: threads there. The output is the same.
    """
    out = Path(out)
    files = check_tokenize_args(inputs, encoding, dtype, tokenizer_dir)
    if not 0.0 <= val_fraction < 1.0:
        raise CookError(f"val fraction must be in [0, 1) (got {val_fraction})")
    if shard_tokens < 1:
        raise CookError(f"shard size must be at least 1 token (got {shard_tokens})")
    threads = num_threads or default_threads()
    total_bytes = sum(_text_bytes(f) for f in files)
    if processes is None:
        processes = total_bytes >= PROCESS_MIN_BYTES
    processes = processes and can_spawn()

    if tokenizer_dir is not None:
        tok = load_tokenizer(tokenizer_dir)
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

    with atomic_dir(out) as tmp:
        tok.save(tmp / TOKENIZER_SUBDIR)
        stats = _write_splits(files, tok, tmp, np_dtype, shard_tokens, val_fraction, threads, total_bytes, processes)
        train, val = ShardStream(stats["train"]["paths"]), ShardStream(stats["val"]["paths"])
        with progress("tokenize: bigram baseline", total=baseline_work(train, val)) as bar:
            baseline = bigram_baseline(train, val, tok.vocab_size, stats["val"]["bytes"], advance=bar.advance)
        meta = {
            "format": 1,
            "encoding": tok.name,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "dtype": np_dtype.name,
            "splits": {s: {"shards": [p.name for p in st["paths"]], "tokens": st["tokens"], "documents": st["documents"],
                           "bytes": st["bytes"]} for s, st in stats.items()},
            "baseline": {"bigram": baseline},
            "val_fraction": val_fraction,
            "inputs": _input_signature(files),
            # identity of the token stream: same tokenizer and same tokens <=> same fingerprint
            "fingerprint": hashlib.sha256(
                json.dumps({"tokenizer": tok.hash, "splits": {s: st["digest"] for s, st in stats.items()}}, sort_keys=True).encode()
            ).hexdigest(),
            "tokenizer": {"name": tok.name, "dir": TOKENIZER_SUBDIR, "hash": tok.hash},
        }
        write_meta(tmp, meta)
    return out


def _write_splits(files, tok: Tokenizer, folder: Path, np_dtype, shard_tokens: int, val_fraction: float, threads: int, total_bytes: int,
                  processes: bool) -> dict:
    """Stream every document through the tokenizer into train/val shard writers."""
    writers = {s: ShardWriter(folder, s, np_dtype, shard_tokens) for s in ("train", "val")}
    docs = {"train": 0, "val": 0}
    nbytes = {"train": 0, "val": 0}  # UTF-8 bytes of the documents' text (eot separators not counted)
    eot = np.array([tok.eot_id], dtype=np.uint32)
    pending: np.ndarray | None = None  # the last train document (with its eot), held back in case val ends up empty
    pending_bytes = 0

    def emit(encoded: list[np.ndarray], to_val: list[bool], sizes: list[int]) -> None:
        nonlocal pending, pending_bytes
        parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
        for ids, val, size in zip(encoded, to_val, sizes):
            if val:
                parts["val"] += [ids, eot]
                docs["val"] += 1
                nbytes["val"] += size
            else:
                if pending is not None:
                    parts["train"].append(pending)
                pending, pending_bytes = np.concatenate([ids, eot]), size
                docs["train"] += 1
                nbytes["train"] += size
        for split, arrays in parts.items():
            if arrays:
                writers[split].add(np.concatenate(arrays))

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        size = 0
        for text in _iter_corpus(files):
            batch.append(text)
            size += len(text)
            if size >= BATCH_CHARS:
                yield batch
                batch, size = [], 0
        if batch:
            yield batch

    with progress("tokenize", total=total_bytes) as bar:
        for texts, encoded in encode_stream(tok, batches(), threads, processes=processes):
            to_val, sizes = [], []
            for text in texts:
                data = text.encode("utf-8", "surrogatepass")
                to_val.append(_val_hash(data) < val_fraction)
                sizes.append(len(data))
            emit(encoded, to_val, sizes)
            bar.advance(sum(sizes))

    if docs["train"] + docs["val"] == 0:
        raise CookError(f"empty corpus: no text in {len(files)} input file(s)")
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
            writers["train"].add(pending[: n - n_val])
            writers["val"].add(pending[n - n_val :])
            docs["val"] = 1  # the document's tail; train holds its head
            tail = _token_bytes(tok, pending[n - n_val : -1])  # the tail's text bytes (its eot excluded)
            nbytes["train"] -= tail
            nbytes["val"] += tail
        pending = None
    if pending is not None:
        writers["train"].add(pending)
    stats = {}
    for s, w in writers.items():
        stats[s] = {"paths": w.close(), "tokens": w.tokens, "documents": docs[s], "bytes": nbytes[s], "digest": w.digest()}
    return stats


@task(
    name="tokenize",
    cache_policy=OutputsCache(outputs=lambda i: [Path(i["out"]) / "meta.json"], version="2", exclude=("num_threads",)),
    **PERSISTED,
)
def tokenize_task(
    inputs: list[Path],
    encoding: str,
    out: Path,
    tokenizer_dir: Path | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
    num_threads: int | None = None,
    tokenizer_hash: str | None = None,
) -> Path:
    """Prefect wrapper of `tokenize_corpus`; cached on input fingerprints while out/meta.json exists.

    `tokenizer_hash` (of a reused `tokenizer_dir`) only feeds the cache key, so an edited tokenizer re-runs.
    """
    return tokenize_corpus(inputs, encoding, out, tokenizer_dir, val_fraction, dtype, shard_tokens, num_threads)
