"""The GPT language model: a nanoGPT-class decoder-only transformer in one file.

Pre-norm blocks (LayerNorm -> causal self-attention, LayerNorm -> 4x GELU MLP), tied token
embeddings / output head, GPT-2 init with scaled residual projections, optional RoPE instead of
learned positions, and a preallocated KV cache for generation.

Conventions (callers rely on these):
- `forward(idx)` returns logits for EVERY position (pass `last_only=True` for the last one only);
  the last dimension is always `config.vocab_size` -- the rows the model pads its embedding to
  (a multiple of 64, for fast matmuls) are cut off and can never be predicted or sampled.
- Checkpoints: `state_dict_for_save()` gives plain, unshared tensors for `safetensors` (the tied
  `lm_head.weight` is dropped); `load_state_dict_from_save(sd)` restores the tie.
- Generation with the KV cache gives the same tokens as without it. Once the context is longer
  than `block_size`, the model only sees the last `block_size` tokens, positions restart at 0 for
  that window, and every further step re-runs the whole window (nothing can be reused then).

References: karpathy/nanoGPT model.py (MIT), the GPT-2 paper, RoFormer (RoPE).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.errors import CookError

VOCAB_PAD = 64  # the embedding / output head are padded to a multiple of this


@dataclass
class GPTConfig:
    """Shape of the model. `vocab_size` is the tokenizer's true size (padding is internal)."""

    block_size: int = 256
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = False  # bias in Linear and LayerNorm (GPT-2 had them; without is a bit better and faster)
    rope: bool = False  # rotary position embeddings instead of learned absolute positions
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CookError(f"model config {name} must be a positive integer, got {value!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise CookError(f"model config dropout must be in [0, 1), got {self.dropout!r}")
        if self.n_embd % self.n_head != 0:
            raise CookError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.rope and (self.n_embd // self.n_head) % 2 != 0:
            raise CookError(f"rope needs an even head size, n_embd/n_head is {self.n_embd // self.n_head}")
        if self.rope_theta <= 0:
            raise CookError(f"model config rope_theta must be positive, got {self.rope_theta!r}")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding / output head: vocab_size rounded up to a multiple of 64."""
        return -(-self.vocab_size // VOCAB_PAD) * VOCAB_PAD

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CookError(f"unknown model config keys: {', '.join(unknown)}")
        return cls(**d)


class KVCache:
    """Keys and values of past positions, one preallocated (B, n_head, max_len, head_dim) buffer
    pair per layer, allocated on first write in the dtype the attention produces (bf16 under autocast)."""

    def __init__(self, n_layer: int, max_len: int):
        self.max_len = max_len
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor, start_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, H, T, hs) at positions [start_pos, start_pos+T); return all keys/values so far."""
        if self.k[layer] is None:
            B, H, _, hs = k.shape
            self.k[layer] = k.new_zeros(B, H, self.max_len, hs)
            self.v[layer] = v.new_zeros(B, H, self.max_len, hs)
        end = start_pos + k.size(2)
        self.k[layer][:, :, start_pos:end] = k
        self.v[layer][:, :, start_pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


def rope_tables(config: GPTConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (block_size, head_dim/2) for rotary embeddings."""
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, half, dtype=torch.float32) / half))
    angles = torch.outer(torch.arange(config.block_size, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + hs/2]) of x (B, H, T, hs) by the angles of its positions (T, hs/2)."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v of all heads
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        dropout_p = self.dropout if self.training else 0.0
        if kv_cache is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            k, v = kv_cache.update(self.layer, k, v, start_pos)
            if T == 1:
                # one new query attends to every cached key (is_causal would align top-left and hide them)
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
            elif start_pos == 0:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                # chunk after a prefix: query i (at start_pos+i) sees keys 0..start_pos+i (bottom-right aligned)
                mask = torch.ones(T, start_pos + T, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rope=None, kv_cache: KVCache | None = None, start_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, kv_cache, start_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model. Parameter names follow nanoGPT (stable checkpoint keys)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
        )
        if not config.rope:
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        if config.rope:
            cos, sin = rope_tables(config)
            # not persistent: derived from the config, so not part of checkpoints
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of the residual projections (GPT-2)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; non_embedding subtracts the learned position table (the token table
        counts, as it is also the output head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None,
                start_pos: int = 0, last_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids at positions start_pos..start_pos+T-1 -> (logits, loss).

        logits are (B, T, vocab_size), or (B, 1, vocab_size) with last_only; loss is the mean
        cross-entropy against targets (B, T) (ids of -1 are ignored), or None without targets.
        With a kv_cache, the keys/values of these positions are stored and earlier ones reused.
        """
        B, T = idx.size()
        if start_pos + T > self.config.block_size:
            raise ValueError(f"cannot forward positions up to {start_pos + T}, block size is only {self.config.block_size}")
        x = self.transformer.wte(idx)
        rope = None
        if self.config.rope:
            rope = (self.rope_cos[start_pos:start_pos + T], self.rope_sin[start_pos:start_pos + T])
        else:
            x = x + self.transformer.wpe(torch.arange(start_pos, start_pos + T, device=idx.device))
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, rope, kv_cache, start_pos)
        x = self.transformer.ln_f(x)
        if last_only and targets is None:
            x = x[:, [-1], :]
        logits = self.lm_head(x)
        V = self.config.vocab_size
        loss = None
        if targets is not None:
            if V != logits.size(-1):
                # padded ids must get no probability; masking in place keeps the matmul output contiguous
                logits[..., V:] = float("-inf")
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits[..., :V], loss

    def state_dict_for_save(self) -> dict[str, torch.Tensor]:
        """Unshared, contiguous tensors for safetensors: the tied `lm_head.weight` is left out."""
        sd = self.state_dict()
        sd.pop("lm_head.weight", None)
        return {k: v.detach().contiguous() for k, v in sd.items()}

    def load_state_dict_from_save(self, sd: dict[str, torch.Tensor]) -> None:
        """Load tensors written from `state_dict_for_save()` (restores the tied output head)."""
        sd = dict(sd)
        if "transformer.wte.weight" in sd:
            sd["lm_head.weight"] = sd["transformer.wte.weight"]
        expected = self.state_dict()
        missing = sorted(set(expected) - set(sd))
        unexpected = sorted(set(sd) - set(expected))
        if missing or unexpected:
            raise CookError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        for k, v in sd.items():
            if v.shape != expected[k].shape:
                raise CookError(f"checkpoint does not match the model: {k} has shape {tuple(v.shape)}, "
                                f"the model expects {tuple(expected[k].shape)}")
        self.load_state_dict(sd, strict=True)

    def configure_optimizer(self, weight_decay: float, learning_rate: float, betas: tuple[float, float],
                            device_type: str) -> torch.optim.AdamW:
        """AdamW with weight decay on matrices and embeddings only (dim >= 2), none on biases and
        norms; the fused kernel on CUDA."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        extra = {"fused": True} if device_type == "cuda" and torch.cuda.is_available() else {}
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, **extra)

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: float | None = None) -> float | None:
        """Model flops utilization: achieved flops (PaLM appendix B estimate) over the device's
        16-bit peak, for `fwdbwd_per_iter` sequences of block_size tokens taking `dt` seconds; None when the
        peak is unknown."""
        cfg = self.config
        N = self.num_params()
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.head_dim, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        peak = peak_flops or device_peak_flops()
        return flops_per_iter / dt / peak if peak else None

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None,
                 eot_id: int | None = None) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

        temperature 0 picks the most likely token; otherwise sample (with `generator` if given,
        for reproducible output) after top-k and nucleus (top-p) filtering. With eot_id, stop once
        every row has produced it (rows that finished earlier are padded with eot_id). Runs in
        eval mode and restores the previous mode. use_cache=True prefills the prompt once and then
        feeds one token at a time; the result is the same tokens as use_cache=False.
        """
        _check_sampling(max_new_tokens, temperature, top_k, top_p)
        if idx.dim() != 2 or idx.size(1) == 0:
            raise CookError("generate needs a non-empty prompt of shape (batch, tokens)")
        bs = self.config.block_size
        was_training = self.training
        self.eval()
        try:
            done = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
            cache, pos = None, 0  # pos: tokens of idx already in the cache
            for _ in range(max_new_tokens):
                if use_cache and idx.size(1) <= bs:
                    if cache is None:  # prefill
                        cache = KVCache(self.config.n_layer, bs)
                        logits, _ = self(idx, kv_cache=cache, start_pos=0, last_only=True)
                    else:  # decode the newest token against the cache
                        logits, _ = self(idx[:, pos:], kv_cache=cache, start_pos=pos, last_only=True)
                    pos = idx.size(1)
                else:  # no cache, or the context outgrew block_size: re-run the last block_size tokens
                    logits, _ = self(idx[:, -bs:], last_only=True)
                nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
                if eot_id is not None:
                    nxt = torch.where(done[:, None], torch.full_like(nxt, eot_id), nxt)
                    done |= nxt[:, 0] == eot_id
                idx = torch.cat((idx, nxt), dim=1)
                if eot_id is not None and bool(done.all()):
                    break
            return idx
        finally:
            self.train(was_training)


def _check_sampling(max_new_tokens: int, temperature: float, top_k: int | None, top_p: float | None) -> None:
    if max_new_tokens < 0:
        raise CookError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise CookError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise CookError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise CookError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick one token per row of logits (B, V) -> (B, 1): argmax at temperature 0, else sample
    from softmax(logits / temperature) restricted to the top_k ids and then to the smallest set of
    most likely ids whose probability reaches top_p (nucleus sampling)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # equal probs: lower id first
        # keep the fewest most likely tokens whose mass reaches top_p: drop a token once the tokens before it
        # already cover top_p, an exact tie included (the first always stays, as top_p > 0)
        cum = sorted_probs.cumsum(dim=-1)
        before = torch.cat((torch.zeros_like(cum[:, :1]), cum[:, :-1]), dim=-1)
        drop = before >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1, generator=generator)


# dense 16-bit tensor-core peaks (flop/s) by a piece of the device name; the first match wins (H100 PCIe before H100)
PEAK_FLOPS = (("h200", 989e12), ("h100 pcie", 756e12), ("h100", 989e12), ("a100", 312e12), ("l40s", 362e12),
              ("l40", 181e12), ("l4", 121e12), ("a10g", 125e12), ("a10", 125e12), ("v100", 125e12), ("t4", 65e12),
              ("4090", 165e12), ("3090", 71e12))


def device_peak_flops(device: torch.device | str | None = None) -> float | None:
    """The CUDA device's dense bf16/fp16 peak (PEAK_FLOPS: T4 65e12, V100 125e12, A100 312e12, H100 SXM / H200
    989e12, ...); None off CUDA or for a card not in the table (then MFU is not reported rather than wrong)."""
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak
    return None
