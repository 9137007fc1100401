"""`cook tokenize`: documents -> train/val token shards + meta.json (cached while inputs are unchanged)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from model.shards import load_meta
from model.tokenizer import load_tokenizer
from tasks.settings import get_settings
from tasks.tokenize import check_tokenize_args, tokenize_task
from tasks.caching import FLOW_RESULTS


@flow(name="tokenize", **FLOW_RESULTS)
def tokenize_flow(
    inputs: list[str],
    encoding: str = "gpt2",
    out: str | None = None,
    tokenizer_dir: str | None = None,
    val_fraction: float = 0.005,
    dtype: str = "auto",
    shard_tokens: int = 100_000_000,
) -> str:
    """Tokenize `inputs` into `out` (default `<data_dir>/tokens`); return the output folder.

    With `tokenizer_dir` (a saved `tokenizer/` folder) the new data gets the same ids as before.
    """
    files = check_tokenize_args(inputs, encoding, dtype, tokenizer_dir)
    out_path = Path(out) if out is not None else get_settings().data_dir / "tokens"
    tok_dir = Path(tokenizer_dir) if tokenizer_dir is not None else None
    state = tokenize_task(
        files,
        encoding,
        out_path,
        tok_dir,
        val_fraction,
        dtype,
        shard_tokens,
        tokenizer_hash=load_tokenizer(tok_dir).hash if tok_dir is not None else None,
        return_state=True,
    )
    result = Path(state.result())
    meta = load_meta(result)
    logger = get_run_logger()
    splits = meta["splits"]
    how = "cached, unchanged inputs" if state.name == "Cached" else "written"
    logger.info(
        "%s (%s): %s %s tokens — train %d tokens / %d documents / %d shards, val %d tokens / %d documents / %d shards",
        result, how, meta["encoding"], meta["dtype"],
        splits["train"]["tokens"], splits["train"]["documents"], len(splits["train"]["shards"]),
        splits["val"]["tokens"], splits["val"]["documents"], len(splits["val"]["shards"]),
    )
    return str(result)
