"""The `cook` command line: one command per stage, each running a Prefect flow.

Problems the user can fix are shown as one line (`error: ...`) with a non-zero exit; tracebacks
appear only with `--debug` (they always stay in the run's logs in the Prefect UI).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, List, Optional

import typer

app = typer.Typer(
    name="cook",
    help="Cook a small language model from scratch: gather, process, tokenize, train, sample.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text verbatim: rich markup would eat every "[default: ...]" written in it
    context_settings={"max_content_width": 120},
)

DEBUG = False
VERBOSE = False  # --verbose / COOK_VERBOSE: the runs' INFO log lines on the console too
EXIT_USAGE = 2
LOG_FILE = "logs/cook.log"  # under the data dir: every run's log lines, whatever the console shows
EXIT_FAILED = 1
EPHEMERAL_STARTUP_S = 120  # the CLI's default wait for its temporary Prefect API (Prefect's own is 20 s)


# --- output routing -------------------------------------------------------------------------------


_ENGINE_LINES = ("Beginning flow run", "Beginning subflow run", "View at ", "Finished in state", "Created task run",
                 "Executing ")


class _ConsoleFilter(logging.Filter):
    """Keep the console readable: progress bars, each flow's summary lines and warnings, no tracebacks; the
    engine's lines and the tasks' step-by-step INFO lines only with --verbose (every line always reaches the
    Prefect UI and DATA_DIR/logs/cook.log).

    Errors are left to the CLI, which prints one line; the API handler still gets every record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            return False
        if "Finished in state Failed" in str(record.msg) or "Finished in state Crashed" in str(record.msg):
            return False  # the CLI's own one-line error says it
        if VERBOSE or record.levelno >= logging.WARNING:
            return record.name.startswith(("prefect.flow_runs", "prefect.task_runs")) or record.levelno >= logging.WARNING
        # quiet: a flow's own summary lines, not the engine's, nor the tasks' step-by-step lines
        return record.name.startswith("prefect.flow_runs") and not str(record.msg).startswith(_ENGINE_LINES)


def _log_to_file() -> None:
    """Append the runs' log records (INFO and up) to DATA_DIR/logs/cook.log, named by run as on Prefect's console;
    the file is made at the first line. A data dir that cannot hold it costs the file, never the command."""
    from prefect.logging.formatters import PrefectFormatter

    from tasks.core.settings import get_settings

    head = "%(asctime)s | %(levelname)-7s | "
    formatter = PrefectFormatter(head + "%(name)s - %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
                                 flow_run_fmt=head + "Flow run %(flow_run_name)r - %(message)s",
                                 task_run_fmt=head + "Task run %(task_run_name)r - %(message)s")

    for name in ("prefect.flow_runs", "prefect.task_runs"):
        lg = logging.getLogger(name)
        if any(getattr(h, "_cook_file", False) for h in lg.handlers):
            continue
        try:
            path = get_settings().data_dir / LOG_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8", delay=True)
        except OSError:
            return
        handler._cook_file = True  # type: ignore[attr-defined]
        handler.setLevel(logging.INFO)
        handler.setFormatter(formatter)
        lg.addHandler(handler)


def _route_prefect_logs() -> None:
    """Attach the console filter to Prefect's console handlers (no-op with --debug)."""
    from prefect.logging.configuration import setup_logging  # noqa: F401  (ensures Prefect set up logging)

    _log_to_file()
    if DEBUG:
        return
    seen = set()
    loggers = [logging.getLogger()] + [
        logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith(("prefect", "uvicorn", "fastapi"))
    ]
    for lg in loggers:
        for h in lg.handlers:
            if id(h) in seen or type(h).__name__ not in ("PrefectConsoleHandler", "_SafeStreamHandler", "StreamHandler"):
                continue
            seen.add(id(h))
            if not any(isinstance(f, _ConsoleFilter) for f in h.filters):
                h.addFilter(_ConsoleFilter())


def _prepare_env(demo: bool = False) -> None:
    """Environment defaults set before Prefect is imported."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if demo and "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        from tasks.core.settings import get_settings

        home = (get_settings().data_dir / "prefect").resolve()
        home.mkdir(parents=True, exist_ok=True)
        os.environ["PREFECT_HOME"] = str(home)


def fail(message: str, code: int = EXIT_FAILED) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_error(e: Exception, code: int = EXIT_FAILED) -> None:
    """Report a CookError as one line; with --debug, print its traceback first. An error class with an exit code
    of its own (model/errors.py: Incomplete, OutputBusy, SourceUnavailable) exits with that code."""
    from model.errors import CookError

    if isinstance(e, CookError) and type(e).exit_code != CookError.exit_code:
        code = type(e).exit_code
    if DEBUG:
        import traceback

        traceback.print_exception(e)
    message = str(e).splitlines()[0] if str(e) else type(e).__name__
    fail(message, code)


@contextlib.contextmanager
def _progress():
    """A rich progress display that the stages' progress bars draw into."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from tasks.core.progress import show_in

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=False, disable=not sys.stderr.isatty()) as p, show_in(p):
        yield p


