"""`cook export --format hf`: the folder transformers loads computes what cook's GPT computes.

Tiny runs trained here on a small text with multi-byte characters (gpt2 and a trained bpe:300 encoding) are
exported, loaded with `AutoModelForCausalLM` / `AutoTokenizer`, and compared: logits to 1e-4, greedy
generation token for token against `cook sample --temperature 0`'s code path, tokenizer ids on text.
The push goes to a loopback fake Hub (tests/fixtures_hub.py) through huggingface_hub.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from chardata import make_char_data
from fixtures_hub import FakeHub

from flows.export import check_export_args, push_folder
from flows.sample import load_for_sampling, sample_ids
from model.atomic import atomic_write_text
from model.checkpoint import CHECKPOINTS, list_checkpoints, save_checkpoint
from model.errors import CookError
from model.export import PROVENANCE, export_hf
from model.gpt import GPT, GPTConfig
from model.tokenizer import load_tokenizer
from model.train import train_worker
from tasks.core.settings import get_settings
from tasks.corpus.tokenize import tokenize_corpus

transformers = pytest.importorskip("transformers")

WORDS = ("the cat sat on a mat and the dog ran far , café naïve résumé über straße 日本 語 € 12 euros "
         "don't stop ! 😀 DON'T 3.14159").split()
TEXTS = ["the cat sat on the mat. café über 日本語 — €12, don't!",
         "  Hello world's  test\n\n  x 12345 ...!!\r\n tab\tend   ",
         "naïve 😀😀 résumé DON'T straße\n\n\n"]
ITERS = 10  # per chunk, two chunks


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """encoding -> a run trained 2 chunks x ITERS iterations on the same small corpus (the plain loop, no Prefect)."""
    root = tmp_path_factory.mktemp("export")
    rng = np.random.default_rng(0)
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i:02d}.txt").write_text(" ".join(rng.choice(WORDS, 300)) + ".\n", encoding="utf-8")
    out = {}
    for enc in ("bpe:300", "gpt2"):
        name = enc.replace(":", "")
        data = tokenize_corpus([corpus], encoding=enc, out=root / f"tokens-{name}", val_fraction=0.25, num_threads=1)
        train_worker(str(data), str(root / f"run-{name}"), chunks=2, iters_per_chunk=ITERS, eval_interval=ITERS,
                     eval_iters=1, sample_tokens=0, device="cpu")
        out[enc] = root / f"run-{name}"
    return out


def _load_hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("encoding", ["bpe:300", "gpt2"])
def test_transformers_computes_what_cook_computes(runs, encoding, tmp_path):
    """Logits to 1e-4, greedy generation token for token with `cook sample --temperature 0`, the same token ids."""
    run = runs[encoding]
    summary = export_hf(run, tmp_path / "hf")
    ckpt = Path(summary["checkpoint"])
    model, tok, _ = load_for_sampling(ckpt, "cpu")
    hf, hf_tok = _load_hf(tmp_path / "hf")
    assert type(hf).__name__ == "GPT2LMHeadModel" and hf.dtype == torch.float32
    assert hf.config.vocab_size == tok.vocab_size and hf.config.eos_token_id == tok.eot_id

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, tok.vocab_size, (2, model.config.block_size), generator=g)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)

    # greedy: the ids `cook sample --temperature 0` generates (its code path), and transformers' generate()
    n = 40
    _, prompt_ids, ours_new = sample_ids(str(ckpt), "the cat sat", n, temperature=0.0, device="cpu")
    out = hf.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                      pad_token_id=tok.eot_id)
    assert out[0, len(prompt_ids):].tolist() == ours_new and len(ours_new) == n

    # the tokenizer gives cook's ids and decodes them back to the text
    for text in TEXTS:
        ids = tok.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == text
    assert hf_tok.eos_token == "<|endoftext|>" and hf_tok.convert_tokens_to_ids("<|endoftext|>") == tok.eot_id


def test_run_exports_its_best_checkpoint_else_latest(runs, tmp_path):
    run = runs["bpe:300"]
    found = list_checkpoints(run)
    assert len(found) >= 2
    (first_iter, first), (last_iter, last) = found[0], found[-1]
    best = run / CHECKPOINTS / "best.json"
    saved = best.read_text() if best.is_file() else None
    try:
        atomic_write_text(best, json.dumps({"name": first.name, "val_loss": 0.1, "iteration": first_iter}))
        s = export_hf(run, tmp_path / "hf")
        assert (s["checkpoint"], s["iteration"]) == (str(first), first_iter)
        assert json.loads((tmp_path / "hf" / PROVENANCE).read_text())["checkpoint"] == first.name
        best.unlink()
        s = export_hf(run, tmp_path / "hf")  # an earlier export is replaced whole
        assert (s["checkpoint"], s["iteration"]) == (str(last), last_iter)
        assert export_hf(last, tmp_path / "hf2")["checkpoint"] == str(last)  # a checkpoint folder: itself
    finally:
        if saved is not None:
            atomic_write_text(best, saved)


def _run_with(root: Path, tok_dir: Path, model: GPT) -> Path:
    """A run folder holding one checkpoint of `model` with the tokenizer in `tok_dir`."""
    tok = load_tokenizer(tok_dir)
    run = root / "run"
    shutil.copytree(tok_dir, run / "tokenizer")
    (run / "run.json").write_text("{}\n")
    ident = {"encoding": tok.name, "name": tok.name, "hash": tok.hash}
    save_checkpoint(run / CHECKPOINTS / "chunk_000001", model, None, {"iteration": 1},
                    {"model": model.config.to_dict(), "tokenizer": ident})
    return run


def test_exact_with_biases_and_large_activations(runs, tmp_path):
    """A model with biases and weights far from their init (activations of order 1, where the GELU variants and
    the LayerNorm epsilon show) computes the same logits through transformers."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, n_layer=2, n_head=4, n_embd=32, block_size=32, bias=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    run = _run_with(tmp_path, runs["bpe:300"] / "tokenizer", model)
    export_hf(run, tmp_path / "hf")
    hf, _ = _load_hf(tmp_path / "hf")
    x = torch.randint(0, 300, (3, 32), generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(x).logits
    assert ours.abs().max() > 1.0  # logits far from uniform
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=0)


