"""`cook scrape wikipedia`: search queries -> pages -> linked pages, as clean documents, one cached Prefect task per query.

    cook scrape wikipedia [--query Q ...] [--queries FILE] [--extra-urls/--no-extra-urls] [--max-pages N] [--depth D]
                          [--refresh-after HOURS] [--out DIR]

`max_pages` is the budget of the whole run, shared fairly: each query gets an even share of what the queries
before it left. Pages are deduplicated by page id across queries and runs (the ledger `OUT/ledger.sqlite`).
A query finished more than `refresh_after_hours` ago runs again: its known pages' revision ids are checked
(one request per 50 pages) and only changed pages are fetched again. A failing page is recorded and retried
by the next run; it never stops the crawl, but the run ends `Incomplete` (exit 3) once its artifacts are
published. A query whose search fails is reported and the other queries go on, unless its host is down
(`SourceUnavailable`): then the run stops at once.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from prefect import flow, get_run_logger

from flows.report import count, items_label, publish_markdown, publish_table, run_name
from model import storage
from model.errors import CookError, Incomplete, SourceUnavailable
from tasks.core import health
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.core.mirror import resolve_out, writer_lease
from tasks.core.settings import get_settings
from tasks.sources.wikipedia import DEFAULT_QUERIES, check_scrape_wikipedia_args, crawl_query_task, default_out

__all__ = ["DEFAULT_QUERIES", "check_scrape_wikipedia_args", "scrape_wikipedia_flow"]


def _run_name(p: dict) -> str:
    links = f", depth {p.get('depth')}" if p.get("extra_urls", True) else ", no links"
    return f"scrape-wikipedia: {items_label(p.get('queries'), p.get('queries_file'), 'query', 'queries')}, max {p.get('max_pages')} pages{links}"


@flow(name="scrape-wikipedia", flow_run_name=run_name("scrape-wikipedia", _run_name), **FLOW_RESULTS)
@one_writer
def scrape_wikipedia_flow(queries: list[str] | None = None, queries_file: str | None = None, extra_urls: bool = True,
                          max_pages: int = 500, depth: int = 1, out: str | None = None, concurrency: int = 4,
                          rate_limit: float = 10.0, refresh_after_hours: float = 20.0) -> dict:
    """Crawl Wikipedia for `queries` (or the built-in topics) into document parquet parts under `out`.

    `extra_urls` turns link following on (to `depth` levels); off, only search hits are fetched. Returns
    the run's summary: out, queries, documents done, pages fetched now, failures and cached queries. Queries
    finished more than `refresh_after_hours` ago (0: every run) are re-checked for edited pages.

    Raises `Incomplete` after publishing when pages or queries failed for reasons a later run may not meet
    (the run saved everything else), and `SourceUnavailable` at once when the API's host is down.
    """
    qs = check_scrape_wikipedia_args(queries, queries_file, extra_urls, max_pages, depth, out, concurrency, rate_limit,
                                     refresh_after_hours)
    out_dir, remote = resolve_out(out, default_out().name)  # remote: the folder's place on the data store, or None
    shown = storage.redact(remote) if remote else str(out_dir)
    hold_output(remote or out_dir)  # one writer per folder: before any task cleans up or writes
    with writer_lease(remote) if remote else contextlib.nullcontext():  # one machine per bucket folder
        return _crawl(qs, max_pages, extra_urls, depth, out_dir, remote, shown, concurrency, rate_limit, refresh_after_hours)


def _crawl(qs: list[str], max_pages: int, extra_urls: bool, depth: int, out_dir: Path, remote: str | None, shown: str,
           concurrency: int, rate_limit: float, refresh_after_hours: float) -> dict:
    """The flow's body, once its output is held: one crawl task per query, then the summary and artifacts."""
    health.reset()  # a new run: hosts found down by an earlier run in this process get another chance
    api_url = get_settings().wikipedia_api_url
    depth = depth if extra_urls else 0
    logger = get_run_logger()

    rows, errors, used, cached = [], [], 0, 0
    for i, q in enumerate(qs):
        quota = math.ceil(max(0, max_pages - used) / (len(qs) - i))
        if quota == 0:
            rows.append({"query": q, "quota": 0, "done": 0, "fetched": 0, "failed": [], "state": "skipped"})
            continue
        state = crawl_query_task.with_options(task_run_name=f"wikipedia {q}")(
            q, quota, depth, max_pages, str(out_dir), api_url, concurrency=concurrency, rate_limit=rate_limit,
            refresh_after_hours=refresh_after_hours, remote=remote, return_state=True)
        if state.is_completed():
            r = dict(state.result())
            r["state"] = state.name
            if state.name == "Cached":
                cached += 1
                r["fetched"], r["refreshed"] = 0, {}  # fetched by the run that cached it
            used += r["done"]
            rows.append(r)
        else:
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, SourceUnavailable):  # a dead host: no point in trying the other queries
                raise exc
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, BaseException) else str(state.message)
            errors.append({"query": q, "reason": reason})
            rows.append({"query": q, "quota": quota, "done": 0, "fetched": 0, "failed": [], "state": "Failed", "reason": reason})

    failed_pages = [f for r in rows for f in r["failed"]]
    summary = {
        "out": shown, "api_url": api_url, "queries": len(qs), "documents": used,
        "fetched": sum(r["fetched"] for r in rows), "failed_pages": failed_pages, "failed_queries": errors,
        "refreshed": {k: sum((r.get("refreshed") or {}).get(k, 0) for r in rows) for k in ("checked", "changed", "refetched", "gone")},
        "cached": cached, "per_query": [{k: r.get(k) for k in ("query", "quota", "done", "fetched", "state")} | {"failed": len(r["failed"])} for r in rows],
    }
    _publish(summary, rows)
    logger.info("scrape wikipedia: %d documents for %d queries (%d fetched now, %d queries cached), %d pages failed, %d queries failed -> %s",
                used, len(qs), summary["fetched"], cached, len(failed_pages), len(errors), shown)
    if errors and len(errors) == len(qs):
        raise CookError(f"scrape wikipedia: every query failed, e.g. {errors[0]['query']!r}: {errors[0]['reason']}")
    transient = [f for f in failed_pages if f.get("transient", True)]
    if transient or errors:
        first = transient[0]["error"] if transient else errors[0]["reason"]
        e = Incomplete(f"scrape wikipedia: {count(len(transient), 'page')} and {count(len(errors), 'query', 'queries')} failed (e.g. {first}); "
                       f"{used} documents saved in {shown}; run the same command again to retry them")
        e.summary = summary  # for a parent flow that goes on (the pipeline)
        raise e
    return summary


