"""Named model shapes with their training defaults.

- tiny:      the CPU demo; one training iteration takes well under 0.1 s on 2 CPU cores with a 50k vocab.
- bench:     the shape nanoGPT's speed is measured at (4 layers, 256 wide, 256 context).
- seed:      a 12-layer, 512-wide model with 256 context (a small real run on one GPU).
- gpt2-124m: GPT-2 small, nanoGPT's OpenWebText reproduction settings.
- demo:      `cook demo`'s model for a 1k-id BPE of Python's help topics (~110k train tokens): 2 layers,
             128 wide; 1,600 iterations take under 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

from typing import Any

from model.errors import CookError
from model.gpt import GPTConfig

_TRAIN_DEFAULTS: dict[str, Any] = dict(
    batch_size=8, grad_accum=1, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=5000,
    weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0, eval_interval=100, eval_iters=100,
)

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model=dict(n_layer=2, n_head=2, n_embd=64, block_size=64, dropout=0.0),
        # 128 tokens a step: ~45 ms fwd+bwd+AdamW on 2 CPU cores with a 50k vocab (the output head dominates)
        train=dict(batch_size=2, learning_rate=1e-3, min_lr=1e-4, warmup_iters=20, max_iters=500),
    ),
    "bench": dict(
        model=dict(n_layer=4, n_head=4, n_embd=256, block_size=256, dropout=0.0),
        train=dict(batch_size=8, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100, max_iters=2000),
    ),
    "seed": dict(
        model=dict(n_layer=12, n_head=8, n_embd=512, block_size=256, dropout=0.2),
        train=dict(batch_size=10, learning_rate=3e-4, min_lr=3e-5, warmup_iters=200, max_iters=5000),
    ),
    "gpt2-124m": dict(
        model=dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, dropout=0.0),
        train=dict(batch_size=12, grad_accum=40, learning_rate=6e-4, min_lr=6e-5, warmup_iters=2000,
                   max_iters=600000, weight_decay=0.1, betas=(0.9, 0.95), grad_clip=1.0),
    ),
    "demo": dict(
        model=dict(n_layer=2, n_head=2, n_embd=128, block_size=128, dropout=0.0),
        # 2,048 tokens a step: ~60 ms fwd+bwd+AdamW on 2 CPU cores with a 1k vocab. 1,600 steps are ~30 passes
        # over the corpus: the strong weight decay is what keeps the model from just memorizing it (dropout
        # was worse at this budget; more layers or width memorize faster).
        train=dict(batch_size=16, learning_rate=2e-3, min_lr=2e-4, warmup_iters=50, max_iters=1600, weight_decay=1.0),
    ),
}


def get_preset(name: str, vocab_size: int) -> tuple[GPTConfig, dict[str, Any]]:
    """The model config of preset `name` for a tokenizer of `vocab_size` ids, and its training
    defaults: batch_size, grad_accum, learning_rate, min_lr, warmup_iters, max_iters, weight_decay,
    betas, grad_clip, eval_interval, eval_iters."""
    if name not in PRESETS:
        raise CookError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config = GPTConfig(vocab_size=vocab_size, **preset["model"])
    train = {**_TRAIN_DEFAULTS, **preset["train"]}
    return config, train
