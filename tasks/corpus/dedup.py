"""Deduplication: exact (a hash of the normalized text) and near (MinHash + LSH), both streaming and deterministic.

Exact: a 16-byte blake2b digest of the NFC, lowercased, whitespace-collapsed text; a later document
with a digest already kept is a duplicate of that earlier one. About 150 bytes of memory per kept
document (digest + id), so ~10M documents per 1.5 GB.

Near: MinHash over word 5-gram shingles (112 hash functions, 14 bands x 8 rows, LSH buckets): a
document sharing a band with an earlier kept one whose estimated Jaccard similarity is at least
`threshold` (0.8) is a near-duplicate of it. Hashes are seeded numpy arithmetic, never Python's
salted `hash()`, so runs agree. About 1.5 KB per kept document.
"""

from __future__ import annotations

import hashlib
import unicodedata

import numpy as np

from tasks.corpus.filters import span_hashes, word_spans

_Q = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier combining word hashes into shingle hashes
_SHINGLE_CHUNK = 4096  # shingles hashed at once: bounds memory to chunk x num_perm x 8 bytes


def text_key(text: str) -> bytes:
    """16-byte digest of a text as dedup sees it: NFC, lowercase, runs of whitespace collapsed."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    canon = " ".join(text.lower().split())
    return hashlib.blake2b(canon.encode("utf-8", "surrogatepass"), digest_size=16).digest()


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


def _word_hashes(text: str) -> np.ndarray:
    """A 64-bit hash per whitespace-separated word of the lowercased text (vectorized over bytes)."""
    data = np.frombuffer(text.lower().encode("utf-8", "surrogatepass"), dtype=np.uint8)
    return span_hashes(data, *word_spans(data))


class MinHashDedup:
    """Near-duplicate detection with MinHash signatures and LSH banding (numpy, deterministic)."""

    def __init__(self, num_perm: int = 112, bands: int = 14, ngram: int = 5, threshold: float = 0.8, seed: int = 1):
        if num_perm % bands:
            raise ValueError("num_perm must be a multiple of bands")
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.ngram, self.threshold = ngram, threshold
        rng = np.random.default_rng(seed)
        # multiply-shift hashing: h(x) = (a*x + b) >> 32, a odd; one (a, b) per permutation
        self._a = rng.integers(1, 1 << 63, size=num_perm, dtype=np.uint64) | np.uint64(1)
        self._b = rng.integers(0, 1 << 63, size=num_perm, dtype=np.uint64)
        self._band_mult = rng.integers(1, 1 << 63, size=self.rows, dtype=np.uint64) | np.uint64(1)
        self._buckets: dict[int, int | list[int]] = {}  # band key -> kept doc index (a list when shared)
        self._sigs = np.zeros((1024, num_perm), dtype=np.uint32)
        self._ids: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature (num_perm uint32) of the word n-gram shingles of `text`."""
        words = _word_hashes(text)
        n = self.ngram
        if words.size == 0:
            return np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
        if words.size < n:  # a short text is one shingle
            n = words.size
        sh = words[: words.size - n + 1].copy()
        for k in range(1, n):
            sh = sh * _Q + words[k : words.size - n + 1 + k]
        sh = np.unique(sh)
        sig = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        for i in range(0, sh.size, _SHINGLE_CHUNK):
            chunk = sh[i : i + _SHINGLE_CHUNK, None]
            np.minimum(sig, ((chunk * self._a + self._b) >> np.uint64(32)).min(axis=0), out=sig)
        return sig.astype(np.uint32)

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        rows = sig.reshape(self.bands, self.rows).astype(np.uint64)
        keys = (rows * self._band_mult).sum(axis=1, dtype=np.uint64)
        keys = keys * _Q + np.arange(self.bands, dtype=np.uint64)  # the same rows in another band is another bucket
        return keys.tolist()

    def duplicate_of(self, sig: np.ndarray) -> str | None:
        """The id of the earliest kept document this one near-duplicates, or None."""
        cands: set[int] = set()
        for k in self._band_keys(sig):
            v = self._buckets.get(k)
            if v is not None:
                cands.update(v) if isinstance(v, list) else cands.add(v)
        cands = sorted(cands)
        for c in cands:
            if float(np.mean(self._sigs[c] == sig)) >= self.threshold:
                return self._ids[c]
        return None

    def add(self, sig: np.ndarray, doc_id: str) -> None:
        i = len(self._ids)
        if i == self._sigs.shape[0]:
            self._sigs = np.concatenate([self._sigs, np.zeros_like(self._sigs)])
        self._sigs[i] = sig
        self._ids.append(doc_id)
        for k in self._band_keys(sig):
            v = self._buckets.get(k)
            if v is None:
                self._buckets[k] = i
            elif isinstance(v, list):
                v.append(i)
            else:
                self._buckets[k] = [v, i]

    def __len__(self) -> int:
        return len(self._ids)
