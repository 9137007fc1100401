"""`cook train`: train a GPT in chunks, each a Prefect task with a checkpoint at its end.

Running the same command again resumes: which chunks are left is read from the run's latest
checkpoint. SIGTERM, Ctrl-C or a Prefect cancellation saves a checkpoint at the current iteration
and stops (the run then fails with one line saying how to resume).

Several GPUs (or CPU processes) with DDP:

    torchrun --standalone --nproc_per_node=8 -m flows.cli train -- --data DIR --run DIR --preset gpt2-124m --chunks 20 --iters-per-chunk 5000

rank 0 runs this flow (Prefect logs, artifacts, every file); the other ranks run the same chunk
loop without Prefect (`model.train.train_worker`), in step with it. The `--` stops torchrun from
reading `--run` as its own `--run-path`. On CPU it uses gloo (`--device cpu`), on GPUs nccl.
"""

from __future__ import annotations

import threading
from pathlib import Path

from prefect import flow, get_run_logger

from model.train import STOP, stop_on_signals
from tasks.train import check_train_args, prepare_run_task, train_chunk_task
from tasks.caching import FLOW_RESULTS


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


@flow(name="train", **FLOW_RESULTS)
def train_flow(
    data: str | Path,
    run: str | Path,
    preset: str = "tiny",
    chunks: int = 1,
    iters_per_chunk: int = 1000,
    seed: int = 1337,
    init_from: str | Path | None = None,
    device: str = "auto",
    compile: bool = False,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    batch_size: int | None = None,
    grad_accum: int | None = None,
    learning_rate: float | None = None,
    keep_last: int = 3,
) -> str:
    """Train (or resume, or extend) the run in `run` on the tokens in `data`; return the run folder."""
    data, run = str(data), str(run)
    init_from = str(init_from) if init_from is not None else None
    check_train_args(data, run, preset, chunks, iters_per_chunk, seed, init_from, device, compile, eval_interval,
                     eval_iters, batch_size, grad_accum, learning_rate, keep_last)
    info = prepare_run_task(data, run, preset, chunks, iters_per_chunk, seed, init_from, batch_size, grad_accum,
                            learning_rate, eval_interval, eval_iters, device)
    logger = get_run_logger()
    if not info["todo"]:
        logger.info("run %s: all %d chunks already trained", run, info["chunks"])
        return run
    done = threading.Event()
    # Prefect's flow engine installed its own SIGTERM handler; ours replaces it while chunks run
    with stop_on_signals(STOP):
        watcher = _watch_cancellation(STOP, done)
        try:
            for chunk in info["todo"]:
                train_chunk_task(run, chunk, data=data, device=device, compile=compile, eval_interval=eval_interval,
                                 eval_iters=eval_iters, keep_last=keep_last)
        finally:
            done.set()
            if watcher is not None:
                watcher.join(timeout=1)
    return run