_EPHEMERAL_TIMEOUT = "Timed out while attempting to connect to ephemeral Prefect API"


@contextlib.contextmanager
def _ephemeral_wait() -> Iterator[None]:
    """Without PREFECT_API_URL a command starts a temporary Prefect API, which Prefect waits 20 s for: a machine
    busy training or gathering can take longer, and a run failed for that alone is a false alarm. The CLI waits
    EPHEMERAL_STARTUP_S unless PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS is set (environment, profile, toml).
    One that never answers (slow, or failing at start-up: Prefect restarts it until the wait runs out, and what it
    printed is above) is one line."""
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, get_current_settings, temporary_settings

    ephemeral = get_current_settings().server.ephemeral
    given = "startup_timeout_seconds" in ephemeral.model_fields_set
    wait = ephemeral.startup_timeout_seconds if given else EPHEMERAL_STARTUP_S
    updates = {} if given else {PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_S}
    try:
        with temporary_settings(updates=updates):
            yield
    except RuntimeError as e:
        if _EPHEMERAL_TIMEOUT not in str(e):
            raise
        fail(f"the temporary Prefect API did not answer within {wait} s (any error it printed is above): start a "
             "server and set PREFECT_API_URL (README: Run on a Prefect server), or wait longer with "
             "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS")


def _run(fn, *args, **kwargs):
    """Run a flow function: route logs, show progress, tag the run (flows/report.py TAGS), turn known failures into one line."""
    from prefect import tags

    from flows.report import tags_for
    from model.errors import CookError

    _route_prefect_logs()
    try:
        with _ephemeral_wait(), _progress(), tags(*tags_for(getattr(fn, "name", ""))):
            return fn(*args, **kwargs)
    except CookError as e:
        user_error(e)
    except KeyboardInterrupt:
        fail("interrupted", 130)


def _dask_option():
    return typer.Option(None, "--dask", metavar="ADDRESS|local",
                        help="Run this stage's tasks on Dask: a scheduler address (tcp://host:8786), 'local' for a "
                             "local cluster, or 'off' [default: COOK_DASK_ADDRESS, else threads here]. Needs the dask extra.")


def _check_dask(dask: Optional[str]) -> None:
    """A bad --dask (or COOK_DASK_ADDRESS) is a usage error, before anything runs."""
    from flows.runners import dask_target
    from model.errors import CookError

    try:
        dask_target(dask)
    except CookError as e:
        user_error(e, EXIT_USAGE)


def _check_out(path: Optional[Path | str], default: Optional[str] = None, flag: str = "--out") -> None:
    """An output folder that cannot be written is a usage error (exit 2), found before anything runs: a temporary
    folder is made (and removed) in it or in its nearest existing parent. Permission bits alone would not tell:
    root ignores them, and /proc or a read-only mount refuse root too. A URL (COOK_DATA_DIR or the flag) gets a
    cheap probe (`_check_url`): a store that cannot be opened at all is the same one-line usage error."""
    import tempfile

    from model import storage
    from tasks.core.settings import SOURCE_DIRS, get_settings

    if path is None:
        sub = SOURCE_DIRS.get(default, default) if default else ""
        settings = get_settings()
        if settings.data_url:
            _check_url(settings.location(*([sub] if sub else [])), "the output folder {} (under COOK_DATA_DIR)")
            return
        target = settings.data_dir / sub
        what = f"the output folder {target} (under COOK_DATA_DIR)"
    elif storage.is_remote(path):
        _check_url(str(path), flag + " {}")
        return
    else:
        target = Path(path)
        what = f"{flag} {target}"
    probe = target.absolute()
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        fail(f"{what}: {probe} is not a folder", EXIT_USAGE)
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".cook-probe-").cleanup()
    except OSError as e:
        fail(f"{what}: cannot write in {probe} ({e.strerror or type(e).__name__})", EXIT_USAGE)


def _location(loc: Optional[str]) -> Optional[str]:
    """An --out as given: a URL kept as it is, a path normalized as a Path would (`out/` -> `out`)."""
    from model import storage

    return loc if loc is None or storage.is_remote(loc) else str(storage.local_path(loc))  # file:///x -> /x


