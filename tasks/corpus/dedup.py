"""Deduplication: exact (a hash of the normalized text) and near (MinHash + LSH banding), in memory or on disk.

Decisions depend only on the documents and their order, never on the path (memory or disk), the batch
sizes or the worker count:

- A document is *eligible* when the caller says so (merge: it passed the filters and is not superseded).
- **Exact**: a document (eligible or not) whose `text_key` equals that of an EARLIER eligible document is
  an exact duplicate.
- **Near**: an eligible document that is not an exact duplicate is a near duplicate when one of its LSH
  band keys equals a band key of an EARLIER eligible, non-exact-duplicate document (a shared bucket is
  a duplicate, as in datatrove; there is no second similarity check). Near duplicates stay in the
  buckets, so a chain of small edits is caught edit by edit.
- `duplicate_of` names the *root*: the earliest document of the bucket or key (for near: the earliest
  one over all shared buckets), followed through its own `duplicate_of` until a kept document.

Near-dup signatures follow datatrove's MinHash: the text is simplified as datatrove's `simplify_text`
does (lowercase, numbers folded to 0, punctuation to spaces, whitespace collapsed, accents removed),
split into words, and hashed as word 5-gram shingles; 112 MinHash values make 16 bands of 7 rows
(datatrove's default is 14 x 8: 16 x 7 has a lower threshold, so at least its recall). A text with
fewer than 5 words has no shingles and is never a near duplicate (as in datatrove).

Two paths:

- `MemoryDedup`: numpy open-addressing tables of key -> root (exact, ~160 B per document at peak)
  and band key -> first document (near, ~1.1 KB per document at peak); `judge(batch)` answers at once.
- `DiskDedup`: datatrove's multi-stage form on disk. Pass 1 (`add`) appends records to hash-partitioned
  files; then (`decisions`) each partition is sorted in memory, the first eligible document per key and
  per band key found, duplicate pairs written to index-range files, and each range resolved in index
  order. Memory is bounded by the `memory` setting, not by the corpus (plus N/8 bytes of flags).

`open_dedup` picks the path from the expected document count and the memory setting.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

NONE, EXACT, NEAR = 0, 1, 2  # decision kinds
REASONS = {NONE: None, EXACT: "exact-duplicate", NEAR: "near-duplicate"}
DEFAULT_MEMORY = 512 << 20  # bytes the dedup tables (memory path) or buffers (disk path) may use
EXACT_BYTES_PER_DOC = 160  # memory path, at peak (table growth), per document (133 measured at 2M)
NEAR_BYTES_PER_DOC = 1100  # memory path, at peak, per document with near dedup (16 band entries)

_U64 = np.uint64
_MAX64 = np.iinfo(np.int64).max


def text_key(text: str) -> bytes:
    """16-byte digest of a text as exact dedup sees it: NFC, lowercase, runs of whitespace collapsed."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    canon = " ".join(text.lower().split())
    return hashlib.blake2b(canon.encode("utf-8", "surrogatepass"), digest_size=16).digest()


# ---------------------------------------------------------------------------------------------------
# Text simplification, as datatrove's simplify_text (datatrove/utils/text.py, TextNormConfig defaults)

# datatrove's PUNCTUATION string (copied so that cook does not import datatrove at run time)
_PUNCTUATION = "!/—”:％１〈&(、━\\【#%「」，】；+^]~“《„';’{|∶´[=-`*．（–？！：$～«〉,><》)?）。…@_.\"}►»" + "".join(
    map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b)))
)
_NUMBERS = re.compile(r"\d+(?:[.,،٫⎖⎗⎘]\d+)?")  # datatrove's \p{Nd}+([.,،٫⎖⎗⎘]\p{Nd}+)? (`\d` is Nd in str patterns)
_SEP_LUT = np.zeros(256, dtype=bool)  # ASCII bytes that separate words: punctuation and whitespace
for _c in _PUNCTUATION:
    if ord(_c) < 128:
        _SEP_LUT[ord(_c)] = True
for _i in range(128):
    if chr(_i).isspace():
        _SEP_LUT[_i] = True


@dataclass(frozen=True)
class _Tables:
    to_space: dict  # non-ASCII punctuation and whitespace -> " "
    drop_mn: dict  # nonspacing marks (category Mn) -> removed


_TABLES: list[_Tables] = []


def _tables() -> _Tables:
    if not _TABLES:  # built on first non-ASCII text: ~0.3 s
        space = {ord(c): " " for c in _PUNCTUATION if ord(c) >= 128}
        mn = {}
        for i in range(128, 0x110000):
            c = chr(i)
            if c.isspace():
                space[i] = " "
            elif unicodedata.category(c) == "Mn":
                mn[i] = None
        _TABLES.append(_Tables(space, mn))
    return _TABLES[0]


def simplify(text: str) -> str:
    """`text` as datatrove's `simplify_text` makes it, except that spaces may stay doubled (words are the same).

    Lowercase; each number (digits, with one decimal separator) becomes "0"; punctuation and
    whitespace become spaces; then canonical decomposition (NFD) with the nonspacing marks removed.
    """
    text = _NUMBERS.sub("0", text.lower())
    if text.isascii():
        return " ".join(text.translate(_ASCII_SEP_TRANS).split())
    t = _tables()
    text = text.translate(_ASCII_SEP_TRANS).translate(t.to_space)
    if not text.isascii():
        text = unicodedata.normalize("NFD", text).translate(t.drop_mn)
    return " ".join(text.split())


