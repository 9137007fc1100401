"""Chunked GPT training: one resumable chunk of iterations at a time, a checkpoint after each.

A run lives in one folder:

    RUN/run.json          fixed when the run is created: preset, model and train config, base seed,
                          iters_per_chunk, total_iters (the LR schedule's length), data fingerprint, tokenizer
    RUN/tokenizer/        a copy of the data's tokenizer, so `cook sample RUN` works alone
    RUN/checkpoints/      see model.checkpoint
    RUN/metrics.jsonl     one JSON object per log line: {"iter", "chunk", "kind": "train"|"eval", ...}

Determinism: a batch is a pure function of (chunk seed, iteration, micro-step) (see model.dataloader)
and dropout is reseeded from the same triple, so the only state a run carries is weights + optimizer.
Resuming from any checkpoint is therefore bit-identical on CPU to never having stopped.

Iteration `it` (0-based, global over the run) belongs to chunk `it // iters_per_chunk + 1`; a checkpoint's
`iteration` is the number of iterations done. The learning rate of iteration `it` is
`lr_at(it, warmup, total_iters, lr, min_lr)` over the run's ORIGINAL length: chunks added later
train at min_lr and never change a past learning rate.

Several processes (torchrun, DDP): gloo on CPU, nccl on CUDA; rank 0 writes every file. `grad_accum`
is the run's total micro-batches per step, split over the processes, so a run means the same
thing on any number of them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist

from model.atomic import atomic_dir, atomic_write_text, clean_stale_temps
from model.checkpoint import (
    CHECKPOINTS,
    MODEL_FILE,
    OPTIM_FILE,
    checkpoint_name,
    latest_checkpoint,
    load_model_file,
    load_optimizer_file,
    prune_checkpoints,
    read_best,
    read_config,
    read_json,
    read_state,
    resolve_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    unwrap,
    update_best,
)
from model.dataloader import TokenBatches, derive_seed
from model.errors import CookError
from model.gpt import GPT, GPTConfig
from model.presets import get_preset
from model.shards import load_meta

MAX_ITERS_PER_CHUNK = 5000
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"

Log = Callable[[str], None]

# Set by a signal handler (SIGTERM, SIGINT) or a cancellation watcher; the loop checks it every iteration.
STOP = threading.Event()


class TrainingInterrupted(CookError):
    """Training stopped on request after saving a checkpoint at the current iteration."""


@dataclass
class TrainConfig:
    """What shapes the weights of a run besides the model (fixed when a run is created)."""

    batch_size: int = 8
    grad_accum: int = 1
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0

    @classmethod
    def from_preset(cls, defaults: dict[str, Any], **overrides: Any) -> "TrainConfig":
        betas = defaults.get("betas", (0.9, 0.95))
        d = {f.name: defaults[f.name] for f in fields(cls) if f.name in defaults}
        d.update(beta1=float(betas[0]), beta2=float(betas[1]))
        d.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**d)


def lr_at(it: int, warmup_iters: int, total_iters: int, lr: float, min_lr: float) -> float:
    """Learning rate of iteration `it`: linear warmup, cosine decay to min_lr at total_iters, then min_lr."""
    if it < warmup_iters:
        return lr * (it + 1) / (warmup_iters + 1)
    if it >= total_iters:
        return min_lr
    ratio = (it - warmup_iters) / (total_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


# ---------------------------------------------------------------- arguments and processes


def check_args(chunks: int, iters_per_chunk: int, seed: int = 0, device: str = "auto", eval_interval: int | None = None,
               eval_iters: int | None = None, batch_size: int | None = None, grad_accum: int | None = None,
               learning_rate: float | None = None, keep_last: int = 3) -> None:
    """Validate training arguments; CookError with one line for the first bad one."""
    if iters_per_chunk > MAX_ITERS_PER_CHUNK:
        raise CookError(f"--iters-per-chunk {iters_per_chunk} is above {MAX_ITERS_PER_CHUNK}: split training into more chunks")
    for flag, value in (("--chunks", chunks), ("--iters-per-chunk", iters_per_chunk), ("--eval-interval", eval_interval),
                        ("--eval-iters", eval_iters), ("--batch-size", batch_size), ("--grad-accum", grad_accum),
                        ("--keep-last", keep_last)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise CookError(f"{flag} must be a positive integer (got {value})")
    if learning_rate is not None and not (learning_rate > 0 and math.isfinite(learning_rate)):
        raise CookError(f"--lr must be a positive number (got {learning_rate})")
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise CookError(f"--device must be auto, cpu or cuda (got {device})")
    if seed < 0 or seed >= 2**63:
        raise CookError(f"--seed must be in [0, 2**63) (got {seed})")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CookError("--device cuda: no CUDA device is available (use --device cpu)")
    return device


@dataclass
class Proc:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def master(self) -> bool:
        return self.rank == 0

    @property
    def ddp(self) -> bool:
        return self.world > 1


def setup_process(device: str = "auto") -> Proc:
    """Join the torchrun process group if WORLD_SIZE > 1 (idempotent); pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return Proc(device=dev)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.startswith("cuda"):
        dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.startswith("cuda") else "gloo")
    return Proc(rank=rank, world=world, local_rank=local_rank, device=dev)


