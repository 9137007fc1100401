"""`cook merge`: documents from every source -> cleaned, deduplicated shards + rejects with reasons."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.merge import MAX_CHARS, MIN_CHARS, check_merge_args, merge_task, parse_size
from tasks.caching import FLOW_RESULTS


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f}"


def summary_markdown(stats: dict) -> str:
    """The merge's accounting as markdown: documents and bytes in and out per source, dedup and filter counts."""
    md = [
        "# Merge summary",
        "",
        f"{stats['documents_in']:,} documents in, {stats['documents_out']:,} kept, {stats['documents_rejected']:,} rejected; "
        f"{_mb(stats['bytes_in'])} MB in, {_mb(stats['bytes_out'])} MB out; {len(stats['shards'])} shard(s) ({stats['format']}).",
        "",
        "| source | docs in | docs out | MB in | MB out | rejected |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for src, s in stats["sources"].items():
        md.append(f"| {src} | {s['documents_in']:,} | {s['documents_out']:,} | {_mb(s['bytes_in'])} | {_mb(s['bytes_out'])} | "
                  f"{sum(s['rejected'].values()):,} |")
    md += ["", f"**Exact duplicates:** {stats['exact_duplicates']:,}  ",
           f"**Near duplicates:** {stats['near_duplicates']:,}" + ("" if stats["near_dedup"] else " (near-dedup off)"), ""]
    if stats["rejected"]:
        md += ["| reason | documents |", "|---|---:|"] + [f"| {r} | {n:,} |" for r, n in stats["rejected"].items()]
    return "\n".join(md)


@flow(name="merge", **FLOW_RESULTS)
def merge_flow(
    inputs: list[str],
    out: str,
    shard_size: str = "2GB",
    fmt: str = "parquet",
    near_dedup: bool = False,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    languages: list[str] | None = None,
) -> dict:
    """Merge `inputs` into `out` (shards, rejects/, stats.json); return the stats. Cached while inputs are unchanged."""
    files = check_merge_args(inputs, out, shard_size, fmt, languages)
    state = merge_task(files, Path(out), parse_size(shard_size), fmt, near_dedup, min_chars, max_chars,
                       list(languages) if languages else None, return_state=True)
    stats = state.result()
    create_markdown_artifact(key="merge-summary", markdown=summary_markdown(stats), description="cook merge summary")
    how = "cached, unchanged inputs" if state.name == "Cached" else "written"
    get_run_logger().info(
        "%s (%s): %d documents in, %d kept in %d shard(s), %d rejected (%d exact, %d near duplicates)",
        out, how, stats["documents_in"], stats["documents_out"], len(stats["shards"]), stats["documents_rejected"],
        stats["exact_duplicates"], stats["near_duplicates"],
    )
    return stats
