"""`cook sample`: text from a trained model (a run's latest checkpoint, or a given checkpoint folder)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from model.checkpoint import MODEL_FILE, load_model_file, read_config, resolve_checkpoint
from model.errors import CookError
from model.gpt import GPT, GPTConfig
from model.train import RUN_FILE, TOKENIZER_DIR, resolve_device


def load_for_sampling(target: str | os.PathLike, device: str = "cpu"):
    """(model in eval mode on `device`, tokenizer, checkpoint folder) for a run or checkpoint folder."""
    from model.tokenizer import get_tokenizer, load_tokenizer

    ckpt = resolve_checkpoint(target)
    cfg = read_config(ckpt)
    model = GPT(GPTConfig.from_dict(cfg["model"]))
    load_model_file(ckpt / MODEL_FILE, model)
    model.to(device).eval()
    ident = cfg.get("tokenizer") or {}
    # the run's copy of the tokenizer: RUN/tokenizer beside RUN/checkpoints/<name>
    run_dir = next((p for p in (ckpt.parent.parent, Path(target)) if (p / RUN_FILE).is_file()), None)
    tok_dir = run_dir / TOKENIZER_DIR if run_dir is not None else None
    if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():
        tok = load_tokenizer(tok_dir)
    elif ident.get("encoding") and ident["encoding"] not in ("char",) and not str(ident["encoding"]).startswith("bpe"):
        tok = get_tokenizer(ident["encoding"])
    else:
        raise CookError(f"{ckpt}: its run's tokenizer/ folder is missing (needed for encoding {ident.get('encoding')})")
    if ident.get("hash") and tok.hash != ident["hash"]:
        raise CookError(f"{ckpt}: the tokenizer found does not match the one the model was trained with")
    if tok.vocab_size != model.config.vocab_size:
        raise CookError(f"{ckpt}: tokenizer has {tok.vocab_size} ids, the model {model.config.vocab_size}")
    return model, tok, ckpt


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
    """The prompt followed by `max_new_tokens` generated tokens; the same seed gives the same text."""
    dev = resolve_device(device)
    model, tok, _ = load_for_sampling(target, dev)
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.eot_id]  # an empty prompt starts a new document
    idx = torch.tensor([ids], dtype=torch.long, device=dev)
    gen = torch.Generator(device=dev).manual_seed(int(seed))
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else torch.autocast("cpu", enabled=False)
    with ctx:
        out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, generator=gen)
    return prompt + tok.decode(out[0, len(ids):].tolist())
