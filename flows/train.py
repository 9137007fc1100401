"""`cook train`: train a GPT in chunks, each a Prefect task with a checkpoint at its end.

Running the same command again resumes: which chunks are left is read from the run's latest
checkpoint. SIGTERM, Ctrl-C or a Prefect cancellation saves a checkpoint at the current iteration
and stops (the run then fails with one line saying how to resume).

After each chunk, and at the end, RUN/loss.png shows the run's loss curve (also the image artifact
`train-loss`, and embedded in the chunk's markdown artifact `train-chunk-N`).

Several GPUs (or CPU processes) with DDP: `gpus=N` (`cook train --gpus 8 ...`). This flow stays one
process; each chunk task launches `torchrun --standalone --nproc_per_node=N` for that chunk (model.launch),
streams its output into the run's log and reads rank 0's summary. Or by hand:

    torchrun --standalone --nproc_per_node=8 -m flows.cli train -- --data DIR --run DIR --preset gpt2-124m --chunks 20 --iters-per-chunk 5000

where rank 0 runs this flow (Prefect logs, artifacts, every file) and the other ranks run the same chunk
loop without Prefect (`model.train.train_worker`), in step with it (`gpus` is then ignored). The `--`
stops torchrun from reading `--run` as its own `--run-path`. On CPU it uses gloo (`--device cpu`), on GPUs nccl.

Several machines: `nodes=M, rdzv_endpoint="HOST:PORT"` (`cook train --gpus N --nodes M --rdzv-endpoint
HOST:PORT`, node rank 0). This flow runs on node 0 only; each chunk's torchrun hosts a c10d rendezvous there
that the other machines join (`cook train ... --node-rank R`, model.launch.follow, no Prefect). They read
the run folder that node 0 writes, so it must be shared. A hand-typed torchrun works across machines too:
`torchrun --nnodes M --nproc_per_node N --rdzv_backend c10d --rdzv_endpoint HOST:PORT --rdzv_id RUN -m
flows.cli train -- ARGS` on each; global rank 0 (on whichever machine c10d puts it) runs this flow.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import flow, get_run_logger

from flows.report import run_name, short
from model import storage
from model.launch import RDZV_TIMEOUT_S, Nodes
from model.train import STOP, ChunkOptions, RunSpec, stop_on_signals
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.core.settings import get_settings
from tasks.training.train import (check_train_args, describe_chunk, describe_run, loss_curve_task, prepare_run_task,
                                  train_chunk_task)


def _watch_cancellation(stop: threading.Event, done: threading.Event, interval: float = 2.0) -> threading.Thread | None:
    """Poll this flow run's state; set `stop` once it is cancelling or cancelled (so the loop saves and exits)."""
    try:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.objects import StateType
        from prefect.runtime import flow_run

        run_id = flow_run.id
    except Exception:
        return None
    if not run_id:
        return None

    def poll() -> None:
        with get_client(sync_client=True) as client:
            while not done.wait(interval):
                try:
                    state = client.read_flow_run(run_id).state
                except Exception:
                    continue
                if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED):
                    stop.set()
                    return

    t = threading.Thread(target=poll, name="cook-cancel-watch", daemon=True)
    t.start()
    return t


def _run_name(p: dict) -> str:
    run = short(p["run"]) if p.get("run") else "runs/default"
    return f"train {p.get('preset')}: {p.get('chunks')} chunks x {p.get('iters_per_chunk')} iters -> {storage.redact(run)}"


@flow(name="train", flow_run_name=run_name("train", _run_name), **FLOW_RESULTS)
@one_writer
def train_flow(
    data: str | Path | None = None,
    run: str | Path | None = None,
    preset: str = "tiny",
    chunks: int = 1,
    iters_per_chunk: int = 1000,
    seed: int = 1337,
    init_from: str | Path | None = None,
    device: str = "auto",
    compile: bool | None = None,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    batch_size: int | None = None,
    grad_accum: int | None = None,
    learning_rate: float | None = None,
    keep_last: int = 3,
    gpus: int = 1,
    dtype: str = "auto",
    schedule: str | None = None,
    warmup: int | None = None,
    cooldown: float | None = None,
    total_iters: int | None = None,
    sampler: str | None = None,
    dropout: float | None = None,
    nodes: int = 1,
    rdzv_endpoint: str | None = None,
    rdzv_timeout: int = RDZV_TIMEOUT_S,
) -> str:
    """Train (or resume, or extend) the run in `run` (default DATA/runs/default) on the tokens in `data` (default
    DATA/tokens) on `gpus` processes, on each of `nodes` machines (this is node 0); return the run folder. Run
    options are model.train.RunSpec's (schedule, cooldown, sampler, ...: fixed when the run is created), chunk
    options model.train.ChunkOptions's."""
    settings = get_settings()
    data = str(data) if data is not None else settings.location("tokens")
    run = str(run) if run is not None else settings.location("runs", "default")
    spec = RunSpec(preset=preset, chunks=chunks, iters_per_chunk=iters_per_chunk, seed=seed,
                   init_from=str(init_from) if init_from is not None else None, batch_size=batch_size,
                   grad_accum=grad_accum, learning_rate=learning_rate, warmup=warmup, schedule=schedule,
                   cooldown=cooldown, total_iters=total_iters, sampler=sampler, dropout=dropout,
                   eval_interval=eval_interval, eval_iters=eval_iters)
    opts = ChunkOptions(device=device, dtype=dtype, compile=compile, eval_interval=eval_interval, eval_iters=eval_iters,
                        keep_last=keep_last)
    machines = Nodes(count=nodes, endpoint=rdzv_endpoint, rank=0, timeout_s=rdzv_timeout)
    check_train_args(data, run, spec, opts, gpus, machines)
    hold_output(run)  # one writer per run folder (RUN/.cook.lock), before the run is prepared or resumed
    info = prepare_run_task(data, run, spec, device)
    logger = get_run_logger()
    for line in describe_run(run, info):
        logger.info("%s", line)
    if not info["todo"]:
        logger.info("run %s: all %d chunks already trained", storage.redact(run), info["chunks"])
        _final_curve(run)
        return run
    done = threading.Event()
    curve_is_current = False  # did the last chunk task of this flow run draw and publish the curve?
    # Prefect's flow engine installed its own SIGTERM handler; ours replaces it while chunks run
    with stop_on_signals(STOP):
        watcher = _watch_cancellation(STOP, done)
        try:
            for chunk in info["todo"]:
                curve_is_current = False
                state = train_chunk_task(run, chunk, data=data, opts=opts, gpus=gpus, return_state=True,
                                         nodes=machines if machines.multi else None, last=chunk == info["todo"][-1])
                summary = state.result()  # raises the chunk's failure
                if not summary.get("skipped") and state.name != "Cached":
                    logger.info("%s", describe_chunk(summary))
                curve_is_current = not summary.get("skipped") and state.name != "Cached"
        finally:
            done.set()
            if watcher is not None:
                watcher.join(timeout=1)
            if not curve_is_current:  # nothing drawn yet in this run, or stopped mid-chunk
                _final_curve(run)
    return run


def _final_curve(run: str) -> None:
    """The loss curve at the end of the flow; a plot never fails (nor masks) the run's outcome."""
    try:
        loss_curve_task(run)
    except Exception as e:  # noqa: BLE001 - e.g. no new task runs while the flow run is cancelling
        get_run_logger().warning("loss curve for %s not drawn: %s", run, e)
