"""Training tasks: check arguments, prepare a run, train one chunk (retried once, from its latest checkpoint),
draw the loss curve.

The work is in model.train (plain PyTorch); these wrappers add Prefect logging, retries, the per-chunk
markdown artifact and the loss curve (RUN/loss.png, image artifact `train-loss`). A chunk on several
processes (`gpus` > 1, not already under torchrun) runs under a torchrun that the task launches
(model.launch); with `nodes` (several machines) the torchrun this task launches is node 0's agent, which the
other machines' agents join (model.launch.follow). A chunk's result is cached while its checkpoint exists.
"""

from __future__ import annotations

import os

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from model import storage
from model.checkpoint import CHECKPOINTS, checkpoint_name
from model.errors import CookError
from model.launch import Nodes, check_gpus, check_nodes, launch_chunk, under_torchrun
from model.schedule import Schedule
from model.train import (EVAL_SHARE, ChunkOptions, RunSpec, check_options, check_spec, prepare_run, setup_process,
                         train_chunk)
from tasks.core.caching import PERSISTED, OutputsCache
from tasks.training.plots import publish_loss_curve
from tasks.core.progress import progress


def check_train_args(data: str | os.PathLike, run: str | os.PathLike, spec: RunSpec, opts: ChunkOptions, gpus: int = 1,
                     nodes: Nodes | None = None) -> None:
    """Validate `cook train` arguments before any work starts; CookError with one line."""
    check_spec(spec)
    check_options(opts)
    check_gpus(gpus, opts.device)
    nodes = nodes or Nodes()
    check_nodes(nodes)
    from model.presets import PRESETS
    from model.shards import load_meta

    if spec.preset not in PRESETS:
        raise CookError(f"unknown preset {spec.preset!r}; choose one of: {', '.join(PRESETS)}")
    load_meta(data)  # a tokenized data folder?
    if spec.init_from is not None and storage.is_remote(spec.init_from):
        raise CookError(f"--init-from {storage.redact(spec.init_from)}: a checkpoint on object storage is not supported "
                        "yet; copy it to a local folder first (the new run itself may be on a bucket)")
    if spec.init_from is not None and not os.path.exists(spec.init_from):
        raise CookError(f"--init-from {spec.init_from}: no such checkpoint or run")
    world = gpus * nodes.count
    if world > 1 and not under_torchrun():  # found now rather than in every rank once they have started
        from model.presets import get_preset
        from model.train import read_run

        accum = spec.grad_accum
        if accum is None:
            try:
                accum = int(read_run(run)["train"]["grad_accum"])  # resuming: the run's
            except (CookError, KeyError, TypeError, ValueError):
                accum = int(get_preset(spec.preset, 256)[1]["grad_accum"])
        if accum % world:
            procs = f"--gpus {gpus}" if nodes.count == 1 else f"--gpus {gpus} x --nodes {nodes.count} = {world}"
            raise CookError(f"--grad-accum {accum} is not a multiple of {procs} (it counts the micro-batches of all "
                            f"processes): pass --grad-accum {world * max(1, round(accum / world))}")


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
def prepare_run_task(data: str, run: str, spec: RunSpec, device: str = "auto") -> dict:
    """Create or check RUN/run.json; return it with `todo`, the chunks still to train."""
    info = prepare_run(data, run, spec, proc=setup_process(device))
    logger = get_run_logger()
    for note in info["notes"]:
        logger.warning("%s", note)
    return info


def describe_run(run: str, info: dict) -> list[str]:
    """Lines saying what a prepared run will do: its shape, chunks, schedule and evaluation plan."""
    done = info["chunks"] - len(info["todo"])
    return [f"run {storage.redact(run)}: preset {info['preset']}, {info['chunks']} chunks of {info['iters_per_chunk']} iterations "
            f"({done} done); {describe_schedule(info)}",
            f"eval: {info['eval_iters']} batches per split every {info['eval_interval']} iterations and at the end of "
            f"each chunk (unless set by --eval-interval / --eval-iters, sized to about {round(100 * EVAL_SHARE)}% of "
            f"training time)"]


def describe_schedule(info: dict) -> str:
    """One line: the learning-rate schedule as planned now."""
    s = Schedule.from_run(info)
    total = int(info["chunks"]) * int(info["iters_per_chunk"])
    if s.kind == "cosine":
        return f"cosine schedule: warmup {s.warmup}, decay to {s.min_lr:g} at iteration {s.total}"
    start = s.cooldown_start(total)
    return (f"wsd schedule: warmup {s.warmup}, lr {s.lr:g} until iteration {start}, cooldown to {s.min_lr:g} "
            f"over the last {total - start} of {total}")


