"""Stateless random batches from token shards.

A batch is a pure function of (seed, iteration, micro-step): it is drawn with
`np.random.default_rng([seed, iteration, micro])`, so the "data cursor" of a run is just its
iteration number and a resumed run sees exactly the batches an uninterrupted one would have.
Offsets are uniform over every usable window of every shard (shards weighted by their size).

Under DDP, rank `r` with `g` micro-steps per rank takes micro-steps `r*g .. r*g+g-1`, so one
iteration sees the same data whatever the number of processes.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from model.errors import CookError
from model.shards import list_shards, read_shard


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any parts (a run's base seed and a chunk index, ...), stable across runs."""
    h = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class TokenBatches:
    """Random (x, y) windows of `block_size` tokens from one split of a tokenized data folder."""

    def __init__(self, data_dir: str | os.PathLike, split: str, block_size: int, batch_size: int):
        self.data_dir = Path(data_dir)
        self.split = split
        self.block_size = int(block_size)
        self.batch_size = int(batch_size)
        paths = list_shards(self.data_dir, split)
        if not paths:
            raise CookError(f"{self.data_dir}: no {split} shards (run `cook tokenize`)")
        shards = [read_shard(p) for p in paths]
        # a window needs block_size + 1 tokens (inputs and the shifted targets)
        usable = np.array([max(0, len(s) - self.block_size) for s in shards], dtype=np.int64)
        if usable.sum() == 0:
            longest = max(len(s) for s in shards)
            raise CookError(
                f"{self.data_dir}: {split} shards are too short for block size {self.block_size} "
                f"(longest holds {longest} tokens; need at least {self.block_size + 1})"
            )
        self.shards = [s for s, u in zip(shards, usable) if u > 0]
        self.usable = usable[usable > 0]
        self.cum = np.cumsum(self.usable)
        self.tokens = int(sum(len(s) for s in shards))

    def offsets(self, seed: int, iteration: int, micro: int = 0) -> list[tuple[int, int]]:
        """(shard index, start offset) of each row of the batch for (seed, iteration, micro)."""
        rng = np.random.default_rng([int(seed), int(iteration), int(micro)])
        # one uniform draw over all windows of all shards = token-weighted shard choice + uniform offset
        flat = rng.integers(0, int(self.cum[-1]), size=self.batch_size)
        which = np.searchsorted(self.cum, flat, side="right")
        starts = flat - np.concatenate(([0], self.cum[:-1]))[which]
        return [(int(w), int(s)) for w, s in zip(which, starts)]

    def batch(self, seed: int, iteration: int, micro: int = 0, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-token targets, each (batch_size, block_size) int64, on `device`."""
        rows = np.stack(
            [np.asarray(self.shards[w][s : s + self.block_size + 1], dtype=np.int64) for w, s in self.offsets(seed, iteration, micro)]
        )
        xy = torch.from_numpy(rows)
        x, y = xy[:, :-1], xy[:, 1:]
        device = torch.device(device)
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.contiguous(), y.contiguous()
