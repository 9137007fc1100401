"""Small char-tokenized data folders for training tests, written by hand (shards, tokenizer/, meta.json)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.shards import write_meta, write_shard
from model.tokenizer import CharTokenizer

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "a", "big", "red", "hat"]


def make_char_data(out: Path, seed: int = 0, n_words: int = 6000, val_share: float = 0.1, extra_chars: str = "") -> Path:
    """Random sentences of WORDS, char-tokenized; the last `val_share` of the tokens is the val split."""
    rng = np.random.default_rng(seed)
    text = " ".join(rng.choice(WORDS, size=n_words)) + "."
    tok = CharTokenizer(sorted(set(text + extra_chars)))
    ids = tok.encode_array(text).astype(np.uint16)
    cut = int(len(ids) * (1 - val_share))
    out.mkdir(parents=True, exist_ok=True)
    write_shard(out / "train_000000.bin", ids[:cut])
    write_shard(out / "val_000000.bin", ids[cut:])
    tok.save(out / "tokenizer")
    write_meta(out, {
        "format": 1, "encoding": "char", "vocab_size": tok.vocab_size, "eot_id": tok.eot_id, "dtype": "uint16",
        "splits": {"train": {"shards": ["train_000000.bin"], "tokens": cut, "documents": 1, "bytes": cut},  # ASCII: a byte a token
                   "val": {"shards": ["val_000000.bin"], "tokens": len(ids) - cut, "documents": 1, "bytes": len(ids) - cut}},
        "fingerprint": f"{tok.hash[:16]}-{seed}-{n_words}", "tokenizer": {"name": "char", "dir": "tokenizer", "hash": tok.hash},
    })
    return out
