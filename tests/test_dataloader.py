"""Samplers: every window (hence every input token) once per epoch, a fresh order each epoch, pure in
(seed, iteration, micro), rows equal to the token stream across shard ends, and no descriptor held per shard."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from model.dataloader import EpochBatches, FeistelPermutation, TokenBatches
from model.errors import CookError
from model.shards import ShardStream, list_shards, read_shard, write_shard

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


def position_data(folder: Path, sizes: list[int], split: str = "train") -> Path:
    """Shards whose tokens are their own positions in the split's stream (uint32), so a row tells where it came from."""
    folder.mkdir(parents=True, exist_ok=True)
    pos = 0
    for i, n in enumerate(sizes):
        write_shard(folder / f"{split}_{i:06d}.bin", np.arange(pos, pos + n, dtype=np.uint32))
        pos += n
    return folder


def one_epoch(b: EpochBatches, seed: int, epoch: int = 0) -> list[int]:
    """Window ids (read back from the rows' first token) of global rows epoch*W .. (epoch+1)*W-1, in row order."""
    per_iter = b.micro_per_iter * b.batch_size
    first, last = epoch * b.windows, (epoch + 1) * b.windows
    seen = []
    for it in range(first // per_iter, (last - 1) // per_iter + 1):
        for m in range(b.micro_per_iter):
            x, y = b.batch(seed, it, m)
            assert x.shape == y.shape == (b.batch_size, b.block_size) and x.dtype == y.dtype == torch.int64
            assert torch.equal(y, x + 1)  # consecutive stream positions: inputs and their next tokens
            assert torch.equal(x, x[:, :1] + torch.arange(b.block_size))  # contiguous, across shard ends too
            row0 = (it * b.micro_per_iter + m) * b.batch_size
            for r, start in enumerate(x[:, 0].tolist()):
                if first <= row0 + r < last:
                    assert start % b.block_size == 0
                    seen.append(start // b.block_size)
    return seen


# (shard sizes, block size, batch size, micro-steps per iteration): W = (sum - 1) // block
SHAPES = [
    ([50, 0, 31, 7, 100], 4, 3, 2),  # W = 46, not a multiple of 6 rows per iteration; an empty shard
    ([64], 8, 7, 1),  # W = 7: one batch is one epoch
    ([13, 13, 13, 13], 5, 4, 3),  # W = 10: every iteration crosses an epoch
    ([1000, 1, 2, 997], 16, 5, 4),  # W = 124
]


@pytest.mark.parametrize("sizes,block,batch,micro", SHAPES)
def test_every_window_exactly_once_per_epoch(tmp_path, sizes, block, batch, micro):
    data = position_data(tmp_path / "d", sizes)
    b = EpochBatches(data, "train", block, batch, micro)
    assert b.tokens == sum(sizes) and b.windows == (sum(sizes) - 1) // block
    orders = [one_epoch(b, seed=11, epoch=e) for e in range(3)]
    for order in orders:
        assert sorted(order) == list(range(b.windows))  # each window exactly once: every input token once
    if b.windows > 3:
        assert orders[0] != orders[1] and orders[1] != orders[2]  # a fresh order each epoch
    # the same for another seed, in another order
    other = one_epoch(b, seed=12)
    assert sorted(other) == list(range(b.windows)) and (other != orders[0] or b.windows <= 3)


def test_batches_are_pure_in_seed_iteration_micro(tmp_path):
    data = position_data(tmp_path / "d", [300, 200, 500])
    a = EpochBatches(data, "train", 8, 4, 2)
    x1, y1 = a.batch(5, 17, 1)
    x2, y2 = EpochBatches(data, "train", 8, 4, 2).batch(5, 17, 1)  # a "resumed" run: a fresh object
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert a.batch(5, 17, 1)[0].is_contiguous() and a.batch(5, 17, 1)[1].is_contiguous()
    assert not torch.equal(a.batch(6, 17, 1)[0], x1)
    assert not torch.equal(a.batch(5, 18, 1)[0], x1) and not torch.equal(a.batch(5, 17, 0)[0], x1)
    # any access order (a resume at any iteration, ranks taking their own micro-steps) gives the same rows
    fresh = EpochBatches(data, "train", 8, 4, 2)
    backwards = {(i, m): fresh.batch(5, i, m)[0] for i in (300, 3, 2, 1) for m in (1, 0)}
    assert all(torch.equal(x, a.batch(5, i, m)[0]) for (i, m), x in sorted(backwards.items()))
    with pytest.raises(ValueError, match="micro-step 2"):
        a.batch(5, 0, 2)


def test_rows_equal_the_concatenated_stream(tmp_path):
    """Real token values (uint16, random): each row is the stream slice its window names, across shard ends."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "d"
    folder.mkdir()
    for i, n in enumerate([37, 5, 90, 1, 64]):
        write_shard(folder / f"val_{i:06d}.bin", rng.integers(0, 60000, n, dtype=np.uint16))
    stream = np.concatenate([np.asarray(read_shard(p), dtype=np.int64) for p in list_shards(folder, "val")])
    b = EpochBatches(folder, "val", 10, 3, 1)
    for it in range(10):
        x, y = b.batch(1, it)
        for row, w in enumerate(b.window_ids(1, it).tolist()):
            assert x[row].tolist() == stream[w * 10 : w * 10 + 10].tolist()
            assert y[row].tolist() == stream[w * 10 + 1 : w * 10 + 11].tolist()
    t = TokenBatches(folder, "val", 10, 6)
    x, y = t.batch(2, 3)
    starts = {0: 0, 2: 42, 4: 133}  # usable shards (len > 10): their stream offsets
    usable = [0, 2, 4]
    for row, (w, s) in enumerate(t.offsets(2, 3)):
        at = starts[usable[w]] + s
        assert x[row].tolist() == stream[at : at + 10].tolist() and y[row].tolist() == stream[at + 1 : at + 11].tolist()
    assert ShardStream(list_shards(folder, "val")).read([30, 40], 12).tolist() == [stream[30:42].tolist(), stream[40:52].tolist()]


def test_epochs_counts_rows_over_windows(tmp_path):
    data = position_data(tmp_path / "d", [401])  # W = 100 windows of 4
    b = EpochBatches(data, "train", 4, 5, 2)  # 10 rows per iteration
    assert b.epochs(0) == 0 and b.epochs(10) == 1.0 and b.epochs(25) == 2.5
    t = TokenBatches(data, "train", 4, 5, micro_per_iter=2)  # 40 input tokens per iteration over 401 tokens
    assert t.epochs(0) == 0 and t.epochs(401) == pytest.approx(40.0)


def test_short_or_missing_split_is_one_line(tmp_path):
    data = position_data(tmp_path / "d", [3, 2])
    with pytest.raises(CookError, match=r"train split is too short for block size 5 \(holds 5 tokens; need at least 6\)") as e:
        EpochBatches(data, "train", 5, 2)
    assert "\n" not in str(e.value)
    assert EpochBatches(data, "train", 4, 2).windows == 1  # five tokens: one window of 4 inputs (+1 target)
    with pytest.raises(CookError, match="no val shards"):
        EpochBatches(data, "val", 4, 2)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 9, 100, 1023, 1025, 4096, (1 << 20) + 3])
def test_feistel_permutation_is_a_bijection(n):
    p = FeistelPermutation(n, key=42)
    out = p(np.arange(n))
    assert out.min() >= 0 and out.max() < n
    assert np.unique(out).size == n  # every index once
    if n >= 8:
        assert not np.array_equal(out, FeistelPermutation(n, key=43)(np.arange(n)))  # the key matters
        assert not np.array_equal(out, np.arange(n))
    some = np.array([n - 1, 0, n // 2])
    assert p(some).tolist() == out[some].tolist()  # pointwise: any index alone gives the same image


_FD_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from model.dataloader import EpochBatches, TokenBatches
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    data = sys.argv[1]
    e = EpochBatches(data, "train", 16, 32, 2)
    t = TokenBatches(data, "train", 16, 32)
    for it in range(20):  # rows from all over the stream: hundreds of shards per iteration
        for m in range(2):
            x, y = e.batch(3, it, m)
            assert (y == x + 1).all() and (x[:, 0] % 16 == 0).all()
        x, y = t.batch(3, it)
        assert (y == x + 1).all()
    print("ok", len(e.stream.paths))
    """
)


def test_many_shards_with_few_descriptors(tmp_path):
    """1,500 shards read with RLIMIT_NOFILE = 256: a memmap (one descriptor) per shard fails here."""
    folder = tmp_path / "d"
    folder.mkdir()
    pos = 0
    for i in range(1500):  # plain writes (no fsync each): the layout write_shard gives
        n = 17 + i % 5
        header = np.zeros(256, dtype="<i4")
        header[:3] = (20240801, 7, n)
        (folder / f"train_{i:06d}.bin").write_bytes(header.tobytes() + np.arange(pos, pos + n, dtype="<u4").tobytes())
        pos += n
    r = subprocess.run([sys.executable, "-c", _FD_SCRIPT, str(folder)], cwd=REPO, capture_output=True, text=True, timeout=100)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["ok", "1500"]
