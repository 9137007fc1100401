"""DDP on CPU (gloo): 2 processes stay in sync and match one process doing the same micro-batches."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from chardata import make_char_data
from safetensors.torch import load_file

from model.train import train_worker

# dropout on: the masks of micro-step m must not depend on which process computes it (they are reseeded from it)
ARGS = dict(preset="tiny", chunks=2, iters_per_chunk=4, seed=5, grad_accum=2, eval_interval=4, eval_iters=2, dropout=0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, run: str, out: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        summaries = train_worker(data, run, device="cpu", sample_tokens=0, **ARGS)
        Path(out, f"rank{rank}.json").write_text(json.dumps([s["param_digest"] for s in summaries]))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_data(tmp_path_factory.mktemp("ddp") / "tokens", n_words=3000, val_share=0.1)


@pytest.mark.timeout(300)
def assert_matches_one_process(data, run: Path, ref: Path) -> tuple[dict, dict]:
    """One process doing both micro-batches of each step (grad_accum 2) is the same training as `run`, up to float
    sums: train ARGS into `ref` and compare chunk 2's weights. Returns both runs' chunk-2 states."""
    train_worker(str(data), str(ref), device="cpu", sample_tokens=0, **ARGS)
    a = load_file(run / "checkpoints" / "chunk_000002" / "model.safetensors")
    b = load_file(ref / "checkpoints" / "chunk_000002" / "model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert diff < 1e-4, diff
    return tuple(json.loads((d / "checkpoints" / "chunk_000002" / "state.json").read_text()) for d in (run, ref))


def test_two_gloo_ranks_stay_in_sync_and_match_one_process(data, tmp_path):
    run = tmp_path / "ddp-run"
    mp.spawn(_worker, args=(2, _free_port(), str(data), str(run), str(tmp_path)), nprocs=2, join=True)
    d0 = json.loads((tmp_path / "rank0.json").read_text())
    d1 = json.loads((tmp_path / "rank1.json").read_text())
    assert len(d0) == 2 and d0 == d1  # identical weights on both ranks after every chunk

    sa, sb = assert_matches_one_process(data, run, tmp_path / "one-process")
    assert sa["world_size"] == 2 and sb["world_size"] == 1 and sa["tokens_seen"] == sb["tokens_seen"]
    assert sa["val_loss"] == pytest.approx(sb["val_loss"], abs=1e-4)


# the documented torchrun command (torchrun ... -m flows.cli train -- ARGS) is run, and compared with
# `cook train --gpus 2`, by tests/test_train_ops.py::test_gpus_cli_matches_hand_torchrun
