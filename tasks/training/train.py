"""Training tasks: check arguments, prepare a run, train one chunk (retried once, from its latest checkpoint),
draw the loss curve.

The work is in model.train (plain PyTorch); these wrappers add Prefect logging, retries, the per-chunk
markdown artifact and the loss curve (RUN/loss.png, image artifact `train-loss`). A chunk on several
processes (`gpus` > 1, not already under torchrun) runs under a torchrun that the task launches
(model.launch). A chunk's result is cached while its checkpoint exists.
"""

from __future__ import annotations

import os

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model.checkpoint import CHECKPOINTS, checkpoint_name
from model.errors import CookError
from model.launch import check_gpus, launch_chunk, under_torchrun
from model.train import check_args, prepare_run, setup_process, train_chunk
from tasks.core.caching import PERSISTED, OutputsCache
from tasks.training.plots import publish_loss_curve
from tasks.core.progress import progress


def check_train_args(data: str | os.PathLike, run: str | os.PathLike, preset: str = "tiny", chunks: int = 1,
                     iters_per_chunk: int = 1000, seed: int = 1337, init_from: str | os.PathLike | None = None,
                     device: str = "auto", compile: bool = False, eval_interval: int | None = None,
                     eval_iters: int | None = None, batch_size: int | None = None, grad_accum: int | None = None,
                     learning_rate: float | None = None, keep_last: int = 3, gpus: int = 1) -> None:
    """Validate `cook train` arguments before any work starts; CookError with one line."""
    check_args(chunks, iters_per_chunk, seed, device, eval_interval, eval_iters, batch_size, grad_accum, learning_rate, keep_last)
    check_gpus(gpus, device)
    from model.presets import PRESETS
    from model.shards import load_meta

    if preset not in PRESETS:
        raise CookError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    load_meta(data)  # a tokenized data folder?
    if init_from is not None and not os.path.exists(init_from):
        raise CookError(f"--init-from {init_from}: no such checkpoint or run")
    if gpus > 1 and not under_torchrun():  # found now rather than in every rank once they have started
        from model.presets import get_preset
        from model.train import read_run

        accum = grad_accum
        if accum is None:
            try:
                accum = int(read_run(run)["train"]["grad_accum"])  # resuming: the run's
            except (CookError, KeyError, TypeError, ValueError):
                accum = int(get_preset(preset, 256)[1]["grad_accum"])
        if accum % gpus:
            raise CookError(f"--grad-accum {accum} is not a multiple of --gpus {gpus} (it counts the micro-batches of all "
                            f"processes): pass --grad-accum {gpus * max(1, round(accum / gpus))}")


def _no_retry_on_cook_error(task, task_run, state) -> bool:
    """Retry unexpected failures only; a CookError (bad input, interruption) would fail the same way again."""
    try:
        state.result()
    except CookError:
        return False
    except BaseException:
        return True
    return True


@task(name="prepare-run", cache_policy=NO_CACHE)
def prepare_run_task(data: str, run: str, preset: str, chunks: int, iters_per_chunk: int, seed: int,
                     init_from: str | None = None, batch_size: int | None = None, grad_accum: int | None = None,
                     learning_rate: float | None = None, eval_interval: int | None = None,
                     eval_iters: int | None = None, device: str = "auto") -> dict:
    """Create or check RUN/run.json; return it with `todo`, the chunks still to train."""
    info = prepare_run(data, run, preset, chunks, iters_per_chunk, seed, init_from, batch_size, grad_accum,
                       learning_rate, eval_interval, eval_iters, proc=setup_process(device))
    logger = get_run_logger()
    done = info["chunks"] - len(info["todo"])
    logger.info("run %s: preset %s, %d chunks of %d iterations (%d done), schedule over %d iterations",
                run, info["preset"], info["chunks"], info["iters_per_chunk"], done, info["total_iters"])
    return info


