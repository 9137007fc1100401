"""Binary token shards in llm.c / modded-nanogpt layout, plus the meta.json that describes a data folder.

A shard is a 256 x int32 little-endian header followed by the tokens:

- uint16 tokens: header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = token count
- uint32 tokens: header[0] = 20240801, header[1] = 7, header[2] = token count (llm.c's extension)

Every file is written atomically; meta.json is written last, so a folder with meta.json is whole.

`ShardStream` reads a split's shards as one token stream with a positioned read per piece (`os.pread`),
so a reader holds no file descriptor between reads, whatever the number of shards (an `np.memmap` per shard
keeps one open each: about 1,000 shards reach the default limit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from model.atomic import atomic_write, atomic_write_text, make_readable
from model.errors import CookError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
META_NAME = "meta.json"
# dtype name -> (magic, version)
_LAYOUTS = {"uint16": (20240520, 1), "uint32": (20240801, 7)}
_BY_MAGIC = {magic: (np.dtype(np.uint16) if name == "uint16" else np.dtype(np.uint32), version) for name, (magic, version) in _LAYOUTS.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """The narrowest shard dtype holding ids 0..vocab_size-1: uint16 up to 65536 ids, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


def _header(dtype: np.dtype, count: int) -> bytes:
    dtype = np.dtype(dtype)
    if dtype.name not in _LAYOUTS:
        raise CookError(f"unsupported shard dtype {dtype.name} (use uint16 or uint32)")
    if count >= 2**31:
        raise CookError(f"shard of {count} tokens is too large for the int32 header; use smaller shards")
    magic, version = _LAYOUTS[dtype.name]
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = magic, version, count
    return header.tobytes()


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> Path:
    """Write one shard (header + tokens, little-endian) atomically; the dtype of `tokens` picks the layout."""
    tokens = np.asarray(tokens)
    dtype = np.dtype(tokens.dtype)
    with atomic_write(path, "wb") as f:
        f.write(_header(dtype, tokens.size))
        f.write(tokens.astype(dtype.newbyteorder("<"), copy=False).tobytes())
    return Path(path)


