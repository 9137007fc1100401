"""`cook scrape youtube`: channels' uploads -> transcripts, as documents, in batches of Prefect tasks.

    cook scrape youtube [--channel ID ...] [--channels FILE] [--languages en,de] [--out DIR] [--concurrency N] [--quota UNITS]

First the ledger `OUT/ledger.sqlite` is reconciled with the parts on disk (a part deleted by hand is re-made),
then every channel is listed through the YouTube Data API (once: a resumed run lists nothing again, and goes on
from the page where the quota stopped it; a channel listed more than `refresh_after_hours` ago is checked for new
uploads); then the videos due (new ones, retryable failures past their backoff, videos without captions whose
next check is due or that were not tried in every language asked for) are fetched `batch_size` per task.

Endings: the quota budget is a planned stop (the run ends Completed, exit 0, with a message; the next run goes
on). A run that leaves transient failures (videos `error`/`blocked`, channels whose listing failed on a
retryable error, videos left pending after YouTube kept blocking) publishes its artifacts and then raises
`Incomplete` (exit 3). A rejected API key or an unreachable host raises `SourceUnavailable` (exit 5) with one
line, and leaves the videos not fetched pending.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, get_run_logger

from flows.report import count, items_label, publish_markdown, publish_table, run_name
from model import storage
from model.errors import CookError, Incomplete, SourceUnavailable
from tasks.core import health
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import hold_output, one_writer
from tasks.core.mirror import Mirror, resolve_out, writer_lease
from tasks.core.progress import progress
from tasks.core.settings import get_settings
from tasks.sources.youtube import (
    DEFAULT_CHANNELS,
    LEDGER_NAME,
    RUN_BARS,
    check_scrape_youtube_args,
    default_out,
    fetch_batch_task,
    list_channels_task,
    reconcile,
)
from tasks.sources.youtube_ledger import RETRYABLE, YouTubeLedger

__all__ = ["DEFAULT_CHANNELS", "check_scrape_youtube_args", "scrape_youtube_flow"]

BLOCKED_MESSAGE = ("YouTube keeps blocking transcript requests from this IP (RequestBlocked): stopped to spare it; "
                   "retry later or set a proxy (COOK_YOUTUBE_PROXY_HTTPS or COOK_YOUTUBE_WEBSHARE_USERNAME/PASSWORD)")


def _run_name(p: dict) -> str:
    langs = ",".join(p.get("languages") or []) or "en"
    return (f"scrape-youtube: {items_label(p.get('channels'), p.get('channels_file'), 'channel')}, "
            f"quota {p.get('quota')}, {langs}")


@flow(name="scrape-youtube", flow_run_name=run_name("scrape-youtube", _run_name), **FLOW_RESULTS)
@one_writer
def scrape_youtube_flow(channels: list[str] | None = None, channels_file: str | None = None, languages: list[str] | None = None,
                        out: str | None = None, concurrency: int = 4, quota: int = 10000, batch_size: int = 200,
                        refresh_after_hours: float = 20.0) -> dict:
    """Collect the transcripts of `channels`' uploads (or the built-in list) into document parquet parts under `out`.

    Returns the run's summary: out, channels, quota units spent, videos found now, transcripts fetched now,
    failures by kind, the ledger's totals, and `stopped` ("quota", "blocked" or None) with its message.
    Channels listed to the end more than `refresh_after_hours` ago are checked for new uploads (0: every run);
    videos without captions are checked again after `refresh_after_hours`, doubling per miss (at most ~30 days).
    Raises Incomplete (with `.summary`) after publishing when transient failures are left, SourceUnavailable
    when the key is rejected or a host cannot be reached."""
    if refresh_after_hours < 0:
        raise CookError(f"refresh_after_hours must be 0 or more (got {refresh_after_hours})")
    chans, langs = check_scrape_youtube_args(channels, channels_file, languages, out, concurrency, quota, batch_size)
    out_dir, remote = resolve_out(out, default_out().name)  # remote: the folder's place on the data store, or None
    out_dir.mkdir(parents=True, exist_ok=True)
    hold_output(remote or out_dir)  # one writer per folder: before reconcile() and any task clean up or write
    with writer_lease(remote) if remote else contextlib.nullcontext():  # one machine per bucket folder
        return _collect(chans, langs, out_dir, remote, concurrency, quota, batch_size, refresh_after_hours)


def _collect(chans: list[str], langs: list[str], out_dir: Path, remote: str | None, concurrency: int, quota: int,
             batch_size: int, refresh_after_hours: float) -> dict:
    """The flow's body, once its output is held: reconcile, list the channels, fetch the due videos in batches."""
    shown = storage.redact(remote) if remote else str(out_dir)
    logger = get_run_logger()
    health.reset()  # a new run: hosts found down by an earlier run in this process get another chance

    mirror = Mirror(out_dir, remote) if remote else None
    if mirror is not None:  # a fresh machine takes the store's ledger; parts the store lacks go there
        mirror.start()
    repaired = reconcile(out_dir, mirror.has if mirror is not None else None)
    if repaired["released"]:
        logger.warning("scrape youtube: %d done videos had their part file deleted: they are fetched again", repaired["released"])
    recheck = refresh_after_hours * 3600.0
    listing = list_channels_task(chans, str(out_dir), quota, get_settings().youtube_api_url, recheck, remote)
    messages = [listing["message"]] if listing["stopped"] else []
    with YouTubeLedger(out_dir / LEDGER_NAME) as ledger:
        due = [v["video_id"] for v in ledger.due(langs)]

    fetched, failed, streak, stopped, unreachable = 0, {}, 0, listing["stopped"], None
    with progress("youtube transcripts", total=max(len(due), 1)) as bar:
        RUN_BARS[str(out_dir)] = bar
        try:
            for i in range(0, len(due), batch_size):
                try:
                    r = fetch_batch_task.with_options(task_run_name=f"youtube batch {i // batch_size + 1}")(
                        due[i : i + batch_size], str(out_dir), langs, concurrency, streak, recheck, remote)
                except SourceUnavailable as e:  # youtube.com cannot be reached: the rest stays pending
                    unreachable, stopped = e, "unreachable"
                    messages.append(str(e))
                    break
                fetched += r["fetched"]
                for k, n in r["failed"].items():
                    failed[k] = failed.get(k, 0) + n
                streak = r["blocked_streak"]
                if r["stopped"] == "blocked":
                    stopped = "blocked"
                    messages.append(BLOCKED_MESSAGE)
                    break
        finally:
            RUN_BARS.pop(str(out_dir), None)

    with YouTubeLedger(out_dir / LEDGER_NAME) as ledger:
        totals = ledger.counts()
        unlisted = sum(1 for c in chans if not (ledger.channel(c) or {}).get("listed"))
        rows = channel_rows(chans, listing["per_channel"], {c["channel_id"]: c for c in ledger.channels()})
    summary = {
        "out": shown, "channels": len(chans), "channels_unlisted": unlisted, "api_units": listing["units"], "quota": quota,
        "api_units_all_runs": listing["units_all_runs"],
        "new_videos": listing["new"], "due": len(due), "fetched": fetched, "failed": failed, "recovered": repaired["recovered"],
        "released": repaired["released"],
        "videos": {k: v for k, v in totals.items() if v}, "failed_channels": [r for r in listing["per_channel"] if r["state"] == "failed"],
        "stopped": stopped, "message": "; ".join(messages),
    }
    _publish(summary, listing["per_channel"], rows)
    logger.info("scrape youtube: %d channels (%d API units), %d new videos, %d transcripts fetched, failed %s -> %s",
                len(chans), listing["units"], listing["new"], fetched, failed or "none", shown)
    if unreachable is not None:
        raise unreachable  # one line, exit 5; published above, and nothing of it was cached as done
    if stopped:
        logger.warning("scrape youtube stopped early: %s", summary["message"])
    left = transient_left(summary)
    if left:
        e = Incomplete(f"youtube: {fetched} transcripts fetched into {shown}, but {left}; run the same command again "
                       "to retry them (videos that failed wait out a short backoff, blocked ones are tried at once)")
        e.summary = summary
        raise e
    return summary