def _barrier(proc: Proc) -> None:
    if proc.ddp:
        dist.barrier()


@contextlib.contextmanager
def stop_on_signals(stop: threading.Event = STOP):
    """While the block runs, SIGTERM / SIGINT set `stop` (the loop saves and exits); a second one acts as usual.

    `stop` is cleared on entry and exit. Handlers can only be installed from the main thread; elsewhere
    the event can still be set by others (a cancellation watcher).
    """
    stop.clear()
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            stop.clear()
        return
    previous = {}

    def handler(signum, frame):
        if stop.is_set():  # second signal: give up at once
            signal.signal(signum, previous.get(signum, signal.SIG_DFL))
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)
            return
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
        stop.clear()  # the request has been served (or the work ended anyway)


# ---------------------------------------------------------------- runs


def read_run(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CookError(f"{run_dir}: not a training run (no {RUN_FILE})")
    return read_json(path)


def _tokenizer_identity(meta: dict) -> dict:
    tok = meta.get("tokenizer") or {}
    return {"encoding": meta.get("encoding"), "name": tok.get("name"), "hash": tok.get("hash")}


def _config_diff(a: dict, b: dict) -> str | None:
    """First differing key of two flat configs as 'key a vs b', or None."""
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k} {a.get(k)!r} vs {b.get(k)!r}"
    return None


def check_tokenizer(data: str | os.PathLike, meta: dict, recorded: dict, what: str) -> None:
    """CookError unless data in `data` was tokenized with the tokenizer `recorded` (by hash)."""
    have = _tokenizer_identity(meta)
    if have["hash"] != recorded.get("hash"):
        raise CookError(
            f"{data} was tokenized differently from {what}: tokenizer {have['encoding']} ({str(have['hash'])[:12]}) "
            f"vs {recorded.get('encoding')} ({str(recorded.get('hash'))[:12]}); tokenize it with the same tokenizer"
        )


def prepare_run(
    data: str | os.PathLike,
    run: str | os.PathLike,
    preset: str = "tiny",
    chunks: int = 1,
    iters_per_chunk: int = 1000,
    seed: int = 1337,
    init_from: str | os.PathLike | None = None,
    batch_size: int | None = None,
    grad_accum: int | None = None,
    learning_rate: float | None = None,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    proc: Proc | None = None,
) -> dict:
    """Create RUN/run.json (or check that this command matches it); return the run plus `todo`, the chunks left.

    Asking for more chunks than recorded extends the run (the LR schedule keeps its original length).
    Rank 0 writes; other ranks wait for it and read.
    """
    proc = proc or Proc()
    check_args(chunks, iters_per_chunk, seed, "auto", eval_interval, eval_iters, batch_size, grad_accum, learning_rate)
    data, run_dir = Path(data), Path(run)
    meta = load_meta(data)
    if proc.master:
        info = _create_or_check_run(data, run_dir, meta, preset, chunks, iters_per_chunk, seed, init_from,
                                    batch_size, grad_accum, learning_rate, eval_interval, eval_iters)
    _barrier(proc)
    if not proc.master:
        info = read_run(run_dir)
    info = dict(info)
    info["todo"] = chunks_todo(run_dir, info, upto=chunks)
    return info


