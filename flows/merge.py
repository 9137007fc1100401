"""`cook merge`: documents from every source -> cleaned, deduplicated shards + rejects with reasons."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
from prefect import flow, get_run_logger

from flows.report import count, publish_markdown, publish_table, run_name, short
from flows.runners import final_state, stage_runner
from model import storage
from model.errors import CookError
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.corpus.merge import MAX_CHARS, MIN_CHARS, check_merge_args, merge_task, parse_size
from tasks.core.settings import SOURCE_DIRS, get_settings


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


def source_rows(stats: dict) -> list[dict]:
    """One row per source: documents and MB in and out, documents rejected."""
    return [{"source": src, "documents_in": s["documents_in"], "documents_out": s["documents_out"],
             "mb_in": round(s["bytes_in"] / 1e6, 3), "mb_out": round(s["bytes_out"] / 1e6, 3),
             "rejected": sum(s["rejected"].values())} for src, s in stats["sources"].items()]


def shard_rows(out: Path | str, stats: dict) -> list[dict]:
    """One row per written shard (kept, then rejects): documents (parquet shards) and MB on disk (on the store
    for a URL)."""
    from tasks.corpus.documents import open_remote

    rows = []
    for kind, names in (("kept", stats["shards"]), ("rejects", stats.get("reject_shards") or [])):
        for name in names:
            try:
                if isinstance(out, str):
                    url = storage.join(out, *name.split("/"))
                    docs = pq.ParquetFile(open_remote(url)).metadata.num_rows if url.endswith(".parquet") else None
                    mb = round(storage.size(url) / 1e6, 3)
                else:
                    path = out / name
                    docs = pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else None
                    mb = round(path.stat().st_size / 1e6, 3)
            except Exception:  # a shard gone since: the table says so rather than failing the run
                docs, mb = None, None
            rows.append({"shard": name, "kind": kind, "documents": docs, "mb": mb})
    return rows


def _run_name(p: dict) -> str:
    ins = p.get("inputs") or []
    what = short(ins[0]) if len(ins) == 1 else count(len(ins), "input")
    return f"merge {what} -> {short(p['out'])}" + (" (near-dedup)" if p.get("near_dedup") else "")


@flow(name="merge", flow_run_name=run_name("merge", _run_name), **FLOW_RESULTS)
@one_writer
def merge_flow(
    inputs: list[str] | None = None,
    out: str | None = None,
    shard_size: str = "2GB",
    fmt: str = "parquet",
    near_dedup: bool = False,
    min_chars: int = MIN_CHARS,
    max_chars: int = MAX_CHARS,
    languages: list[str] | None = None,
    dask: str | None = None,
    workers: int | None = None,
    dedup_memory: str = "1GB",
) -> dict:
    """Merge `inputs` (default: every source folder under the data dir) into `out` (default DATA/merged: shards,
    rejects/, stats.json); return the stats. Cached while inputs are unchanged.

    `dask`: run the task on a Dask cluster (an address or "local"; default COOK_DASK_ADDRESS, see flows/runners.py).
    `workers`: worker processes for the per-document work (None: by the input's size; 0 or 1: none; on a Dask
    worker, none). The output does not depend on it.
    `dedup_memory`: what the dedup indexes may take (e.g. "1GB"); past it, dedup runs on disk in two passes
    (tasks/corpus/merge.py). The output does not depend on it.
    """
    settings = get_settings()
    inputs = inputs if inputs is not None else settings.source_locations()
    if not inputs:
        raise CookError(f"nothing to merge: no source folder under {storage.redact(settings.location())} "
                        f"({', '.join(SOURCE_DIRS.values())})")
    out = out if out is not None else settings.location("merged")
    remote = storage.is_remote(out)
    # absolute paths: the task may run in another process (a Dask worker) with another working directory
    files = [f if isinstance(f, str) else f.absolute() for f in check_merge_args(inputs, out, shard_size, fmt, languages, dedup_memory)]
    hold_output(out, replaced=True)  # one writer: the lock beside `out`, which is replaced whole
    target = out.rstrip("/") if remote else Path(out).absolute()
    with stage_runner(dask) as runner:
        state = final_state(runner.submit(merge_task, files, target, parse_size(shard_size), fmt, near_dedup,
                                          min_chars, max_chars, list(languages) if languages else None, workers,
                                          parse_size(dedup_memory)))
    stats = state.result()
    publish_markdown("merge-summary", summary_markdown(stats), "cook merge summary")
    publish_table("merge-sources", source_rows(stats), "cook merge: documents and MB in and out per source")
    publish_table("merge-shards", shard_rows(target if remote else Path(out), stats), "cook merge: the shards written")
    how = "cached, unchanged inputs" if state.name == "Cached" else "written"
    get_run_logger().info(
        "%s (%s): %d documents in, %d kept in %d shard(s), %d rejected (%d exact, %d near duplicates)",
        storage.redact(out), how, stats["documents_in"], stats["documents_out"], len(stats["shards"]), stats["documents_rejected"],
        stats["exact_duplicates"], stats["near_duplicates"],
    )
    return stats
