"""`pipeline`: sources -> documents -> merged shards -> tokens -> a trained checkpoint, each stage a subflow.

    DATA/<source>/    gathered documents (wikipedia, britannica, youtube, wikipedia-dump, cosmopedia, pydoc)
    DATA/merged/      cleaned, deduplicated shards (+ rejects/, stats.json)
    DATA/tokens/      token shards + meta.json
    DATA/runs/<run_name>-<tokens id>/   checkpoints, metrics, loss curve

Stages whose inputs have not changed are skipped: the gatherers resume from their ledgers and cache each
finished query, merge and tokenize are cached on their inputs' fingerprints, and training goes to a run named
after the tokens, so the same tokens find their run already trained. New tokens start a new run.
A retried pipeline run reuses the subflows that completed (their results persist under DATA/.cook/results).
A gather stage that saved its work but left transient failures (`Incomplete`) does not stop the pipeline: merge,
tokenize and train go on with what was gathered, and the pipeline then ends `Incomplete` (exit 3) saying which stage.
"""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, tags

from flows.report import publish_markdown, publish_table, run_name
from model.errors import CookError, Incomplete
from model.shards import load_meta
from tasks.core.caching import FLOW_RESULTS
from tasks.core.settings import SOURCE_DIRS, get_settings

SOURCES = tuple(SOURCE_DIRS)


def check_pipeline_args(sources: list[str], dumps: list[str] | None, parquet: list[str] | None, chunks: int,
                        iters_per_chunk: int, preset: str, run_name: str) -> None:
    """Validate before any stage runs; CookError with one line."""
    from model.presets import PRESETS

    if not sources:
        raise CookError("no sources: give at least one of " + ", ".join(SOURCES))
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise CookError(f"unknown source {unknown[0]!r}; choose from: {', '.join(SOURCES)}")
    if "wiki-dump" in sources and not dumps:
        raise CookError("source wiki-dump needs dumps (paths to pages-articles XML dumps)")
    if "parquet" in sources and not parquet:
        raise CookError("source parquet needs parquet (files, folders or hf:// paths)")
    if preset not in PRESETS:
        raise CookError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if chunks < 1 or iters_per_chunk < 1:
        raise CookError("chunks and iters_per_chunk must be at least 1")
    if not run_name or any(c in run_name for c in "/\\") or run_name.startswith("."):
        raise CookError(f"run_name {run_name!r}: a plain folder name please")


def _stamp(path: Path) -> int | None:
    """mtime of a stage's marker file, to tell afterwards whether the stage wrote anything."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def _changed(before: int | None, marker: Path) -> str:
    """`ran` if the stage (re)wrote its marker file, else `unchanged`."""
    return "unchanged" if before is not None and before == _stamp(marker) else "ran"


def tokens_id(tokens: str | os.PathLike) -> str:
    """8 hex digits naming a tokens folder's content, the training run's suffix: meta.json's fingerprint (a
    digest of the tokenizer and every token), so re-tokenizing the same text finds the same run."""
    return load_meta(tokens)["fingerprint"][:8]


def _gather(source: str, out: Path, p: dict) -> tuple[str, dict]:
    """Run one source's subflow into `out`; return (state word, a few figures for the summary)."""
    if source == "wikipedia":
        from flows.scrape_wikipedia import scrape_wikipedia_flow

        s = scrape_wikipedia_flow(queries=p["queries"], max_pages=p["max_pages"], depth=p["depth"], out=str(out))
        return ("ran" if s["fetched"] else "unchanged"), {"documents": s["documents"], "fetched now": s["fetched"]}
    if source == "britannica":
        from flows.scrape_britannica import scrape_britannica_flow

        s = scrape_britannica_flow(queries=p["queries"], out=str(out))
        return ("ran" if s["fetched"] else "unchanged"), {"documents": s["documents"], "fetched now": s["fetched"]}
    if source == "youtube":
        from flows.scrape_youtube import scrape_youtube_flow

        s = scrape_youtube_flow(channels=p["channels"], out=str(out))
        fetched = s.get("fetched", 0)
        return ("ran" if fetched else "unchanged"), {"fetched now": fetched}
    if source == "wiki-dump":
        from flows.wiki_dump import wiki_dump_flow

        targets = [out if len(p["dumps"]) == 1 else out / f"{i:02d}-{Path(d).name.split('.')[0]}" for i, d in enumerate(p["dumps"])]
        before = [_stamp(t / "summary.json") for t in targets]
        kept = sum(wiki_dump_flow(dump=d, out=str(t))["kept"] for d, t in zip(p["dumps"], targets))
        changed = any(_changed(b, t / "summary.json") == "ran" for b, t in zip(before, targets))
        return ("ran" if changed else "unchanged"), {"articles": kept}
    if source == "parquet":
        from flows.unparquet import unparquet_flow

        s = unparquet_flow(sources=p["parquet"], out=str(out))
        return ("ran" if s["converted"] else "unchanged"), {"documents": s["written"], "files converted": s["converted"]}
    if source == "pydoc":
        from tasks.sources.pydoc_corpus import build_pydoc_corpus_task

        target = out / "pydoc_topics.parquet"
        before = _stamp(target)
        build_pydoc_corpus_task(target)
        return _changed(before, target), {}
    raise CookError(f"unknown source {source!r}")


