"""`sample_text` on a tiny trained run: starts with the prompt, deterministic with a seed."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import CookError
from model.shards import write_meta, write_shard
from model.tokenizer import CharTokenizer
from model.train import train_worker
from flows.sample import sample_text

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "big", "red", "hat"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 30 iterations on char data (the plain loop; no Prefect needed)."""
    root = tmp_path_factory.mktemp("sample")
    text = " ".join(np.random.default_rng(0).choice(WORDS, size=4000)) + "."
    tok = CharTokenizer(sorted(set(text)))
    ids = tok.encode_array(text).astype(np.uint16)
    data = root / "tokens"
    write_shard(data / "train_000000.bin", ids[:-2000])
    write_shard(data / "val_000000.bin", ids[-2000:])
    tok.save(data / "tokenizer")
    write_meta(data, {"encoding": "char", "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "dtype": "uint16",
                      "splits": {"train": {"shards": ["train_000000.bin"]}, "val": {"shards": ["val_000000.bin"]}},
                      "fingerprint": "f0", "tokenizer": {"name": "char", "dir": "tokenizer", "hash": tok.hash}})
    out = root / "run"
    train_worker(str(data), str(out), chunks=1, iters_per_chunk=30, eval_interval=30, eval_iters=2, sample_tokens=0)
    return out


def test_sample_starts_with_prompt_and_is_deterministic(run):
    a = sample_text(str(run), prompt="the cat", max_new_tokens=40, seed=1, device="cpu")
    b = sample_text(str(run), prompt="the cat", max_new_tokens=40, seed=1, device="cpu")
    c = sample_text(str(run), prompt="the cat", max_new_tokens=40, seed=2, device="cpu")
    assert a.startswith("the cat") and len(a) >= len("the cat") + 40  # a char (or <|endoftext|>) a token
    assert a == b and a != c
    # a checkpoint folder works as well as a run; greedy decoding needs no seed; an empty prompt is fine
    ckpt = run / "checkpoints" / "chunk_000001"
    g1 = sample_text(str(ckpt), prompt="the ", max_new_tokens=10, temperature=0.0, seed=1)
    g2 = sample_text(str(ckpt), prompt="the ", max_new_tokens=10, temperature=0.0, seed=2)
    assert g1 == g2 and g1.startswith("the ")
    assert len(sample_text(str(run), prompt="", max_new_tokens=5, top_k=None, top_p=0.9)) >= 5


def test_sample_bad_target(tmp_path):
    with pytest.raises(CookError, match="no such run or checkpoint"):
        sample_text(str(tmp_path / "nope"), prompt="x", max_new_tokens=3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CookError, match="no checkpoint found"):
        sample_text(str(tmp_path / "empty"), prompt="x", max_new_tokens=3)