def chunk_report(summary: dict, image_uri: str | None = None) -> str:
    """Markdown for a chunk's artifact: its eval losses, the run's loss curve (a data: URI), a short sample."""
    lines = [f"# Chunk {summary['chunk']}", "",
             f"Iterations {summary['start_iter']}–{summary['end_iter']}, seed `{summary['seed']}`, "
             f"{summary.get('seconds', 0):.1f} s, {summary.get('tokens_seen', 0):,} tokens seen in all.", "",
             "| iter | train loss | val loss | lr |", "|---:|---:|---:|---:|"]
    for r in summary.get("losses", []):
        val = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "–"
        lines.append(f"| {r['iter']} | {r['train_loss']:.4f} | {val} | {r['lr']:.2e} |")
    lines += ["", f"Checkpoint: `{summary.get('checkpoint')}`" + (f" (best: `{summary['best']}`)" if summary.get("best") else ""), ""]
    if image_uri:
        lines += [f"![loss curve]({image_uri})", ""]
    sample = summary.get("sample") or ""
    if sample:
        lines += ["Sample:", "", "```text", sample.replace("```", "ʼʼʼ"), "```"]
    return "\n".join(lines) + "\n"


def _chunk_checkpoint(inputs: dict) -> list[str]:
    return [os.path.join(inputs["run"], CHECKPOINTS, checkpoint_name(inputs["chunk"]))]


# cached while the chunk's checkpoint exists, so a retried flow run skips the chunks it finished
@task(name="train-chunk", task_run_name="train-chunk-{chunk}", retries=1, retry_condition_fn=_no_retry_on_cook_error,
      cache_policy=OutputsCache(outputs=_chunk_checkpoint, version="1", exclude=("log_interval", "sample_tokens", "gpus")),
      **PERSISTED)
def train_chunk_task(run: str, chunk: int, data: str | None = None, device: str = "auto", compile: bool = False,
                     eval_interval: int | None = None, eval_iters: int | None = None, keep_last: int = 3,
                     log_interval: int = 10, sample_tokens: int = 64, gpus: int = 1) -> dict:
    """Train one chunk (a retry resumes from the latest checkpoint), on `gpus` processes under a torchrun it
    launches unless already under one; log to the run, draw the loss curve, publish a report artifact."""
    logger = get_run_logger()
    with progress(f"train chunk {chunk}", total=None) as bar:
        def on_iter(done: int, total: int) -> None:
            if bar.total is None:
                bar.set_total(total)
            bar.update(done)

        kw = dict(data=data, device=device, compile=compile, eval_interval=eval_interval, eval_iters=eval_iters,
                  keep_last=keep_last, log=logger.info, log_interval=log_interval, sample_tokens=sample_tokens,
                  on_iter=on_iter)
        if gpus > 1 and not under_torchrun():
            summary = launch_chunk(run, chunk, nproc=gpus, **kw)
        else:
            summary = train_chunk(run, chunk, **kw)
    if summary["skipped"]:
        logger.info("chunk %d already trained (%s)", chunk, summary["checkpoint"])
        return summary
    if setup_process(device).master:
        image = publish_loss_curve(run, description=f"loss curve of {run} after chunk {chunk}", warn=logger.warning)
        create_markdown_artifact(key=f"train-chunk-{chunk}", markdown=chunk_report(summary, image),
                                 description=f"chunk {chunk}: losses, loss curve and a sample")
    logger.info("chunk %d done: val loss %s, checkpoint %s", chunk,
                f"{summary['val_loss']:.4f}" if summary["val_loss"] is not None else "n/a", summary["checkpoint"])
    return summary


@task(name="loss-curve", cache_policy=NO_CACHE)
def loss_curve_task(run: str) -> str | None:
    """Draw RUN/loss.png from RUN/metrics.jsonl and publish it (image artifact `train-loss`); never fails."""
    logger = get_run_logger()
    uri = publish_loss_curve(run, description=f"loss curve of {run}", warn=logger.warning)
    if uri is not None:
        logger.info("loss curve: %s", os.path.join(run, "loss.png"))
    return os.path.join(run, "loss.png") if uri is not None else None
