"""Number formats and kernels for training on the device at hand.

- `--dtype auto`: on CUDA, bf16 autocast where the GPU does bf16 natively (Ampere and later: A100, H100,
  RTX 30xx+, L4), otherwise fp16 autocast with a `torch.amp.GradScaler` (T4, V100: Colab's usual cards);
  float32 on CPU. `float32`, `bfloat16` and `float16` force one.
- TF32 matmuls on CUDA (free speed on Ampere+, no effect before).
- `torch.compile` on by default on CUDA (off on CPU, where compiling takes longer than a small run); if
  compiling fails, a warning and the eager model.
"""

from __future__ import annotations

import contextlib

import torch

from model.errors import CookError

DTYPES = ("auto", "float32", "bfloat16", "float16")
_TORCH = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def bf16_native(device: str) -> bool:
    """True on a CUDA device that computes in bf16 natively (compute capability 8.0 or later)."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(torch.device(device))
    return major >= 8


def resolve_dtype(dtype: str | None, device: str) -> str:
    """The autocast dtype name for `--dtype` on `device` (see the module doc); CookError for bad values."""
    dtype = dtype or "auto"
    if dtype not in DTYPES:
        raise CookError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    cuda = device.startswith("cuda")
    if dtype == "auto":
        if not cuda:
            return "float32"
        return "bfloat16" if bf16_native(device) else "float16"
    if dtype == "float16" and not cuda:
        raise CookError("--dtype float16 needs a CUDA device (use float32 or bfloat16 on CPU)")
    return dtype


def autocast(device: str, dtype: str):
    """Autocast context for the forward pass: none for float32."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=_TORCH[dtype])


def grad_scaler(device: str, dtype: str) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 training (loss scaling keeps small gradients from flushing to zero); else None."""
    if dtype != "float16":
        return None
    return torch.amp.GradScaler("cuda")


def use_fast_kernels(device: str) -> None:
    """TF32 for float32 matmuls and convolutions on CUDA."""
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_default(compile: bool | None, device: str) -> bool:
    """`--compile` unset: on for CUDA, off on CPU."""
    return device.startswith("cuda") if compile is None else bool(compile)
