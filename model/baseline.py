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
        self.tokens = 0  # tokens counted
        self._last = np.zeros(0, dtype=np.uint32)  # the stream's last counted token (its pair with the next one)
        self._gathered: list[np.ndarray] = []  # pieces not counted yet
        self._gathered_n = 0
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # counted, not yet merged into keys/counts
        self._pending = 0

    def _check(self, a: np.ndarray, b: np.ndarray) -> None:
        if min(int(a.min()), int(b.min())) < 0 or max(int(a.max()), int(b.max())) >= self.V:
            raise ValueError(f"token id outside the vocabulary of {self.V}")

    def fit(self, pieces: Iterable[np.ndarray]) -> "KneserNeyBigram":
        """Count the pairs of one token stream given in consecutive pieces and `finish`; returns self."""
        for piece in pieces:
            self.update(piece)
        return self.finish()

    def update(self, piece: np.ndarray) -> None:
        """Count the next piece of the stream (any size: pieces are gathered to PIECE_TOKENS before counting,
        and the pair across two pieces' ends is counted, so the totals do not depend on how the stream is cut).

        Each gathered piece's pairs are counted on their own (sorted in place); the sorted runs are merged into
        the totals once they add up to as many as the totals hold, so merging costs O(n log n) over the stream
        and memory stays at about a piece plus twice the distinct pairs. Call `finish` after the last piece.
        """
        piece = np.asarray(piece)
        if piece.size == 0:
            return
        lo = 0 if piece.dtype.kind == "u" else int(piece.min())
        if lo < 0 or int(piece.max()) >= self.V:
            raise ValueError(f"token id outside the vocabulary of {self.V}")
        self.tokens += int(piece.size)
        at = 0
        while at < piece.size:  # a long piece in views of at most PIECE_TOKENS: bounded temporaries
            part = piece[at : at + PIECE_TOKENS - self._gathered_n]
            at += part.size
            self._gathered.append(part.copy())  # the caller may reuse its array; a view would also keep it alive
            self._gathered_n += part.size
            if self._gathered_n >= PIECE_TOKENS:
                self._count_gathered()

    def _count_gathered(self) -> None:
        # pair keys a * V + b in 32 bits where V * V fits (any vocabulary up to 65,536): sorting them takes a third
        # of the time of 64-bit keys; the distinct keys are kept as int64 either way
        small = self.V * self.V <= 1 << 32
        stream = np.concatenate([self._last, *self._gathered], dtype=np.uint32 if small else np.int64, casting="unsafe")
        self._gathered, self._gathered_n = [], 0
        self._last = stream[-1:].copy()
        if stream.size < 2:
            return
        keys = stream[:-1] * (np.uint32(self.V) if small else self.V)  # ids were checked in `update`
        keys += stream[1:]
        del stream
        keys.sort()
        k, c = _unique_counts(keys)
        del keys
        self._runs.append((k.astype(np.int64), c))
        self._pending += k.size
        if self._pending >= max(self.keys.size, 1 << 16):
            self.keys, self.counts = _merge([(self.keys, self.counts), *self._runs])
            self._runs, self._pending = [], 0

    def finish(self) -> "KneserNeyBigram":
        """Merge what `update` counted and derive the model's tables; returns self."""
        if self._gathered:
            self._count_gathered()
        if self._runs:
            self.keys, self.counts = _merge([(self.keys, self.counts), *self._runs])
            self._runs, self._pending = [], 0
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


def _advancing(pieces: Iterable[np.ndarray], advance: Callable[[int], None] | None) -> Iterator[np.ndarray]:
    for piece in pieces:
        yield piece
        if advance is not None:
            advance(piece.size)


def bigram_baseline(train: ShardStream, val: ShardStream, vocab_size: int, val_bytes: int | None,
                    fit_tokens: int = FIT_TOKENS, score_tokens: int = SCORE_TOKENS,
                    advance: Callable[[int], None] | None = None) -> dict:
    """Fit the bigram on the first `fit_tokens` of `train`, score it on the first `score_tokens` of `val`.

    `train`/`val`: the splits' streams (anything with `.chunks(size, limit)` and `.tokens`).
    Returns meta.json's `baseline.bigram`: val_loss (nats per predicted val token), val_bpb (over the whole
    val split's tokens and bytes; None without bytes), the tokens used and the method.
    `advance(n)` is called after each piece of n tokens read (progress).
    """
    model = KneserNeyBigram(vocab_size).fit(_advancing(train.chunks(PIECE_TOKENS, fit_tokens), advance))
    return score_baseline(model, val, val_bytes, score_tokens, advance)


def score_baseline(model: KneserNeyBigram, val: ShardStream, val_bytes: int | None, score_tokens: int = SCORE_TOKENS,
                   advance: Callable[[int], None] | None = None) -> dict:
    """meta.json's `baseline.bigram` for a fitted `model` (see `bigram_baseline`), scored on the first
    `score_tokens` of `val`. `cook tokenize` fits the model on the train tokens as it writes them, then calls this."""
    nats, n = model.score(_advancing(val.chunks(PIECE_TOKENS, score_tokens), advance))
    loss = nats / n if n else None
    bpb = bits_per_byte(loss, val.tokens, val_bytes) if loss is not None and val_bytes else None
    return {"val_loss": loss, "val_bpb": bpb, "train_tokens": model.tokens, "val_tokens": n,
            "method": f"interpolated Kneser-Ney bigram, d={model.d}"}
