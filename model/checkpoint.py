"""Training checkpoints: safetensors weights and optimizer state plus JSON state, no pickle anywhere.

A checkpoint is one folder, written atomically (it appears whole or not at all):

    RUN/checkpoints/chunk_000002/                 after chunk 2
    RUN/checkpoints/chunk_000003-iter_0001234/    saved mid-chunk 3 (SIGTERM, Ctrl-C, cancellation)
        model.safetensors       weights; tied tensors stored once (aliases in the file's metadata)
        optimizer.safetensors   AdamW `<param>.exp_avg`, `<param>.exp_avg_sq`, `<param>.step`
        state.json              iteration, chunk, seeds, RNG states, data cursor, losses, lr
        config.json             model config, train config, data fingerprint, tokenizer identity

The latest checkpoint is the one with the highest iteration; `best.json` names the best by val loss.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.atomic import atomic_dir, atomic_write_text, clean_stale_temps, make_readable
from model.errors import CookError

CHECKPOINTS = "checkpoints"
BEST = "best.json"
MODEL_FILE = "model.safetensors"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
CONFIG_FILE = "config.json"
_NAME = re.compile(r"^chunk_(\d{6})(?:-iter_(\d+))?$")


def checkpoint_name(chunk: int, iteration: int | None = None) -> str:
    """`chunk_000002` for a finished chunk, `chunk_000002-iter_0001234` for one saved mid-chunk."""
    return f"chunk_{chunk:06d}" if iteration is None else f"chunk_{chunk:06d}-iter_{iteration:07d}"


# ---------------------------------------------------------------- safetensors


def read_safetensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; CookError if missing, truncated or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CookError(f"{path}: missing checkpoint file")
    try:
        tensors = load_file(path, device=device)
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except Exception:  # SafetensorError, OSError, ...: all mean the file is not whole
        raise CookError(f"{path}: truncated or corrupt safetensors file") from None
    return tensors, meta


def _dedup(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Drop tensors that share storage with an earlier one (tied weights); return kept and alias->kept."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        kept[name] = t.detach().to("cpu").contiguous()
    return kept, aliases


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def save_model_file(path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Write the model's state dict as safetensors (tied weights once; aliases in the metadata)."""
    kept, aliases = _dedup(unwrap(model).state_dict())
    save_file(kept, str(path), metadata={"format": "pt", "aliases": json.dumps(aliases, sort_keys=True)})
    make_readable(path)  # safetensors creates its files 0600


def load_model_file(path: str | os.PathLike, model: torch.nn.Module) -> None:
    """Load weights into `model`; CookError naming the first name or shape that does not match."""
    tensors, meta = read_safetensors(path)
    model = unwrap(model)
    try:
        aliases = json.loads(meta.get("aliases", "{}"))
    except json.JSONDecodeError:
        raise CookError(f"{path}: truncated or corrupt safetensors file") from None
    own = model.state_dict()
    aliases = {**_dedup(own)[1], **aliases}  # the model's own ties too (files from GPT.state_dict_for_save)
    for alias, target in aliases.items():
        if target in tensors and alias not in tensors:
            tensors[alias] = tensors[target]
    missing = [k for k in own if k not in tensors]
    extra = [k for k in tensors if k not in own]
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CookError(f"{path}: checkpoint does not match the model ({what}; {len(missing)} missing, {len(extra)} unexpected tensors)")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise CookError(f"{path}: checkpoint does not match the model: {k} has shape {tuple(t.shape)} in the checkpoint, {tuple(own[k].shape)} in the model")
    with torch.no_grad():
        model.load_state_dict(tensors, strict=True)


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the optimizer's parameters, in the order of its state_dict indices."""
    by_id = {id(p): n for n, p in unwrap(model).named_parameters()}
    names = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in by_id:
                raise CookError("optimizer holds a parameter the model does not name")
            names.append(by_id[id(p)])
    return names


def save_optimizer_file(path: str | os.PathLike, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Write AdamW state as `<param>.<key>` tensors (exp_avg, exp_avg_sq, step) keyed by parameter name."""
    names = _param_names(model, optimizer)
    out: dict[str, torch.Tensor] = {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(float(value))
            out[f"{names[idx]}.{key}"] = t.detach().to("cpu").contiguous()
    save_file(out, str(path), metadata={"format": "pt", "optimizer": type(optimizer).__name__})
    make_readable(path)


def load_optimizer_file(path: str | os.PathLike, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    """Load AdamW state saved by `save_optimizer_file` into a freshly built optimizer of the same model."""
    tensors, _ = read_safetensors(path)
    names = _param_names(model, optimizer)
    index = {n: i for i, n in enumerate(names)}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for full, t in tensors.items():
        pname, _, key = full.rpartition(".")
        if pname not in index:
            raise CookError(f"{path}: optimizer state does not match the model (unknown parameter {pname})")
        state.setdefault(index[pname], {})[key] = t
    if state and len(state) != len(names):
        raise CookError(f"{path}: optimizer state does not match the model ({len(state)} of {len(names)} parameters)")
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)


# ---------------------------------------------------------------- RNG state as JSON


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_states() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as JSON-able values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    out = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of `rng_states` (CUDA states only where the device count matches)."""
    if "torch" in states:
        torch.set_rng_state(_unb64(states["torch"]))
    if "numpy" in states:
        name, keys, pos, has_gauss, gauss = states["numpy"]
        np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in states:
        version, internal, gauss_next = states["python"]
        random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in cuda])


