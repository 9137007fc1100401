"""`cook sample`: text from a trained model (a run's latest checkpoint, or a given checkpoint folder)."""

from __future__ import annotations

import os

import torch

from model.checkpoint import MODEL_FILE, load_model_file, read_config, resolve_checkpoint
from model.errors import CookError
from model.export import checkpoint_tokenizer
from model.gpt import GPT, GPTConfig
from model.precision import autocast, resolve_dtype
from model.train import resolve_device


def load_for_sampling(target: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode on `device`, tokenizer, checkpoint folder) for a run or checkpoint folder."""
    ckpt = resolve_checkpoint(target)
    cfg = read_config(ckpt)
    model = GPT(GPTConfig.from_dict(cfg["model"]))
    load_model_file(ckpt / MODEL_FILE, model)
    model.to(device).eval()
    tok = checkpoint_tokenizer(ckpt, target, cfg)  # the run's tokenizer/ copy, checked against the recorded hash
    if tok.vocab_size != model.config.vocab_size:
        raise CookError(f"{ckpt}: tokenizer has {tok.vocab_size} ids, the model {model.config.vocab_size}")
    return model, tok, ckpt


def sample_ids(
    target: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    device: str = "auto",
):
    """(tokenizer, prompt ids, generated ids): what `sample_text` decodes. An empty prompt starts a new
    document (the prompt ids are then just the end-of-text id)."""
    dev = resolve_device(device)
    model, tok, _ = load_for_sampling(target, dev)
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.eot_id]
    idx = torch.tensor([ids], dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    with autocast(dev, resolve_dtype("auto", dev)):  # bf16 where the GPU has it, fp16 on older ones, float32 on CPU
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return tok, ids, out[0, len(ids):].tolist()


def sample_text(
    target: str,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    seed: int = 1337,
    device: str = "auto",
) -> str:
    """The prompt followed by `max_new_tokens` generated tokens, decoded in whole characters (a character
    the last token leaves unfinished is dropped, never shown as U+FFFD); the same seed gives the same text."""
    tok, _, new = sample_ids(target, prompt, max_new_tokens, temperature, top_k, top_p, seed, device)
    return prompt + tok.decode(new)
