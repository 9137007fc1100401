"""`cook tokenize`: documents -> train/val token shards + meta.json (cached while inputs are unchanged)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.report import publish_markdown, publish_table, run_name, short
from flows.runners import final_state, stage_runner
from model import storage
from model.shards import load_meta
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import clean_stale_beside, hold_output, one_writer
from tasks.core.settings import get_settings
from tasks.corpus.tokenize import check_tokenize_args, load_tokenizer_at, tokenize_task


def _run_name(p: dict) -> str:
    out = short(p["out"]) if p.get("out") else "tokens"
    reuse = f" (vocab of {short(p['tokenizer_dir'])})" if p.get("tokenizer_dir") else ""
    return f"tokenize {p['encoding']}{reuse} -> {out}"


@flow(name="tokenize", flow_run_name=run_name("tokenize", _run_name), **FLOW_RESULTS)
@one_writer
def tokenize_flow(
    inputs: list[str] | None = None,
    encoding: str = "gpt2",
    out: str | None = None,
    tokenizer_dir: str | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
    dask: str | None = None,
    workers: int | None = None,
) -> str:
    """Tokenize `inputs` (default `<data_dir>/merged`) into `out` (default `<data_dir>/tokens`); return the output folder.

    With `tokenizer_dir` (a saved `tokenizer/` folder) the new data gets the same ids as before.
    `dask`: run the task on a Dask cluster (an address or "local"; default COOK_DASK_ADDRESS, see flows/runners.py).
    `workers`: processes that read and encode (default: from the text size, up to every core); the output is
    the same whatever the count.
    """
    inputs = inputs if inputs is not None else [get_settings().location("merged")]
    files = [f if isinstance(f, str) else f.absolute() for f in check_tokenize_args(inputs, encoding, dtype, tokenizer_dir, workers)]
    # absolute paths: the task may run in another process (a Dask worker) with another working directory
    out = out if out is not None else get_settings().location("tokens")
    out_path = out.rstrip("/") if storage.is_remote(out) else Path(out).absolute()
    tok_dir = (tokenizer_dir if storage.is_remote(tokenizer_dir) else Path(tokenizer_dir).absolute()) if tokenizer_dir is not None else None
    hold_output(out_path, replaced=True)  # one writer: the lock beside `out`, which is replaced whole
    clean_stale_beside(out_path)  # this folder's temps of a crashed run
    with stage_runner(dask) as runner:
        state = final_state(runner.submit(
            tokenize_task,
            files,
            encoding,
            out_path,
            tok_dir,
            val_fraction,
            dtype,
            shard_tokens,
            workers,
            tokenizer_hash=load_tokenizer_at(tok_dir).hash if tok_dir is not None else None,
        ))
    result = state.result()
    result = str(result).rstrip("/") if storage.is_remote(str(result)) else Path(result)
    meta = load_meta(result)  # a URL's meta.json too
    logger = get_run_logger()
    splits = meta["splits"]
    how = "cached, unchanged inputs" if state.name == "Cached" else "written"
    logger.info(
        "%s (%s): %s %s tokens — train %d tokens / %d documents / %d shards, val %d tokens / %d documents / %d shards; %s",
        storage.redact(result), how, meta["encoding"], meta["dtype"],
        splits["train"]["tokens"], splits["train"]["documents"], len(splits["train"]["shards"]),
        splits["val"]["tokens"], splits["val"]["documents"], len(splits["val"]["shards"]),
        baseline_text(meta),
    )
    _publish(result, meta, how)
    return str(result)


def baseline_text(meta: dict) -> str:
    """The bigram baseline in words: what a model must beat on this folder's val split."""
    b = meta.get("baseline", {}).get("bigram")
    if not b or b.get("val_loss") is None:
        return "no bigram baseline (tokenized before it was recorded)"
    bpb = f", {b['val_bpb']:.3f} bits/byte" if b.get("val_bpb") is not None else ""
    return f"bigram baseline val loss {b['val_loss']:.3f} nats/token{bpb}"


def split_rows(meta: dict) -> list[dict]:
    """One row per split: its documents, tokens, bytes and shards, with the encoding, dtype and vocabulary beside."""
    return [{"split": name, "documents": s["documents"], "tokens": s["tokens"], "bytes": s.get("bytes"), "shards": len(s["shards"]),
             "encoding": meta["encoding"], "dtype": meta["dtype"], "vocab_size": meta["vocab_size"]}
            for name, s in meta["splits"].items()]


def _baseline_detail(meta: dict) -> str:
    b = meta.get("baseline", {}).get("bigram")
    if not b or b.get("val_loss") is None:
        return ""
    return f" ({b.get('method')}, fitted on {b.get('train_tokens', 0):,} train tokens, scored on {b.get('val_tokens', 0):,} val tokens)"


def _publish(out: Path | str, meta: dict, how: str) -> None:
    """A table of the splits and a markdown summary with the meta."""
    rows = split_rows(meta)
    publish_table("tokenize-splits", rows, "cook tokenize: documents, tokens, bytes and shards per split")
    md = [f"# tokenize -> `{storage.redact(out)}` ({how})", "",
          f"- encoding: {meta['encoding']}, vocabulary: {meta['vocab_size']:,} ids, dtype: {meta['dtype']}, "
          f"end-of-text id: {meta.get('eot_id')}",
          f"- validation fraction: {meta.get('val_fraction')}, fingerprint: `{str(meta.get('fingerprint', ''))[:16]}`",
          f"- {baseline_text(meta)}" + _baseline_detail(meta),
          "", "| split | documents | tokens | bytes | shards |", "|---|---:|---:|---:|---:|"]
    md += [f"| {r['split']} | {r['documents']:,} | {r['tokens']:,} | {'' if r['bytes'] is None else format(r['bytes'], ',')} | {r['shards']} |"
           for r in rows]
    publish_markdown("tokenize-summary", md, "cook tokenize summary")