_ASCII_SEP_TRANS = {i: " " for i in range(128) if _SEP_LUT[i]}


def _fold_ascii_numbers(buf: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_NUMBERS.sub("0", ...)` on ASCII bytes, vectorized: returns (bytes, new document starts)."""
    dpos = np.flatnonzero((buf - np.uint8(48)) < np.uint8(10))  # digits
    if not dpos.size:
        return buf, starts
    brk = np.flatnonzero(np.diff(dpos) != 1) + 1
    rs = dpos[np.concatenate(([0], brk))]  # digit runs [rs, re_)
    re_ = dpos[np.concatenate((brk - 1, [dpos.size - 1]))] + 1
    # runs k and k+1 join ("1.5", "3,000") when one '.' or ',' separates them; the regex pairs them greedily
    gap = buf[np.minimum(re_[:-1], buf.size - 1)]
    join = (rs[1:] == re_[:-1] + 1) & ((gap == 46) | (gap == 44))
    idx = np.arange(rs.size)
    first = np.ones(rs.size, dtype=bool)
    first[1:] = ~join
    second = ((idx - np.maximum.accumulate(np.where(first, idx, 0))) & 1).astype(bool)
    keep = rs[~second]  # the first digit of each match becomes "0"; its other digits go
    gone = np.setdiff1d(dpos, keep, assume_unique=True)
    gone = np.union1d(gone, rs[second] - 1)  # with the joining '.' or ','
    buf = buf.copy()
    buf[keep] = 48
    out = np.delete(buf, gone)
    return out, starts - np.searchsorted(gone, starts)


def _simplified_bytes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(UTF-8 bytes of the texts simplified up to ASCII separators, joined by newlines; sorted start of each
    laid-out text; the index in `texts` of each laid-out text). ASCII texts come first: their numbers are
    folded on bytes; the others are folded, decomposed and stripped of marks as text."""
    parts, ascii_ = [], []
    for t in texts:
        t = t.lower()
        if t.isascii():
            ascii_.append(True)
        else:
            tb = _tables()
            t = _NUMBERS.sub("0", t).translate(tb.to_space)
            if not t.isascii():
                t = unicodedata.normalize("NFD", t).translate(tb.drop_mn)
            ascii_.append(False)
        parts.append(t.encode("utf-8", "surrogatepass"))
    mask = np.asarray(ascii_, dtype=bool)
    perm = np.concatenate((np.flatnonzero(mask), np.flatnonzero(~mask))).astype(np.int64)
    lens = np.fromiter((len(parts[i]) for i in perm), dtype=np.int64, count=len(parts))
    starts = np.concatenate(([0], np.cumsum(lens + 1)[:-1])).astype(np.int64)
    buf = np.frombuffer(b"\n".join(parts[i] for i in perm), dtype=np.uint8)
    na = int(mask.sum())
    if na:
        cut = int(starts[na]) if na < len(parts) else buf.size
        head, head_starts = _fold_ascii_numbers(buf[:cut], starts[:na])
        if na < len(parts):
            shift = cut - head.size
            buf = np.concatenate((head, buf[cut:]))
            starts = np.concatenate((head_starts, starts[na:] - shift))
        else:
            buf, starts = head, head_starts
    return buf, starts, perm


def _word_hashes(buf: np.ndarray, starts: np.ndarray, perm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of each word, text of each word): words are runs of non-separator bytes.

    Vectorized over words, not bytes: each word is read as little-endian 8-byte chunks (through an
    overlapping view of the buffer), masked to its length and mixed in.
    """
    word = np.frombuffer(buf.tobytes().translate(_WORD_BYTES), dtype=bool)  # bytes.translate: ~1 GB/s
    edges = np.diff(np.concatenate(([False], word, [False])).view(np.int8))
    ws, we = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not ws.size:
        return np.zeros(0, dtype=_U64), np.zeros(0, dtype=np.int64)
    padded = np.concatenate((buf, np.zeros(8, dtype=np.uint8)))
    chunks = np.ndarray((buf.size,), dtype="<u8", buffer=padded, strides=(1,))  # 8 bytes from every offset
    length = we - ws
    h = length.astype(_U64) * _U64(0x9E3779B97F4A7C15)
    h ^= chunks[ws] & _MASKS[np.minimum(length, 8)]  # the first 8 bytes of every word
    _mix64(h)
    sel, k = np.flatnonzero(length > 8), 1
    while sel.size:  # the next 8 bytes of the longer words
        part = chunks[ws[sel] + 8 * k] & _MASKS[np.minimum(length[sel] - 8 * k, 8)]
        h[sel] = _mix64(h[sel] ^ part)
        k += 1
        sel = sel[length[sel] > 8 * k]
    doc = np.searchsorted(starts, ws, side="right") - 1  # laid-out position; words of a text stay contiguous
    return h, perm[doc]


_WORD_BYTES = bytes(0 if sep else 1 for sep in _SEP_LUT)  # byte -> 1 if it belongs to a word
_MASKS = np.array([(1 << (8 * i)) - 1 for i in range(9)], dtype=_U64)  # the low i bytes


def _spread(x: np.ndarray) -> np.ndarray:
    """x times an odd constant: the top bits depend on every bit of x (slots and partitions use them)."""
    return x * _U64(0x9E3779B97F4A7C15)


def _mix64(x: np.ndarray) -> np.ndarray:
    """A bijective 64-bit finalizer (splitmix64's), in place."""
    x ^= x >> _U64(30)
    x *= _U64(0xBF58476D1CE4E5B9)
    x ^= x >> _U64(27)
    x *= _U64(0x94D049BB133111EB)
    x ^= x >> _U64(31)
    return x


@dataclass(frozen=True)
class MinHashConfig:
    """MinHash LSH settings: word `ngram` shingles, `bands` x `rows` 32-bit MinHash values."""

    ngram: int = 5
    bands: int = 16
    rows: int = 7
    seed: int = 1

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows

    @cached_property
    def _params(self) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(self.seed)
        a = rng.integers(0, 1 << 32, size=self.num_perm, dtype=np.uint32) | np.uint32(1)
        b = rng.integers(0, 1 << 32, size=self.num_perm, dtype=np.uint32)
        q = rng.integers(0, 1 << 63, size=self.ngram, dtype=_U64) * _U64(2) + _U64(1)  # shingle = sum q_k w_k
        r = rng.integers(0, 1 << 63, size=self.rows, dtype=_U64) * _U64(2) + _U64(1)  # band = mix(sum r_j v_j)
        c = rng.integers(0, 1 << 63, size=self.bands, dtype=_U64)  # per band, so equal rows in two bands differ
        return a, b, q, r, c


DEFAULT_CONFIG = MinHashConfig()
_CHUNK = 1024  # shingles hashed at once: a 1024 x 112 uint32 buffer (~460 KB)
_BATCH_BYTES = 8 << 20  # texts simplified and hashed together


def signatures(texts: Sequence[str], config: MinHashConfig = DEFAULT_CONFIG) -> tuple[np.ndarray, np.ndarray]:
    """(MinHash signatures (n, num_perm) uint32, has-shingles mask (n,)) of the simplified texts."""
    n = len(texts)
    sig = np.full((n, config.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    has = np.zeros(n, dtype=bool)
    i = 0
    while i < n:  # batches of about _BATCH_BYTES, so that temporaries stay small
        j, size = i, 0
        while j < n and (j == i or size + len(texts[j]) <= _BATCH_BYTES):
            size += len(texts[j])
            j += 1
        _signatures_into(texts[i:j], config, sig[i:j], has[i:j])
        i = j
    return sig, has


def _signatures_into(texts: Sequence[str], config: MinHashConfig, sig: np.ndarray, has: np.ndarray) -> None:
    a, b, q, _, _ = config._params
    buf, starts, perm = _simplified_bytes(texts)
    words, doc = _word_hashes(buf, starts, perm)
    n = config.ngram
    if words.size < n:
        return
    m = words.size - n + 1
    sh = words[:m] * q[0]
    for k in range(1, n):
        sh += words[k : k + m] * q[k]
    valid = doc[:m] == doc[n - 1 :]  # the n words lie in one document
    sh, sdoc = sh[valid], doc[:m][valid]
    if not sh.size:
        return
    x = (_mix64(sh) >> _U64(32)).astype(np.uint32)
    bounds = np.flatnonzero(np.diff(sdoc)) + 1  # shingles of one document are contiguous
    seg_start = np.concatenate(([0], bounds))
    seg_doc = sdoc[seg_start]
    has[seg_doc] = True
    out = np.empty((_CHUNK, config.num_perm), dtype=np.uint32)
    for c0 in range(0, x.size, _CHUNK):
        c1 = min(c0 + _CHUNK, x.size)
        hv = out[: c1 - c0]
        np.multiply(x[c0:c1, None], a, out=hv)  # h_i(x) = a_i x + b_i mod 2^32 (multiply-add hashing)
        np.add(hv, b, out=hv)
        lo = np.searchsorted(seg_start, c0, side="right") - 1
        hi = np.searchsorted(seg_start, c1, side="left")  # segments lo .. hi-1 meet this chunk
        if hi - lo == 1:
            d = seg_doc[lo]
            np.minimum(sig[d], hv.min(axis=0), out=sig[d])
        else:
            cuts = np.maximum(seg_start[lo:hi], c0) - c0
            mins = np.minimum.reduceat(hv, cuts, axis=0)
            docs = seg_doc[lo:hi]
            sig[docs] = np.minimum(sig[docs], mins)


def band_keys(texts: Sequence[str], config: MinHashConfig = DEFAULT_CONFIG) -> np.ndarray:
    """LSH band keys (n, bands) uint64 of the texts; a row of zeros: no shingles (fewer than `ngram` words)."""
    sig, has = signatures(texts, config)
    return _bands_of(sig, has, config)


def _bands_of(sig: np.ndarray, has: np.ndarray, config: MinHashConfig) -> np.ndarray:
    _, _, _, r, c = config._params
    rows = sig.reshape(len(sig), config.bands, config.rows).astype(_U64)
    keys = (rows * r).sum(axis=2, dtype=_U64) + c
    keys = _mix64(keys) | _U64(1)  # never 0: 0 means "no band"
    keys[~has] = 0
    return keys


def shingle_words(text: str) -> list[str]:
    """The words `signatures` shingles for `text`, decoded (for tests and explanations)."""
    buf, _, _ = _simplified_bytes([text])
    raw = buf.tobytes()
    word = np.frombuffer(raw.translate(_WORD_BYTES), dtype=bool)
    edges = np.diff(np.concatenate(([False], word, [False])).view(np.int8))
    spans = zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1))
    return [raw[s:e].decode("utf-8", "surrogatepass") for s, e in spans]


# ---------------------------------------------------------------------------------------------------
# Decisions


def _as_keys(keys) -> tuple[np.ndarray, np.ndarray]:
    """(n, 2) uint64 key halves and a has-key mask from a list of 16-byte digests (or None) or an (n, 16) array."""
    if isinstance(keys, np.ndarray):
        arr = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), 16)
        return arr.view("<u8").reshape(-1, 2).copy(), np.ones(len(keys), dtype=bool)
    zero = bytes(16)
    has = np.fromiter((k is not None for k in keys), dtype=bool, count=len(keys))
    raw = b"".join(zero if k is None else k for k in keys)
    if len(raw) != 16 * len(keys):
        raise ValueError("dedup keys must be 16-byte digests (text_key)")
    return np.frombuffer(raw, dtype="<u8").reshape(-1, 2).copy(), has


class _IdLog:
    """Document ids by index: appended a batch at a time to two files (bytes, offsets), read back by index."""

    def __init__(self, folder: Path):
        self._data = open(folder / "ids.bin", "w+b")
        self._offs = open(folder / "ids.off", "w+b")
        self._bytes = 0
        self.count = 0

    def append(self, ids: Sequence[str]) -> None:
        raw = [b"" if i is None else str(i).encode("utf-8", "surrogatepass") for i in ids]
        ends = np.cumsum(np.fromiter((len(r) for r in raw), dtype=np.int64, count=len(raw))) + self._bytes
        self._data.write(b"".join(raw))
        self._offs.write(ends.astype("<i8").tobytes())
        self._data.flush()
        self._offs.flush()
        self._bytes = int(ends[-1]) if len(raw) else self._bytes
        self.count += len(raw)

    def get(self, index: int) -> str:
        if index:
            start, end = np.frombuffer(os.pread(self._offs.fileno(), 16, 8 * (index - 1)), dtype="<i8")
        else:
            start, end = 0, np.frombuffer(os.pread(self._offs.fileno(), 8, 0), dtype="<i8")[0]
        return os.pread(self._data.fileno(), int(end - start), int(start)).decode("utf-8", "surrogatepass")

    def close(self) -> None:
        self._data.close()
        self._offs.close()


class _Table:
    """Open-addressing hash table (numpy, linear probing): 1 or 2 uint64 words of key -> int64 value.

    The slot is the top bits of the first key word times an odd constant (Fibonacci hashing). A first word
    of 0 marks an empty slot, so keys get their lowest bit set (a 2^-63 change of collision, no more).
    """

    MAX_LOAD = 0.7

    def __init__(self, words: int, capacity: int = 1 << 10):
        self.words = words
        self._alloc(capacity)
        self.count = 0

    def _alloc(self, capacity: int) -> None:
        self.cap = capacity
        self.shift = _U64(64 - (capacity.bit_length() - 1))
        self.keys = np.zeros((capacity, self.words), dtype=_U64)
        self.vals = np.zeros(capacity, dtype=np.int64)

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.vals.nbytes

    def _slot(self, k: np.ndarray) -> np.ndarray:
        return (_spread(k[:, 0]) >> self.shift).astype(np.int64)

    def get(self, k: np.ndarray) -> np.ndarray:
        """Values of keys `k` ((m, words), lowest bit set), -1 where absent."""
        res = np.full(len(k), -1, dtype=np.int64)
        slot = self._slot(k)
        todo = np.arange(len(k))
        mask = self.cap - 1
        while todo.size:
            s = slot[todo]
            tk = self.keys[s]
            hit = (tk == k[todo]).all(axis=1)
            res[todo[hit]] = self.vals[s[hit]]
            go = ~hit & (tk[:, 0] != 0)
            todo = todo[go]
            slot[todo] = (s[go] + 1) & mask
        return res

    def put_new(self, k: np.ndarray, v: np.ndarray) -> None:
        """Insert keys known to be absent and distinct."""
        if not len(k):
            return
        if self.count + len(k) > self.MAX_LOAD * self.cap:
            cap = self.cap
            while self.count + len(k) > self.MAX_LOAD * cap:
                cap *= 2
            old_k, old_v = self.keys[self.keys[:, 0] != 0], self.vals[self.keys[:, 0] != 0]
            self._alloc(cap)
            self.count = 0
            self._insert(old_k, old_v)
            del old_k, old_v
        self._insert(k, v)

    def _insert(self, k: np.ndarray, v: np.ndarray) -> None:
        slot = self._slot(k)
        todo = np.arange(len(k))
        mask = self.cap - 1
        while todo.size:
            s = slot[todo]
            free = self.keys[s, 0] == 0
            cand, cs = todo[free], s[free]
            taken_slots, first = np.unique(cs, return_index=True)  # one key per free slot this round
            win = cand[first]
            self.keys[taken_slots] = k[win]
            self.vals[taken_slots] = v[win]
            placed = np.zeros(len(k), dtype=bool)
            placed[win] = True
            todo = todo[~placed[todo]]
            slot[todo] = (slot[todo] + 1) & mask
        self.count += len(k)


def _group_firsts(keys: np.ndarray, index: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For records (key rows, index, eligible): (order sorting them by key then index, first eligible index
    of each record's key group, _MAX64 if none), both in sorted order."""
    cols = [index] + [keys[:, j] for j in range(keys.shape[1] - 1, -1, -1)]
    order = np.lexsort(cols)
    ks = keys[order]
    new = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        new[1:] = (ks[1:] != ks[:-1]).any(axis=1)
    starts = np.flatnonzero(new)
    cand = np.where(eligible[order], index[order], _MAX64)
    gmin = np.minimum.reduceat(cand, starts) if len(starts) else cand[:0]
    group = np.cumsum(new) - 1
    return order, gmin[group]


def _resolve_roots(parent: np.ndarray, start: int, outside) -> np.ndarray:
    """Roots of documents start.. (parent: own index when kept or not a duplicate); `outside(p)` gives the
    final roots of earlier documents p < start."""
    root = parent.copy()
    out = root < start
    if out.any():
        root[out] = outside(root[out])
    while True:
        inr = root >= start
        nxt = root.copy()
        nxt[inr] = root[root[inr] - start]
        if np.array_equal(nxt, root):
            return root
        root = nxt


class _Base:
    def __init__(self, near: bool, tmp_root: Path | None, config: MinHashConfig, prefix: str = ".dedup-"):
        self.near = near
        self.config = config
        self.count = 0
        self.folder = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=tmp_root))
        try:
            self._ids = _IdLog(self.folder)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise

    def _check(self, keys, bands, eligible, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        k, has = _as_keys(keys)
        k[:, 0] |= _U64(1)
        elig = np.asarray(eligible, dtype=bool)
        n = len(k)
        if len(elig) != n or len(ids) != n:
            raise ValueError("dedup batch: keys, eligible and ids must have one entry per document")
        if (elig & ~has).any():
            raise ValueError("dedup batch: an eligible document needs a key")
        b = None
        if self.near:
            if bands is None:
                raise ValueError("dedup batch: near dedup needs band keys")
            b = np.asarray(bands, dtype=_U64).reshape(n, self.config.bands)
            b = np.where(b != 0, b | _U64(1), _U64(0))  # as the tables store them; 0 is no band
        return k, has, elig, b

    def _answers(self, kinds: np.ndarray, roots: np.ndarray) -> list[tuple[str | None, str | None]]:
        return [(REASONS[int(t)], self._ids.get(int(r)) if t else None) for t, r in zip(kinds, roots)]

    def close(self) -> None:
        self._ids.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MemoryDedup(_Base):
    """Dedup decisions in memory: `judge(batch)` answers each batch at once, in order."""

    def __init__(self, near: bool = False, tmp_root: Path | None = None, config: MinHashConfig = DEFAULT_CONFIG,
                 prefix: str = ".dedup-"):
        super().__init__(near, tmp_root, config, prefix)
        self._exact = _Table(2)  # key -> root
        self._bands = _Table(1)  # band key -> first document
        self._roots = np.zeros(1 << 10, dtype=np.int64)  # root of every document so far
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def nbytes(self) -> int:
        return self._exact.nbytes + self._bands.nbytes + self._roots.nbytes

    def judge_arrays(self, keys, bands, eligible, ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(kinds, roots) of a batch: NONE/EXACT/NEAR and the root index (own index when NONE)."""
        k, has, elig, b = self._check(keys, bands, eligible, ids)
        n, base = len(k), self.count
        idx = np.arange(base, base + n, dtype=np.int64)
        self._ids.append(ids)
        kinds = np.zeros(n, dtype=np.uint8)
        parent = idx.copy()
        # exact: earlier batches, then earlier in this batch
        kh = np.flatnonzero(has)
        known = self._exact.get(k[kh])
        hit = known >= 0
        kinds[kh[hit]] = EXACT
        parent[kh[hit]] = known[hit]  # already a root
        new = kh[~hit]
        order, first = _group_firsts(k[new], idx[new], elig[new])
        rec = new[order]
        dup = first < idx[rec]  # an earlier eligible document of this batch has the key
        kinds[rec[dup]] = EXACT
        parent[rec[dup]] = first[dup]
        if self.near:
            self._near(b, elig & (kinds != EXACT), idx, base, kinds, parent)
        roots = _resolve_roots(parent, base, lambda p: self._roots[p])
        self._grow_roots(base + n)
        self._roots[base : base + n] = roots
        # remember the keys of this batch's first eligible documents, with their roots
        firsts = first[first < _MAX64]
        if firsts.size:
            ins = np.unique(firsts) - base
            self._exact.put_new(k[ins], roots[ins])
        self.count += n
        return kinds, np.where(kinds != NONE, roots, idx)

    def _near(self, b, near_ok, idx, base, kinds, parent) -> None:
        docs = np.flatnonzero(near_ok & (b != 0).any(axis=1))
        if not docs.size:
            return
        nb = self.config.bands
        flat = b[docs].reshape(-1, 1)
        rec_doc = np.repeat(docs, nb)
        real = np.flatnonzero(flat[:, 0] != 0)  # a 0 band key is no band
        known = np.full(len(flat), -1, dtype=np.int64)
        known[real] = self._bands.get(flat[real] | _U64(1))  # first document of the bucket in earlier batches
        cand = np.where(known >= 0, known, _MAX64)
        new = real[known[real] < 0]
        if new.size:
            order, first = _group_firsts(flat[new], rec_doc[new] + base, np.ones(new.size, dtype=bool))
            r = new[order]
            cand[r] = np.where(first < rec_doc[r] + base, first, _MAX64)
            is_first = first == rec_doc[r] + base
            fk, fv = flat[r[is_first]] | _U64(1), first[is_first]
            _, once = np.unique(fk[:, 0], return_index=True)  # a band key twice in one document: once
            self._bands.put_new(fk[once], fv[once])
        best = cand.reshape(-1, nb).min(axis=1)
        dup = best < _MAX64
        kinds[docs[dup]] = NEAR
        parent[docs[dup]] = best[dup]

    def _grow_roots(self, n: int) -> None:
        if n > len(self._roots):
            size = len(self._roots)
            while size < n:
                size *= 2
            grown = np.zeros(size, dtype=np.int64)
            grown[: len(self._roots)] = self._roots
            self._roots = grown

    def judge(self, keys, bands, eligible, ids: Sequence[str]) -> list[tuple[str | None, str | None]]:
        """(reason, duplicate_of id) per document of the batch: reason None, "exact-duplicate" or "near-duplicate"."""
        return self._answers(*self.judge_arrays(keys, bands, eligible, ids))

    # the two-pass interface of DiskDedup, for callers that drive both the same way
    def add(self, keys, bands, eligible, ids: Sequence[str]) -> None:
        start = self.count
        kinds, roots = self.judge_arrays(keys, bands, eligible, ids)
        self._pending.append((start, kinds, roots))

    def decision_arrays(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        pending, self._pending = self._pending, []
        yield from pending

    def decisions(self) -> Iterator[tuple[str | None, str | None]]:
        for _, kinds, roots in self.decision_arrays():
            yield from self._answers(kinds, roots)


_EXACT_REC = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("idx", "<i8"), ("elig", "u1")])
_BAND_REC = np.dtype([("key", "<u8"), ("idx", "<i8")])
_PAIR = np.dtype([("idx", "<i8"), ("par", "<i8")])


class HashPartitions:
    """Records appended to `parts` files by the top bits of their first field, through a bounded buffer."""

    def __init__(self, folder: Path, name: str, dtype: np.dtype, bits: int, buffer_bytes: int):
        self.folder, self.name, self.dtype, self.bits = folder, name, dtype, bits
        self.cap = max(1024, buffer_bytes // dtype.itemsize)
        self.buf = np.empty(self.cap, dtype=dtype)
        self.n = 0

    def path(self, p: int) -> Path:
        return self.folder / f"{self.name}-{p:05d}.bin"

    def extend(self, recs: np.ndarray) -> None:
        i = 0
        while i < len(recs):
            take = min(len(recs) - i, self.cap - self.n)
            self.buf[self.n : self.n + take] = recs[i : i + take]
            self.n += take
            i += take
            if self.n == self.cap:
                self.flush()

    def flush(self) -> None:
        if not self.n:
            return
        recs = self.buf[: self.n]
        part = (_spread(recs[self.dtype.names[0]]) >> _U64(64 - self.bits)).astype(np.int64)
        order = np.argsort(part, kind="stable")
        recs, part = recs[order], part[order]
        cuts = np.searchsorted(part, np.arange((1 << self.bits) + 1))
        for p in np.flatnonzero(np.diff(cuts)):
            with open(self.path(int(p)), "ab") as f:
                f.write(recs[cuts[p] : cuts[p + 1]].tobytes())
        self.n = 0

    def files(self) -> list[Path]:
        return [self.path(p) for p in range(1 << self.bits) if self.path(p).exists()]


def _split_file(path: Path, dtype: np.dtype, field: str, level: int, limit: int) -> Iterator[np.ndarray]:
    """Records of `path` in pieces of at most `limit` bytes, split further by key bits when too big."""
    size = path.stat().st_size
    if size <= limit or level >= 6:  # 6 extra levels of 4 bits: far beyond any corpus
        yield np.fromfile(path, dtype=dtype)
        return
    shift = _U64(64 - 12 - 4 * (level + 1))  # partitions used the top 12 bits (at most); split on the next 4
    subs = [path.with_name(f"{path.stem}.{level}-{j:x}.bin") for j in range(16)]
    step = max(1, limit // dtype.itemsize)
    with open(path, "rb") as f:
        while True:
            recs = np.fromfile(f, dtype=dtype, count=step)
            if not len(recs):
                break
            sub = ((_spread(recs[field]) >> shift) & _U64(15)).astype(np.int64)
            for j in np.unique(sub):
                with open(subs[j], "ab") as g:
                    g.write(recs[sub == j].tobytes())
    path.unlink()
    for s in subs:
        if s.exists():
            yield from _split_file(s, dtype, field, level + 1, limit)
            s.unlink(missing_ok=True)


class DiskDedup(_Base):
    """Dedup decisions on disk, in two passes: `add` every batch in order, then iterate `decisions()`.

    Pass 1 appends (key, index, eligible) and (band key, index) records to files partitioned by the
    key's top bits, through buffers of about `memory` / 4 bytes each. Then:
    1. exact: per key partition, sort by (key, index); the first eligible index of each key is the
       parent of every later record with that key -> exact pairs, written to index-range files;
       exact duplicates are flagged in a bitmap (N/8 bytes);
    2. near: per band partition, drop exact duplicates, sort by (band key, index); the first index of each
       bucket is a candidate parent of every later record -> near pairs, to index-range files;
    3. per index range, in order: parent = exact parent, else the smallest near candidate; roots follow
       parents (earlier ranges' roots are read back from a file of roots).
    The temporary folder is removed by `close()` (use `with`).
    """

    def __init__(self, near: bool = False, tmp_root: Path | None = None, memory: int = DEFAULT_MEMORY,
                 expected_docs: int | None = None, config: MinHashConfig = DEFAULT_CONFIG, prefix: str = ".dedup-"):
        super().__init__(near, tmp_root, config, prefix)
        self.memory = max(int(memory), 1 << 16)
        try:
            exp = expected_docs or 1 << 20
            ebits = self._bits(exp * _EXACT_REC.itemsize)
            self._exact = HashPartitions(self.folder, "exact", _EXACT_REC, ebits, self.memory // 8)
            self._bandp = None
            if near:
                nbits = self._bits(exp * config.bands * _BAND_REC.itemsize)
                self._bandp = HashPartitions(self.folder, "bands", _BAND_REC, nbits, self.memory // 8)
        except BaseException:
            self.close()
            raise
        self._done = False

    def _bits(self, total_bytes: int) -> int:
        parts = max(1, -(-total_bytes // (self.memory // 16)))
        return min(12, max(2, (parts - 1).bit_length()))

    def add(self, keys, bands, eligible, ids: Sequence[str]) -> None:
        if self._done:
            raise RuntimeError("DiskDedup.add after decisions()")
        k, has, elig, b = self._check(keys, bands, eligible, ids)
        n, base = len(k), self.count
        idx = np.arange(base, base + n, dtype=np.int64)
        self._ids.append(ids)
        kh = np.flatnonzero(has)
        recs = np.empty(kh.size, dtype=_EXACT_REC)
        recs["hi"], recs["lo"], recs["idx"], recs["elig"] = k[kh, 0], k[kh, 1], idx[kh], elig[kh]
        self._exact.extend(recs)
        if self.near:
            docs = np.flatnonzero(elig & (b != 0).any(axis=1))
            br = np.empty(docs.size * self.config.bands, dtype=_BAND_REC)
            br["key"] = b[docs].reshape(-1)
            br["idx"] = np.repeat(idx[docs], self.config.bands)
            self._bandp.extend(br[br["key"] != 0])  # a 0 band key is no band
        self.count += n

    def _range_docs(self) -> int:
        return max(1024, self.memory // (32 * (1 + (self.config.bands if self.near else 0)) * 4))

    def _finish(self) -> None:
        self._done = True
        self._exact.flush()
        limit = self.memory // 16
        rd = self._range_docs()
        nranges = max(1, -(-self.count // rd))
        flags = np.zeros((self.count + 7) // 8, dtype=np.uint8)
        for f in self._exact.files():
            for recs in _split_file(f, _EXACT_REC, "hi", 0, limit):
                keys = np.stack([recs["hi"], recs["lo"]], axis=1)
                order, first = _group_firsts(keys, recs["idx"], recs["elig"].astype(bool))
                ix = recs["idx"][order]
                del recs, keys, order
                dup = first < ix
                pairs = np.empty(int(dup.sum()), dtype=_PAIR)
                pairs["idx"], pairs["par"] = ix[dup], first[dup]
                np.bitwise_or.at(flags, pairs["idx"] >> 3, (1 << (pairs["idx"] & 7)).astype(np.uint8))
                self._to_ranges(pairs, "xpairs", rd, nranges)
            f.unlink(missing_ok=True)
        if self.near:
            self._bandp.flush()
            for f in self._bandp.files():
                for recs in _split_file(f, _BAND_REC, "key", 0, limit):
                    ix = recs["idx"]
                    keep = ((flags[ix >> 3] >> (ix & 7).astype(np.uint8)) & 1) == 0
                    recs = recs[keep]
                    order, first = _group_firsts(recs["key"].reshape(-1, 1), recs["idx"], np.ones(len(recs), bool))
                    ix = recs["idx"][order]
                    del recs, order
                    later = first < ix
                    pairs = np.empty(int(later.sum()), dtype=_PAIR)
                    pairs["idx"], pairs["par"] = ix[later], first[later]
                    self._to_ranges(pairs, "npairs", rd, nranges)
                f.unlink(missing_ok=True)
        self._nranges, self._rd = nranges, rd

    def _range_path(self, name: str, r: int) -> Path:
        return self.folder / f"{name}-{r:06d}.bin"

    def _to_ranges(self, pairs: np.ndarray, name: str, rd: int, nranges: int) -> None:
        if not len(pairs):
            return
        r = pairs["idx"] // rd
        order = np.argsort(r, kind="stable")
        pairs, r = pairs[order], r[order]
        cuts = np.searchsorted(r, np.arange(nranges + 1))
        for j in np.flatnonzero(np.diff(cuts)):
            with open(self._range_path(name, int(j)), "ab") as f:
                f.write(pairs[cuts[j] : cuts[j + 1]].tobytes())

    def _load_pairs(self, name: str, r: int) -> np.ndarray:
        p = self._range_path(name, r)
        if not p.exists():
            return np.zeros(0, dtype=_PAIR)
        pairs = np.fromfile(p, dtype=_PAIR)
        p.unlink()
        return pairs

    def decision_arrays(self) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first index, kinds, roots) per range of documents, in index order (roots: own index when NONE)."""
        if not self._done:
            self._finish()
        roots_path = self.folder / "roots.bin"
        with open(roots_path, "w+b") as rf:
            for r in range(self._nranges):
                start, end = r * self._rd, min(self.count, (r + 1) * self._rd)
                if start >= end:
                    break
                n = end - start
                kinds = np.zeros(n, dtype=np.uint8)
                parent = np.arange(start, end, dtype=np.int64)
                if self.near:
                    npairs = self._load_pairs("npairs", r)
                    best = np.full(n, _MAX64, dtype=np.int64)
                    np.minimum.at(best, npairs["idx"] - start, npairs["par"])
                    dup = best < _MAX64
                    kinds[dup] = NEAR
                    parent[dup] = best[dup]
                xp = self._load_pairs("xpairs", r)
                kinds[xp["idx"] - start] = EXACT
                parent[xp["idx"] - start] = xp["par"]
                if self.near:
                    rf.flush()
                    roots = _resolve_roots(parent, start, lambda p: _read_roots(rf, p))
                    rf.seek(0, os.SEEK_END)
                    rf.write(roots.tobytes())
                else:  # without near dedup an exact parent is always kept
                    roots = parent
                yield start, kinds, roots

    def decisions(self) -> Iterator[tuple[str | None, str | None]]:
        """(reason, duplicate_of id) per document, in the order they were added."""
        for _, kinds, roots in self.decision_arrays():
            yield from self._answers(kinds, roots)


def _read_roots(f, positions: np.ndarray) -> np.ndarray:
    """roots.bin[positions] (int64), through a mapping whose pages are dropped as it goes (RSS stays small)."""
    out = np.empty(len(positions), dtype=np.int64)
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        arr = np.frombuffer(mm, dtype=np.int64)
        step = 1 << 14
        for i in range(0, len(positions), step):
            out[i : i + step] = arr[positions[i : i + step]]
            if hasattr(mm, "madvise"):
                mm.madvise(mmap.MADV_DONTNEED)
        del arr
    finally:
        mm.close()
    return out


def open_dedup(tmp_root: Path, *, near: bool, expected_docs: int, memory: int = DEFAULT_MEMORY,
               config: MinHashConfig = DEFAULT_CONFIG, prefix: str = ".dedup-") -> MemoryDedup | DiskDedup:
    """The memory path when `expected_docs` fit in `memory` bytes (see *_BYTES_PER_DOC), else the disk path.
    Temporary files go to a folder `tmp_root`/`prefix`*.tmp, removed by `close()` (or `with`)."""
    need = expected_docs * (EXACT_BYTES_PER_DOC + (NEAR_BYTES_PER_DOC if near else 0))
    if need <= memory:
        return MemoryDedup(near, tmp_root, config, prefix)
    return DiskDedup(near, tmp_root, memory, expected_docs, config, prefix)


# ---------------------------------------------------------------------------------------------------
# The earlier one-document-at-a-time interface (merge.py uses it until it moves to MemoryDedup/DiskDedup)


class ExactDedup:
    """Remembers kept documents by `text_key`; `duplicate_of(key)` names the earlier kept one."""

    def __init__(self) -> None:
        self._seen: dict[bytes, str] = {}

    def duplicate_of(self, key: bytes) -> str | None:
        return self._seen.get(key)

    def add(self, key: bytes, doc_id: str) -> None:
        self._seen.setdefault(key, doc_id)

    def __len__(self) -> int:
        return len(self._seen)


class MinHashDedup:
    """Near duplicates one document at a time: `signature(text)` (band keys), `duplicate_of(sig)`, `add(sig, id)`."""

    def __init__(self, config: MinHashConfig = DEFAULT_CONFIG):
        self.config = config
        self._buckets: dict[int, str] = {}
        self._n = 0

    def signature(self, text: str) -> np.ndarray:
        return band_keys([text], self.config)[0]

    def duplicate_of(self, sig: np.ndarray) -> str | None:
        for k in sig.tolist():
            if k and k in self._buckets:
                return self._buckets[k]
        return None

    def add(self, sig: np.ndarray, doc_id: str) -> None:
        for k in sig.tolist():
            if k:
                self._buckets.setdefault(k, doc_id)
        self._n += 1

    def __len__(self) -> int:
        return self._n