# what the run does, for the UI: `pipeline: wikipedia+pydoc -> tiny x 2 chunks`
@flow(name="pipeline", flow_run_name=run_name(
    "pipeline", lambda p: f"pipeline: {'+'.join(p['sources'])} -> {p['preset']} x {p['chunks']} chunks"), **FLOW_RESULTS)
def pipeline_flow(
    sources: list[str] = ["wikipedia"],  # noqa: B006 (Prefect shows defaults in the UI; never mutated)
    queries: list[str] | None = None,
    max_pages: int = 500,
    depth: int = 1,
    channels: list[str] | None = None,
    dumps: list[str] | None = None,
    parquet: list[str] | None = None,
    near_dedup: bool = False,
    encoding: str = "gpt2",
    preset: str = "tiny",
    chunks: int = 1,
    iters_per_chunk: int = 1000,
    eval_interval: int | None = None,
    eval_iters: int | None = None,
    device: str = "auto",
    run_name: str = "pipeline",
    data_dir: str | None = None,
) -> dict:
    """From `sources` to a trained checkpoint under `data_dir` (default COOK_DATA_DIR); return every stage's outcome.

    `queries` go to Wikipedia and Britannica (None: their built-in topics), `channels` to YouTube, `dumps`
    to wiki-dump, `parquet` (e.g. Cosmopedia shards, `hf://` paths work) to unparquet; `pydoc` is Python's
    own documentation, offline. Training uses `preset` for `chunks` chunks of `iters_per_chunk` iterations.
    """
    check_pipeline_args(sources, dumps, parquet, chunks, iters_per_chunk, preset, run_name)
    root = Path(data_dir) if data_dir else get_settings().data_dir
    root = root.resolve()
    logger = get_run_logger()
    params = {"queries": queries, "max_pages": max_pages, "depth": depth, "channels": channels, "dumps": dumps,
              "parquet": parquet}
    stages: list[dict] = []

    gathered, incomplete = [], []
    for source in dict.fromkeys(sources):  # in order, once each
        out = root / SOURCE_DIRS[source]
        with tags(f"source:{source}", "stage:gather"):
            try:
                state, figures = _gather(source, out, params)
            except Incomplete as e:  # its work is saved: go on with it, and say so at the end
                state, figures = "incomplete", {}
                incomplete.append(f"gather {source}: {e}")
        gathered.append(str(out))
        stages.append({"stage": f"gather {source}", "state": state, "output": str(out), "detail": _detail(figures)})

    from flows.merge import merge_flow
    from flows.tokenize import tokenize_flow
    from flows.train import train_flow

    merged = root / "merged"
    before = _stamp(merged / "stats.json")
    with tags("stage:process"):
        stats = merge_flow(inputs=gathered, out=str(merged), near_dedup=near_dedup)
    stages.append({"stage": "merge", "state": _changed(before, merged / "stats.json"), "output": str(merged),
                   "detail": f"{stats['documents_out']:,} of {stats['documents_in']:,} documents kept"})

    tokens = root / "tokens"
    before = _stamp(tokens / "meta.json")
    with tags("stage:tokenize"):
        tokenize_flow(inputs=[str(merged)], encoding=encoding, out=str(tokens))
    stages.append({"stage": "tokenize", "state": _changed(before, tokens / "meta.json"), "output": str(tokens),
                   "detail": encoding})

    run = root / "runs" / f"{run_name}-{tokens_id(tokens)}"
    before = _stamp(run / "checkpoints")
    with tags("stage:train"):
        train_flow(data=str(tokens), run=str(run), preset=preset, chunks=chunks, iters_per_chunk=iters_per_chunk,
                   eval_interval=eval_interval, eval_iters=eval_iters, device=device)
    from model.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run)
    stages.append({"stage": "train", "state": _changed(before, run / "checkpoints"), "output": str(run),
                   "detail": f"{preset}, {chunks} x {iters_per_chunk} iterations, latest {ckpt.name if ckpt else '-'}"})

    summary = {"data_dir": str(root), "stages": stages, "run": str(run), "checkpoint": str(ckpt) if ckpt else None}
    _publish(summary)
    logger.info("pipeline: %s -> %s", ", ".join(f"{s['stage']} {s['state']}" for s in stages), ckpt)
    if incomplete:  # trained on what was gathered, but a failure never reads as success
        raise Incomplete(f"pipeline trained on what was gathered, but {'; '.join(incomplete)}")
    return summary


def _detail(figures: dict) -> str:
    return ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in figures.items())


def _publish(summary: dict) -> None:
    """A table of the stages (ran or unchanged, output, figures) and a markdown note with the checkpoint."""
    publish_table("pipeline-stages", summary["stages"], "cook pipeline: stages")
    publish_markdown("pipeline-summary", "\n".join(
        [f"# pipeline -> `{summary['checkpoint']}`", "", f"- data: `{summary['data_dir']}`", f"- run: `{summary['run']}`", ""]
        + [f"- **{s['stage']}**: {s['state']} ({s['detail'] or s['output']})" for s in summary["stages"]]), "cook pipeline summary")
