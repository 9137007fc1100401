"""Stateless batches from token shards: every token once per epoch (`EpochBatches`) or random windows (`TokenBatches`).

A batch is a pure function of (seed, iteration, micro-step), so the "data cursor" of a run is just its
iteration number and a resumed run sees exactly the batches an uninterrupted one would have.

`EpochBatches` (the default sampler) cuts a split's shards, read as one token stream, into
W = (tokens - 1) // block_size windows of block_size + 1 tokens (inputs and shifted targets; a window may
span two shards). Row r of the whole run (counting every row of every micro-step of every iteration) takes
window perm_{seed, r // W}(r % W): within an epoch each window, hence each input token, comes exactly once
(only the last (tokens - 1) % block_size tokens are never inputs), and each epoch has its own order.
The permutation is a keyed Feistel network over the next power of two with cycle-walking: a bijection
computed for just the rows asked, in O(1) memory for any corpus size. `seed` must stay the same for the
whole run (the run's data seed, not a per-chunk seed), or an epoch's order would change half way.

`TokenBatches` draws windows uniformly, with replacement, inside single shards (nanoGPT's way) from
`np.random.default_rng([seed, iteration, micro])`.

Under DDP, rank `r` with `g` micro-steps per rank takes micro-steps `r*g .. r*g+g-1`, so one iteration sees
the same data whatever the number of processes; `micro_per_iter` is the micro-steps of one iteration over all
ranks (grad_accum x world). Neither sampler keeps a file open between batches (see `ShardStream`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from model.errors import CookError
from model.shards import ShardStream, list_shards

FEISTEL_ROUNDS = 6


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (a run's base seed and a chunk index, ...), stable across runs."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-mixed 64-bit hash (uint64 arithmetic wraps)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class FeistelPermutation:
    """A keyed pseudo-random permutation of range(n), evaluated pointwise: `perm(idx)` for any index array.

    A Feistel network on k = max(2, ceil(log2 n)) bits is a bijection of range(2**k) whatever its round
    function; an index that lands at or above n is sent through again (cycle-walking) until it falls below n,
    which keeps it a bijection of range(n). 2**k < 2n, so that takes under two passes on average.
    """

    def __init__(self, n: int, key: int):
        if n < 1:
            raise ValueError("permutation of an empty range")
        self.n = int(n)
        self.bits = max(2, (self.n - 1).bit_length())
        self.lo_bits = self.bits // 2  # each round: (hi, lo) -> (lo, hi ^ F(lo)), hi having bits - lo_bits bits
        self.hi_bits = self.bits - self.lo_bits
        self.keys = [np.uint64(derive_seed(key, "feistel", r)) for r in range(FEISTEL_ROUNDS)]

    def _rounds(self, x: np.ndarray) -> np.ndarray:
        lo_mask = np.uint64((1 << self.lo_bits) - 1)
        hi_mask = np.uint64((1 << self.hi_bits) - 1)
        lo_shift, hi_shift = np.uint64(self.lo_bits), np.uint64(self.hi_bits)
        for k in self.keys:
            hi, lo = x >> lo_shift, x & lo_mask
            f = _mix64(lo + k) & hi_mask  # uint64 arithmetic wraps
            x = (lo << hi_shift) | (hi ^ f)  # new layout: old lo on top, mixed hi below
        return x

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n):
            raise ValueError(f"index out of range({self.n})")
        x = self._rounds(idx.astype(np.uint64))
        out = x >= np.uint64(self.n)
        while out.any():  # cycle-walk the few that left range(n)
            x[out] = self._rounds(x[out])
            out = x >= np.uint64(self.n)
        return x.astype(np.int64)


def _to_device(xy: np.ndarray, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and targets of (rows, block_size + 1) tokens as two contiguous int64 tensors on `device`.

    On CUDA the contiguous copies are pinned, then copied without blocking the host.
    """
    x = torch.from_numpy(np.ascontiguousarray(xy[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(xy[:, 1:]))
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x, y


def _stream(data_dir: Path, split: str) -> ShardStream:
    paths = list_shards(data_dir, split)
    if not paths:
        raise CookError(f"{data_dir}: no {split} shards (run `cook tokenize`)")
    return ShardStream(paths)


class _SplitBatches:
    """What both samplers hold: one split's shards as a stream, and the batch shape."""

    def __init__(self, data_dir: str | os.PathLike, split: str, block_size: int, batch_size: int, micro_per_iter: int = 1):
        self.data_dir = Path(data_dir)
        self.split = split
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        self.micro_per_iter = int(micro_per_iter)
        if self.block_size < 1 or self.batch_size < 1 or self.micro_per_iter < 1:
            raise CookError(f"block size, batch size and micro-steps per iteration must be at least 1 "
                            f"(got {self.block_size}, {self.batch_size}, {self.micro_per_iter})")
        self.stream = _stream(self.data_dir, split)


class EpochBatches(_SplitBatches):
    """(x, y) windows of `block_size` tokens, each window once per epoch in a per-(seed, epoch) order."""

    def __init__(self, data_dir: str | os.PathLike, split: str, block_size: int, batch_size: int, micro_per_iter: int = 1):
        super().__init__(data_dir, split, block_size, batch_size, micro_per_iter)
        self.tokens = self.stream.tokens
        self.windows = (self.tokens - 1) // self.block_size if self.tokens else 0
        if self.windows < 1:
            raise CookError(
                f"{self.data_dir}: {split} split is too short for block size {self.block_size} "
                f"(holds {self.tokens} tokens; need at least {self.block_size + 1})"
            )
        self._perms: dict[tuple[int, int], FeistelPermutation] = {}

    def _perm(self, seed: int, epoch: int) -> FeistelPermutation:
        key = (int(seed), int(epoch))
        if key not in self._perms:
            if len(self._perms) > 4:  # a batch touches at most two epochs; keep a few
                self._perms.clear()
            self._perms[key] = FeistelPermutation(self.windows, derive_seed(seed, "epoch", epoch))
        return self._perms[key]

    def window_ids(self, seed: int, iteration: int, micro: int = 0) -> np.ndarray:
        """The window index of each row of the batch for (seed, iteration, micro)."""
        if not 0 <= micro < self.micro_per_iter:
            raise ValueError(f"micro-step {micro} outside 0..{self.micro_per_iter - 1}")
        first = (int(iteration) * self.micro_per_iter + int(micro)) * self.batch_size
        rows = np.arange(first, first + self.batch_size, dtype=np.int64)
        epoch, pos = rows // self.windows, rows % self.windows
        out = np.empty_like(rows)
        for e in np.unique(epoch).tolist():
            sel = epoch == e
            out[sel] = self._perm(seed, e)(pos[sel])
        return out

    def batch(self, seed: int, iteration: int, micro: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, block_size) int64, on `device`."""
        starts = self.window_ids(seed, iteration, micro) * self.block_size
        return _to_device(self.stream.read(starts, self.block_size + 1), device)

    def epochs(self, iterations_done: int) -> float:
        """Epochs of this split seen after `iterations_done` iterations (windows drawn / windows)."""
        return int(iterations_done) * self.micro_per_iter * self.batch_size / self.windows


class TokenBatches(_SplitBatches):
    """Random (x, y) windows of `block_size` tokens from one split of a tokenized data folder."""

    def __init__(self, data_dir: str | os.PathLike, split: str, block_size: int, batch_size: int, micro_per_iter: int = 1):
        super().__init__(data_dir, split, block_size, batch_size, micro_per_iter)
        counts = self.stream.counts
        # a window needs block_size + 1 tokens (inputs and the shifted targets) inside one shard
        usable = np.maximum(0, counts - self.block_size)
        if usable.sum() == 0:
            raise CookError(
                f"{self.data_dir}: {split} shards are too short for block size {self.block_size} "
                f"(longest holds {int(counts.max())} tokens; need at least {self.block_size + 1})"
            )
        self.shard_starts = self.stream.starts[:-1][usable > 0]  # stream offset of each usable shard
        self.usable = usable[usable > 0]
        self.cum = np.cumsum(self.usable)
        self.tokens = self.stream.tokens

    def offsets(self, seed: int, iteration: int, micro: int = 0) -> list[tuple[int, int]]:
        """(usable shard index, start offset) of each row of the batch for (seed, iteration, micro)."""
        rng = np.random.default_rng([int(seed), int(iteration), int(micro)])
        # one uniform draw over all windows of all shards = token-weighted shard choice + uniform offset
        flat = rng.integers(0, int(self.cum[-1]), size=self.batch_size)
        which = np.searchsorted(self.cum, flat, side="right")
        starts = flat - np.concatenate(([0], self.cum[:-1]))[which]
        return [(int(w), int(s)) for w, s in zip(which, starts)]

    def batch(self, seed: int, iteration: int, micro: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, block_size) int64, on `device`."""
        starts = [int(self.shard_starts[w]) + s for w, s in self.offsets(seed, iteration, micro)]
        return _to_device(self.stream.read(starts, self.block_size + 1), device)

    def epochs(self, iterations_done: int) -> float:
        """Epochs' worth of input tokens drawn after `iterations_done` iterations (draws x block_size / tokens).

        Windows are drawn with replacement, so after one "epoch" about 1/e of the tokens are still unseen.
        """
        return int(iterations_done) * self.micro_per_iter * self.batch_size * self.block_size / self.tokens