def query_rows(summary: dict) -> list[dict]:
    """One table row per query: state, page budget, documents done, pages fetched now, pages failed."""
    return [{"query": r["query"], "state": r["state"], "budget": r["quota"], "done": r["done"], "fetched": r["fetched"],
             "failed": r["failed"]} for r in summary["per_query"]]


def _publish(summary: dict, rows: list[dict]) -> None:
    """A table with one row per query, and a markdown artifact: totals, one row per query, then the failures."""
    publish_table("scrape-wikipedia-queries", query_rows(summary), "cook scrape wikipedia: one row per query")
    md = [f"# scrape wikipedia -> `{summary['out']}`", "",
          f"- API: {summary['api_url']}",
          f"- documents: {summary['documents']} ({summary['fetched']} fetched in this run), queries: {summary['queries']} ({summary['cached']} cached)",
          f"- failed pages: {len(summary['failed_pages'])} (retried by the next run), failed queries: {len(summary['failed_queries'])}",
          f"- refreshed: {summary['refreshed']['checked']} known pages checked, {summary['refreshed']['changed']} changed, "
          f"{summary['refreshed']['refetched']} fetched again, {summary['refreshed']['gone']} gone",
          "", "| query | state | budget | done | fetched now | failed |", "|---|---|---:|---:|---:|---:|"]
    md += [f"| {r['query']} | {r['state']} | {r['quota']} | {r['done']} | {r['fetched']} | {len(r['failed'])} |" for r in rows]
    if summary["failed_pages"] or summary["failed_queries"]:
        md += ["", "## Failures", ""]
        md += [f"- page {f['pageid']} {f['title']}: {f['error']}" for f in summary["failed_pages"][:200]]
        md += [f"- query {f['query']}: {f['reason']}" for f in summary["failed_queries"]]
    publish_markdown("scrape-wikipedia-summary", md, "cook scrape wikipedia summary")
