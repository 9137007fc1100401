"""`cook demo`: the whole model half offline — corpus, tokenize, train `tiny` for 2 chunks, sample."""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, tags

from flows.report import publish_table, run_name, tags_for
from flows.sample import sample_text
from flows.tokenize import tokenize_flow
from flows.train import train_flow
from tasks.core.caching import FLOW_RESULTS
from tasks.sources.pydoc_corpus import build_pydoc_corpus_task
from tasks.core.settings import get_settings

PROMPT = "The with statement"


@flow(name="demo", log_prints=False, **FLOW_RESULTS,
      flow_run_name=run_name("demo", lambda p: f"demo: tiny, {p['chunks']} chunks x {p['iters_per_chunk']} iters"))
def demo_flow(iters_per_chunk: int = 800, chunks: int = 2) -> dict:
    """Run every stage under DATA_DIR/demo and return what a person wants to see: sample, losses, paths."""
    root = get_settings().data_dir.resolve() / "demo"
    corpus = build_pydoc_corpus_task(root / "corpus" / "pydoc_topics.parquet")
    with tags(*tags_for("tokenize")):  # the stage runs carry their stage's tags beside the demo's
        tokens = tokenize_flow(inputs=[str(corpus)], encoding="gpt2", out=str(root / "tokens"), val_fraction=0.05)
    run = root / "run"
    eval_every = max(1, min(100, iters_per_chunk))
    with tags(*tags_for("train")):
        train_flow(data=tokens, run=str(run), preset="tiny", chunks=chunks, iters_per_chunk=iters_per_chunk,
                   seed=1337, eval_interval=eval_every, eval_iters=20)
    text = sample_text(str(run), prompt=PROMPT, max_new_tokens=80, temperature=0.8, top_k=50, seed=1337)
    get_run_logger().info("sample: %s", text)
    losses = _losses(run / "metrics.jsonl")
    publish_table("demo-losses", [{k: r.get(k) for k in ("chunk", "iter", "train_loss", "val_loss")} for r in losses],
                  "cook demo: train and val loss at each evaluation")
    return {"sample": text, "losses": losses,
            "paths": {"corpus": str(corpus), "tokens": str(tokens), "run": str(run),
                      "checkpoints": str(run / "checkpoints"), "metrics": str(run / "metrics.jsonl"),
                      "loss curve": str(run / "loss.png")}}


def _losses(metrics: Path) -> list[dict]:
    """The eval lines of metrics.jsonl: iteration, chunk, train and val loss."""
    out = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("kind") == "eval":
                out.append(rec)
    return out


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.rule("[bold]sample")
    console.print(report["sample"], markup=False, highlight=False)
    table = Table(title="losses")
    for col in ("chunk", "iter", "train loss", "val loss"):
        table.add_column(col, justify="right")
    for r in report["losses"]:
        table.add_row(str(r.get("chunk", "")), str(r.get("iter", "")), _fmt(r.get("train_loss")), _fmt(r.get("val_loss")))
    console.print(table)
    console.rule("[bold]outputs")
    for name, path in report["paths"].items():
        console.print(f"{name:12s} {path}", markup=False, highlight=False)


def _fmt(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) else "-"