# ---------------------------------------------------------------- checkpoint folders


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict,
    config: dict,
) -> Path:
    """Write one checkpoint folder atomically (weights, optimizer, state.json, config.json)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        save_model_file(tmp / MODEL_FILE, model)
        if optimizer is not None:
            save_optimizer_file(tmp / OPTIM_FILE, optimizer, model)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CookError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CookError(f"{path}: unreadable JSON") from None


def read_state(ckpt: str | os.PathLike) -> dict:
    return read_json(Path(ckpt) / STATE_FILE)


def read_config(ckpt: str | os.PathLike) -> dict:
    return read_json(Path(ckpt) / CONFIG_FILE)


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(iteration, folder) of every checkpoint of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    out = []
    for child in folder.iterdir():
        if child.is_dir() and _NAME.match(child.name) and (child / STATE_FILE).is_file():
            try:
                out.append((int(read_state(child)["iteration"]), child))
            except (CookError, KeyError, TypeError, ValueError):
                continue
    return sorted(out, key=lambda t: (t[0], "-iter_" not in t[1].name))


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest iteration (a finished chunk wins over a mid-chunk tie)."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def resolve_checkpoint(target: str | os.PathLike) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder (its latest) or a model.safetensors path; for a
    URL (a run or a checkpoint on object storage), a local copy of it (model.runsync.fetch_checkpoint)."""
    from model import storage

    if storage.is_remote(target):
        from model.runsync import fetch_checkpoint

        return fetch_checkpoint(os.fspath(target))
    p = Path(target)
    if p.is_file() and p.name == MODEL_FILE:
        p = p.parent
    if (p / MODEL_FILE).is_file() or (p / STATE_FILE).is_file():
        return p
    if p.is_dir():
        latest = latest_checkpoint(p)
        if latest is not None:
            return latest
        raise CookError(f"{target}: no checkpoint found (not a checkpoint folder nor a run with checkpoints)")
    raise CookError(f"{target}: no such run or checkpoint")


def read_best(run_dir: str | os.PathLike) -> dict | None:
    """checkpoints/best.json ({"name", "val_loss", "iteration"}), or None if absent, unreadable or its folder is gone."""
    path = Path(run_dir) / CHECKPOINTS / BEST
    if not path.is_file():
        return None
    try:
        best = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(best, dict) or not (Path(run_dir) / CHECKPOINTS / str(best.get("name"))).is_dir():
        return None
    return best


def update_best(run_dir: str | os.PathLike, ckpt: Path, val_loss: float | None, iteration: int) -> bool:
    """Record `ckpt` in best.json if its val loss beats the recorded best; True if it did."""
    if val_loss is None:
        return False
    best = read_best(run_dir)
    if best is not None and (Path(run_dir) / CHECKPOINTS / best["name"]).is_dir() and best["val_loss"] <= val_loss:
        return False
    rec = {"name": ckpt.name, "val_loss": float(val_loss), "iteration": int(iteration)}
    atomic_write_text(Path(run_dir) / CHECKPOINTS / BEST, json.dumps(rec, indent=2) + "\n")
    return True


def prune_checkpoints(run_dir: str | os.PathLike, keep_last: int, keep: Iterable[str] = ()) -> list[Path]:
    """Delete all but the last `keep_last` checkpoints, the best and those named in `keep` (the one where the
    cooldown starts); mid-chunk ones once a later one exists."""
    found = list_checkpoints(run_dir)
    if not found:
        return []
    best = read_best(run_dir)
    finished = [p for _, p in found if "-iter_" not in p.name]
    named = {Path(run_dir) / CHECKPOINTS / n for n in keep}
    keep = set(finished[-max(1, keep_last):])
    if best is not None:
        keep.add(Path(run_dir) / CHECKPOINTS / best["name"])
    latest = found[-1][1]
    removed = []
    for _, p in found:
        mid = "-iter_" in p.name
        if p == latest or p in named or (p in keep and not mid):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    clean_stale_temps(Path(run_dir) / CHECKPOINTS)
    return removed
