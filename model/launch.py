"""Train one chunk on N local processes (DDP) by launching torchrun, so nobody has to type it.

    launch_chunk(run, chunk, nproc=8, ...)   # in the parent (the Prefect task): starts and watches torchrun
    python -m model.launch SPEC_DIR          # what torchrun starts on every rank: model.train.train_chunk

The parent writes SPEC_DIR/spec.json (the chunk's arguments) and starts
`python -m torch.distributed.run --standalone --nproc_per_node=N -m model.launch SPEC_DIR`. It streams the
ranks' output to its `log` (rank 0 prints the chunk's log lines, and progress as `cook-progress: DONE/TOTAL`),
and reads the outcome from SPEC_DIR/rank0.json, which rank 0 writes atomically: the chunk's summary, or
that it was interrupted, or an error (any rank that fails writes its own rankR.json).

Stopping: when the parent's `stop` event is set (SIGTERM, Ctrl-C, a Prefect cancellation), it creates
SPEC_DIR/stop; every rank polls for it, so all agree on an iteration, save a mid-chunk checkpoint there and
exit cleanly (the parent then raises TrainingInterrupted with rank 0's message). Ranks also stop this way when
the parent process is gone (even after SIGKILL). A signal sent to the ranks themselves works as under a
hand-typed torchrun. This module never imports prefect.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from model.atomic import atomic_write_text
from model.errors import CookError

SPEC_FILE = "spec.json"
STOP_FILE = "stop"
PROGRESS = "cook-progress: "
# how long torchrun gives ranks to exit after it forwards a signal (they may be saving a checkpoint)
SHUTDOWN_TIMEOUT_S = 300

Log = Callable[[str], None]


def under_torchrun() -> bool:
    """True in a process that torchrun started (it sets WORLD_SIZE)."""
    return "WORLD_SIZE" in os.environ


def check_gpus(gpus: int, device: str = "auto") -> None:
    """`--gpus N`: a positive integer, and on CUDA no more than the visible devices; CookError with one line."""
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 1:
        raise CookError(f"--gpus must be a positive integer (got {gpus})")
    if gpus == 1 or under_torchrun():
        return
    import torch

    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        n = torch.cuda.device_count()
        if gpus > n:
            raise CookError(f"--gpus {gpus}: only {n} CUDA device{'s' if n != 1 else ''} visible")


def _rank_file(spec_dir: Path, rank: int) -> Path:
    return spec_dir / f"rank{rank}.json"


def _read_outcome(spec_dir: Path, rank: int) -> dict | None:
    try:
        return json.loads(_rank_file(spec_dir, rank).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _child_env(nproc: int, device: str) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))  # newer torch reads it; older ignore it
    if "OMP_NUM_THREADS" not in env:  # share the CPU cores out (torchrun would set 1 and warn)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc) if device == "cpu" else 1)
    # the ranks must import this project's `model` package, wherever the parent was started
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def launch_chunk(
    run_dir: str | os.PathLike,
    chunk: int,
    *,
    nproc: int,
    data: str | os.PathLike | None = None,
    opts: Any = None,
    log: Log | None = None,
    stop: threading.Event | None = None,
    on_iter: Callable[[int, int], None] | None = None,
    poll_s: float = 0.2,
) -> dict:
    """Train chunk `chunk` of a prepared run on `nproc` processes under torchrun; return rank 0's summary
    (as model.train.train_chunk does). Raises TrainingInterrupted when stopped, CookError for bad input,
    RuntimeError for anything else (a rank crashed)."""
    from model.train import STOP, ChunkOptions, TrainingInterrupted, resolve_device

    opts = opts or ChunkOptions()
    stop = stop if stop is not None else STOP
    dev = resolve_device(opts.device)
    dev = "cuda" if dev.startswith("cuda") else "cpu"
    log = log or (lambda s: None)
    spec_dir = Path(tempfile.mkdtemp(prefix="cook-chunk-"))
    try:
        import psutil

        me = psutil.Process()
        spec = {"run": str(run_dir), "chunk": chunk, "data": str(data) if data is not None else None,
                "opts": {**dataclasses.asdict(opts), "device": dev},
                "parent": {"pid": me.pid, "create_time": me.create_time()}}
        atomic_write_text(spec_dir / SPEC_FILE, json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "model.launch", str(spec_dir)]
        log(f"chunk {chunk}: launching {nproc} processes ({'nccl' if dev == 'cuda' else 'gloo'}) with torchrun")
        # own session: a Ctrl-C at the terminal reaches the parent only, which stops the ranks once, via the stop file
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=_child_env(nproc, dev), start_new_session=True, text=True, errors="replace",
                                bufsize=1)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        reader = threading.Thread(target=pump, name="cook-torchrun-output", daemon=True)
        reader.start()
        tail: collections.deque[str] = collections.deque(maxlen=40)
        stop_sent = False
        eof = False
        try:
            while not eof:
                if stop.is_set() and not stop_sent:
                    (spec_dir / STOP_FILE).touch()
                    stop_sent = True
                    log(f"chunk {chunk}: stopping the {nproc} processes (they save a checkpoint first)")
                try:
                    line = lines.get(timeout=poll_s)
                except queue.Empty:
                    continue
                if line is None:
                    eof = True
                elif line.startswith(PROGRESS):
                    if on_iter is not None:
                        with_total = line[len(PROGRESS):].split("/")
                        try:
                            on_iter(int(with_total[0]), int(with_total[1]))
                        except (ValueError, IndexError):
                            pass
                else:
                    tail.append(line)
                    log(line)
            rc = proc.wait()
        except BaseException:
            # the parent itself is going down (a second signal, an error in a callback): stop the ranks first
            (spec_dir / STOP_FILE).touch()
            _wait_or_kill(proc)
            raise
        reader.join(timeout=5)

        first = _read_outcome(spec_dir, 0) or {}
        if "summary" in first and rc == 0:
            return first["summary"]
        if "interrupted" in first:
            raise TrainingInterrupted(first["interrupted"])
        for rank in range(nproc):
            out = _read_outcome(spec_dir, rank) or {}
            if "error" in out:
                if out.get("cook"):
                    raise CookError(out["error"])
                raise RuntimeError(f"chunk {chunk}: rank {rank} failed: {out['error']}")
        if stop_sent:
            raise TrainingInterrupted(f"interrupted: chunk {chunk} stopped before it saved a checkpoint — run the same command to resume")
        last = next((t for t in reversed(tail) if t.strip()), "")
        raise RuntimeError(f"chunk {chunk}: torchrun exited with code {rc}" + (f" ({last.strip()[:200]})" if last else ""))
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


def _wait_or_kill(proc: subprocess.Popen, grace_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Give the ranks (told to stop by the stop file) time to save and exit; SIGKILL torchrun if they do not,
    or if the wait itself is interrupted (ranks left behind still stop: they notice the parent is gone)."""
    try:
        proc.wait(timeout=grace_s)
    except BaseException:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------- the rank side


