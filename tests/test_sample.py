"""`sample_text` on a tiny trained run: starts with the prompt, deterministic with a seed."""

from __future__ import annotations

import pytest
from chardata import make_char_data

from flows.sample import sample_text
from model.errors import CookError
from model.train import train_worker


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 30 iterations on char data (the plain loop; no Prefect needed)."""
    root = tmp_path_factory.mktemp("sample")
    data = make_char_data(root / "tokens", n_words=4000, val_share=0.12)
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


def test_decode_gives_whole_characters():
    """A byte-level BPE splits rare multi-byte characters across tokens; decoding any prefix of the ids (a sample
    cut anywhere) gives whole characters only, never U+FFFD, and a character left unfinished is dropped."""
    from model.tokenizer import train_bpe

    text = "a price of 12 € in 日本, 😀 and café. "
    tok = train_bpe(["the cat sat on the mat. " * 50 + "café " * 20 + text], 280)  # few merges: rare characters stay split
    ids = tok.encode(text)
    partial = [i for i in ids if not _is_utf8(tok.decode_bytes([i]))]
    assert len(partial) >= 6  # tokens holding part of a character: "€", "日", "本" and "😀" are split
    for k in range(len(ids) + 1):
        raw = tok.decode_bytes(ids[:k])
        whole = ""  # the longest prefix of the text that the bytes so far hold whole
        for ch in text:
            if len((whole + ch).encode()) > len(raw):
                break
            whole += ch
        assert tok.decode(ids[:k]) == whole, k
    assert tok.decode(ids) == text
    # a character the model starts and never finishes is dropped; what follows stays
    assert tok.decode(tok.encode("€")[:1] + tok.encode(" ok")) == " ok"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
