"""`cook scrape britannica`: search queries -> result pages -> articles, as clean documents, one cached Prefect
task per query.

    cook scrape britannica [--query Q ...] [--queries FILE] [--max-pages-per-query 10] [--refresh-after HOURS] [--out DIR]

Articles are deduplicated by path across queries and runs (the ledger `OUT/ledger.sqlite`). A query finished
more than `refresh_after_hours` ago runs again: its known articles are revisited with conditional requests
(one per article; a 304 downloads nothing) and changed ones are written again. A failing article is recorded
and retried by the next run; it never stops the crawl, but the run ends `Incomplete` (exit 3) once its
artifacts are published. Pages whose structure no longer matches give warnings naming the URL and the
selectors. A query whose crawl fails is reported and the others go on, unless the site is down
(`SourceUnavailable`): then the run stops at once.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, get_run_logger

from flows.report import items_label, publish_markdown, publish_table, run_name
from model import storage
from model.errors import CookError, Incomplete, SourceUnavailable
from tasks.sources.britannica import DEFAULT_QUERIES, SOURCE, check_scrape_britannica_args, crawl_query_task, default_out
from tasks.core import health
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.core.mirror import resolve_out, writer_lease
from tasks.core.settings import get_settings

__all__ = ["DEFAULT_QUERIES", "check_scrape_britannica_args", "scrape_britannica_flow"]


def _run_name(p: dict) -> str:
    return (f"scrape-britannica: {items_label(p.get('queries'), p.get('queries_file'), 'query', 'queries')}, "
            f"{p.get('max_pages_per_query')} result pages each")


@flow(name="scrape-britannica", flow_run_name=run_name("scrape-britannica", _run_name), **FLOW_RESULTS)
@one_writer
def scrape_britannica_flow(queries: list[str] | None = None, queries_file: str | None = None, max_pages_per_query: int = 10,
                           out: str | None = None, concurrency: int = 4, rate_limit: float = 5.0,
                           refresh_after_hours: float = 20.0) -> dict:
    """Crawl Britannica for `queries` (or the built-in topics) into document parquet parts under `out`.

    Returns the run's summary: out, documents (in `out`, from every run), fetched (now), failed (articles and queries),
    warnings, cached (queries), disallowed (URLs robots.txt ruled out) and per_query rows. Queries finished more
    than `refresh_after_hours` ago (0: every run) revisit their articles.

    Raises `Incomplete` after publishing when articles or queries failed for reasons a later run may not meet,
    and `SourceUnavailable` at once when the site is down.
    """
    qs = check_scrape_britannica_args(queries, queries_file, max_pages_per_query, out, concurrency, rate_limit,
                                      refresh_after_hours)
    out_dir, remote = resolve_out(out, default_out().name)  # remote: the folder's place on the data store, or None
    hold_output(remote or out_dir)  # one writer per folder: before any task cleans up or writes
    with writer_lease(remote) if remote else contextlib.nullcontext():  # one machine per bucket folder
        return _crawl(qs, max_pages_per_query, out_dir, remote, concurrency, rate_limit, refresh_after_hours)


def _crawl(qs: list[str], max_pages_per_query: int, out_dir: Path, remote: str | None, concurrency: int,
           rate_limit: float, refresh_after_hours: float) -> dict:
    """The flow's body, once its output is held: one crawl task per query, then the summary and artifacts."""
    shown = storage.redact(remote) if remote else str(out_dir)
    health.reset()  # a new run: hosts found down by an earlier run in this process get another chance
    base_url = get_settings().britannica_url.rstrip("/")
    logger = get_run_logger()

    rows, failed, warnings, cached = [], [], [], 0
    for q in qs:
        state = crawl_query_task.with_options(task_run_name=f"britannica {q}")(
            q, max_pages_per_query, str(out_dir), base_url, concurrency=concurrency, rate_limit=rate_limit,
            refresh_after_hours=refresh_after_hours, remote=remote, return_state=True)
        if state.is_completed():
            r = dict(state.result())
            r["state"] = state.name
            if state.name == "Cached":
                cached += 1
                r["fetched"], r["refreshed"] = 0, {}  # fetched by the run that cached it
            failed += [{"query": q, **f} for f in r["failed"]]
            warnings += r["warnings"] if r["state"] != "Cached" else []
            rows.append(r)
        else:
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, SourceUnavailable):  # the site is down: no point in trying the other queries
                raise exc
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, BaseException) else str(state.message)
            failed.append({"query": q, "path": None, "error": reason, "transient": True})
            rows.append({"query": q, "found": 0, "done": 0, "fetched": 0, "failed": [], "disallowed": 0, "warnings": [],
                         "state": "Failed", "reason": reason})

    documents = _documents(out_dir)
    summary = {
        "out": shown, "base_url": base_url, "queries": len(qs), "documents": documents,
        "fetched": sum(r["fetched"] for r in rows), "failed": failed, "warnings": warnings, "cached": cached,
        "disallowed": sum(r["disallowed"] for r in rows),
        "refreshed": {k: sum((r.get("refreshed") or {}).get(k, 0) for r in rows) for k in ("checked", "changed", "refetched")},
        "per_query": [{k: r.get(k) for k in ("query", "found", "done", "fetched", "disallowed", "state")}
                      | {"failed": len(r["failed"]), "warnings": len(r["warnings"])} for r in rows],
    }
    _publish(summary)
    logger.info("scrape britannica: %d documents for %d queries (%d fetched now, %d queries cached), %d failures, %d warnings -> %s",
                documents, len(qs), summary["fetched"], cached, len(failed), len(warnings), shown)
    failed_queries = [r for r in rows if r["state"] == "Failed"]
    if failed_queries and len(failed_queries) == len(qs):
        raise CookError(f"scrape britannica: every query failed, e.g. {failed_queries[0]['query']!r}: {failed_queries[0]['reason']}")
    transient = [f for f in failed if f.get("transient", True)]
    if transient:
        e = Incomplete(f"scrape britannica: {len(transient)} articles or queries failed (e.g. {transient[0]['error']}); "
                       f"{documents} documents saved in {shown}; run the same command again to retry them")
        e.summary = summary  # for a parent flow that goes on (the pipeline)
        raise e
    return summary