def _watch(spec_dir: Path, parent: dict, stop: threading.Event, done: threading.Event, interval: float = 0.2) -> None:
    """Set `stop` once SPEC_DIR/stop exists or the launching process is gone."""
    import psutil

    try:
        p = psutil.Process(parent["pid"])
        alive = p.is_running() and abs(p.create_time() - parent["create_time"]) < 1e-3
    except (psutil.Error, KeyError, TypeError):
        alive = False
    while not done.wait(interval):
        if (spec_dir / STOP_FILE).exists() or not alive or not p.is_running():
            stop.set()
            return


def _write_outcome(spec_dir: Path, rank: int, outcome: dict) -> None:
    try:
        atomic_write_text(_rank_file(spec_dir, rank), json.dumps(outcome))
    except OSError:
        pass  # the parent is gone and took SPEC_DIR with it


def main(argv: list[str] | None = None) -> int:
    """One rank of a launched chunk: join the process group, train the chunk, report the outcome."""
    import torch.distributed as dist

    from model.train import STOP, ChunkOptions, TrainingInterrupted, setup_process, stop_on_signals, train_chunk

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m model.launch SPEC_DIR (started by launch_chunk under torchrun)", file=sys.stderr)
        return 2
    spec_dir = Path(argv[0])
    spec: dict[str, Any] = json.loads((spec_dir / SPEC_FILE).read_text(encoding="utf-8"))
    rank = int(os.environ.get("RANK", "0"))
    done = threading.Event()
    last_pct = [-1]

    def on_iter(n: int, total: int) -> None:
        pct = 100 * n // max(1, total)
        if pct != last_pct[0]:
            last_pct[0] = pct
            print(f"{PROGRESS}{n}/{total}", flush=True)

    with stop_on_signals(STOP):
        watcher = threading.Thread(target=_watch, args=(spec_dir, spec.get("parent") or {}, STOP, done), daemon=True)
        watcher.start()
        try:
            opts = ChunkOptions(**spec["opts"])
            proc = setup_process(opts.device)
            summary = train_chunk(
                spec["run"], int(spec["chunk"]), data=spec["data"], opts=opts, stop=STOP, proc=proc,
                log=(lambda s: print(s, flush=True)) if rank == 0 else None,
                on_iter=on_iter if rank == 0 else None)
            if rank == 0:
                _write_outcome(spec_dir, 0, {"summary": summary})
            return 0
        except TrainingInterrupted as e:  # every rank stopped at the same iteration, after the checkpoint
            if rank == 0:
                _write_outcome(spec_dir, 0, {"interrupted": str(e)})
            return 0
        except CookError as e:  # a non-zero exit makes torchrun stop the other ranks
            _write_outcome(spec_dir, rank, {"error": str(e), "cook": True})
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        except Exception as e:
            _write_outcome(spec_dir, rank, {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            raise
        finally:
            done.set()
            if dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
