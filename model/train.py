"""Chunked GPT training: one resumable chunk of iterations at a time, a checkpoint after each.

A run lives in one folder:

    RUN/run.json          fixed when the run is created: preset, model and train config, schedule, sampler,
                          base seed, iters_per_chunk, data fingerprint, tokenizer; `chunks` (and with it the
                          planned length `total_iters`) may grow
    RUN/tokenizer/        a copy of the data's tokenizer, so `cook sample RUN` works alone
    RUN/checkpoints/      see model.checkpoint
    RUN/cooled/           a chunk's cooled-down checkpoint, set aside when the run was extended past it
    RUN/metrics.jsonl     one JSON object per log line: {"iter", "chunk", "kind": "train"|"eval", ...}

Determinism: a batch is a pure function of (data seed, iteration, micro-step) (see model.dataloader) and
dropout is reseeded from (chunk seed, iteration, micro-step), so the state a run carries is weights +
optimizer (+ the fp16 loss scale). Resuming from any checkpoint is bit-identical on CPU to never having
stopped; the RNG states are saved and restored too, so even code that draws from them stays on track.

Iteration `it` (0-based, global over the run) belongs to chunk `it // iters_per_chunk + 1`; a checkpoint's
`iteration` is the number of iterations done. The learning rate follows model.schedule: by default
warmup -> stable -> cooldown over the end of the run as planned now. Extending a run that already cooled
down goes back to the checkpoint saved where its cooldown started (the cooled checkpoint moves to
RUN/cooled/), so 1 chunk extended to 3 ends bit-identical to 3 planned, and no kept iteration's learning rate
ever changes.

On object storage (`--data` / `--run` URLs, model.runsync): the token folder is cached once per machine, the run
is trained in a local working copy under the cache that every chunk first pulls from the bucket, and global rank 0
uploads every checkpoint as soon as it is saved (complete once its marker is there), so a run resumes on a fresh
machine from the bucket alone.

Several processes (torchrun, DDP): gloo on CPU, nccl on CUDA; rank 0 writes every file. `grad_accum`
is the run's total micro-batches per step, split over the processes, so a run means the same
thing on any number of them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.distributed as dist

from model import storage
from model.atomic import atomic_dir, atomic_write_text, clean_stale_temps
from model.checkpoint import (
    CHECKPOINTS,
    MODEL_FILE,
    OPTIM_FILE,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
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
from model.dataloader import EpochBatches, TokenBatches, derive_seed
from model.errors import CookError
from model.gpt import GPT, GPTConfig
from model.precision import autocast, compile_default, grad_scaler, resolve_dtype, use_fast_kernels
from model.presets import get_preset
from model.runsync import RunSync, local_data
from model.schedule import DEFAULT_COOLDOWN, KINDS, Schedule, parse_cooldown
from model.shards import load_meta

MAX_ITERS_PER_CHUNK = 5000
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"
COOLED_DIR = "cooled"
SAMPLERS = ("epoch", "random")
# default evaluation: about this share of training time (a forward pass costs about a third of a training micro-step)
EVAL_SHARE = 0.05
EVAL_COST = 1 / 3

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


@dataclass
class RunSpec:
    """What `cook train` asks of a run. A new run records it in run.json; an existing run must match it
    (None: keep what is recorded), except `chunks`, which may grow (extension)."""

    preset: str = "tiny"
    chunks: int = 1
    iters_per_chunk: int = 1000
    seed: int = 1337
    init_from: str | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    learning_rate: float | None = None
    warmup: int | None = None
    schedule: str | None = None  # wsd (default) or cosine
    cooldown: float | int | str | None = None  # wsd: iterations, or a fraction of the run
    total_iters: int | None = None  # cosine: the decay's fixed length (default chunks x iters_per_chunk)
    sampler: str | None = None  # epoch (default) or random
    dropout: float | None = None
    eval_interval: int | None = None
    eval_iters: int | None = None


@dataclass
class ChunkOptions:
    """How to run a chunk on this machine: nothing here is part of the run (a run may move from a T4 to an H100)."""

    device: str = "auto"
    dtype: str = "auto"  # model.precision: bf16 / fp16 + GradScaler on CUDA, float32 on CPU
    compile: bool | None = None  # None: on for CUDA, off on CPU
    eval_interval: int | None = None  # None: the run's
    eval_iters: int | None = None
    keep_last: int = 3
    log_interval: int = 10
    sample_tokens: int = 64


def split_kwargs(kw: dict[str, Any]) -> tuple[RunSpec, ChunkOptions]:
    """A flat keyword set (a script's, a test's) as a RunSpec and ChunkOptions; eval_* go to both."""
    spec_names = {f.name for f in fields(RunSpec)}
    opt_names = {f.name for f in fields(ChunkOptions)}
    unknown = set(kw) - spec_names - opt_names
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    return (RunSpec(**{k: v for k, v in kw.items() if k in spec_names}),
            ChunkOptions(**{k: v for k, v in kw.items() if k in opt_names}))


def lr_at(it: int, warmup_iters: int, total_iters: int, lr: float, min_lr: float) -> float:
    """nanoGPT's schedule (linear warmup, cosine decay to min_lr at total_iters): `--schedule cosine`."""
    return Schedule("cosine", lr, min_lr, warmup_iters, 0, total_iters).lr_at(it, total_iters)


