"""`cook unparquet`: dataset parquet files (local, on object storage, or `hf://`) -> cook documents, one cached Prefect task per file.

A file that fails (truncated, not parquet, no text column) does not stop the others: every file is
tried, the run's summary (log line and markdown artifact) lists the failures, and the flow then
raises one CookError line so the CLI exits non-zero. Outputs are written atomically, so a re-run
after a crash converts only what is missing (finished files are cache hits).

    cook unparquet SRC... --out DIR [--format parquet|text|csv] [--column text]

Inputs and `--out` may be URLs (`s3://bucket/cosmopedia`, model/storage.py); the default `out` is
`cosmopedia` under COOK_DATA_DIR, a URL when that is one. Each output is one object that appears whole.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner

from flows.report import count, publish_markdown, publish_table, run_name, short
from flows.runners import final_state, stage_runner
from model import storage
from model.atomic import clean_stale_temps
from model.errors import CookError
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.core.settings import SOURCE_DIRS, get_settings
from tasks.corpus.unparquet import check_unparquet_args, output_path, source_fingerprint, unparquet_task

__all__ = ["check_unparquet_args", "unparquet_flow"]

MAX_WORKERS = 2  # files converted at once: each holds one record batch per column in memory


def _run_name(p: dict) -> str:
    srcs = p.get("sources") or []
    what = short(srcs[0]) if len(srcs) == 1 else count(len(srcs), "source")
    return f"unparquet {what} -> {short(p['out'])} ({p.get('fmt')})"


@flow(name="unparquet", flow_run_name=run_name("unparquet", _run_name), task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), **FLOW_RESULTS)
@one_writer
def unparquet_flow(sources: list[str], out: str | None = None, fmt: str = "parquet", column: str = "text", dask: str | None = None) -> dict:
    """Convert every parquet file in `sources` into `out` (default DATA/cosmopedia); return the run's summary.

    One task per file, MAX_WORKERS at a time; with `dask` (an address or "local"; default COOK_DASK_ADDRESS,
    see flows/runners.py) the files are spread over the Dask cluster's workers instead.
    Raises CookError (after every file was tried) when any file failed.
    """
    out = out if out is not None else get_settings().location(SOURCE_DIRS["parquet"])
    files = check_unparquet_args(sources, out, fmt, column)
    if storage.is_remote(out):  # objects appear whole (storage.atomic_open): no temp files to clean up
        out_dir: Path | str = out.rstrip("/")
        hold_output(out_dir)
    else:
        out_dir = Path(out).resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        hold_output(out_dir)  # one writer per folder, before the clean-up
        clean_stale_temps(out_dir)  # temp files of a crashed earlier run
    shown = storage.redact(out_dir)
    logger = get_run_logger()

    with stage_runner(dask) as runner:
        futures = []
        for src in files:
            name = storage.name(output_path(src, out_dir, fmt))
            futures.append(runner.submit(unparquet_task.with_options(task_run_name=f"unparquet {name}"),
                                         src, str(out_dir), fmt, column, fingerprint=source_fingerprint(src)))
        states = [final_state(fut) for fut in futures]
    ok, failed, cached, rows = [], [], 0, []
    for src, state in zip(files, states):
        if state.is_completed():
            r = state.result()
            ok.append(r)
            cached += state.name == "Cached"
            rows.append(file_row(r, "cached" if state.name == "Cached" else "converted"))
        else:
            exc = state.result(raise_on_failure=False)
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0] if isinstance(exc, BaseException) else state.message
            if not isinstance(exc, CookError):
                reason = f"{storage.redact(src)}: {type(exc).__name__}: {reason}"
            failed.append({"src": storage.redact(src), "reason": reason})
            rows.append(file_row({"src": storage.redact(src), "out": None}, "failed", reason))

    summary = {
        "out": shown,
        "format": fmt,
        "files": len(files),
        "converted": len(ok) - cached,
        "cached": cached,
        "failed": failed,
        **{k: sum(r.get(k, 0) for r in ok) for k in ("rows", "written", "null_or_empty", "invalid_utf8", "bytes_in_text")},
        "outputs": [r["out"] for r in ok],
    }
    _publish(summary, ok, rows)
    logger.info(
        "unparquet: %d of %d files ok (%d converted, %d cached), %d failed; %d documents, %d null or empty skipped, "
        "%d rejected (invalid-utf8), %.1f MB of text -> %s",
        len(ok), len(files), summary["converted"], cached, len(failed), summary["written"], summary["null_or_empty"],
        summary["invalid_utf8"], summary["bytes_in_text"] / 1e6, shown,
    )
    if failed:
        raise CookError(f"unparquet: {len(failed)} of {len(files)} files failed: " + "; ".join(f["reason"] for f in failed))
    return summary


def file_row(r: dict, state: str, reason: str = "") -> dict:
    """A table row for one input file: its output, state (converted, cached, failed) and counts."""
    text = r.get("bytes_in_text")
    return {"file": str(r["src"]), "output": storage.name(r["out"]) if r.get("out") else None, "state": state,
            "rows": r.get("rows"), "written": r.get("written"), "null_or_empty": r.get("null_or_empty"),
            "invalid_utf8": r.get("invalid_utf8"),
            "text_mb": round(text / 1e6, 3) if text is not None else None, "reason": reason}


def _publish(summary: dict, ok: list[dict], rows: list[dict]) -> None:
    """A table with one row per file, and a markdown artifact: totals, one row per file, failures with their reason."""
    publish_table("unparquet-files", rows, "cook unparquet: one row per input file")
    md = [
        f"# unparquet -> `{summary['out']}` ({summary['format']})",
        "",
        f"- files: {summary['files']} ({len(ok)} ok: {summary['converted']} converted, {summary['cached']} cached; {len(summary['failed'])} failed)",
        f"- rows: {summary['rows']}, documents written: {summary['written']}, null or empty skipped: {summary['null_or_empty']}, "
        f"rejected as not UTF-8 (`invalid-utf8`): {summary['invalid_utf8']}",
        f"- text: {summary['bytes_in_text'] / 1e6:.1f} MB",
        "",
        "| file | output | rows | written | null/empty | invalid-utf8 | text MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in ok:
        md.append(f"| {r['src']} | {storage.name(r['out'])} | {r['rows']} | {r['written']} | {r['null_or_empty']} | "
                  f"{r.get('invalid_utf8', 0)} | {r['bytes_in_text'] / 1e6:.2f} |")
    if summary["failed"]:
        md += ["", "## Failed", ""] + [f"- {f['reason']}" for f in summary["failed"]]
    publish_markdown("unparquet-summary", md, "cook unparquet summary")
