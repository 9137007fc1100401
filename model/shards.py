"""Binary token shards in llm.c / modded-nanogpt layout, plus the meta.json that describes a data folder.

A shard is a 256 x int32 little-endian header followed by the tokens:

- uint16 tokens: header[0] = 20240520 (magic), header[1] = 1 (version), header[2] = token count
- uint32 tokens: header[0] = 20240801, header[1] = 7, header[2] = token count (llm.c's extension)

Every file is written atomically; meta.json is written last, so a folder with meta.json is whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from model.atomic import atomic_write, atomic_write_text
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
    """The tokens of a shard as a read-only memmap (no copy)."""
    dtype, count = read_header(path)
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype.newbyteorder("<"), mode="r", offset=HEADER_BYTES, shape=(count,))


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
    """Read a tokenized data folder's meta.json."""
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