def _shown(loc) -> str:
    """A location as printed: a URL without credentials (model/storage.py redact), a path as it is."""
    from model import storage

    return storage.redact(str(loc))


_BUCKET_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}  # a URL's first part names a bucket (container)


def _check_url(url: str, what: str) -> None:
    """A URL output: its protocol must be one fsspec opens here, and its bucket (or top folder) must answer one
    listing; whether it may be written is left to the stage (a store refuses a write with its own error)."""
    from model import storage
    from model.errors import CookError

    shown = storage.redact(url)
    try:
        fs, p = storage.filesystem(url)
        root = p.strip("/").split("/", 1)[0]
        if storage.protocol(url) in _BUCKET_STORES and root:
            fs.info(root)  # one request: the bucket is there and these credentials may see it
    except CookError as e:
        fail(f"{what.format(shown)}: {str(e).splitlines()[0]}", EXIT_USAGE)
    except FileNotFoundError:
        fail(f"{what.format(shown)}: no such bucket '{root}'", EXIT_USAGE)
    except Exception as e:  # noqa: BLE001 - refused credentials, an unreachable endpoint (botocore's own errors)
        line = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        fail(f"{what.format(shown)}: cannot reach the store ({type(e).__name__}: {line})", EXIT_USAGE)


# --- commands --------------------------------------------------------------------------------------


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks and Prefect's logs."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Show the runs' log lines on the console (they are "
                                       "always in the Prefect UI and in DATA_DIR/logs/cook.log).")) -> None:
    global DEBUG, VERBOSE
    DEBUG = DEBUG or debug
    VERBOSE = VERBOSE or verbose or DEBUG


scrape_app = typer.Typer(help="Gather text: Wikipedia (API and XML dumps), Britannica, YouTube transcripts.", no_args_is_help=True)
app.add_typer(scrape_app, name="scrape")