def _documents(out_dir: Path) -> int:
    """Articles with a document in `out_dir` (one per article: a refreshed article's older copy is not counted)."""
    from tasks.core.ledger import Ledger
    from tasks.sources.britannica import LEDGER_NAME

    if not (out_dir / LEDGER_NAME).exists():
        return 0
    with Ledger(out_dir / LEDGER_NAME) as ledger:
        return sum(1 for r in ledger.items(SOURCE, "done") if r["part"])


def query_rows(summary: dict) -> list[dict]:
    """One table row per query: state, articles found, done, fetched now, failed, warnings, disallowed."""
    return [{k: r[k] for k in ("query", "state", "found", "done", "fetched", "failed", "warnings", "disallowed")}
            for r in summary["per_query"]]


def _publish(summary: dict) -> None:
    """A table with one row per query, and a markdown artifact: totals, one row per query, then failures and warnings."""
    publish_table("scrape-britannica-queries", query_rows(summary), "cook scrape britannica: one row per query")
    md = [f"# scrape britannica -> `{summary['out']}`", "",
          f"- site: {summary['base_url']}",
          f"- documents: {summary['documents']} ({summary['fetched']} fetched in this run), queries: {summary['queries']} ({summary['cached']} cached)",
          f"- failures: {len(summary['failed'])} (retried by the next run), warnings: {len(summary['warnings'])}, "
          f"disallowed by robots.txt: {summary['disallowed']}",
          f"- refreshed: {summary['refreshed']['checked']} known articles revisited, {summary['refreshed']['changed']} changed",
          "", "| query | state | found | done | fetched now | failed | warnings |", "|---|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['query']} | {r['state']} | {r['found']} | {r['done']} | {r['fetched']} | {r['failed']} | {r['warnings']} |"
           for r in summary["per_query"]]
    if summary["failed"] or summary["warnings"]:
        md += ["", "## Failures and warnings", ""]
        md += [f"- {f['query']}: {f['path'] or 'query'}: {f['error']}" for f in summary["failed"][:200]]
        md += [f"- {w}" for w in summary["warnings"][:200]]
    publish_markdown("scrape-britannica-summary", md, "cook scrape britannica summary")