def read_header(path: str | os.PathLike) -> tuple[np.dtype, int]:
    """(token dtype, token count) of a shard, checking magic, version and file size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < HEADER_BYTES:
        raise CookError(f"{path}: not a token shard (bad magic)")
    header = np.frombuffer(raw, dtype="<i4")
    layout = _BY_MAGIC.get(int(header[0]))
    if layout is None or int(header[1]) != layout[1]:
        raise CookError(f"{path}: not a token shard (bad magic)")
    dtype, count = layout[0], int(header[2])
    held = (size - HEADER_BYTES) // dtype.itemsize
    if held < count:
        raise CookError(f"{path}: truncated token shard: header says {count} tokens, file holds {held}")
    return dtype, count


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only memmap (no copy; it holds a file descriptor while alive)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,))


class ShardStream:
    """The shards of one split read as one stream of `tokens` tokens, in order; no file stays open.

    Headers are checked once (`read_header`); `read` then fetches any rows of the stream with `os.pread`,
    opening one shard at a time, so memory and descriptors stay flat for any number of shards.
    """

    def __init__(self, paths: list[Path]):
        self.paths = [Path(p) for p in paths]
        layouts = [read_header(p) for p in self.paths]
        dtypes = {d for d, _ in layouts}
        if len(dtypes) > 1:
            raise CookError(f"{self.paths[0].parent}: shards mix token dtypes ({', '.join(sorted(d.name for d in dtypes))})")
        self.dtype = (dtypes.pop() if dtypes else np.dtype(np.uint16)).newbyteorder("<")
        self.counts = np.array([c for _, c in layouts], dtype=np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.counts))).astype(np.int64)  # stream offset of each shard
        self.tokens = int(self.starts[-1])

    def read(self, starts: np.ndarray | list[int], length: int) -> np.ndarray:
        """Rows `[start, start + length)` of the stream for each start, as an int64 array (len(starts), length)."""
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        out = np.empty((starts.size, length), dtype=np.int64)
        if starts.size == 0 or length == 0:
            return out
        if starts.min() < 0 or int(starts.max()) + length > self.tokens:
            raise CookError(f"{self.paths[0].parent}: read past the end of the token stream ({self.tokens} tokens)")
        # cut each row into (shard, offset in shard, count, row, column) pieces, then read shard by shard
        pieces: dict[int, list[tuple[int, int, int, int]]] = {}
        for row, start in enumerate(starts.tolist()):
            col = 0
            shard = int(np.searchsorted(self.starts, start, side="right")) - 1
            while col < length:
                pos = start + col - int(self.starts[shard])
                n = min(length - col, int(self.counts[shard]) - pos)
                if n > 0:
                    pieces.setdefault(shard, []).append((pos, n, row, col))
                    col += n
                shard += 1
        item = self.dtype.itemsize
        for shard, todo in pieces.items():
            path = self.paths[shard]
            fd = os.open(path, os.O_RDONLY)
            try:
                for pos, n, row, col in todo:
                    raw = os.pread(fd, n * item, HEADER_BYTES + pos * item)
                    if len(raw) != n * item:
                        raise CookError(f"{path}: truncated token shard (changed while reading)")
                    out[row, col : col + n] = np.frombuffer(raw, dtype=self.dtype)
            finally:
                os.close(fd)
        return out

    def chunks(self, size: int, limit: int | None = None) -> Iterator[np.ndarray]:
        """The first `limit` tokens (default all) in consecutive int64 pieces of at most `size` tokens."""
        end = self.tokens if limit is None else min(self.tokens, int(limit))
        for start in range(0, end, size):
            yield self.read([start], min(size, end - start))[0]


class ShardWriter:
    """Stream tokens into shards `{split}_{NNNNNN}.bin` of `shard_tokens` tokens each (the last may be shorter).

    Tokens go straight to a temp file (memory stays flat whatever the shard size); the header's count is
    filled in and the file renamed into place when the shard is full or on `close()`, so a shard under its
    final name is always whole. `digest()` is a sha256 of the whole token stream (independent of sharding).
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, dtype: np.dtype | str, shard_tokens: int):
        if shard_tokens < 1:
            raise CookError(f"shard size must be at least 1 token (got {shard_tokens})")
        self.out_dir = Path(out_dir)
        self.split = split
        self.dtype = np.dtype(dtype)
        _header(self.dtype, 0)  # validate dtype
        self.shard_tokens = int(shard_tokens)
        self.tokens = 0
        self.paths: list[Path] = []
        self._file = None
        self._tmp: str | None = None
        self._fill = 0
        self._sha = hashlib.sha256()

    def add(self, tokens: np.ndarray) -> None:
        """Append tokens (any integer array whose values fit the shard dtype)."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or int(tokens.max()) > np.iinfo(self.dtype).max):
            raise CookError(f"token ids out of range for {self.dtype.name} shards")
        data = np.ascontiguousarray(tokens, dtype=self.dtype.newbyteorder("<")).reshape(-1)
        self._sha.update(data)
        pos, n = 0, data.size
        while pos < n:
            if self._file is None:
                self._open()
            take = min(self.shard_tokens - self._fill, n - pos)
            self._file.write(data[pos : pos + take])
            self._fill += take
            self.tokens += take
            pos += take
            if self._fill == self.shard_tokens:
                self._finish()

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.split}_{len(self.paths):06d}.bin.", suffix=".tmp", dir=self.out_dir)
        make_readable(fd)
        self._file = os.fdopen(fd, "wb")
        self._file.write(_header(self.dtype, 0))
        self._fill = 0

    def _finish(self) -> None:
        f, self._file = self._file, None
        f.seek(0)
        f.write(_header(self.dtype, self._fill))
        f.flush()
        os.fsync(f.fileno())
        f.close()
        path = self.out_dir / f"{self.split}_{len(self.paths):06d}.bin"
        os.replace(self._tmp, path)
        self.paths.append(path)
        self._tmp, self._fill = None, 0

    def digest(self) -> str:
        """sha256 of every token added so far, as little-endian `dtype` bytes."""
        return self._sha.hexdigest()

    def close(self) -> list[Path]:
        """Finish the last partial shard; return every shard path written, in order."""
        if self._file is not None:
            self._finish()
        return list(self.paths)

    def abort(self) -> None:
        """Drop the shard being written (finished shards stay)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_meta(data_dir: str | os.PathLike, meta: dict) -> Path:
    """Write meta.json atomically (do this last: its presence marks the folder whole)."""
    path = Path(data_dir) / META_NAME
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_meta(data_dir: str | os.PathLike) -> dict:
    """Read a tokenized data folder's meta.json (straight from its URL for a folder on object storage)."""
    from model import storage

    if storage.is_remote(data_dir):
        shown = storage.redact(data_dir)
        try:
            text = storage.read_text(storage.join(data_dir, META_NAME))
        except FileNotFoundError:
            raise CookError(f"{shown}: no meta.json — not a tokenized data folder (run `cook tokenize`)") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise CookError(f"{storage.join(shown, META_NAME)}: unreadable meta.json ({e})") from None
    path = Path(data_dir) / META_NAME
    if not path.is_file():
        raise CookError(f"{data_dir}: no meta.json — not a tokenized data folder (run `cook tokenize`)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CookError(f"{path}: unreadable meta.json ({e})") from None


def list_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """Shard paths of one split: those meta.json names if present, else `{split}_*.bin` sorted."""
    data_dir = Path(data_dir)
    meta_path = data_dir / META_NAME
    if meta_path.is_file():
        names = load_meta(data_dir).get("splits", {}).get(split, {}).get("shards")
        if names is not None:
            return [data_dir / n for n in names]
    return sorted(data_dir.glob(f"{split}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