def transient_left(summary: dict) -> str:
    """What this run leaves to retry, in words ("" when nothing): videos that failed now on a retryable error or
    a block, videos left pending because YouTube kept blocking, channels whose listing failed on a retryable error."""
    parts = []
    failed = {k: n for k, n in summary["failed"].items() if k in RETRYABLE and n}
    if failed:
        parts.append(f"{count(sum(failed.values()), 'video')} failed for now ({', '.join(f'{k} {n}' for k, n in sorted(failed.items()))})")
    if summary["stopped"] == "blocked" and summary["videos"].get("pending"):
        parts.append(f"{count(summary['videos']['pending'], 'video')} left pending (YouTube kept blocking requests: "
                     "retry later, or set a proxy: COOK_YOUTUBE_PROXY_HTTPS or COOK_YOUTUBE_WEBSHARE_USERNAME/PASSWORD)")
    channels = [r for r in summary["failed_channels"] if r.get("transient")]
    if channels:
        parts.append(f"{count(len(channels), 'channel')} could not be listed ({channels[0]['error'][:120]})")
    return "; ".join(parts)


def channel_rows(chans: list[str], per_channel: list[dict], ledger_channels: dict[str, dict]) -> list[dict]:
    """One table row per channel: its listing in this run (`not-reached` when the quota stopped it first),
    new videos now, videos known in the ledger (all runs), whether its listing is complete, the error."""
    now = {r["channel"]: r for r in per_channel}
    rows = []
    for c in chans:
        r, ch = now.get(c) or {}, ledger_channels.get(c) or {}
        rows.append({"channel": c, "title": ch.get("title"), "listing": r.get("state", "not-reached"), "new": r.get("new", 0),
                     "videos": ch.get("videos", 0), "listed": bool(ch.get("listed")), "error": r.get("error") or ch.get("error")})
    return rows


def _publish(summary: dict, per_channel: list[dict], rows: list[dict]) -> None:
    """A table with one row per channel, and a markdown artifact: totals, the stop reason, one row per channel."""
    publish_table("scrape-youtube-channels", rows, "cook scrape youtube: one row per channel")
    md = [f"# scrape youtube -> `{summary['out']}`", "",
          f"- Data API units: {summary['api_units']} of {summary['quota']}; new videos: {summary['new_videos']}",
          f"- transcripts fetched now: {summary['fetched']} of {summary['due']} due; failed: {summary['failed'] or 'none'}",
          f"- ledger: {summary['videos']}"]
    if summary["stopped"]:
        md.append(f"- **stopped ({summary['stopped']})**: {summary['message']}")
    md += ["", "| channel | listing | new videos |", "|---|---|---:|"]
    md += [f"| {r['channel']} | {r['state']}{' — ' + r['error'] if r.get('error') else ''} | {r['new']} |" for r in per_channel]
    publish_markdown("scrape-youtube-summary", md, "cook scrape youtube summary")
