"""Bits per byte, and a smoothed bigram baseline that says what "better than trivial" means for a data folder.

Loss in nats per token depends on the tokenizer; bits per byte (nanochat's measure) does not:
bpb = nats_per_token x tokens / bytes / ln 2, with the bytes of the split's UTF-8 text (meta.json records them).

The baseline is an interpolated Kneser-Ney bigram (Chen & Goodman 1998) with absolute discount d:

    P(b | a) = max(c(a, b) - d, 0) / c(a)  +  d N1+(a .) / c(a) * Pc(b)
    Pc(b)    = max(N1+(. b) - d, 0) / N1+(. .)  +  d |{b : N1+(. b) > 0}| / N1+(. .) / V

c(a, b) counts the pair in the train stream, c(a) = sum_b c(a, b), N1+(a .) the distinct successors of a,
N1+(. b) the distinct predecessors of b, N1+(. .) the distinct pairs. The continuation distribution Pc is
itself interpolated with the uniform one over the vocabulary, so an id never seen in train still gets a
probability; a context never seen (c(a) = 0) falls back to Pc. Pair counts are kept sparse (sorted keys
a * V + b), fitted in bounded pieces, so memory follows the number of distinct pairs, not V^2.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

if TYPE_CHECKING:
    from model.shards import ShardStream

DISCOUNT = 0.75
FIT_TOKENS = 50_000_000  # train tokens the baseline is fitted on (the first ones): seconds, bounded memory
SCORE_TOKENS = 10_000_000  # val tokens it is scored on (the first ones): 0.5% of a 2B-token corpus
PIECE_TOKENS = 1 << 20  # tokens read and counted at once
SCORE_PIECE = 1 << 18  # pairs scored at once


def bits_per_byte(nats_per_token: float, tokens: int, nbytes: int) -> float:
    """Bits per byte of text for a mean loss of `nats_per_token` over a text of `tokens` tokens and `nbytes` bytes."""
    if nbytes <= 0:
        raise ValueError("bits per byte of an empty text")
    return float(nats_per_token) * int(tokens) / int(nbytes) / math.log(2)


def _pairs(pieces: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(a, b) arrays of consecutive ids of a stream given in pieces: each piece's own pairs, and the pair
    across two pieces' ends as a pair of one-element arrays (no copy of a piece)."""
    prev: np.ndarray | None = None
    for piece in pieces:
        piece = np.asarray(piece, dtype=np.int64)
        if piece.size == 0:
            continue
        if prev is not None:
            yield prev, piece[:1]
        if piece.size >= 2:
            yield piece[:-1], piece[1:]
        prev = piece[-1:]


def _unique_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts of a sorted array."""
    first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    return keys[first], np.diff(np.append(first, keys.size))


def _merge(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Union of sorted, unique (key, count) runs, counts of equal keys added."""
    allk = np.concatenate([k for k, _ in runs])
    allc = np.concatenate([c for _, c in runs])
    order = np.argsort(allk, kind="stable")  # timsort: sorted runs are merged, not sorted again
    allk, allc = allk[order], allc[order]
    first = np.flatnonzero(np.concatenate(([True], allk[1:] != allk[:-1])))
    return allk[first], np.add.reduceat(allc, first) if allc.size else allc