@scrape_app.command("wikipedia")
def scrape_wikipedia(
    query: Optional[List[str]] = typer.Option(None, "--query", "-q", help="A search query (repeatable) [default: the built-in ~40 topics]."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="A file of queries, one a line."),
    extra_urls: bool = typer.Option(True, "--extra-urls/--no-extra-urls", help="Follow links to other articles."),
    max_pages: int = typer.Option(500, "--max-pages", help="Stop after this many pages in all."),
    depth: int = typer.Option(1, "--depth", help="How many links deep to follow, breadth-first."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or URL (s3://...: worked on in the cache, copied there) [default: DATA_DIR/wikipedia]."),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight per host at most."),
    rate_limit: float = typer.Option(10.0, "--rate-limit", help="Requests per second per host at most."),
    refresh_after: float = typer.Option(20.0, "--refresh-after", min=0, help="Re-check pages fetched more than HOURS ago for edits, 50 per request (0: every run)."),
) -> None:
    """Search Wikipedia through the MediaWiki API and collect articles politely; re-running resumes."""
    _prepare_env()
    _check_out(out, "wikipedia")
    from flows.scrape_wikipedia import check_scrape_wikipedia_args, scrape_wikipedia_flow
    from model.errors import CookError

    kwargs = dict(queries=list(query) if query else None, queries_file=str(queries) if queries else None,
                  extra_urls=extra_urls, max_pages=max_pages, depth=depth, out=_location(out),
                  concurrency=concurrency, rate_limit=rate_limit, refresh_after_hours=refresh_after)
    try:
        check_scrape_wikipedia_args(**kwargs)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    r = _run(scrape_wikipedia_flow, **kwargs)
    typer.echo(f"wikipedia: {r['documents']} documents in {r['out']} ({r['fetched']} fetched now, "
               f"{r['cached']} queries cached, {len(r['failed_pages'])} pages failed, {len(r['failed_queries'])} queries failed)")


@scrape_app.command("britannica")
def scrape_britannica(
    query: Optional[List[str]] = typer.Option(None, "--query", "-q", help="A search query (repeatable) [default: the built-in ~40 topics]."),
    queries: Optional[Path] = typer.Option(None, "--queries", help="A file of queries, one a line."),
    max_pages_per_query: int = typer.Option(10, "--max-pages-per-query", help="Search result pages to walk per query."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or URL (s3://...: worked on in the cache, copied there) [default: DATA_DIR/britannica]."),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight at most."),
    rate_limit: float = typer.Option(5.0, "--rate-limit", help="Requests per second at most."),
    refresh_after: float = typer.Option(20.0, "--refresh-after", min=0, help="Revisit articles fetched more than HOURS ago with conditional requests (0: every run)."),
) -> None:
    """Collect Britannica articles found by search, politely (robots.txt honoured); re-running resumes."""
    _prepare_env()
    _check_out(out, "britannica")
    from flows.scrape_britannica import check_scrape_britannica_args, scrape_britannica_flow
    from model.errors import CookError

    kwargs = dict(queries=list(query) if query else None, queries_file=str(queries) if queries else None,
                  max_pages_per_query=max_pages_per_query, out=_location(out),
                  concurrency=concurrency, rate_limit=rate_limit, refresh_after_hours=refresh_after)
    try:
        check_scrape_britannica_args(**kwargs)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    r = _run(scrape_britannica_flow, **kwargs)
    typer.echo(f"britannica: {r.get('documents')} documents in {r.get('out')} ({r.get('fetched')} fetched now, "
               f"{r.get('cached')} queries cached, {len(r.get('failed') or [])} failed, {len(r.get('warnings') or [])} warnings)")


@scrape_app.command("youtube")
def scrape_youtube(
    channel: Optional[List[str]] = typer.Option(None, "--channel", help="A channel id (repeatable) [default: the sample list]."),
    channels: Optional[Path] = typer.Option(None, "--channels", help="A file of channel ids, one a line."),
    languages: str = typer.Option("en", "--languages", help="Preferred caption languages, comma-separated."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or URL (s3://...: worked on in the cache, copied there) [default: DATA_DIR/youtube]."),
    concurrency: int = typer.Option(4, "--concurrency", help="Transcript fetches in flight at most."),
    quota: int = typer.Option(10000, "--quota", help="YouTube Data API units to spend at most in this run."),
    refresh_after: float = typer.Option(20.0, "--refresh-after", min=0, help="Check channels listed more than HOURS ago for new uploads (0: every run)."),
) -> None:
    """Collect YouTube transcripts of channels' uploads; resumes exactly where it stopped."""
    _prepare_env()
    _check_out(out, "youtube")
    from flows.scrape_youtube import check_scrape_youtube_args, scrape_youtube_flow
    from model.errors import CookError

    kwargs = dict(channels=list(channel) if channel else None, channels_file=str(channels) if channels else None,
                  languages=[l.strip() for l in languages.split(",") if l.strip()], out=_location(out),
                  concurrency=concurrency, quota=quota)
    try:
        check_scrape_youtube_args(**kwargs)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    r = _run(scrape_youtube_flow, **kwargs, refresh_after_hours=refresh_after)
    typer.echo(f"youtube: {r['fetched']} transcripts fetched into {r['out']} ({r['new_videos']} new videos, "
               f"{r['api_units']} API units of {r['quota']}; ledger: {r['videos']})")
    if r.get("stopped"):
        typer.echo(f"stopped early ({r['stopped']}): {r['message']} — run the same command to resume")


@scrape_app.command("wiki-dump")
def scrape_wiki_dump(
    dump: Optional[str] = typer.Argument(None, help="A pages-articles .xml or .xml.bz2 dump, a path or a URL (s3://...; "
                                                    "multistream with its index beside it: in parallel) [default: the "
                                                    "newest under DATA_DIR/dumps]."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or URL [default: DATA_DIR/wikipedia-dump]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Worker processes [default: all cores]."),
    fetch: bool = typer.Option(False, "--fetch", help="Fetch each title of the dump through the API scraper instead (a local --out)."),
    dask: Optional[str] = _dask_option(),
) -> None:
    """Read a Wikipedia XML dump into documents, streaming, in constant memory."""
    _prepare_env()
    _check_out(out, "wiki-dump")
    _check_dask(dask)
    from flows.wiki_dump import check_args, wiki_dump_flow
    from model import storage
    from model.errors import CookError

    try:
        check_args(dump, out, workers, fetch)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    result = _run(wiki_dump_flow, dump=dump, out=out, workers=workers, fetch=fetch, dask=dask)
    if isinstance(result, dict) and result.get("truncated"):
        typer.echo(f"warning: {storage.redact(result.get('dump') or dump or '')} is truncated: kept every complete page "
                   "before the cut", err=True)
    if fetch:
        typer.echo(f"wiki-dump: fetched {result.get('fetched')} pages into {result.get('out')} "
                   f"({result.get('skipped_done')} already done, {len(result.get('failed') or [])} failed)")
    else:
        typer.echo(f"wiki-dump: {result.get('kept')} articles of {result.get('pages_seen')} pages into {result.get('out')}")


@app.command()
def unparquet(
    sources: List[str] = typer.Argument(..., help="Parquet files, folders, globs, URLs (s3://...), or Hub paths (hf://datasets/...)."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder or URL (s3://bucket/prefix): one converted file per input."),
    format: str = typer.Option("parquet", "--format", help="parquet (the document format), text or csv."),
    column: str = typer.Option("text", "--column", help="The column that holds the text."),
    dask: Optional[str] = _dask_option(),
) -> None:
    """Convert parquet files (e.g. Cosmopedia shards) to documents, text or csv, streaming and lossless."""
    out = _location(out)
    _prepare_env()
    _check_out(out)
    _check_dask(dask)
    from model.errors import CookError
    from tasks.corpus.unparquet import check_unparquet_args

    try:
        check_unparquet_args(sources, str(out), format, column)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    from flows.unparquet import unparquet_flow

    _run(unparquet_flow, sources=list(sources), out=str(out), fmt=format, column=column, dask=dask)
    typer.echo(f"converted: {_shown(out)}")


@app.command()
def merge(
    inputs: List[str] = typer.Argument(..., help="Document parquet files, folders or globs (local or URLs), from any source."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder or URL: shards, rejects/, stats.json."),
    shard_size: str = typer.Option("2GB", "--shard-size", help="Text per shard, e.g. 2GB, 500MB."),
    format: str = typer.Option("parquet", "--format", help="parquet or text."),
    near_dedup: bool = typer.Option(False, "--near-dedup", help="Also remove near-duplicates (MinHash)."),
    min_chars: Optional[int] = typer.Option(None, "--min-chars", help="Reject shorter documents."),
    max_chars: Optional[int] = typer.Option(None, "--max-chars", help="Reject longer documents."),
    lang: Optional[List[str]] = typer.Option(None, "--lang", help="Keep only these languages (needs langdetect)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0,
                                          help="Worker processes (0 or 1: none; default: by the input's size, one per core)."),
    dedup_memory: str = typer.Option("1GB", "--dedup-memory",
                                     help="Memory for the dedup indexes, e.g. 1GB; past it, dedup runs on disk in two passes."),
    dask: Optional[str] = _dask_option(),
) -> None:
    """Clean, deduplicate and merge documents into shards; every rejected document is kept with its reason."""
    out = _location(out)
    _prepare_env()
    _check_out(out)
    _check_dask(dask)
    from model.errors import CookError
    from tasks.corpus.merge import check_merge_args

    try:
        check_merge_args(inputs, str(out), shard_size, format, lang or None, dedup_memory)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    from flows.merge import merge_flow

    limits = {k: v for k, v in (("min_chars", min_chars), ("max_chars", max_chars)) if v is not None}
    _run(merge_flow, inputs=list(inputs), out=str(out), shard_size=shard_size, fmt=format, near_dedup=near_dedup,
         languages=lang or None, workers=workers, dedup_memory=dedup_memory, dask=dask, **limits)
    typer.echo(f"merged: {_shown(out)}")


@app.command()
def tokenize(
    inputs: List[str] = typer.Argument(..., help="Document parquet files, folders, globs or .txt files (local or URLs)."),
    encoding: str = typer.Option("gpt2", "--encoding", "-e", help="char, p50k_base, r50k_base, gpt2, cl100k_base or bpe:VOCAB_SIZE."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output folder or URL for token shards [default: DATA_DIR/tokens]."),
    tokenizer: Optional[str] = typer.Option(None, "--tokenizer", help="Reuse the vocabulary of an earlier tokenization (char or bpe): its folder or URL."),
    val_fraction: float = typer.Option(0.005, "--val-fraction", help="Share of documents for validation (by a deterministic hash)."),
    dtype: str = typer.Option("auto", "--dtype", help="Token dtype: auto, uint16 or uint32."),
    shard_tokens: int = typer.Option(100_000_000, "--shard-tokens", help="Tokens per shard."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Worker processes that read and encode (0 or 1: none; "
                                          "default: one per 16 MB of text, up to one per core). Same output for any count."),
    dask: Optional[str] = _dask_option(),
) -> None:
    """Tokenize documents into train/val binary token shards with a meta.json."""
    out = _location(out)
    _prepare_env()
    _check_out(out, "tokens")
    _check_dask(dask)
    from model.errors import CookError
    from tasks.core.settings import get_settings
    from tasks.corpus.tokenize import check_tokenize_args

    out = out or get_settings().location("tokens")
    try:
        check_tokenize_args(inputs, encoding, dtype, tokenizer, workers)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    from flows.tokenize import tokenize_flow

    result = _run(tokenize_flow, inputs=list(inputs), encoding=encoding, out=str(out),
                  tokenizer_dir=_location(tokenizer) if tokenizer else None, val_fraction=val_fraction,
                  dtype=dtype, shard_tokens=shard_tokens, dask=dask, workers=workers)
    typer.echo(f"tokens: {_shown(result)}")


@app.command()
def train(
    data: str = typer.Option(..., "--data", help="Token folder written by `cook tokenize`, or its URL (s3://bucket/prefix)."),
    run: str = typer.Option(..., "--run", help="Run folder: checkpoints, metrics.jsonl, run.json; or a URL (trained in a local working copy under the cache, pushed after every checkpoint)."),
    preset: str = typer.Option("tiny", "--preset", help="tiny, bench, seed, gpt2-124m or demo."),
    chunks: int = typer.Option(1, "--chunks", help="Number of chunks to have trained in all."),
    iters_per_chunk: int = typer.Option(1000, "--iters-per-chunk", help="Iterations per chunk (at most 5000)."),
    seed: int = typer.Option(1337, "--seed", help="Base seed; each chunk derives its own."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start a new run from this checkpoint's weights."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the model (falls back to eager if compiling fails) [on for CUDA, off on CPU]."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on GPUs that have it, else fp16 with loss scaling; float32 on CPU), float32, bfloat16 or float16."),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="Learning-rate schedule of a new run: wsd (warmup, stable, cooldown at the end; extendable) or cosine [wsd]."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup iterations [preset's, clipped to fit a short run]."),
    cooldown: Optional[float] = typer.Option(None, "--cooldown", help="wsd: cooldown length, in iterations (>= 1) or as a fraction of the run [0.2]."),
    total_iters: Optional[int] = typer.Option(None, "--total-iters", help="cosine: iterations to decay over [chunks x iters-per-chunk]."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="epoch (every token once per epoch, shuffled) or random (windows drawn with replacement) [epoch]."),
    dropout: Optional[float] = typer.Option(None, "--dropout", help="Dropout of a new run's model [preset's]."),
    eval_interval: Optional[int] = typer.Option(None, "--eval-interval", help="Evaluate every N iterations [sized to about 5% of training time]."),
    eval_iters: Optional[int] = typer.Option(None, "--eval-iters", help="Batches per split per evaluation [preset's, fewer for short chunks]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Sequences per micro-batch [preset's]."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per step [preset's]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [preset's]."),
    keep_last: int = typer.Option(3, "--keep-last", help="Checkpoints to keep besides the best."),
    gpus: int = typer.Option(1, "--gpus", help="Train on N processes with DDP (one per GPU; gloo processes with --device cpu): launches torchrun for you."),
    nodes: int = typer.Option(1, "--nodes", help="Train on M machines, --gpus processes on each: run the same command on every machine, each with its --node-rank; the run folder must be one they all read (shared folder or bucket)."),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="--nodes: HOST:PORT of node 0 (a free port there) that every machine can reach."),
    node_rank: int = typer.Option(0, "--node-rank", help="--nodes: this machine's number, 0..M-1; node 0 runs the Prefect flow and writes the run folder."),
    rdzv_timeout: int = typer.Option(600, "--rdzv-timeout", help="--nodes: seconds to wait for every machine to join a chunk before failing."),
) -> None:
    """Train a GPT in chunks (a checkpoint after each); the same command again resumes."""
    _prepare_env()
    data, run = _location(data), _location(run)
    _check_out(run, flag="--run")
    from model.errors import CookError
    from model.launch import Nodes
    from tasks.training.train import check_train_args

    machines = Nodes(count=nodes, endpoint=rdzv_endpoint, rank=node_rank, timeout_s=rdzv_timeout)
    kwargs = dict(data=str(data), run=str(run), preset=preset, chunks=chunks, iters_per_chunk=iters_per_chunk,
                  seed=seed, init_from=str(init_from) if init_from else None, device=device, compile=compile,
                  eval_interval=eval_interval, eval_iters=eval_iters, batch_size=batch_size, grad_accum=grad_accum,
                  learning_rate=lr, keep_last=keep_last, gpus=gpus, dtype=dtype, schedule=schedule, warmup=warmup,
                  cooldown=cooldown, total_iters=total_iters, sampler=sampler, dropout=dropout)
    try:
        from model.train import split_kwargs

        flat = {k: v for k, v in kwargs.items() if k not in ("data", "run", "gpus")}
        check_train_args(str(data), str(run), *split_kwargs(flat), gpus=gpus, nodes=machines)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    if machines.multi:
        kwargs.update(nodes=nodes, rdzv_endpoint=rdzv_endpoint, rdzv_timeout=rdzv_timeout)
        if node_rank > 0:  # no Prefect here: node 0's flow runs the chunks, this machine joins them
            _follow_chunks(kwargs, gpus, machines)
            return
    rank = int(os.environ.get("RANK", "0"))  # set by torchrun
    try:
        if rank == 0:
            from flows.train import train_flow

            typer.echo(f"run: {_shown(_run(train_flow, **kwargs))}")
        else:  # the other torchrun ranks run the same chunk loop without Prefect, in step with rank 0
            from model.train import STOP, stop_on_signals, train_worker

            kwargs.pop("gpus")  # already under torchrun
            with stop_on_signals(STOP):
                _run(train_worker, **kwargs)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _follow_chunks(kwargs: dict, gpus: int, machines) -> None:
    """`cook train --nodes M --node-rank R` (R > 0): join node 0's chunks until its last one; one line per chunk."""
    from model.errors import CookError
    from model.launch import follow
    from model.train import STOP, chunks_todo, read_run, split_kwargs, stop_on_signals

    run, data = kwargs["run"], kwargs["data"]
    try:  # a finished run: node 0 has nothing to launch, so do not wait for it
        info = read_run(run)
        if not chunks_todo(run, {**info, "chunks": max(int(info["chunks"]), kwargs["chunks"])}, upto=kwargs["chunks"]):
            typer.echo(f"run {_shown(run)}: all {kwargs['chunks']} chunks already trained")
            return
    except (CookError, OSError, KeyError, ValueError):
        pass  # not created yet: node 0 prepares it
    flat = {k: v for k, v in kwargs.items() if k in ("device", "dtype", "compile", "eval_interval", "eval_iters", "keep_last")}
    _, opts = split_kwargs(flat)
    typer.echo(f"node {machines.rank} of {machines.count}: joining node 0's chunks at {machines.endpoint} with {gpus} process"
               f"{'es' if gpus > 1 else ''}")
    try:
        with stop_on_signals(STOP):
            n = follow(run, nproc=gpus, nodes=machines, data=data, opts=opts, log=typer.echo, stop=STOP)
    except CookError as e:
        user_error(e)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    typer.echo(f"run: {_shown(run)} ({n} chunk{'s' if n != 1 else ''} trained with node 0)")


@app.command()
def sample(
    target: str = typer.Argument(..., help="A run folder or a checkpoint folder, or its URL (s3://bucket/runs/first)."),
    prompt: str = typer.Option("", "--prompt", "-p", help="Text to continue."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", "-n", help="Tokens to generate."),
    temperature: float = typer.Option(0.8, "--temperature", help="0 for greedy decoding."),
    top_k: Optional[int] = typer.Option(200, "--top-k", help="Sample from the k most likely tokens."),
    top_p: Optional[float] = typer.Option(None, "--top-p", help="Nucleus sampling threshold."),
    seed: int = typer.Option(1337, "--seed", help="Sampling seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Print text generated by a trained model."""
    _prepare_env()
    from flows.sample import sample_text
    from model.errors import CookError

    try:
        text = sample_text(_location(target), prompt=prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                           top_k=top_k, top_p=top_p, seed=seed, device=device)
    except CookError as e:
        user_error(e)
    typer.echo(text)


@app.command()
def export(
    target: Path = typer.Argument(..., help="A run folder (its best checkpoint, else its latest) or a checkpoint folder."),
    format: str = typer.Option("hf", "--format", help="hf: a Hugging Face transformers folder (GPT2LMHeadModel + tokenizer)."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write; an earlier export there is replaced whole."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="REPO",
                                              help="Also upload the folder to this Hub model repo (COOK_HF_ENDPOINT; "
                                                   "token from COOK_HF_TOKEN or HF_TOKEN)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
) -> None:
    """Export a checkpoint that transformers' AutoModelForCausalLM and AutoTokenizer load."""
    _prepare_env()
    _check_out(out)
    from flows.export import check_export_args
    from model.errors import CookError

    try:
        check_export_args(str(target), format, str(out), push_to_hub)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    from flows.export import export_flow

    r = _run(export_flow, target=str(target), out=str(out), fmt=format, push_to_hub=push_to_hub, private=private)
    typer.echo(f"exported: {r['out']} (from {r['checkpoint']}, iteration {r['iteration']})")
    if "hub" in r:
        typer.echo(f"pushed: {r['hub']['url']} (commit {r['hub']['commit']})")


@app.command()
def pipeline(
    source: List[str] = typer.Option(["wikipedia"], "--source", "-s", help="wikipedia, britannica, youtube, wiki-dump, parquet or pydoc; repeat for several."),
    query: Optional[List[str]] = typer.Option(None, "--query", "-q", help="Wikipedia and Britannica searches [built-in topics]."),
    max_pages: int = typer.Option(500, "--max-pages", help="Wikipedia pages in all, this run."),
    depth: int = typer.Option(1, "--depth", help="Wikipedia link levels to follow."),
    channel: Optional[List[str]] = typer.Option(None, "--channel", help="YouTube channel ids [built-in list]."),
    dump: Optional[List[str]] = typer.Option(None, "--dump", help="Wikipedia pages-articles dumps, for wiki-dump."),
    parquet: Optional[List[str]] = typer.Option(None, "--parquet", help="Parquet files, folders or hf:// paths, for parquet."),
    near_dedup: bool = typer.Option(False, "--near-dedup", help="Also remove near-duplicates (MinHash)."),
    encoding: str = typer.Option("gpt2", "--encoding", "-e", help="Tokenizer encoding."),
    preset: str = typer.Option("tiny", "--preset", help="tiny, bench, seed, gpt2-124m or demo."),
    chunks: int = typer.Option(1, "--chunks", help="Chunks to train."),
    iters_per_chunk: int = typer.Option(1000, "--iters-per-chunk", help="Iterations per chunk (at most 5000)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    run_name: str = typer.Option("pipeline", "--run-name", help="Training runs go to DATA_DIR/runs/NAME-<tokens id>."),
) -> None:
    """Sources to a trained checkpoint: gather, merge, tokenize, train; stages whose inputs are unchanged are skipped."""
    _prepare_env()
    from flows.pipeline import check_pipeline_args
    from model.errors import CookError

    try:
        check_pipeline_args(source, dump, parquet, chunks, iters_per_chunk, preset, run_name)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    from rich.console import Console
    from rich.table import Table

    from flows.pipeline import pipeline_flow

    r = _run(pipeline_flow, sources=list(source), queries=query or None, max_pages=max_pages, depth=depth,
             channels=channel or None, dumps=dump or None, parquet=parquet or None, near_dedup=near_dedup,
             encoding=encoding, preset=preset, chunks=chunks, iters_per_chunk=iters_per_chunk, device=device,
             run_name=run_name)
    table = Table(title="pipeline")
    for col in ("stage", "state", "detail", "output"):
        table.add_column(col)
    for s in r["stages"]:
        table.add_row(s["stage"], s["state"], s["detail"], s["output"])
    Console().print(table)
    typer.echo(f"checkpoint: {r['checkpoint']}")


@app.command()
def demo(
    iters_per_chunk: int = typer.Option(800, "--iters-per-chunk", help="Iterations in each of the 2 chunks."),
) -> None:
    """Offline end-to-end demo: corpus from Python's own docs, a bpe:1024 tokenizer, train the `demo` preset for 2 chunks, sample, and compare with a bigram baseline."""
    _prepare_env(demo=True)
    from flows.demo import demo_flow, print_report

    report = _run(demo_flow, iters_per_chunk=iters_per_chunk)
    print_report(report)


@app.command("server-setup")
def server_setup(
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Requests in flight per host, all runs together (default: each scraper's)."),
    rate: Optional[float] = typer.Option(None, "--rate", help="Requests per second per host, all runs together (default: each scraper's)."),
) -> None:
    """Create the per-host politeness limits on the Prefect server (PREFECT_API_URL), shared by parallel runs; idempotent."""
    _prepare_env()
    from flows.server_setup import check_server_setup_args, print_limits
    from flows.server_setup import server_setup as setup
    from model.errors import CookError

    try:
        check_server_setup_args(concurrency, rate)
    except CookError as e:
        user_error(e, EXIT_USAGE)
    try:
        rows = setup(concurrency=concurrency, rate=rate)
    except CookError as e:
        user_error(e)
    print_limits(rows)


def main(argv: list[str] | None = None) -> None:
    """Entry point: `--debug` is accepted anywhere on the command line."""
    global DEBUG
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in argv:
        argv.remove("--debug")
        DEBUG = True
    if "RANK" in os.environ and argv[1:2] == ["--"]:  # torchrun needs `-m flows.cli train -- ARGS`
        del argv[1]
    DEBUG = DEBUG or os.environ.get("COOK_DEBUG", "") not in ("", "0", "false")
    global VERBOSE
    VERBOSE = VERBOSE or DEBUG or os.environ.get("COOK_VERBOSE", "") not in ("", "0", "false")
    try:
        app(args=argv, prog_name="cook", standalone_mode=True)
    except SystemExit:
        raise
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if DEBUG:
            raise
        typer.echo(f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (run with --debug for the traceback)", err=True)
        sys.exit(EXIT_FAILED)


if __name__ == "__main__":
    main()
