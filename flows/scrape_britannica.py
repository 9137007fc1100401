"""`cook scrape britannica`: search queries -> result pages -> articles, as clean documents, one cached Prefect
task per query.

    cook scrape britannica [--query Q ...] [--queries FILE] [--max-pages-per-query 10] [--out DIR]

Articles are deduplicated by path across queries and runs (the ledger `OUT/ledger.sqlite`). A failing article
is recorded and retried by the next run; it never stops the crawl. Pages whose structure no longer matches
give warnings naming the URL and the selectors. A query whose crawl fails is reported and the others go on.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from flows.report import items_label, publish_markdown, publish_table, run_name
from model.errors import CookError
from tasks.sources.britannica import DEFAULT_QUERIES, SOURCE, check_scrape_britannica_args, crawl_query_task, default_out
from tasks.core.caching import FLOW_RESULTS
from tasks.core.settings import get_settings

__all__ = ["DEFAULT_QUERIES", "check_scrape_britannica_args", "scrape_britannica_flow"]


def _run_name(p: dict) -> str:
    return (f"scrape-britannica: {items_label(p.get('queries'), p.get('queries_file'), 'query', 'queries')}, "
            f"{p.get('max_pages_per_query')} result pages each")


@flow(name="scrape-britannica", flow_run_name=run_name("scrape-britannica", _run_name), **FLOW_RESULTS)
def scrape_britannica_flow(queries: list[str] | None = None, queries_file: str | None = None, max_pages_per_query: int = 10,
                           out: str | None = None, concurrency: int = 4, rate_limit: float = 5.0) -> dict:
    """Crawl Britannica for `queries` (or the built-in topics) into document parquet parts under `out`.

    Returns the run's summary: out, documents (in `out`, from every run), fetched (now), failed (articles and queries),
    warnings, cached (queries), disallowed (URLs robots.txt ruled out) and per_query rows.
    """
    qs = check_scrape_britannica_args(queries, queries_file, max_pages_per_query, out, concurrency, rate_limit)
    out_dir = Path(out).resolve() if out else default_out().resolve()
    base_url = get_settings().britannica_url.rstrip("/")
    logger = get_run_logger()

    rows, failed, warnings, cached = [], [], [], 0
    for q in qs:
        state = crawl_query_task.with_options(task_run_name=f"britannica {q}")(
            q, max_pages_per_query, str(out_dir), base_url, concurrency=concurrency, rate_limit=rate_limit, return_state=True)
        if state.is_completed():
            r = dict(state.result())
            r["state"] = state.name
            if state.name == "Cached":
                cached += 1
                r["fetched"] = 0  # fetched by the run that cached it
            failed += [{"query": q, **f} for f in r["failed"]]
            warnings += r["warnings"] if r["state"] != "Cached" else []
            rows.append(r)
        else:
            exc = state.result(raise_on_failure=False)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, BaseException) else str(state.message)
            failed.append({"query": q, "path": None, "error": reason})
            rows.append({"query": q, "found": 0, "done": 0, "fetched": 0, "failed": [], "disallowed": 0, "warnings": [],
                         "state": "Failed", "reason": reason})

    documents = sum(pq.ParquetFile(p).metadata.num_rows for p in out_dir.glob(f"{SOURCE}-*.parquet"))
    summary = {
        "out": str(out_dir), "base_url": base_url, "queries": len(qs), "documents": documents,
        "fetched": sum(r["fetched"] for r in rows), "failed": failed, "warnings": warnings, "cached": cached,
        "disallowed": sum(r["disallowed"] for r in rows),
        "per_query": [{k: r.get(k) for k in ("query", "found", "done", "fetched", "disallowed", "state")}
                      | {"failed": len(r["failed"]), "warnings": len(r["warnings"])} for r in rows],
    }
    _publish(summary)
    logger.info("scrape britannica: %d documents for %d queries (%d fetched now, %d queries cached), %d failures, %d warnings -> %s",
                documents, len(qs), summary["fetched"], cached, len(failed), len(warnings), out_dir)
    failed_queries = [r for r in rows if r["state"] == "Failed"]
    if failed_queries and len(failed_queries) == len(qs):
        raise CookError(f"scrape britannica: every query failed, e.g. {failed_queries[0]['query']!r}: {failed_queries[0]['reason']}")
    return summary


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
          "", "| query | state | found | done | fetched now | failed | warnings |", "|---|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['query']} | {r['state']} | {r['found']} | {r['done']} | {r['fetched']} | {r['failed']} | {r['warnings']} |"
           for r in summary["per_query"]]
    if summary["failed"] or summary["warnings"]:
        md += ["", "## Failures and warnings", ""]
        md += [f"- {f['query']}: {f['path'] or 'query'}: {f['error']}" for f in summary["failed"][:200]]
        md += [f"- {w}" for w in summary["warnings"][:200]]
    publish_markdown("scrape-britannica-summary", md, "cook scrape britannica summary")