class KneserNeyBigram:
    """Interpolated Kneser-Ney bigram over ids 0..vocab_size-1 (see the module docstring for the formula)."""

    def __init__(self, vocab_size: int, discount: float = DISCOUNT):
        if not 0 < discount < 1:
            raise ValueError("discount must be in (0, 1)")
        self.V = int(vocab_size)
        self.d = float(discount)
        self.keys = np.zeros(0, dtype=np.int64)  # a * V + b, sorted
        self.counts = np.zeros(0, dtype=np.int64)
        self.tokens = 0

    def _check(self, a: np.ndarray, b: np.ndarray) -> None:
        if min(int(a.min()), int(b.min())) < 0 or max(int(a.max()), int(b.max())) >= self.V:
            raise ValueError(f"token id outside the vocabulary of {self.V}")

    def fit(self, pieces: Iterable[np.ndarray]) -> "KneserNeyBigram":
        """Count the pairs of one token stream given in consecutive pieces; returns self.

        Each piece's pairs are counted on their own (sorted in place); the sorted runs are merged into the
        totals once they add up to as many as the totals hold, so merging costs O(n log n) over the stream
        and memory stays at about a piece plus twice the distinct pairs.
        """
        runs: list[tuple[np.ndarray, np.ndarray]] = [(self.keys, self.counts)]
        pending = 0
        for a, b in _pairs(self._counted(pieces)):
            self._check(a, b)
            keys = a * self.V
            keys += b
            keys.sort()
            runs.append(_unique_counts(keys))
            del keys
            pending += runs[-1][0].size
            if pending >= max(runs[0][0].size, 1 << 16):
                runs, pending = [_merge(runs)], 0
        self.keys, self.counts = _merge(runs)
        V, d = self.V, self.d
        a, b = self.keys // V, self.keys % V
        self.ctx_count = np.bincount(a, weights=self.counts, minlength=V)  # c(a)
        self.ctx_types = np.bincount(a, minlength=V).astype(np.float64)  # N1+(a .)
        preceders = np.bincount(b, minlength=V).astype(np.float64)  # N1+(. b)
        pair_types = float(self.keys.size)  # N1+(. .)
        if pair_types == 0:
            self.cont = np.full(V, 1.0 / V)
        else:
            seen = float(np.count_nonzero(preceders))
            self.cont = np.maximum(preceders - d, 0.0) / pair_types + d * seen / pair_types / V
        return self

    def _counted(self, pieces: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for p in pieces:
            self.tokens += int(np.asarray(p).size)
            yield p

    def log_prob(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Natural log of P(b | a), elementwise."""
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        q = a * self.V + b
        pair = np.zeros(q.shape, dtype=np.float64)  # c(a, b)
        if self.keys.size:
            at = np.minimum(np.searchsorted(self.keys, q), self.keys.size - 1)
            pair = np.where(self.keys[at] == q, self.counts[at], 0).astype(np.float64)
        ctx = self.ctx_count[a]
        seen = ctx > 0
        safe = np.where(seen, ctx, 1.0)
        p = np.where(seen, np.maximum(pair - self.d, 0.0) / safe + self.d * self.ctx_types[a] / safe * self.cont[b], self.cont[b])
        return np.log(p)

    def probs(self, a: int) -> np.ndarray:
        """The whole distribution P(. | a) over the vocabulary."""
        b = np.arange(self.V, dtype=np.int64)
        return np.exp(self.log_prob(np.full(self.V, int(a), dtype=np.int64), b))

    def score(self, pieces: Iterable[np.ndarray]) -> tuple[float, int]:
        """(total nats, predicted tokens) over the pairs of a stream given in consecutive pieces."""
        total, n = 0.0, 0
        for a, b in _pairs(pieces):
            self._check(a, b)
            for i in range(0, a.size, SCORE_PIECE):  # bounded temporaries whatever the piece size
                total -= float(self.log_prob(a[i : i + SCORE_PIECE], b[i : i + SCORE_PIECE]).sum())
            n += a.size
        return total, n


def baseline_work(train: ShardStream, val: ShardStream, fit_tokens: int = FIT_TOKENS, score_tokens: int = SCORE_TOKENS) -> int:
    """Tokens `bigram_baseline` reads (for a progress bar's total)."""
    return min(train.tokens, fit_tokens) + min(val.tokens, score_tokens)


def bigram_baseline(train: ShardStream, val: ShardStream, vocab_size: int, val_bytes: int | None,
                    fit_tokens: int = FIT_TOKENS, score_tokens: int = SCORE_TOKENS,
                    advance: Callable[[int], None] | None = None) -> dict:
    """Fit the bigram on the first `fit_tokens` of `train`, score it on the first `score_tokens` of `val`.

    `train`/`val`: the splits' streams (anything with `.chunks(size, limit)` and `.tokens`).
    Returns meta.json's `baseline.bigram`: val_loss (nats per predicted val token), val_bpb (over the whole
    val split's tokens and bytes; None without bytes), the tokens used and the method.
    `advance(n)` is called after each piece of n tokens read (progress).
    """

    def read(stream: ShardStream, limit: int) -> Iterator[np.ndarray]:
        for piece in stream.chunks(PIECE_TOKENS, limit):
            yield piece
            if advance is not None:
                advance(piece.size)

    model = KneserNeyBigram(vocab_size).fit(read(train, fit_tokens))
    nats, n = model.score(read(val, score_tokens))
    loss = nats / n if n else None
    bpb = bits_per_byte(loss, val.tokens, val_bytes) if loss is not None and val_bytes else None
    return {"val_loss": loss, "val_bpb": bpb, "train_tokens": model.tokens, "val_tokens": n,
            "method": f"interpolated Kneser-Ney bigram, d={model.d}"}
