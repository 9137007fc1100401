"""`cook demo`: the whole model half offline — corpus, tokenize, train the `demo` preset for 2 chunks, sample.

The corpus (Python's own help topics, about 420k characters) is small, so the demo tokenizes it with a
byte-level BPE of ENCODING trained on it (only ~4,900 of GPT-2's 50k ids occur in it) and trains the
`demo` preset, sized to learn it in about 2 minutes on 2 CPU cores. The report sets the model's val loss
and bits per byte beside a smoothed bigram's on the same split (meta.json's `baseline.bigram`): the demo
beats it by about 20% (10% is the bar).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, get_run_logger, tags

from flows.report import publish_markdown, publish_table, run_name, tags_for
from flows.sample import sample_text
from flows.tokenize import tokenize_flow
from flows.train import train_flow
from model.baseline import bigram_baseline
from model.shards import ShardStream, list_shards, load_meta
from model.train import split_bpb
from tasks.core.caching import FLOW_RESULTS
from tasks.core.settings import get_settings
from tasks.sources.pydoc_corpus import build_pydoc_corpus_task

PROMPT = "The with statement"
ENCODING = "bpe:1024"
PRESET = "demo"
CHUNKS = 2
ITERS_PER_CHUNK = 800
EVAL_INTERVAL, EVAL_ITERS = 200, 20  # 20 x 16 windows of 128 tokens: about the whole val split, ~4% of the time
# Random windows: 30 passes over 110k tokens through a fixed grid of windows memorize that grid (val 0.15
# nats/token worse in our runs); windows at every offset act as data augmentation.
SAMPLER = "random"
SAMPLE_TOKENS = 120  # about 400 characters of bpe:1024 text
TEMPERATURE, TOP_K = 0.7, 40  # a little cooler than `cook sample`'s default: fewer made-up words
VAL_FRACTION = 0.05


@flow(name="demo", log_prints=False, **FLOW_RESULTS,
      flow_run_name=run_name("demo", lambda p: f"demo: Python docs, {ENCODING}, preset {PRESET}, {p['chunks']} chunks x {p['iters_per_chunk']} iters"))
def demo_flow(iters_per_chunk: int = ITERS_PER_CHUNK, chunks: int = CHUNKS) -> dict:
    """Run every stage under DATA_DIR/demo and return what a person wants to see: sample, losses, the model
    against the bigram baseline, paths."""
    root = get_settings().data_dir.resolve() / "demo"
    corpus = build_pydoc_corpus_task(root / "corpus" / "pydoc_topics.parquet")
    with tags(*tags_for("tokenize")):  # the stage runs carry their stage's tags beside the demo's
        tokens = tokenize_flow(inputs=[str(corpus)], encoding=ENCODING, out=str(root / "tokens"), val_fraction=VAL_FRACTION)
    # one run folder per setting: a rerun resumes (or just reports) it, another --iters-per-chunk starts afresh
    run = root / "runs" / f"{PRESET}-{ENCODING.replace(':', '')}-{iters_per_chunk}"
    # named after what it does (a plain string: it has no braces for Prefect to fill in)
    train = train_flow.with_options(flow_run_name=f"demo: train preset {PRESET} on {ENCODING}, {chunks} chunks x {iters_per_chunk} iters")
    with tags(*tags_for("train")):
        train(data=tokens, run=str(run), preset=PRESET, chunks=chunks, iters_per_chunk=iters_per_chunk, seed=1337,
              sampler=SAMPLER, eval_interval=min(EVAL_INTERVAL, iters_per_chunk), eval_iters=EVAL_ITERS)
    text = sample_text(str(run), prompt=PROMPT, max_new_tokens=SAMPLE_TOKENS, temperature=TEMPERATURE, top_k=TOP_K, seed=1337)
    logger = get_run_logger()
    logger.info("sample: %s", text)
    losses = _losses(run / "metrics.jsonl")
    publish_table("demo-losses", [{k: r.get(k) for k in ("chunk", "iter", "train_loss", "val_loss", "val_bpb")} for r in losses],
                  "cook demo: train and val loss at each evaluation")
    result = compare(losses[-1] if losses else {}, Path(tokens))
    logger.info("%s", result_text(result))
    publish_markdown("demo-result", ["# cook demo", "", result_text(result), "", "```", text, "```"],
                     "cook demo: the model against a smoothed bigram on the same val split, and a sample")
    return {"sample": text, "losses": losses, "result": result,
            "paths": {"corpus": str(corpus), "tokens": str(tokens), "run": str(run),
                      "checkpoints": str(run / "checkpoints"), "metrics": str(run / "metrics.jsonl"),
                      "loss curve": str(run / "loss.png")}}


def _losses(metrics: Path) -> list[dict]:
    """The eval lines of metrics.jsonl: iteration, chunk, train and val loss (and bpb)."""
    out = []
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if rec.get("kind") == "eval":
                out.append(rec)
    return out


def _bigram(tokens: Path, meta: dict) -> dict:
    """meta.json's bigram baseline; for a folder tokenized before it was recorded, fitted here (seconds on the demo's corpus)."""
    b = (meta.get("baseline") or {}).get("bigram")
    if b and b.get("val_loss") is not None:
        return b
    try:
        train, val = ShardStream(list_shards(tokens, "train")), ShardStream(list_shards(tokens, "val"))
        return bigram_baseline(train, val, int(meta["vocab_size"]), (meta["splits"]["val"]).get("bytes"))
    except Exception:  # noqa: BLE001 - the comparison is a nicety; the report still shows the losses
        return {}


def compare(last_eval: dict, tokens: Path) -> dict:
    """The model's final val loss and bpb, the bigram baseline's, and by how many percent the model's val
    loss (nats/token) is below the bigram's (negative: above). Missing figures are None."""
    meta = load_meta(tokens)
    val_loss = last_eval.get("val_loss")
    val_bpb = last_eval.get("val_bpb")
    if val_bpb is None:
        val_bpb = split_bpb(meta, "val", val_loss)
    b = _bigram(tokens, meta)
    b_loss = b.get("val_loss")
    b_bpb = b.get("val_bpb") if b.get("val_bpb") is not None else split_bpb(meta, "val", b_loss)
    beats = 100.0 * (1.0 - val_loss / b_loss) if val_loss is not None and b_loss else None
    return {"encoding": meta.get("encoding"), "val_loss": val_loss, "val_bpb": val_bpb, "bigram_val_loss": b_loss,
            "bigram_val_bpb": b_bpb, "beats_bigram_pct": beats}