def _create_or_check_run(data, run_dir, meta, preset, chunks, iters_per_chunk, seed, init_from,
                         batch_size, grad_accum, learning_rate, eval_interval, eval_iters) -> dict:
    run_path = run_dir / RUN_FILE
    config, defaults = get_preset(preset, int(meta["vocab_size"]))
    overrides = dict(batch_size=batch_size, grad_accum=grad_accum, learning_rate=learning_rate)
    tokenizer = _tokenizer_identity(meta)
    if run_path.is_file():
        info = read_run(run_dir)
        if info.get("preset") != preset:
            raise CookError(f"run {run_dir} was created with preset {info.get('preset')}, not {preset}: use another --run to train a new model")
        diff = _config_diff(info["model"], config.to_dict())
        if diff:
            raise CookError(f"run {run_dir}: model config does not match preset {preset} ({diff})")
        for flag, key, value in (("--iters-per-chunk", "iters_per_chunk", iters_per_chunk), ("--seed", "seed", seed)):
            if info[key] != value:
                raise CookError(f"run {run_dir} was created with {flag} {info[key]}, not {value}: repeat the original flags to resume")
        for flag, key in (("--batch-size", "batch_size"), ("--grad-accum", "grad_accum"), ("--lr", "learning_rate")):
            if overrides[key] is not None and overrides[key] != info["train"][key]:
                raise CookError(f"run {run_dir} was created with {flag} {info['train'][key]}, not {overrides[key]}: repeat the original flags to resume")
        recorded_init = info.get("init_from")
        if init_from is not None and (recorded_init is None or Path(init_from).resolve() != Path(recorded_init).resolve()):
            raise CookError(f"run {run_dir} already exists{' (started from ' + recorded_init + ')' if recorded_init else ''}: use a new --run for --init-from {init_from}")
        check_tokenizer(data, meta, info["tokenizer"], f"run {run_dir}")
        if meta.get("fingerprint") != info["data"]["fingerprint"]:
            raise CookError(f"{data} is not the data run {run_dir} was trained on (fingerprint differs): use --init-from to continue on new data")
        if chunks > info["chunks"]:
            info["chunks"] = chunks  # extension: total_iters (the schedule) stays as recorded
            atomic_write_text(run_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
        return info

    train = TrainConfig.from_preset(defaults, **overrides)
    init = None
    if init_from is not None:
        ckpt = resolve_checkpoint(init_from)
        ck = read_config(ckpt)
        check_tokenizer(data, meta, ck.get("tokenizer", {}), f"checkpoint {ckpt}")
        diff = _config_diff(ck.get("model", {}), config.to_dict())
        if diff:
            raise CookError(f"--init-from {ckpt}: checkpoint's model config does not match preset {preset} ({diff})")
        if not (ckpt / MODEL_FILE).is_file():
            raise CookError(f"{ckpt / MODEL_FILE}: missing checkpoint file")
        init = str(ckpt.resolve())
    total = chunks * iters_per_chunk
    info = {
        "format": 1,
        "preset": preset,
        "model": config.to_dict(),
        "train": asdict(train),
        "eval_interval": eval_interval or int(defaults.get("eval_interval", 100)),
        "eval_iters": eval_iters or int(defaults.get("eval_iters", 100)),
        "seed": seed,
        "chunks": chunks,
        "iters_per_chunk": iters_per_chunk,
        "total_iters": total,
        "data": {"dir": str(data.resolve()), "fingerprint": meta.get("fingerprint")},
        "tokenizer": tokenizer,
        "init_from": init,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    tok_src = data / ((meta.get("tokenizer") or {}).get("dir") or TOKENIZER_DIR)
    if (tok_src / "tokenizer.json").is_file():
        with atomic_dir(run_dir / TOKENIZER_DIR) as tmp:
            for f in tok_src.iterdir():
                if f.is_file() and not f.name.startswith("."):
                    shutil.copyfile(f, tmp / f.name)
    atomic_write_text(run_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def chunks_todo(run_dir: str | os.PathLike, info: dict | None = None, upto: int | None = None) -> list[int]:
    """Chunks still to train up to chunk `upto` (default: all the run's), judged by the latest checkpoint
    (chunk N is done <=> its iteration >= N * iters_per_chunk)."""
    info = info or read_run(run_dir)
    latest = latest_checkpoint(run_dir)
    done_iters = int(read_state(latest)["iteration"]) if latest is not None else 0
    first = done_iters // info["iters_per_chunk"] + 1
    last = min(info["chunks"], upto) if upto is not None else info["chunks"]
    return list(range(first, last + 1))


# ---------------------------------------------------------------- metrics


class Metrics:
    """RUN/metrics.jsonl: one JSON object per line, appended and flushed (rank 0 only)."""

    def __init__(self, run_dir: Path, enabled: bool, log: Log | None):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.log = log

    def trim(self, keep_through_iter: int) -> None:
        """Forget lines after `keep_through_iter` (left by a run killed after its last checkpoint)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("iter", 0) <= keep_through_iter:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write(self, record: dict, message: str) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.log is not None:
            self.log(message)


# ---------------------------------------------------------------- the chunk loop


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: dict[str, TokenBatches | None], eval_iters: int, seed: int,
                  proc: Proc) -> dict[str, float | None]:
    """Mean loss over `eval_iters` fixed batches of each split (the same batches every time), shared over ranks."""
    was_training = model.training
    model.eval()
    out: dict[str, float | None] = {}
    for split, b in batches.items():
        if b is None:
            out[split] = None
            continue
        total = torch.zeros((), dtype=torch.float64, device=proc.device)
        for k in range(proc.rank, eval_iters, proc.world):
            x, y = b.batch(seed, k, 0, proc.device)
            with _autocast(proc.device):
                _, loss = model(x, y)
            total += loss.double()
        if proc.ddp:
            dist.all_reduce(total)
        out[split] = float(total) / eval_iters
    model.train(was_training)
    return out


def _load_tokenizer(run_dir: Path, info: dict):
    from model.tokenizer import get_tokenizer, load_tokenizer

    if (run_dir / TOKENIZER_DIR / "tokenizer.json").is_file():
        return load_tokenizer(run_dir / TOKENIZER_DIR)
    return get_tokenizer(info["tokenizer"]["encoding"])


def _sample_text(model: GPT, run_dir: Path, info: dict, n: int, seed: int, device: str) -> str:
    """A short text from the model (for the chunk's report); '' if the tokenizer cannot be loaded."""
    if n <= 0:
        return ""
    try:
        tok = _load_tokenizer(run_dir, info)
    except Exception:
        return ""
    g = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([[tok.eot_id]], dtype=torch.long, device=device)
    with _autocast(device):
        out = model.generate(idx, n, temperature=0.8, top_k=50, generator=g)
    return tok.decode(out[0, 1:].tolist())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               accum: int, lr: float, grad_clip: float, device: str, ddp: bool = False) -> torch.Tensor:
    """One optimizer step: set the lr; forward (autocast on CUDA) and backward over `accum` micro-batches,
    the loss averaged (under DDP gradients sync on the last one only); clip; AdamW step; zero grads.
    Returns the step's loss (detached). The benchmark times exactly this."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_acc = torch.zeros((), device=device)
    for m, (x, y) in enumerate(micro_batches):
        if ddp:
            model.require_backward_grad_sync = m == accum - 1
        with _autocast(device):
            _, loss = model(x, y)
            loss = loss / accum
        loss.backward()
        loss_acc += loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_acc


def train_chunk(
    run_dir: str | os.PathLike,
    chunk: int,
    *,
    data: str | os.PathLike | None = None,
    device: str = "auto",
    compile: bool = False,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    keep_last: int = 3,
    log_interval: int = 10,
    sample_tokens: int = 64,
    log: Log | None = None,
    stop: threading.Event | None = None,
    proc: Proc | None = None,
    on_iter: Callable[[int, int], None] | None = None,
) -> dict:
    """Train chunk `chunk` (1-based) of a prepared run from its latest checkpoint; save a checkpoint at its end.

    `on_iter(done_in_chunk, iters_per_chunk)` is called after every iteration (progress display).
    If `stop` gets set, saves a mid-chunk checkpoint and raises TrainingInterrupted. Returns a summary:
    chunk, start/end iteration, seed, losses (eval records), val/train loss, lr, tokens_seen, checkpoint,
    sample (a short generated text), seconds, skipped (True if the chunk was already done).
    """
    t_start = time.time()
    run_dir = Path(run_dir)
    stop = stop if stop is not None else STOP
    proc = proc or setup_process(device)
    info = read_run(run_dir)
    data = Path(data) if data is not None else Path(info["data"]["dir"])
    meta = load_meta(data)
    check_tokenizer(data, meta, info["tokenizer"], f"run {run_dir}")
    if meta.get("fingerprint") != info["data"]["fingerprint"]:
        raise CookError(f"{data} is not the data run {run_dir} was trained on (fingerprint differs)")
    K = int(info["iters_per_chunk"])
    if not 1 <= chunk <= int(info["chunks"]):
        raise CookError(f"run {run_dir} has chunks 1..{info['chunks']}, not {chunk}")
    chunk_start, chunk_end = (chunk - 1) * K, chunk * K
    eval_interval = eval_interval or int(info["eval_interval"])
    eval_iters = eval_iters or int(info["eval_iters"])
    tc = TrainConfig(**info["train"])
    if tc.grad_accum % proc.world:
        raise CookError(f"--grad-accum {tc.grad_accum} is not a multiple of the {proc.world} processes")
    accum = tc.grad_accum // proc.world
    base_seed = int(info["seed"])
    chunk_seed = derive_seed(base_seed, "chunk", chunk)
    config = GPTConfig.from_dict(info["model"])
    dev = proc.device
    device_type = "cuda" if dev.startswith("cuda") else "cpu"

    # -- state: latest checkpoint, else the init-from weights, else a fresh seeded init
    latest = latest_checkpoint(run_dir)
    state = read_state(latest) if latest is not None else None
    it0 = int(state["iteration"]) if state else 0
    summary = {"chunk": chunk, "seed": chunk_seed, "start_iter": it0, "end_iter": chunk_end, "skipped": False}
    if it0 >= chunk_end:
        return {**summary, "skipped": True, "checkpoint": str(latest), "seconds": 0.0}
    if it0 < chunk_start:
        raise CookError(f"run {run_dir}: chunk {chunk} starts at iteration {chunk_start} but the latest checkpoint is at {it0}; train the earlier chunks first")
    torch.manual_seed(derive_seed(base_seed, "init"))
    model = GPT(config)
    if latest is not None:
        diff = _config_diff(read_config(latest).get("model", {}), info["model"])
        if diff:
            raise CookError(f"{latest}: checkpoint from a different model config than run {run_dir} ({diff})")
        load_model_file(latest / MODEL_FILE, model)
    elif info.get("init_from"):
        load_model_file(Path(info["init_from"]) / MODEL_FILE, model)
    model.to(dev)
    optimizer = model.configure_optimizer(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), device_type)
    if latest is not None and (latest / OPTIM_FILE).is_file():
        load_optimizer_file(latest / OPTIM_FILE, optimizer, model)
    if state and "rng" in state:
        restore_rng_states(state["rng"])
    best_val = state.get("best_val_loss") if state else None
    tokens_seen = int(state.get("tokens_seen", 0)) if state else 0
    chunk_seeds = {str(k): v for k, v in (state.get("chunk_seeds", {}) if state else {}).items()}
    chunk_seeds[str(chunk)] = chunk_seed

    fwd = torch.compile(model) if compile else model
    train_model = fwd
    if proc.ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(fwd, device_ids=[proc.local_rank] if device_type == "cuda" else None)

    train_batches = TokenBatches(data, "train", config.block_size, tc.batch_size)
    try:
        val_batches = TokenBatches(data, "val", config.block_size, tc.batch_size)
    except CookError:
        val_batches = None  # no (usable) validation split: eval reports train loss only
    eval_seed = derive_seed(base_seed, "eval")
    tokens_per_iter = tc.batch_size * config.block_size * tc.grad_accum

    metrics = Metrics(run_dir, proc.master, log)
    metrics.trim(it0)
    if proc.master:
        clean_stale_temps(run_dir / CHECKPOINTS)

    def snapshot(it: int, lr: float, complete: bool, val: float | None, train_loss: float | None) -> dict:
        return {
            "iteration": it, "chunk": chunk, "chunk_complete": complete, "iters_per_chunk": K,
            "base_seed": base_seed, "chunk_seed": chunk_seed, "chunk_seeds": chunk_seeds,
            "data_cursor": {"chunk_seed": chunk_seed, "iteration": it},
            "rng": rng_states(), "best_val_loss": best_val, "val_loss": val, "train_loss": train_loss,
            "tokens_seen": tokens_seen, "lr": lr, "world_size": proc.world, "saved_at": time.time(),
        }

    ck_config = {"model": info["model"], "train": info["train"], "preset": info["preset"], "data": info["data"],
                 "tokenizer": info["tokenizer"], "total_iters": info["total_iters"]}

    def save(name: str, st: dict) -> Path:
        path = run_dir / CHECKPOINTS / name
        if proc.master:
            save_checkpoint(path, model, optimizer, st, ck_config)
        _barrier(proc)
        return path

    def stop_requested(it: int) -> bool:
        flag = stop.is_set()
        if proc.ddp:  # every rank must stop at the same iteration: agree every log_interval iterations
            if (it - it0) % log_interval:
                return False
            t = torch.tensor([1.0 if flag else 0.0], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag

    evals: list[dict] = []
    lr = lr_at(it0, tc.warmup_iters, info["total_iters"], tc.learning_rate, tc.min_lr)
    last_loss: float | None = None
    val_loss: float | None = None
    t_log, it_log = time.time(), it0
    train_model.train()
    for it in range(it0, chunk_end):
        if stop_requested(it):
            if latest is not None and it == it0:
                path = latest  # nothing new since the checkpoint we started from
            else:
                path = save(checkpoint_name(chunk, it), snapshot(it, lr, False, None, last_loss))
            raise TrainingInterrupted(f"interrupted: saved checkpoint at iteration {it} ({path}) — run the same command to resume")
        lr = lr_at(it, tc.warmup_iters, info["total_iters"], tc.learning_rate, tc.min_lr)

        def micro_batches(it: int = it):
            for m in range(accum):
                micro = proc.rank * accum + m
                x, y = train_batches.batch(chunk_seed, it, micro, dev)
                torch.manual_seed(derive_seed(chunk_seed, it, micro))  # dropout masks depend on (seed, it, micro) only
                yield x, y

        loss_acc = train_step(train_model, optimizer, micro_batches(), accum, lr, tc.grad_clip, dev, ddp=proc.ddp)
        tokens_seen += tokens_per_iter
        done = it + 1
        if on_iter is not None:
            on_iter(done - chunk_start, K)

        if done % log_interval == 0 or it == it0 or done == chunk_end:
            last_loss = float(loss_acc)
            dt = (time.time() - t_log) / max(1, done - it_log)
            t_log, it_log = time.time(), done
            rec = {"iter": done, "chunk": chunk, "kind": "train", "loss": last_loss, "lr": lr,
                   "tokens_per_s": tokens_per_iter / dt if dt > 0 else None, "tokens_seen": tokens_seen, "ms_per_iter": 1000 * dt}
            msg = f"chunk {chunk} iter {done}: loss {last_loss:.4f}, lr {lr:.3e}, {rec['tokens_per_s'] or 0:,.0f} tok/s"
            if device_type == "cuda":
                rec["mfu"] = model.estimate_mfu(tc.batch_size * accum, dt) if dt > 0 else None
                msg += f", mfu {100 * (rec['mfu'] or 0):.1f}%"
            metrics.write(rec, msg)

        if done % eval_interval == 0 or done == chunk_end:
            losses = estimate_loss(fwd, {"train": train_batches, "val": val_batches}, eval_iters, eval_seed, proc)
            val_loss = losses["val"]
            rec = {"iter": done, "chunk": chunk, "kind": "eval", "train_loss": losses["train"], "val_loss": val_loss, "lr": lr}
            evals.append(rec)
            vs = f"{val_loss:.4f}" if val_loss is not None else "n/a"
            metrics.write(rec, f"chunk {chunk} iter {done}: eval train loss {losses['train']:.4f}, val loss {vs}")
            t_log = time.time()  # keep eval time out of tokens/s

    # -- end of chunk: checkpoint, best, retention
    if val_loss is not None and (best_val is None or val_loss < best_val):
        best_val = val_loss
    ck = save(checkpoint_name(chunk), snapshot(chunk_end, lr, True, val_loss, last_loss))
    if proc.master:
        update_best(run_dir, ck, val_loss, chunk_end)
        prune_checkpoints(run_dir, keep_last)
    sample = _sample_text(model, run_dir, info, sample_tokens, chunk_seed, dev) if proc.master else ""
    _barrier(proc)
    if proc.ddp:  # ranks must hold identical weights; the digest lets callers (and tests) check it
        summary["param_digest"] = param_digest(model)
    return {**summary, "losses": evals, "val_loss": val_loss, "train_loss": last_loss, "lr": lr, "tokens_seen": tokens_seen,
            "checkpoint": str(ck), "best": (read_best(run_dir) or {}).get("name") if proc.master else None,
            "sample": sample, "seconds": time.time() - t_start}


def param_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order: equal digests <=> identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train_worker(data: str | os.PathLike, run: str | os.PathLike, preset: str = "tiny", chunks: int = 1,
                 iters_per_chunk: int = 1000, seed: int = 1337, init_from: str | os.PathLike | None = None,
                 device: str = "auto", compile: bool = False, eval_interval: int | None = None,
                 eval_iters: int | None = None, batch_size: int | None = None, grad_accum: int | None = None,
                 learning_rate: float | None = None, keep_last: int = 3, log: Log | None = None,
                 stop: threading.Event | None = None, **chunk_kw: Any) -> list[dict]:
    """The whole run as a plain loop (no Prefect): prepare, then every chunk left. Under torchrun every
    rank but 0 runs this, in step with rank 0's flow; it also works alone in one process."""
    proc = setup_process(device)
    info = prepare_run(data, run, preset, chunks, iters_per_chunk, seed, init_from, batch_size, grad_accum,
                       learning_rate, eval_interval, eval_iters, proc=proc)
    return [
        train_chunk(run, c, data=data, device=device, compile=compile, eval_interval=eval_interval, eval_iters=eval_iters,
                    keep_last=keep_last, log=log, stop=stop, proc=proc, **chunk_kw)
        for c in info["todo"]
    ]
