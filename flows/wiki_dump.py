"""`cook scrape wiki-dump DUMP --out DIR [--workers N] [--fetch]`: a Wikipedia pages-articles dump -> documents.

One cached task reads the whole dump (parallel inside, see tasks/wikidump.py): a re-run on the same dump
and `--out` is a cache hit while `out/summary.json` exists. A truncated dump succeeds with every complete
page before the cut; the summary has `truncated: True` and the run logs a warning.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from model.atomic import clean_stale_temps
from tasks.settings import get_settings
from tasks.wikidump import check_wiki_dump_args, dump_titles, read_dump_task
from tasks.caching import FLOW_RESULTS

__all__ = ["check_wiki_dump_args", "wiki_dump_flow", "default_out"]


def default_out() -> Path:
    return get_settings().data_dir / "wikipedia-dump"


@flow(name="wiki-dump", **FLOW_RESULTS)
def wiki_dump_flow(dump: str, out: str | None = None, workers: int | None = None, fetch: bool = False) -> dict:
    """Read `dump` into document shards in `out` (default DATA/wikipedia-dump); return the summary."""
    path = check_wiki_dump_args(dump, out, workers)
    out_dir = Path(out) if out is not None else default_out()
    out_dir = out_dir.resolve()
    if out_dir.parent.exists():
        clean_stale_temps(out_dir.parent)
    logger = get_run_logger()
    if fetch:
        return _fetch(path, out_dir, workers, logger)
    summary = read_dump_task.with_options(task_run_name=f"read {path.name}")(path.resolve(), str(out_dir), workers)
    _publish(summary)
    skipped = summary["skipped"]
    logger.info(
        "wiki-dump: %d pages seen, %d kept, skipped %d other namespaces, %d redirects, %d empty -> %s",
        summary["pages_seen"], summary["kept"], skipped["namespace"], skipped["redirect"], skipped["empty"], out_dir,
    )
    if summary["truncated"]:
        logger.warning("wiki-dump: the dump is truncated (%s): kept every complete page before the cut", summary["truncation"])
    return summary


def _fetch(path: Path, out_dir: Path, workers: int | None, logger) -> dict:
    """`--fetch`: the dump only names the pages; each is fetched through the API scraper (polite, resumable
    through its ledger) into `out_dir`, in the scraper's format."""
    from tasks.wikipedia import fetch_pages

    result = fetch_pages(dump_titles(path, workers), out_dir, tag=f"wiki-dump:{path.name}")
    failed = result.get("failed") or []
    logger.info("wiki-dump --fetch: %s fetched, %s already done, %d failed -> %s",
                result.get("fetched"), result.get("skipped_done"), len(failed), out_dir)
    try:
        create_markdown_artifact(
            key="wiki-dump-fetch-summary", description="cook scrape wiki-dump --fetch summary",
            markdown=f"# wiki-dump --fetch `{path.name}` -> `{out_dir}`\n\n- fetched: {result.get('fetched')}\n"
                     f"- already done: {result.get('skipped_done')}\n- failed: {len(failed)}",
        )
    except Exception:
        pass
    return {"dump": str(path), "out": str(out_dir), "fetch": True, "truncated": False, **result}


def _publish(s: dict) -> None:
    md = [
        f"# wiki-dump `{Path(s['dump']).name}` -> `{s['out']}`",
        "",
        f"- pages seen: {s['pages_seen']}, kept: {s['kept']}",
        f"- skipped: {s['skipped']['namespace']} other namespaces, {s['skipped']['redirect']} redirects, {s['skipped']['empty']} empty",
        f"- truncated: {'**yes** (' + s['truncation'] + ')' if s['truncated'] else 'no'}",
        f"- XML: {s['xml_mb']:.1f} MB in {s['seconds']:.1f} s; shards: {len(s['shards'])}",
    ]
    try:
        create_markdown_artifact(key="wiki-dump-summary", markdown="\n".join(md), description="cook scrape wiki-dump summary")
    except Exception:  # a nicety: never fail the run over it
        pass