def test_refusals_and_bad_input_are_one_line(runs, tmp_path, cook):
    chars = make_char_data(tmp_path / "chars", n_words=200)
    tiny = dict(n_layer=1, n_head=2, n_embd=16, block_size=16)
    char_run = _run_with(tmp_path / "c", chars / "tokenizer", GPT(GPTConfig(vocab_size=load_tokenizer(chars).vocab_size, **tiny)))
    rope_run = _run_with(tmp_path / "r", runs["bpe:300"] / "tokenizer", GPT(GPTConfig(vocab_size=300, rope=True, **tiny)))
    out = str(tmp_path / "out")
    cases = [
        ((str(char_run), "hf", out), "cannot export a char tokenizer"),
        ((str(rope_run), "hf", out), "cannot export a RoPE model"),
        ((str(tmp_path / "nope"), "hf", out), "no such run or checkpoint"),
        ((str(tmp_path / "chars"), "hf", out), "no checkpoint found"),
        ((str(runs["bpe:300"]), "onnx", out), "unknown export format 'onnx'"),
        ((str(runs["bpe:300"]), "hf", str(chars / "meta.json")), "is a file"),
        ((str(runs["bpe:300"]), "hf", str(chars)), "not an earlier cook export"),
    ]
    for args, message in cases:
        with pytest.raises(CookError, match=message) as e:
            check_export_args(*args)
        assert "\n" not in str(e.value)
    for run, message in cases[:2]:
        with pytest.raises(CookError, match=message):
            export_hf(run[0], tmp_path / "out")
    assert not (tmp_path / "out").exists() and (chars / "meta.json").is_file()
    with pytest.raises(CookError, match="not a Hub repo id"):
        check_export_args(str(runs["bpe:300"]), "hf", out, "a/b/c")

    r = cook(["export", str(char_run), "--out", out])
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().startswith("error: cannot export a char tokenizer") and r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stdout + r.stderr


def test_push_to_hub_cli_sends_the_token_to_the_hub_only(runs, tmp_path, cook, cook_env):
    """`cook export --push-to-hub` lands the files in a model repo on the (fake) Hub of COOK_HF_ENDPOINT; the
    token goes with every request there, to no other origin (no token reaches HF_ENDPOINT's), and is never printed."""
    token, other = f"hf_{uuid.uuid4().hex}", f"hf_{uuid.uuid4().hex}"
    out = tmp_path / "hf"
    with FakeHub(tmp_path / "hub", tokens={token: "alice"}) as hub, FakeHub(tmp_path / "decoy") as decoy:
        env = {**cook_env, "COOK_HF_ENDPOINT": hub.url, "COOK_HF_TOKEN": token, "HF_ENDPOINT": decoy.url, "HF_TOKEN": other}
        r = cook(["export", str(runs["bpe:300"]), "--out", str(out), "--push-to-hub", "alice/tiny-cook"], env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert f"pushed: {hub.url}/alice/tiny-cook" in r.stdout
        assert token not in r.stdout + r.stderr
        repo = hub.models / "alice" / "tiny-cook"
        sent = sorted(p.name for p in out.iterdir())
        assert sent == sorted(p.name for p in repo.iterdir() if p.name != ".visibility")
        assert all((repo / n).read_bytes() == (out / n).read_bytes() for n in sent)
        assert hub.auth and {h for _, h in hub.auth} == {f"Bearer {token}"}
        # huggingface_hub may fetch public data from its own HF_ENDPOINT (an agent-harness registry), never with a token
        assert all(h is None for _, h in decoy.auth), decoy.auth

        # a token the Hub rejects: one line, exit 1, the token not shown
        env["COOK_HF_TOKEN"] = other
        r = cook(["export", str(runs["bpe:300"]), "--out", str(out), "--push-to-hub", "alice/tiny-cook"], env=env)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 1 and last.startswith("error: push to") and "HTTP 401" in last, r.stderr[-3000:]
        assert other not in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_push_again_and_private(runs, tmp_path, monkeypatch):
    """Pushing to an existing repo adds a commit (create_repo's 409 is fine); --private creates a private repo."""
    token = f"hf_{uuid.uuid4().hex}"
    export_hf(runs["bpe:300"], tmp_path / "hf")
    with FakeHub(tmp_path / "hub", tokens={token: "bob"}) as hub:
        monkeypatch.setenv("COOK_HF_ENDPOINT", hub.url)
        monkeypatch.setenv("COOK_HF_TOKEN", token)
        get_settings.cache_clear()
        try:
            first = push_folder(tmp_path / "hf", "tiny", private=True)  # no namespace: the token's user
            assert first["repo"] == "bob/tiny" and (hub.models / "bob" / "tiny" / ".visibility").read_text() == "private"
            (tmp_path / "hf" / "notes.txt").write_text("tiny\n")
            again = push_folder(tmp_path / "hf", "bob/tiny")
            assert again["commit"] != first["commit"] and (hub.models / "bob" / "tiny" / "notes.txt").is_file()
        finally:
            get_settings.cache_clear()