def result_text(r: dict) -> str:
    """One line: the model's val loss and bpb, the bigram's, and the margin."""
    model = f"model val loss {_fmt(r.get('val_loss'), 3)} nats/token ({_fmt(r.get('val_bpb'), 3)} bits/byte)"
    bigram = f"bigram baseline {_fmt(r.get('bigram_val_loss'), 3)} ({_fmt(r.get('bigram_val_bpb'), 3)} bits/byte)"
    pct = r.get("beats_bigram_pct")
    verdict = "" if pct is None else f": {abs(pct):.1f}% {'below' if pct >= 0 else 'ABOVE'} the bigram"
    return f"{model} vs {bigram}{verdict}"


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.rule("[bold]sample")
    console.print(report["sample"], markup=False, highlight=False)
    table = Table(title="losses (nats/token)")
    for col in ("chunk", "iter", "train loss", "val loss", "val bits/byte"):
        table.add_column(col, justify="right")
    for r in report["losses"]:
        table.add_row(str(r.get("chunk", "")), str(r.get("iter", "")), _fmt(r.get("train_loss")), _fmt(r.get("val_loss")),
                      _fmt(r.get("val_bpb")))
    console.print(table)
    r = report.get("result") or {}
    result = Table(title=f"val split, {r.get('encoding') or '?'} tokens")
    for col in ("", "val loss (nats/token)", "val bits/byte"):
        result.add_column(col, justify="right")
    result.add_row("model", _fmt(r.get("val_loss")), _fmt(r.get("val_bpb")))
    result.add_row("smoothed bigram", _fmt(r.get("bigram_val_loss")), _fmt(r.get("bigram_val_bpb")))
    console.print(result)
    pct = r.get("beats_bigram_pct")
    if pct is not None:
        console.print(f"the model's val loss is {abs(pct):.1f}% {'below' if pct >= 0 else 'above'} the bigram's", markup=False, highlight=False)
    console.rule("[bold]outputs")
    for name, path in report["paths"].items():
        console.print(f"{name:12s} {path}", markup=False, highlight=False)


def _fmt(x, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "-"
