"""`cook scrape wiki-dump [DUMP] --out DIR [--workers N] [--fetch]`: a Wikipedia pages-articles dump -> documents.

One cached task reads the whole dump (parallel inside, see tasks/sources/wikidump.py): a re-run on the same dump
and `--out` is a cache hit while `out/summary.json` exists. A truncated dump succeeds with every complete
page before the cut; the summary has `truncated: True` and the run logs a warning.

DUMP and `--out` may be URLs (s3://…), and with COOK_DATA_DIR a URL the defaults are on its store (`dumps/`,
`wikipedia-dump/`): the task gets them as URLs, copies the dump to its own machine's cache and publishes the
output whole on the store, so it runs on a Dask worker that shares only the bucket, and a rerun anywhere with the
same dump is a cache hit from the bucket's result records. `--fetch` writes into a local folder only.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from flows.report import count, publish_markdown, publish_table, run_name, short
from flows.runners import final_state, stage_runner
from model import storage
from model.errors import CookError
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import clean_stale_beside, hold_output, one_writer
from tasks.core.settings import get_settings
from tasks.sources.wikidump import (check_wiki_dump_args, dump_titles, local_dump, newest_dump, read_dump_task,
                                    skipped_names)

__all__ = ["check_args", "check_wiki_dump_args", "wiki_dump_flow", "default_out"]


def default_out() -> str:
    """DATA/wikipedia-dump: a local folder, or on the store when COOK_DATA_DIR is a URL."""
    return get_settings().location("wikipedia-dump")


def check_args(dump: str | None, out: str | None, workers: int | None, fetch: bool = False) -> Path | str:
    """Check the command's arguments before anything runs (`dump` None: the newest dump under DATA/dumps); return
    the dump (a Path, or its URL). One-line CookError for a bad dump, index, worker count or output, and for
    `--fetch` into a URL: the API scraper writes its pages and its ledger into a local folder, in place."""
    out_loc = out if out is not None else default_out()
    if fetch and storage.is_remote(out_loc):
        where = (f"--out {storage.redact(out_loc)}" if out is not None
                 else f"its default {storage.redact(out_loc)} (under COOK_DATA_DIR)")
        raise CookError(f"--fetch with a bucket --out is not supported yet: the API scraper writes its pages and "
                        f"ledger into a local folder in place, and {where} is a URL; give a local --out")
    return check_wiki_dump_args(dump if dump is not None else str(newest_dump()), out, workers)


def _run_name(p: dict) -> str:
    out = short(p["out"]) if p.get("out") else "wikipedia-dump"
    dump = short(p["dump"]) if p.get("dump") else "newest dump"
    return f"wiki-dump {dump} -> {out}" + (" (fetch titles)" if p.get("fetch") else "")


@flow(name="wiki-dump", flow_run_name=run_name("wiki-dump", _run_name), **FLOW_RESULTS)
@one_writer
def wiki_dump_flow(dump: str | None = None, out: str | None = None, workers: int | None = None, fetch: bool = False,
                   dask: str | None = None) -> dict:
    """Read `dump` (default: the newest pages-articles dump under DATA/dumps) into document shards in `out`
    (default DATA/wikipedia-dump); return the summary. Either may be a URL (s3://…).

    `dask`: read on a Dask worker (an address or "local"; default COOK_DASK_ADDRESS, see flows/runners.py); a
    Dask worker may not start processes, so there the dump is parsed in the worker's own process. The task gets
    a URL as it is (the worker copies the dump itself) and a local path resolved (the workers must see it).
    """
    path = check_args(dump, out, workers, fetch)
    out_loc = out if out is not None else default_out()
    out_loc = out_loc.rstrip("/") if storage.is_remote(out_loc) else str(Path(out_loc).resolve())
    # the lock beside the folder, as reading replaces it whole (--fetch writes in place, under the same lock)
    hold_output(out_loc, replaced=True)
    clean_stale_beside(out_loc)  # this folder's temps of a crashed run, none of its neighbours'
    logger = get_run_logger()
    if fetch:
        return _fetch(path, Path(out_loc), workers, logger)
    remote = storage.is_remote(path)
    with stage_runner(dask) as runner:
        state = final_state(runner.submit(read_dump_task.with_options(task_run_name=f"read {storage.name(path)}"),
                                          path if remote else path.resolve(), out_loc, workers))
    summary = state.result()
    _publish(summary, out_loc)
    skipped = summary["skipped"]
    how = "cached, unchanged dump" if state.name == "Cached" else "written"
    logger.info(
        "wiki-dump: %d pages seen, %d kept, skipped %d other namespaces, %d redirects, %d empty, %d failed -> %s (%s)",
        summary["pages_seen"], summary["kept"], skipped["namespace"], skipped["redirect"], skipped["empty"],
        skipped.get("failed", 0), storage.redact(out_loc), how,
    )
    if skipped.get("failed"):  # each page that raised or ran past its time budget, by title and id
        logger.warning("wiki-dump: skipped %d page(s): %s", skipped["failed"], skipped_names(summary))
    if summary["truncated"]:
        logger.warning("wiki-dump: the dump is truncated (%s): kept every complete page before the cut", summary["truncation"])
    return summary


def _fetch(dump: Path | str, out_dir: Path, workers: int | None, logger) -> dict:
    """`--fetch`: the dump only names the pages; each is fetched through the API scraper (polite, resumable
    through its ledger) into `out_dir`, in the scraper's format. A dump at a URL is read from this machine's copy."""
    from tasks.sources.wikipedia import fetch_pages

    path = local_dump(dump)
    result = fetch_pages(dump_titles(path, workers), out_dir, tag=f"wiki-dump:{path.name}")
    failed = result.get("failed") or []
    logger.info("wiki-dump --fetch: %s fetched, %s already done, %d failed -> %s",
                result.get("fetched"), result.get("skipped_done"), len(failed), out_dir)
    publish_markdown(
        "wiki-dump-fetch-summary",
        f"# wiki-dump --fetch `{path.name}` -> `{out_dir}`\n\n- fetched: {result.get('fetched')}\n"
        f"- already done: {result.get('skipped_done')}\n- failed: {len(failed)}",
        "cook scrape wiki-dump --fetch summary",
    )
    publish_table("wiki-dump-fetch", [{"dump": path.name, "fetched": result.get("fetched"), "already_done": result.get("skipped_done"),
                                       "failed": len(failed)}], "cook scrape wiki-dump --fetch: pages fetched")
    summary = {"dump": storage.redact(dump) if storage.is_remote(dump) else str(path), "out": str(out_dir), "fetch": True,
               "truncated": False, **result}
    transient = [f for f in failed if f.get("transient", True)]
    if transient:  # saved, but not done: the next run retries exactly these
        from model.errors import Incomplete

        e = Incomplete(f"wiki-dump --fetch: {count(len(transient), 'page')} failed (e.g. {transient[0]['error']}); "
                       f"run the same command again to retry them")
        e.summary = summary
        raise e
    return summary


def shard_rows(s: dict, out: str | os.PathLike | None = None) -> list[dict]:
    """One table row per output shard: its articles and MB (`out`: where the shards are, default the summary's)."""
    out = out if out is not None else s["out"]
    rows = []
    for name in s["shards"]:
        try:
            if storage.is_remote(out):  # the footer and the size: two small requests
                loc = storage.join(out, name)
                with storage.open_read(loc) as f:
                    articles = pq.ParquetFile(f).metadata.num_rows
                mb = round(storage.size(loc) / 1e6, 3)
            else:
                path = Path(out) / name
                articles, mb = pq.ParquetFile(path).metadata.num_rows, round(path.stat().st_size / 1e6, 3)
        except Exception:  # a shard gone since: the table says so rather than failing the run
            articles, mb = None, None
        rows.append({"shard": name, "articles": articles, "mb": mb})
    return rows


def _publish(s: dict, out: str | None = None) -> None:
    """A table with one row per shard, and a markdown summary: pages seen and kept, what was skipped and why."""
    publish_table("wiki-dump-shards", shard_rows(s, out), "cook scrape wiki-dump: articles per output shard")
    md = [
        f"# wiki-dump `{storage.name(s['dump'])}` -> `{s['out']}`",
        "",
        f"- pages seen: {s['pages_seen']}, kept: {s['kept']}",
        f"- skipped: {s['skipped']['namespace']} other namespaces, {s['skipped']['redirect']} redirects, {s['skipped']['empty']} empty, "
        f"{s['skipped'].get('failed', 0)} failed (an error or over the time budget)",
        *[f"  - `{p['title']}` (id {p['id']}): {p['reason']}" for p in s.get("skipped_pages") or []],
        f"- truncated: {'**yes** (' + s['truncation'] + ')' if s['truncated'] else 'no'}",
        f"- XML: {s['xml_mb']:.1f} MB in {s['seconds']:.1f} s; shards: {len(s['shards'])}",
    ]
    publish_markdown("wiki-dump-summary", md, "cook scrape wiki-dump summary")