# ---------------------------------------------------------------- arguments and processes


def _positive_int(flag: str, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise CookError(f"{flag} must be a positive integer (got {value})")


def check_spec(spec: RunSpec) -> None:
    """Validate a run's arguments; CookError with one line for the first bad one."""
    if spec.iters_per_chunk > MAX_ITERS_PER_CHUNK:
        raise CookError(f"--iters-per-chunk {spec.iters_per_chunk} is above {MAX_ITERS_PER_CHUNK}: split training into more chunks")
    for flag, value in (("--chunks", spec.chunks), ("--iters-per-chunk", spec.iters_per_chunk), ("--eval-interval", spec.eval_interval),
                        ("--eval-iters", spec.eval_iters), ("--batch-size", spec.batch_size), ("--grad-accum", spec.grad_accum),
                        ("--total-iters", spec.total_iters)):
        _positive_int(flag, value)
    if spec.learning_rate is not None and not (spec.learning_rate > 0 and math.isfinite(spec.learning_rate)):
        raise CookError(f"--lr must be a positive number (got {spec.learning_rate})")
    if spec.seed < 0 or spec.seed >= 2**63:
        raise CookError(f"--seed must be in [0, 2**63) (got {spec.seed})")
    if spec.warmup is not None and (isinstance(spec.warmup, bool) or int(spec.warmup) != spec.warmup or spec.warmup < 0):
        raise CookError(f"--warmup must be a whole number of iterations >= 0 (got {spec.warmup})")
    if spec.schedule is not None and spec.schedule not in KINDS:
        raise CookError(f"--schedule must be one of {', '.join(KINDS)} (got {spec.schedule!r})")
    parse_cooldown(spec.cooldown)
    if spec.total_iters is not None and spec.schedule != "cosine":
        raise CookError("--total-iters is the length of a cosine schedule: use it with --schedule cosine (wsd follows --chunks)")
    if spec.cooldown is not None and spec.schedule == "cosine":
        raise CookError("--cooldown is for --schedule wsd (cosine decays over --total-iters)")
    if spec.sampler is not None and spec.sampler not in SAMPLERS:
        raise CookError(f"--sampler must be one of {', '.join(SAMPLERS)} (got {spec.sampler!r})")
    if spec.dropout is not None and not 0.0 <= spec.dropout < 1.0:
        raise CookError(f"--dropout must be in [0, 1) (got {spec.dropout})")


def check_options(opts: ChunkOptions) -> None:
    """Validate how a chunk runs; CookError with one line."""
    for flag, value in (("--eval-interval", opts.eval_interval), ("--eval-iters", opts.eval_iters), ("--keep-last", opts.keep_last)):
        _positive_int(flag, value)
    device = opts.device
    if device not in ("auto", "cpu", "cuda") and not str(device).startswith("cuda:"):
        raise CookError(f"--device must be auto, cpu or cuda (got {device})")
    resolve_dtype(opts.dtype, "cuda" if str(device).startswith("cuda") else "cpu" if device == "cpu" else
                  ("cuda" if torch.cuda.is_available() else "cpu"))


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
    """A run's run.json (read straight from its URL for a run on object storage)."""
    if storage.is_remote(run_dir):
        try:
            return json.loads(storage.read_text(storage.join(run_dir, RUN_FILE)))
        except FileNotFoundError:
            raise CookError(f"{storage.redact(run_dir)}: not a training run (no {RUN_FILE})") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CookError(f"{storage.redact(storage.join(run_dir, RUN_FILE))}: unreadable JSON") from None
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


def prepare_run(data: str | os.PathLike, run: str | os.PathLike, spec: RunSpec | None = None, proc: Proc | None = None) -> dict:
    """Create RUN/run.json (or check that `spec` matches it); return the run plus `todo`, the chunks left,
    and `notes`, lines worth logging (a clipped warmup, a rewound cooldown).

    Asking for more chunks than recorded extends the run (see the module doc). Rank 0 writes; other ranks
    wait for it and read. `data` and `run` may be URLs (model.runsync): the run is prepared in its local working
    copy, pulled from the bucket first and pushed back after.
    """
    spec = spec or RunSpec()
    proc = proc or Proc()
    check_spec(spec)
    sync = RunSync(run)
    data_shown = storage.redact(data) if storage.is_remote(data) else str(Path(data))
    data = local_data(data)
    run_dir = sync.local
    meta = load_meta(data)
    notes: list[str] = []
    if proc.master:
        sync.pull()
        info = _create_or_check_run(data, run_dir, meta, spec, notes, data_shown=data_shown, shown=sync.shown)
        sync.push()
    _barrier(proc)
    if not proc.master:
        sync.pull()
        info = read_run(run_dir)
    info = dict(info)
    info["todo"] = chunks_todo(run_dir, info, upto=spec.chunks)
    info["notes"] = notes
    return info


def eval_plan(defaults: dict[str, Any], spec: RunSpec, train: TrainConfig) -> tuple[int, int]:
    """(eval_interval, eval_iters): the command's, else sized so evaluation takes about EVAL_SHARE of training
    time. Eval reads 2 splits x eval_iters batches of batch_size rows, each costing about EVAL_COST of a
    training micro-step; an interval holds interval x grad_accum micro-steps. Every chunk also ends with one."""
    units = EVAL_SHARE / (2 * EVAL_COST)  # eval batches per training micro-step within budget
    micro_per_chunk = spec.iters_per_chunk * train.grad_accum
    iters = spec.eval_iters or max(min(10, int(defaults.get("eval_iters", 100))),
                                   min(int(defaults.get("eval_iters", 100)), int(units * micro_per_chunk)))
    interval = spec.eval_interval or max(int(defaults.get("eval_interval", 100)), math.ceil(iters / (units * train.grad_accum)))
    return interval, iters


def _schedule_for(spec: RunSpec, train: TrainConfig, total: int, notes: list[str]) -> Schedule:
    """The schedule of a new run; a preset's warmup that does not fit a short run is clipped (noted),
    a --warmup that does not fit is refused."""
    kind = spec.schedule or "wsd"
    cooldown = parse_cooldown(spec.cooldown)
    if cooldown is None:
        cooldown = DEFAULT_COOLDOWN if kind == "wsd" else 0
    length = spec.total_iters if kind == "cosine" and spec.total_iters else total
    sched = Schedule(kind, float(train.learning_rate), float(train.min_lr), int(train.warmup_iters), cooldown,
                     length if kind == "cosine" else None)
    if spec.warmup is None:
        room = sched.cooldown_start(total) if kind == "wsd" else length - 1
        if sched.warmup > room >= 0:
            notes.append(f"the preset's warmup of {sched.warmup} iterations is longer than this run allows before its "
                         f"{'cooldown' if kind == 'wsd' else 'decay end'}: warming up over {room} instead (--warmup to choose)")
            sched = dataclasses.replace(sched, warmup=room)
            train.warmup_iters = room
    sched.check(total)
    return sched


def pre_cooldown_checkpoint(info: dict) -> tuple[int, str] | None:
    """(iteration, checkpoint name) where the run's cooldown starts as planned now; None without a cooldown."""
    sched = Schedule.from_run(info)
    total, K = int(info["chunks"]) * int(info["iters_per_chunk"]), int(info["iters_per_chunk"])
    if sched.kind != "wsd" or sched.cooldown_iters(total) <= 0:
        return None
    start = sched.cooldown_start(total)
    name = checkpoint_name(start // K) if start % K == 0 else checkpoint_name(start // K + 1, start)
    return start, name


def _rewind_cooldown(run_dir: Path, info: dict, shown: str | None = None) -> str | None:
    """Before extending a wsd run: if it trained past its cooldown start, go back to the checkpoint saved there.
    Finished chunks past it move to RUN/cooled/ (still a model you can sample or export), mid-chunk ones go.
    Returns a note, or None if nothing was past the cooldown."""
    shown = shown or str(run_dir)
    pre = pre_cooldown_checkpoint(info)
    if pre is None:
        return None
    start, name = pre
    found = list_checkpoints(run_dir)
    later = [p for i, p in found if i > start]
    if not later:
        return None
    if not any(i == start for i, _ in found):
        raise CookError(f"run {shown} cooled down from iteration {start}, but the checkpoint saved there ({name}) is gone: "
                        f"it cannot be extended without training at the floor; start a new --run with --init-from {shown}")
    cooled = run_dir / COOLED_DIR
    cooled.mkdir(exist_ok=True)
    for p in later:  # each leaves checkpoints/ by a rename (atomic); a crash in between is redone by the next run
        if "-iter_" in p.name:
            trash = p.parent / f".{p.name}.old-rewind"  # a stale temp name: clean_stale_temps finishes it if we crash
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
            continue
        target = cooled / p.name
        if target.exists():
            shutil.rmtree(target)
        os.replace(p, target)
    if int(read_state(latest_checkpoint(run_dir))["iteration"]) != start:
        raise CookError(f"run {shown}: could not go back to the checkpoint at iteration {start} ({name}); check the folder's permissions")
    return (f"extending: the run had cooled down from iteration {start}; training goes on from the checkpoint saved "
            f"there ({name}); the cooled checkpoint{'s' if len(later) > 1 else ''} moved to {storage.join(shown, COOLED_DIR) if storage.is_remote(shown) else cooled}")


def _create_or_check_run(data: Path, run_dir: Path, meta: dict, spec: RunSpec, notes: list[str], data_shown: str | None = None,
                         shown: str | None = None) -> dict:
    """Create run.json in `run_dir` (a local folder) or check the spec against it. `data_shown` / `shown`: the data
    and run as recorded and named in messages (their URLs when on object storage)."""
    data_shown = data_shown or str(data)
    shown = shown or str(run_dir)
    run_path = run_dir / RUN_FILE
    config, defaults = get_preset(spec.preset, int(meta["vocab_size"]))
    overrides = dict(batch_size=spec.batch_size, grad_accum=spec.grad_accum, learning_rate=spec.learning_rate)
    tokenizer = _tokenizer_identity(meta)
    if run_path.is_file():
        info = read_run(run_dir)
        if info.get("preset") != spec.preset:
            raise CookError(f"run {shown} was created with preset {info.get('preset')}, not {spec.preset}: use another --run to train a new model")
        dropout = spec.dropout if spec.dropout is not None else info["model"].get("dropout", config.dropout)
        diff = _config_diff(info["model"], dataclasses.replace(config, dropout=dropout).to_dict())
        if diff:
            raise CookError(f"run {shown}: model config does not match preset {spec.preset} ({diff})")
        for flag, key, value in (("--iters-per-chunk", "iters_per_chunk", spec.iters_per_chunk), ("--seed", "seed", spec.seed)):
            if info[key] != value:
                raise CookError(f"run {shown} was created with {flag} {info[key]}, not {value}: repeat the original flags to resume")
        for flag, key in (("--batch-size", "batch_size"), ("--grad-accum", "grad_accum"), ("--lr", "learning_rate")):
            if overrides[key] is not None and overrides[key] != info["train"][key]:
                raise CookError(f"run {shown} was created with {flag} {info['train'][key]}, not {overrides[key]}: repeat the original flags to resume")
        sched = Schedule.from_run(info)
        cooldown = parse_cooldown(spec.cooldown)
        for flag, given, recorded in (("--schedule", spec.schedule, sched.kind), ("--warmup", spec.warmup, sched.warmup),
                                      ("--cooldown", cooldown, sched.cooldown),
                                      ("--total-iters", spec.total_iters, sched.total if sched.kind == "cosine" else None),
                                      ("--sampler", spec.sampler, info.get("sampler", "random"))):
            if given is not None and given != recorded:
                raise CookError(f"run {shown} was created with {flag} {recorded}, not {given}: repeat the original flags to resume")
        recorded_init = info.get("init_from")
        if spec.init_from is not None and (recorded_init is None or Path(spec.init_from).resolve() != Path(recorded_init).resolve()):
            raise CookError(f"run {shown} already exists{' (started from ' + recorded_init + ')' if recorded_init else ''}: use a new --run for --init-from {spec.init_from}")
        check_tokenizer(data_shown, meta, info["tokenizer"], f"run {shown}")
        if meta.get("fingerprint") != info["data"]["fingerprint"]:
            raise CookError(f"{data_shown} is not the data run {shown} was trained on (fingerprint differs): use --init-from to continue on new data")
        if spec.chunks > info["chunks"]:  # extension (a cosine schedule keeps its length: nothing to check)
            total = spec.chunks * int(info["iters_per_chunk"])
            if sched.kind == "wsd":
                sched.check(total)
                note = _rewind_cooldown(run_dir, info, shown)  # before run.json changes: a crash in between redoes it
                if note:
                    notes.append(note)
                info["total_iters"] = total
            info["chunks"] = spec.chunks
            atomic_write_text(run_path, json.dumps(info, indent=2, sort_keys=True) + "\n")
        return info

    if spec.dropout is not None:
        config = dataclasses.replace(config, dropout=float(spec.dropout))
    train = TrainConfig.from_preset(defaults, **overrides, warmup_iters=spec.warmup)
    total = spec.chunks * spec.iters_per_chunk
    sched = _schedule_for(spec, train, total, notes)
    eval_interval, eval_iters = eval_plan(defaults, spec, train)
    init = None
    if spec.init_from is not None:
        ckpt = resolve_checkpoint(spec.init_from)
        ck = read_config(ckpt)
        check_tokenizer(data_shown, meta, ck.get("tokenizer", {}), f"checkpoint {ckpt}")
        diff = _config_diff({k: v for k, v in ck.get("model", {}).items() if k != "dropout"},
                            {k: v for k, v in config.to_dict().items() if k != "dropout"})
        if diff:
            raise CookError(f"--init-from {ckpt}: checkpoint's model config does not match preset {spec.preset} ({diff})")
        if not (ckpt / MODEL_FILE).is_file():
            raise CookError(f"{ckpt / MODEL_FILE}: missing checkpoint file")
        init = str(ckpt.resolve())
    info = {
        "format": 2,
        "preset": spec.preset,
        "model": config.to_dict(),
        "train": asdict(train),
        "schedule": sched.to_dict(),
        "sampler": spec.sampler or "epoch",
        "eval_interval": eval_interval,
        "eval_iters": eval_iters,
        "seed": spec.seed,
        "chunks": spec.chunks,
        "iters_per_chunk": spec.iters_per_chunk,
        "total_iters": sched.total if sched.kind == "cosine" else total,
        "data": {"dir": data_shown if storage.is_remote(data_shown) else str(data.resolve()), "fingerprint": meta.get("fingerprint")},
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
    (chunk N is done <=> its iteration >= N * iters_per_chunk). A run at a URL is pulled first."""
    run_dir = RunSync(run_dir).pull()
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


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: dict[str, TokenBatches | None], eval_iters: int, seed: int,
                  proc: Proc, dtype: str = "float32") -> dict[str, float | None]:
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
            with autocast(proc.device, dtype):
                _, loss = model(x, y)
            total += loss.double()
        if proc.ddp:
            dist.all_reduce(total)
        out[split] = float(total) / eval_iters
    model.train(was_training)
    return out


def split_bpb(meta: dict, split: str, loss: float | None) -> float | None:
    """Bits per byte of `split` for a loss in nats per token (model.baseline), or None if the data folder
    does not record the split's bytes (tokenized before cook recorded them)."""
    from model.baseline import bits_per_byte

    s = (meta.get("splits") or {}).get(split) or {}
    if loss is None or not s.get("bytes") or not s.get("tokens"):
        return None
    return bits_per_byte(loss, int(s["tokens"]), int(s["bytes"]))


def is_compile_error(e: BaseException) -> bool:
    """True for a failure of torch.compile itself (Dynamo tracing, a backend compiler), not of the model's work."""
    try:
        from torch._dynamo.exc import TorchDynamoException
    except ImportError:  # pragma: no cover - every torch cook supports has it
        return False
    return isinstance(e, TorchDynamoException) or type(e).__module__.startswith(("torch._inductor", "torch._dynamo"))


def seed_everything(seed: int) -> None:
    """torch, numpy and python RNGs from one seed: a fresh run's RNG states are a function of its seed."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _load_tokenizer(run_dir: Path, info: dict):
    from model.tokenizer import get_tokenizer, load_tokenizer

    if (run_dir / TOKENIZER_DIR / "tokenizer.json").is_file():
        return load_tokenizer(run_dir / TOKENIZER_DIR)
    return get_tokenizer(info["tokenizer"]["encoding"])


def _sample_text(model: GPT, run_dir: Path, info: dict, n: int, seed: int, device: str, dtype: str = "float32") -> str:
    """A short text from the model (for the chunk's report); '' if the tokenizer cannot be loaded."""
    if n <= 0:
        return ""
    try:
        tok = _load_tokenizer(run_dir, info)
    except Exception:
        return ""
    g = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([[tok.eot_id]], dtype=torch.long, device=device)
    with autocast(device, dtype):
        out = model.generate(idx, n, temperature=0.8, top_k=50, generator=g)
    return tok.decode(out[0, 1:].tolist())


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
               accum: int, lr: float, grad_clip: float, device: str, ddp: bool = False, dtype: str = "float32",
               scaler: torch.amp.GradScaler | None = None) -> torch.Tensor:
    """One optimizer step: set the lr; forward (autocast to `dtype`) and backward over `accum` micro-batches,
    the loss averaged (under DDP gradients sync on the last one only); clip; AdamW step (through the fp16
    loss scaler if any); zero grads. Returns the step's loss (detached). The benchmark times exactly this."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss_acc = torch.zeros((), device=device)
    for m, (x, y) in enumerate(micro_batches):
        if ddp:
            model.require_backward_grad_sync = m == accum - 1
        with autocast(device, dtype):
            _, loss = model(x, y)
            loss = loss / accum
        (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_acc += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)  # skipped when the scaled gradients overflowed
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_acc


def train_chunk(
    run_dir: str | os.PathLike,
    chunk: int,
    *,
    data: str | os.PathLike | None = None,
    opts: ChunkOptions | None = None,
    log: Log | None = None,
    stop: threading.Event | None = None,
    proc: Proc | None = None,
    on_iter: Callable[[int, int], None] | None = None,
) -> dict:
    """Train chunk `chunk` (1-based) of a prepared run from its latest checkpoint; save a checkpoint at its end
    (and one where the cooldown starts, if it starts in this chunk).

    `on_iter(done_in_chunk, iters_per_chunk)` is called after every iteration (progress display).
    If `stop` gets set, saves a mid-chunk checkpoint and raises TrainingInterrupted. Returns a summary:
    chunk, start/end iteration, seed, losses (eval records), val/train loss and bpb, lr, tokens_seen, epochs,
    checkpoint, sample (a short generated text), seconds, skipped (True if the chunk was already done).

    `run_dir` and `data` may be URLs (model.runsync): every process pulls the run's working copy and takes the
    cached copy of the data on its machine; rank 0 pushes each checkpoint it saves, and the run's files after.
    """
    t_start = time.time()
    opts = opts or ChunkOptions()
    check_options(opts)
    stop = stop if stop is not None else STOP
    proc = proc or setup_process(opts.device)
    sync = RunSync(run_dir)
    shown = sync.shown
    run_dir = sync.pull()
    _barrier(proc)  # every process has pulled before rank 0 writes into a working copy they may share
    info = read_run(run_dir)
    data_loc = data if data is not None else info["data"]["dir"]
    data_shown = storage.redact(data_loc) if storage.is_remote(data_loc) else str(Path(data_loc))
    data = local_data(data_loc)
    meta = load_meta(data)
    check_tokenizer(data_shown, meta, info["tokenizer"], f"run {shown}")
    if meta.get("fingerprint") != info["data"]["fingerprint"]:
        raise CookError(f"{data_shown} is not the data run {shown} was trained on (fingerprint differs)")
    K = int(info["iters_per_chunk"])
    if not 1 <= chunk <= int(info["chunks"]):
        raise CookError(f"run {shown} has chunks 1..{info['chunks']}, not {chunk}")
    chunk_start, chunk_end = (chunk - 1) * K, chunk * K
    eval_interval = opts.eval_interval or int(info["eval_interval"])
    eval_iters = opts.eval_iters or int(info["eval_iters"])
    tc = TrainConfig(**info["train"])
    sched = Schedule.from_run(info)
    plan = int(info["total_iters"]) if sched.kind == "cosine" else int(info["chunks"]) * K
    pre = pre_cooldown_checkpoint(info)
    if tc.grad_accum % proc.world:
        raise CookError(f"--grad-accum {tc.grad_accum} is not a multiple of the {proc.world} processes")
    accum = tc.grad_accum // proc.world
    base_seed = int(info["seed"])
    chunk_seed = derive_seed(base_seed, "chunk", chunk)
    config = GPTConfig.from_dict(info["model"])
    dev = proc.device
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype = resolve_dtype(opts.dtype, dev)
    use_fast_kernels(dev)

    # -- state: latest checkpoint, else the init-from weights, else a fresh seeded init
    latest = latest_checkpoint(run_dir)
    state = read_state(latest) if latest is not None else None
    it0 = int(state["iteration"]) if state else 0
    summary = {"chunk": chunk, "seed": chunk_seed, "start_iter": it0, "end_iter": chunk_end, "skipped": False}
    if it0 >= chunk_end:
        return {**summary, "skipped": True, "checkpoint": sync.show(latest), "seconds": 0.0}
    if it0 < chunk_start:
        raise CookError(f"run {shown}: chunk {chunk} starts at iteration {chunk_start} but the latest checkpoint is at {it0}; train the earlier chunks first")
    torch.manual_seed(derive_seed(base_seed, "init"))
    model = GPT(config)
    if latest is not None:
        diff = _config_diff(read_config(latest).get("model", {}), info["model"])
        if diff:
            raise CookError(f"{sync.show(latest)}: checkpoint from a different model config than run {shown} ({diff})")
        load_model_file(latest / MODEL_FILE, model)
    elif info.get("init_from"):
        load_model_file(Path(info["init_from"]) / MODEL_FILE, model)
    model.to(dev)
    optimizer = model.configure_optimizer(tc.weight_decay, tc.learning_rate, (tc.beta1, tc.beta2), device_type)
    if latest is not None and (latest / OPTIM_FILE).is_file():
        load_optimizer_file(latest / OPTIM_FILE, optimizer, model)
    scaler = grad_scaler(dev, dtype)
    if scaler is not None and state and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    if state and "rng" in state:
        restore_rng_states(state["rng"])
    elif state is None:
        seed_everything(derive_seed(base_seed, "rng"))
    best_val = state.get("best_val_loss") if state else None
    tokens_seen = int(state.get("tokens_seen", 0)) if state else 0
    chunk_seeds = {str(k): v for k, v in (state.get("chunk_seeds", {}) if state else {}).items()}
    chunk_seeds[str(chunk)] = chunk_seed

    def wrap(fwd: torch.nn.Module) -> torch.nn.Module:
        if not proc.ddp:
            return fwd
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(fwd, device_ids=[proc.local_rank] if device_type == "cuda" else None)

    compiled = compile_default(opts.compile, dev)
    train_model = wrap(torch.compile(model) if compiled else model)

    sampler = info.get("sampler", "random")  # runs made before the epoch sampler drew random windows
    if sampler == "epoch":
        train_batches = EpochBatches(data, "train", config.block_size, tc.batch_size, tc.grad_accum)
        data_seed = derive_seed(base_seed, "data")
    else:
        train_batches = TokenBatches(data, "train", config.block_size, tc.batch_size, tc.grad_accum)
        data_seed = chunk_seed
    eval_batches: dict[str, TokenBatches | None] = {"train": TokenBatches(data, "train", config.block_size, tc.batch_size)}
    try:
        eval_batches["val"] = TokenBatches(data, "val", config.block_size, tc.batch_size)
    except CookError:
        eval_batches["val"] = None  # no (usable) validation split: eval reports train loss only
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
            "data_cursor": {"sampler": sampler, "seed": data_seed, "iteration": it, "epochs": train_batches.epochs(it)},
            "rng": rng_states(), "best_val_loss": best_val, "val_loss": val, "train_loss": train_loss,
            "val_bpb": split_bpb(meta, "val", val), "train_bpb": split_bpb(meta, "train", train_loss),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
            "tokens_seen": tokens_seen, "lr": lr, "world_size": proc.world, "saved_at": time.time(),
        }

    ck_config = {"model": info["model"], "train": info["train"], "preset": info["preset"], "data": info["data"],
                 "tokenizer": info["tokenizer"], "total_iters": info["total_iters"], "schedule": sched.to_dict()}

    def save(name: str, st: dict, push: bool = True) -> Path:
        path = run_dir / CHECKPOINTS / name
        if proc.master:
            save_checkpoint(path, model, optimizer, st, ck_config)
            if push:
                sync.push()  # a run on object storage: the checkpoint is there (complete) before training goes on
        _barrier(proc)
        return path

    def stop_requested(it: int) -> bool:
        flag = stop.is_set()
        if proc.ddp:  # every rank must stop at the same iteration: agree every log_interval iterations
            if (it - it0) % opts.log_interval:
                return False
            t = torch.tensor([1.0 if flag else 0.0], device=dev)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            flag = bool(t.item() > 0)
        return flag

    evals: list[dict] = []
    lr = sched.lr_at(it0, plan)
    last_loss: float | None = None
    val_loss: float | None = None
    t_log, it_log = time.time(), it0
    if device_type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    train_model.train()
    for it in range(it0, chunk_end):
        if stop_requested(it):
            if latest is not None and it == it0:
                path = latest  # nothing new since the checkpoint we started from
            else:
                path = save(checkpoint_name(chunk, it), snapshot(it, lr, False, None, last_loss))
            raise TrainingInterrupted(f"interrupted: saved checkpoint at iteration {it} ({sync.show(path)}) — run the same command to resume")
        if pre is not None and it == pre[0] and it > max(it0, chunk_start):
            save(pre[1], snapshot(it, lr, False, None, last_loss))
            if log is not None and proc.master:
                log(f"chunk {chunk} iter {it}: the cooldown starts; checkpoint {pre[1]} saved (extending the run goes on from it)")
        lr = sched.lr_at(it, plan)

        def micro_batches(it: int = it):
            for m in range(accum):
                micro = proc.rank * accum + m
                x, y = train_batches.batch(data_seed, it, micro, dev)
                torch.manual_seed(derive_seed(chunk_seed, it, micro))  # dropout masks depend on (seed, it, micro) only
                yield x, y

        failed = None
        try:
            loss_acc = train_step(train_model, optimizer, micro_batches(), accum, lr, tc.grad_clip, dev, proc.ddp, dtype, scaler)
        except Exception as e:  # noqa: BLE001 - only a compile error on the first step is handled, below
            if not (compiled and it == it0 and is_compile_error(e)):
                raise
            failed = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        if failed is not None:  # retried outside the except block: the failed attempt's tensors are freed first
            if proc.ddp:  # ranks cannot agree to rebuild DDP mid-step: stop every rank, with the way out
                raise CookError(f"torch.compile failed on rank {proc.rank} ({failed}): run again with --no-compile")
            import torch._dynamo as dynamo  # (a bare `import torch._dynamo` would make `torch` local here)

            dynamo.reset()
            compiled = False
            optimizer.zero_grad(set_to_none=True)
            if log is not None:
                log(f"warning: torch.compile failed ({failed}); training eagerly (--no-compile skips the attempt)")
            train_model = wrap(model)
            train_model.train()
            loss_acc = train_step(train_model, optimizer, micro_batches(), accum, lr, tc.grad_clip, dev, proc.ddp, dtype, scaler)
        tokens_seen += tokens_per_iter
        done = it + 1
        if on_iter is not None:
            on_iter(done - chunk_start, K)

        if done % opts.log_interval == 0 or it == it0 or done == chunk_end:
            last_loss = float(loss_acc)
            dt = (time.time() - t_log) / max(1, done - it_log)
            t_log, it_log = time.time(), done
            rec = {"iter": done, "chunk": chunk, "kind": "train", "loss": last_loss, "lr": lr,
                   "tokens_per_s": tokens_per_iter / dt if dt > 0 else None, "tokens_seen": tokens_seen, "ms_per_iter": 1000 * dt}
            msg = f"chunk {chunk} iter {done}: loss {last_loss:.4f}, lr {lr:.3e}, {rec['tokens_per_s'] or 0:,.0f} tok/s"
            if device_type == "cuda":
                rec["mfu"] = model.estimate_mfu(tc.batch_size * tc.grad_accum, dt * proc.world) if dt > 0 else None
                rec["peak_mem_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
                msg += (f", mfu {100 * rec['mfu']:.1f}%" if rec["mfu"] is not None else "") + f", {rec['peak_mem_mb']:,.0f} MiB"
            metrics.write(rec, msg)

        if done % eval_interval == 0 or done == chunk_end:
            t_eval = time.time()
            losses = estimate_loss(model, eval_batches, eval_iters, eval_seed, proc, dtype)  # eager: no second compile
            val_loss = losses["val"]
            rec = {"iter": done, "chunk": chunk, "kind": "eval", "train_loss": losses["train"], "val_loss": val_loss,
                   "train_bpb": split_bpb(meta, "train", losses["train"]), "val_bpb": split_bpb(meta, "val", val_loss),
                   "lr": lr, "epochs": round(train_batches.epochs(done), 6)}
            evals.append(rec)
            vs = f"{val_loss:.4f}" if val_loss is not None else "n/a"
            bpb = f" ({rec['val_bpb']:.4f} bits/byte)" if rec["val_bpb"] is not None else ""
            metrics.write(rec, f"chunk {chunk} iter {done}: eval train loss {losses['train']:.4f}, val loss {vs}{bpb}, "
                               f"epoch {rec['epochs']:.3f} ({time.time() - t_eval:.1f} s)")
            t_log = time.time()  # keep eval time out of tokens/s

    # -- end of chunk: checkpoint, best, retention
    if val_loss is not None and (best_val is None or val_loss < best_val):
        best_val = val_loss
    ck = save(checkpoint_name(chunk), snapshot(chunk_end, lr, True, val_loss, last_loss), push=False)
    if proc.master:
        update_best(run_dir, ck, val_loss, chunk_end)
        prune_checkpoints(run_dir, opts.keep_last, keep=[pre[1]] if pre is not None else ())
        # one upload for the chunk's end: metrics, the checkpoint (complete), best.json, then the pruned ones go
        sync.push()
    sample = _sample_text(model, run_dir, info, opts.sample_tokens, chunk_seed, dev, dtype) if proc.master else ""
    _barrier(proc)
    if proc.ddp:  # ranks must hold identical weights; the digest lets callers (and tests) check it
        summary["param_digest"] = param_digest(model)
    return {**summary, "losses": evals, "val_loss": val_loss, "train_loss": last_loss, "lr": lr, "tokens_seen": tokens_seen,
            "val_bpb": split_bpb(meta, "val", val_loss), "epochs": train_batches.epochs(chunk_end),
            "baseline": (meta.get("baseline") or {}).get("bigram"),
            "checkpoint": sync.show(ck), "best": (read_best(run_dir) or {}).get("name") if proc.master else None,
            "sample": sample, "seconds": time.time() - t_start}


def param_digest(model: torch.nn.Module) -> str:
    """sha256 over every parameter's bytes, in name order: equal digests <=> identical weights."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(unwrap(model).named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def train_worker(data: str | os.PathLike, run: str | os.PathLike, spec: RunSpec | None = None, opts: ChunkOptions | None = None,
                 log: Log | None = None, stop: threading.Event | None = None, **kw: Any) -> list[dict]:
    """The whole run as a plain loop (no Prefect): prepare, then every chunk left. Under torchrun every
    rank but 0 runs this, in step with rank 0's flow; it also works alone in one process. Scripts may pass
    the fields of RunSpec and ChunkOptions as keywords instead."""
    if kw:
        spec_kw, opts_kw = split_kwargs(kw)
        spec = spec or spec_kw
        opts = opts or opts_kw
    opts = opts or ChunkOptions()
    proc = setup_process(opts.device)
    info = prepare_run(data, run, spec, proc=proc)
    return [train_chunk(run, c, data=data, opts=opts, log=log, stop=stop, proc=proc) for c in info["todo"]]
