"""`cook unparquet`: dataset parquet files (local or `hf://`) -> cook documents, one cached Prefect task per file.

A file that fails (truncated, not parquet, no text column) does not stop the others: every file is
tried, the run's summary (log line and markdown artifact) lists the failures, and the flow then
raises one CookError line so the CLI exits non-zero. Outputs are written atomically, so a re-run
after a crash converts only what is missing (finished files are cache hits).

    cook unparquet SRC... --out DIR [--format parquet|text|csv] [--column text]
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from model.atomic import clean_stale_temps
from model.errors import CookError
from tasks.unparquet import check_unparquet_args, output_path, source_fingerprint, unparquet_task
from tasks.caching import FLOW_RESULTS

__all__ = ["check_unparquet_args", "unparquet_flow"]

MAX_WORKERS = 2  # files converted at once: each holds one record batch per column in memory


@flow(name="unparquet", task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), **FLOW_RESULTS)
def unparquet_flow(sources: list[str], out: str, fmt: str = "parquet", column: str = "text") -> dict:
    """Convert every parquet file in `sources` into `out`; return the run's summary.

    Raises CookError (after every file was tried) when any file failed.
    """
    files = check_unparquet_args(sources, out, fmt, column)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out_dir)  # temp files of a crashed earlier run
    logger = get_run_logger()

    futures = []
    for src in files:
        name = output_path(src, out_dir, fmt).name
        futures.append(
            unparquet_task.with_options(task_run_name=f"unparquet {name}").submit(
                src, str(out_dir), fmt, column, fingerprint=source_fingerprint(src)
            )
        )
    ok, failed, cached = [], [], 0
    for src, fut in zip(files, futures):
        fut.wait()
        state = fut.state
        if state.is_completed():
            ok.append(state.result())
            cached += state.name == "Cached"
        else:
            exc = state.result(raise_on_failure=False)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, BaseException) else state.message
            if not isinstance(exc, CookError):
                reason = f"{src}: {type(exc).__name__}: {reason}"
            failed.append({"src": src, "reason": reason})

    summary = {
        "out": str(out_dir),
        "format": fmt,
        "files": len(files),
        "converted": len(ok) - cached,
        "cached": cached,
        "failed": failed,
        **{k: sum(r[k] for r in ok) for k in ("rows", "written", "null_or_empty", "bytes_in_text")},
        "outputs": [r["out"] for r in ok],
    }
    _publish(summary, ok)
    logger.info(
        "unparquet: %d of %d files ok (%d converted, %d cached), %d failed; %d documents, %d null or empty skipped, %.1f MB of text -> %s",
        len(ok), len(files), summary["converted"], cached, len(failed), summary["written"], summary["null_or_empty"],
        summary["bytes_in_text"] / 1e6, out_dir,
    )
    if failed:
        raise CookError(f"unparquet: {len(failed)} of {len(files)} files failed: " + "; ".join(f["reason"] for f in failed))
    return summary


def _publish(summary: dict, ok: list[dict]) -> None:
    """A markdown artifact: totals, then one row per file, failures with their reason."""
    md = [
        f"# unparquet -> `{summary['out']}` ({summary['format']})",
        "",
        f"- files: {summary['files']} ({len(ok)} ok: {summary['converted']} converted, {summary['cached']} cached; {len(summary['failed'])} failed)",
        f"- rows: {summary['rows']}, documents written: {summary['written']}, null or empty skipped: {summary['null_or_empty']}",
        f"- text: {summary['bytes_in_text'] / 1e6:.1f} MB",
        "",
        "| file | output | rows | written | null/empty | text MB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in ok:
        md.append(f"| {r['src']} | {Path(r['out']).name} | {r['rows']} | {r['written']} | {r['null_or_empty']} | {r['bytes_in_text'] / 1e6:.2f} |")
    if summary["failed"]:
        md += ["", "## Failed", ""] + [f"- {f['reason']}" for f in summary["failed"]]
    try:
        create_markdown_artifact(key="unparquet-summary", markdown="\n".join(md), description="cook unparquet summary")
    except Exception:  # the artifact is a nicety: never fail the run over it
        pass
