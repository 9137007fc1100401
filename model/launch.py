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
hand-typed torchrun.

Several machines (`cook train --gpus N --nodes M --rdzv-endpoint HOST:PORT --node-rank R`): every machine
runs the same command; node 0 runs the Prefect flow and, per chunk, a torchrun agent that hosts a c10d
rendezvous at HOST:PORT; nodes 1..M-1 run `follow` (no Prefect): a loop of agents that join those
rendezvous. Ranks are numbered by node (R*N + LOCAL_RANK), so global rank 0 is on node 0 and writes every
file there; the other nodes learn the chunk (and the run's options, and whether it is the last) from it by
a broadcast. A node that does not join within the rendezvous timeout fails the chunk with one line. This
module never imports prefect.
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
RDZV_ID = "cook-train"
RDZV_TIMEOUT_S = 600  # torchrun's own default join timeout

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


@dataclasses.dataclass(frozen=True)
class Nodes:
    """This machine's place in a job over several machines (`cook train --nodes`)."""

    count: int = 1
    endpoint: str | None = None  # HOST:PORT on node 0, where its agents host the rendezvous
    rank: int = 0  # 0 runs the Prefect flow; global rank 0 (every file) is on it
    timeout_s: int = RDZV_TIMEOUT_S  # how long an agent waits for the others (and a node for node 0)

    @property
    def multi(self) -> bool:
        return self.count > 1


def _split_endpoint(endpoint: str) -> tuple[str, int] | None:
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")  # [::1]:29400
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def check_nodes(nodes: Nodes) -> None:
    """`--nodes M --rdzv-endpoint HOST:PORT --node-rank R --rdzv-timeout S`: CookError with one line."""
    for flag, value in (("--nodes", nodes.count), ("--rdzv-timeout", nodes.timeout_s)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CookError(f"{flag} must be a positive integer (got {value})")
    if isinstance(nodes.rank, bool) or not isinstance(nodes.rank, int) or not 0 <= nodes.rank < nodes.count:
        raise CookError(f"--node-rank must be in 0..{nodes.count - 1} for --nodes {nodes.count} (got {nodes.rank})")
    if not nodes.multi:
        return
    if under_torchrun():
        raise CookError("--nodes launches torchrun on every machine itself: under a hand-typed torchrun, "
                        "give it --nnodes instead")
    if not nodes.endpoint:
        raise CookError(f"--nodes {nodes.count} needs --rdzv-endpoint HOST:PORT: node 0's address and a free port there, "
                        "reachable from every node")
    if _split_endpoint(nodes.endpoint) is None:
        raise CookError(f"--rdzv-endpoint must be HOST:PORT (got {nodes.endpoint!r})")


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
    chunk: int | None,
    *,
    nproc: int,
    nodes: Nodes | None = None,
    last: bool = True,
    data: str | os.PathLike | None = None,
    opts: Any = None,
    log: Log | None = None,
    stop: threading.Event | None = None,
    on_iter: Callable[[int, int], None] | None = None,
    poll_s: float = 0.2,
) -> dict:
    """Train chunk `chunk` of a prepared run on `nproc` processes under torchrun; return rank 0's summary
    (as model.train.train_chunk does). Raises TrainingInterrupted when stopped, CookError for bad input,
    RuntimeError for anything else (a rank crashed).

    With `nodes` (several machines), this machine's `nproc` processes join the others' at the rendezvous;
    node 0 passes the chunk and `last` (no chunk follows in this flow run), the other nodes pass chunk None
    and get both from node 0: the summary they return is their first local rank's, with `chunk` and `last`."""
    from model.train import STOP, ChunkOptions, TrainingInterrupted, resolve_device

    opts = opts or ChunkOptions()
    stop = stop if stop is not None else STOP
    dev = resolve_device(opts.device)
    dev = "cuda" if dev.startswith("cuda") else "cpu"
    log = log or (lambda s: None)
    multi = nodes is not None and nodes.multi
    first = nodes.rank * nproc if multi else 0  # global rank of this machine's first process
    what = f"chunk {chunk}" if chunk is not None else f"node {nodes.rank if multi else 0}"
    spec_dir = Path(tempfile.mkdtemp(prefix="cook-chunk-"))
    try:
        import psutil

        me = psutil.Process()
        spec = {"run": str(run_dir), "chunk": chunk, "data": str(data) if data is not None else None,
                "opts": {**dataclasses.asdict(opts), "device": dev},
                "parent": {"pid": me.pid, "create_time": me.create_time()}, "last": last,
                "nodes": {"count": nodes.count, "rank": nodes.rank, "nproc": nproc, "timeout_s": nodes.timeout_s}
                if multi else None}
        atomic_write_text(spec_dir / SPEC_FILE, json.dumps(spec))
        cmd = [sys.executable, "-m", "torch.distributed.run"]
        if multi:
            t = nodes.timeout_s  # node 0 hosts the rendezvous store; the others wait up to t to reach it
            cmd += [f"--nnodes={nodes.count}", "--rdzv_backend=c10d", f"--rdzv_endpoint={nodes.endpoint}",
                    f"--rdzv_id={RDZV_ID}", "--max_restarts=0",
                    f"--rdzv_conf=join_timeout={t},read_timeout={t},is_host={1 if nodes.rank == 0 else 0}"]
        else:
            cmd += ["--standalone"]
        cmd += [f"--nproc_per_node={nproc}", "-m", "model.launch", str(spec_dir)]
        if chunk is not None:
            on = f" on node 0 of {nodes.count}, rendezvous at {nodes.endpoint}" if multi else ""
            log(f"chunk {chunk}: launching {nproc} processes ({'nccl' if dev == 'cuda' else 'gloo'}) with torchrun{on}")
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
        tracebacks = _Tracebacks()  # torchrun's own traceback for a failed rendezvous becomes one line, raised below
        stop_sent = False
        eof = False
        try:
            while not eof:
                if stop.is_set() and not stop_sent:
                    (spec_dir / STOP_FILE).touch()
                    stop_sent = True
                    log(f"{what}: stopping the {nproc} processes (they save a checkpoint first)")
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
                    for out in tracebacks.feed(line):
                        # a following node's ranks log nothing (rank 0 is on node 0), and their errors come back
                        # through the outcome files: its torchrun's chatter while it waits for node 0 is not shown
                        if chunk is not None:
                            log(out)
            rc = proc.wait()
        except BaseException:
            # the parent itself is going down (a second signal, an error in a callback): stop the ranks first
            (spec_dir / STOP_FILE).touch()
            _wait_or_kill(proc)
            raise
        reader.join(timeout=5)
        for out in tracebacks.flush() if chunk is not None else ():
            log(out)
        rdzv_errors = tracebacks.rendezvous_errors

        outcome = _read_outcome(spec_dir, first) or {}
        if "summary" in outcome and rc == 0:
            return outcome["summary"]
        if "interrupted" in outcome:
            raise TrainingInterrupted(outcome["interrupted"])
        for rank in range(first, first + nproc):
            out = _read_outcome(spec_dir, rank) or {}
            if "error" in out:
                if out.get("cook"):
                    raise CookError(out["error"])
                raise RuntimeError(f"{what}: rank {rank} failed: {out['error']}")
        if stop_sent:
            raise TrainingInterrupted(f"interrupted: {what} stopped before it saved a checkpoint — run the same command "
                                      "to resume")
        if multi and rdzv_errors:
            raise _rendezvous_error(what, nodes, rdzv_errors)
        end = next((t for t in reversed(tail) if t.strip()), "")
        raise RuntimeError(f"{what}: torchrun exited with code {rc}" + (f" ({end.strip()[:200]})" if end else ""))
    finally:
        shutil.rmtree(spec_dir, ignore_errors=True)


# torchrun's rendezvous failures, as its traceback names them
_RDZV_ERRORS = ("RendezvousTimeoutError", "RendezvousConnectionError", "RendezvousClosedError", "DistNetworkError")


class _Tracebacks:
    """Pass output lines through, holding back each traceback until its exception line: one that names a
    rendezvous failure is dropped (remembered in `rendezvous_errors`), any other is passed on whole."""

    def __init__(self) -> None:
        self.block: list[str] | None = None
        self.rendezvous_errors: set[str] = set()

    def feed(self, line: str) -> list[str]:
        if self.block is None:
            if not line.startswith("Traceback (most recent call last)"):
                return [line]
            self.block = []
        self.block.append(line)
        if line.startswith((" ", "Traceback", "During handling", "The above exception")) or not line.strip():
            return []
        block, self.block = self.block, None  # the exception line ends the block
        names = {e for e in _RDZV_ERRORS if e in line}
        if names:
            self.rendezvous_errors |= names
            return []
        return block

    def flush(self) -> list[str]:
        block, self.block = self.block or [], None
        return block


class RendezvousFailed(CookError):
    """The nodes did not all meet (a node never started, node 0 is unreachable, or it gave up)."""


class _RendezvousRetry(RuntimeError):
    """A rendezvous that was already closed (the previous chunk's, still shutting down): try again."""


def _rendezvous_error(what: str, nodes: Nodes, errors: set[str]) -> Exception:
    t = nodes.timeout_s
    if "RendezvousClosedError" in errors and len(errors) == 1:
        return _RendezvousRetry(f"{what}: the rendezvous at {nodes.endpoint} was already closed")
    if nodes.rank == 0:
        if "DistNetworkError" in errors:
            return RendezvousFailed(f"{what}: cannot host the rendezvous at {nodes.endpoint} (is the port free on this machine?)")
        return RendezvousFailed(f"{what}: not all {nodes.count} nodes joined the rendezvous at {nodes.endpoint} within "
                                f"{t} s: start the same `cook train` with --node-rank 1..{nodes.count - 1} on the other "
                                "machines (or raise --rdzv-timeout)")
    return RendezvousFailed(f"{what}: no chunk to train from node 0 at {nodes.endpoint} within {t} s: is `cook train ... "
                            f"--node-rank 0` running there, and the port reachable from here? (--rdzv-timeout waits longer)")


def follow(
    run_dir: str | os.PathLike,
    *,
    nproc: int,
    nodes: Nodes,
    data: str | os.PathLike | None = None,
    opts: Any = None,
    log: Log | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Node R > 0 of `cook train --nodes`: join node 0's chunks, one torchrun agent each, until node 0 says its
    last one is done; return how many were trained. A failed chunk is joined again (node 0's task retries it)
    until node 0 has not come for `nodes.timeout_s`; CookError (one line) for bad input, an interruption
    (any node's: all stop at one iteration, after node 0 saved a checkpoint), or node 0 not coming."""
    import time

    from model.train import STOP, TrainingInterrupted

    stop = stop if stop is not None else STOP
    log = log or (lambda s: None)
    trained = 0
    since = time.monotonic()
    while True:
        if stop.is_set():
            raise TrainingInterrupted(f"interrupted: node {nodes.rank} stopped between chunks")
        try:
            summary = launch_chunk(run_dir, None, nproc=nproc, nodes=nodes, data=data, opts=opts, log=log, stop=stop)
        except RuntimeError as e:  # a rank crashed, or a node died: node 0's task retries the chunk once
            if time.monotonic() - since > nodes.timeout_s:
                raise RendezvousFailed(f"node {nodes.rank}: {e}; node 0 did not retry within {nodes.timeout_s} s") from e
            if not isinstance(e, _RendezvousRetry):
                log(f"warning: {e}; waiting for node 0 to retry")
            time.sleep(1.0)
            continue
        since = time.monotonic()
        trained += 1
        log(f"node {nodes.rank}: chunk {summary.get('chunk')} done" + ("" if not summary.get("last") else " (node 0's last)"))
        if summary.get("last"):
            return trained
        time.sleep(1.0)  # let node 0's agent, which hosted this chunk's rendezvous, exit before joining the next


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


def _check_node_ranks(nodes: dict, local: int, world: int) -> None:
    """Every machine its own --node-rank: checked on torchrun's store before the process group, where two
    processes given one rank would wait for the missing one until the group's timeout."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=timedelta(seconds=int(nodes.get("timeout_s", RDZV_TIMEOUT_S))))
    if local == 0:
        store.add(f"cook/node-rank/{nodes['rank']}", 1)
    if store.add("cook/arrived", 1) == world:
        store.set("cook/all-arrived", "1")
    store.wait(["cook/all-arrived"])
    for r in range(nodes["count"]):
        n = store.add(f"cook/node-rank/{r}", 0)
        if n > 1:
            raise CookError(f"{n} machines were started with --node-rank {r}: give each machine its own, "
                            f"0..{nodes['count'] - 1}")


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
    nodes = spec.get("nodes")
    if nodes:  # number ranks by node: global rank 0 (files, logs, the summary) is then node 0's first process
        local, world = int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
        if world != nodes["count"] * nodes["nproc"]:  # ranks would collide: stop every node with one line
            _write_outcome(spec_dir, nodes["rank"] * nodes["nproc"] + local, {"cook": True, "error": (
                f"the nodes were started with different --gpus ({world} processes in all, not {nodes['count']} x "
                f"{nodes['nproc']}): give every machine the same")})
            return 1
        os.environ["RANK"] = str(nodes["rank"] * nodes["nproc"] + local)
    rank = int(os.environ.get("RANK", "0"))
    first = nodes["rank"] * nodes["nproc"] if nodes else 0  # this machine's first process: writes its outcome
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
            if nodes:
                _check_node_ranks(nodes, int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
            proc = setup_process(opts.device)
            chunk, last = spec["chunk"], spec.get("last", True)
            if nodes:  # node 0 says which chunk, how (its options), and whether another follows
                head = [{"chunk": chunk, "opts": spec["opts"], "last": last}]
                dist.broadcast_object_list(head, src=0)
                chunk, last = head[0]["chunk"], head[0]["last"]
                opts = ChunkOptions(**{**head[0]["opts"], "device": opts.device})
            summary = train_chunk(
                spec["run"], int(chunk), data=spec["data"], opts=opts, stop=STOP, proc=proc,
                log=(lambda s: print(s, flush=True)) if rank == 0 else None,
                on_iter=on_iter if rank == 0 else None)
            if rank == first:
                _write_outcome(spec_dir, rank, {"summary": {**summary, "last": last}})
            return 0
        except TrainingInterrupted as e:  # every rank stopped at the same iteration, after the checkpoint
            if rank == first:
                _write_outcome(spec_dir, rank, {"interrupted": str(e)})
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