def chunk_report(summary: dict, image_uri: str | None = None) -> str:
    """Markdown for a chunk's artifact: its eval losses, the run's loss curve (a data: URI), a short sample."""
    lines = [f"# Chunk {summary['chunk']}", "",
             f"Iterations {summary['start_iter']}–{summary['end_iter']}, seed `{summary['seed']}`, "
             f"{summary.get('seconds', 0):.1f} s, {summary.get('tokens_seen', 0):,} tokens seen in all.", "",
             "| iter | train loss | val loss | val bits/byte | epoch | lr |", "|---:|---:|---:|---:|---:|---:|"]
    for r in summary.get("losses", []):
        lines.append(f"| {r['iter']} | {r['train_loss']:.4f} | {_f(r.get('val_loss'))} | {_f(r.get('val_bpb'))} | "
                     f"{_f(r.get('epochs'), 3)} | {r['lr']:.2e} |")
    base = summary.get("baseline") or {}
    if base.get("val_loss") is not None:
        lines += ["", f"Smoothed bigram baseline on the same data: val loss {_f(base.get('val_loss'))}, "
                      f"{_f(base.get('val_bpb'))} bits/byte (the model should beat it)."]
    lines += ["", f"Checkpoint: `{summary.get('checkpoint')}`" + (f" (best: `{summary['best']}`)" if summary.get("best") else ""), ""]
    if image_uri:
        lines += [f"![loss curve]({image_uri})", ""]
    sample = summary.get("sample") or ""
    if sample:
        lines += ["Sample:", "", "```text", sample.replace("```", "ʼʼʼ"), "```"]
    return "\n".join(lines) + "\n"


def _f(x, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "–"


def _chunk_checkpoint(inputs: dict) -> list[str]:
    ck = os.path.join(inputs["run"], CHECKPOINTS, checkpoint_name(inputs["chunk"]))
    # on object storage a checkpoint counts once it is complete: its marker object, written last
    return [storage.join(ck, storage.MARKER) if storage.is_remote(ck) else ck]


# cached while the chunk's checkpoint exists, so a retried flow run skips the chunks it finished
@task(name="train-chunk", task_run_name="train-chunk-{chunk}", retries=1, retry_condition_fn=_no_retry_on_cook_error,
      cache_policy=OutputsCache(outputs=_chunk_checkpoint, version="2", exclude=("gpus", "nodes", "last")), **PERSISTED)
def train_chunk_task(run: str, chunk: int, data: str | None = None, opts: ChunkOptions | None = None, gpus: int = 1,
                     nodes: Nodes | None = None, last: bool = True) -> dict:
    """Train one chunk (a retry resumes from the latest checkpoint), on `gpus` processes (on each of `nodes`)
    under a torchrun it launches unless already under one; log to the run, draw the loss curve, publish a
    report artifact. `last`: no chunk follows in this flow run (the other nodes then stop)."""
    logger = get_run_logger()
    opts = opts or ChunkOptions()
    with progress(f"train chunk {chunk}", total=None) as bar:
        def on_iter(done: int, total: int) -> None:
            if bar.total is None:
                bar.set_total(total)
            bar.update(done)

        def log(line: str) -> None:  # the loop's (and the ranks') "warning: ..." lines reach a quiet console too
            (logger.warning if line.startswith("warning:") else logger.info)(line)

        kw = dict(data=data, opts=opts, log=log, on_iter=on_iter)
        if (gpus > 1 or (nodes is not None and nodes.multi)) and not under_torchrun():
            summary = launch_chunk(run, chunk, nproc=gpus, nodes=nodes, last=last, **kw)
        else:
            summary = train_chunk(run, chunk, **kw)
    if summary["skipped"]:
        logger.info("chunk %d already trained (%s)", chunk, summary["checkpoint"])
        return summary
    if setup_process(opts.device).master:
        image = publish_loss_curve(run, description=f"loss curve of {storage.redact(run)} after chunk {chunk}", warn=logger.warning)
        create_markdown_artifact(key=f"train-chunk-{chunk}", markdown=chunk_report(summary, image),
                                 description=f"chunk {chunk}: losses, loss curve and a sample")
    return summary


def describe_chunk(summary: dict) -> str:
    """One line: a trained chunk's val loss and bits per byte beside the bigram baseline's, and its checkpoint."""
    base = summary.get("baseline") or {}
    vs = f"; bigram baseline {_f(base.get('val_loss'))} ({_f(base.get('val_bpb'))} bits/byte)" if base.get("val_loss") else ""
    return (f"chunk {summary['chunk']} done: val loss {_f(summary['val_loss'])} ({_f(summary.get('val_bpb'))} bits/byte)"
            f"{vs}, epoch {_f(summary.get('epochs'), 2)}, {summary.get('seconds', 0):.0f} s, checkpoint {summary['checkpoint']}")


@task(name="loss-curve", cache_policy=NO_CACHE)
def loss_curve_task(run: str) -> str | None:
    """Draw RUN/loss.png from RUN/metrics.jsonl and publish it (image artifact `train-loss`); never fails."""
    logger = get_run_logger()
    uri = publish_loss_curve(run, description=f"loss curve of {storage.redact(run)}", warn=logger.warning)
    if uri is not None:
        logger.info("loss curve: %s", storage.redact(storage.join(run, "loss.png")))
    return os.path.join(run, "loss.png") if uri is not None else None
