"""`cook scrape youtube` against a loopback fake YouTube (Data API, watch page, innertube player, timedtext):
every fetchable video once, failures recorded by kind, SIGKILL then resume without refetching or relisting,
a clean stop at the quota, the API key in no log/artifact/ledger/output, and a clean stop when blocked."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_youtube import CUES, FakeWorld, FakeYouTube, channel_id
from scraped import docs_in

from model.errors import CookError, Incomplete
from tasks.corpus.documents import REQUIRED
from tasks.sources.youtube import (
    DEFAULT_CHANNELS,
    LEDGER_NAME,
    SECRET_BLOCK,
    check_scrape_youtube_args,
    clean_segments,
    reconcile,
    resolve_api_key,
)
from tasks.sources.youtube_ledger import YouTubeLedger

pytestmark = pytest.mark.timeout(120)

REPO = Path(__file__).resolve().parents[1]
FAST = {"COOK_YOUTUBE_RETRY_BACKOFF_S": "0.01", "COOK_YOUTUBE_BLOCKED_BACKOFF_S": "0.02", "COOK_YOUTUBE_RATE_LIMIT": "0"}
STATE_OF = {"ok": "done", "generated": "done", "flaky": "done", "regional": "done", "disabled": "disabled", "missing": "no_transcript",
            "music": "no_transcript", "unavailable": "unavailable", "age": "unavailable", "blocked": "blocked"}


def vid_of(doc: dict) -> str:
    return doc["id"].split(":", 1)[1]


@pytest.fixture
def fake_env(monkeypatch):
    """Point the settings at a fake (in this process) and clear the settings cache around the test."""
    from tasks.core.settings import get_settings

    def use(fake: FakeYouTube, **extra: str) -> None:
        for k, v in {"COOK_YOUTUBE_API_URL": fake.api_url, "COOK_YOUTUBE_URL": fake.url, "COOK_YOUTUBE_API_KEY": fake.key,
                     **FAST, **extra}.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


def cli(args: list) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "scrape", "youtube", *map(str, args)]


def channel_args(world: FakeWorld) -> list[str]:
    return [a for c in world.channels for a in ("--channel", c)]


# --- small pieces ----------------------------------------------------------------------------------


def test_clean_segments_and_args(tmp_path, monkeypatch):
    assert clean_segments(["[Music]", "hello  there\nfriend", "[Applause] thanks &amp; bye", "♪ la la ♪", ">> next", "(laughter)"]) \
        == "hello there friend\nthanks & bye\nnext"
    monkeypatch.setenv("COOK_YOUTUBE_API_KEY", "k")
    assert len(DEFAULT_CHANNELS) == len(set(DEFAULT_CHANNELS)) >= 20
    assert check_scrape_youtube_args() == (DEFAULT_CHANNELS, ["en"])
    f = tmp_path / "c.txt"
    f.write_text(f"# mine\n{channel_id(1)}  # a comment\n\n{channel_id(2)}\n{channel_id(1)}\n")
    assert check_scrape_youtube_args([channel_id(3)], str(f), ["en", "de"]) == ([channel_id(3), channel_id(1), channel_id(2)], ["en", "de"])
    (tmp_path / "afile").write_text("x")
    bad = [dict(channels=["nope"]), dict(channels_file=str(tmp_path / "missing.txt")), dict(languages=["e n"]),
           dict(concurrency=0), dict(quota=0), dict(out=str(tmp_path / "afile")), dict(batch_size=0)]
    for kw in bad:
        with pytest.raises(CookError) as e:
            check_scrape_youtube_args(**kw)
        assert "\n" not in str(e.value)
    monkeypatch.setenv("COOK_YOUTUBE_API_KEY", "")
    with pytest.raises(CookError, match="no YouTube API key: set COOK_YOUTUBE_API_KEY or a Prefect Secret block 'youtube-api-key'"):
        check_scrape_youtube_args()
    from prefect.blocks.system import Secret

    Secret(value="from-the-block").save(SECRET_BLOCK, overwrite=True)
    try:
        assert resolve_api_key() == "from-the-block"
    finally:
        Secret.delete(SECRET_BLOCK)
    assert resolve_api_key() is None


# --- 1. a full run ---------------------------------------------------------------------------------


def test_full_run_states_texts_and_rerun(tmp_path, fake_env):
    from flows.scrape_youtube import scrape_youtube_flow

    world = FakeWorld(n_channels=3, videos_per_channel=20)
    out = tmp_path / "yt"
    with FakeYouTube(world, flaky_api=True) as fk:
        fake_env(fk)
        with pytest.raises(Incomplete) as e:  # the bot-checked ("blocked") videos are transient failures
            scrape_youtube_flow(channels=list(world.channels), out=str(out), concurrency=4, batch_size=25)
        s = e.value.summary
        assert "4 videos failed for now (blocked 4)" in str(e.value) and "run the same command again" in str(e.value)
        assert s["stopped"] is None and s["fetched"] == len(world.fetchable()) and s["api_units"] == fk.units
        docs = docs_in(out)
        assert sorted(vid_of(d) for d in docs) == sorted(world.fetchable()), "every fetchable video exactly once"
        assert all(fk.timedtext_counts[v] == 1 for v in world.fetchable()) and set(fk.timedtext_counts) == world.fetchable() | world.of_kind("music")
        assert fk.key_in_url == 0 and fk.bad_max_results == 0
        for d in docs:
            v = world.videos[vid_of(d)]
            assert d["text"] == v.expected_text() and not any(c in d["text"] for c in (*CUES, "[", "♪"))
            assert (d["source"], d["url"], d["title"], d["channel"]) == ("youtube", f"https://www.youtube.com/watch?v={v.video_id}", v.title, v.channel)
            assert (d["language"], d["is_generated"]) == ("en", v.kind == "generated")
        assert list(pq.read_schema(next(out.glob("*.parquet"))).names[: len(REQUIRED)]) == list(REQUIRED)
        with YouTubeLedger(out / LEDGER_NAME) as ledger:
            states = {v["video_id"]: v["state"] for v in ledger.videos()}
            assert states == {v: STATE_OF[x.kind] for v, x in world.videos.items()}
            assert all(c["listed"] for c in ledger.channels()) and len(ledger.channels()) == 4
            assert ledger.channel(channel_id(3))["videos"] == 0  # the channel with no uploads ended cleanly

        # a re-run lists nothing and fetches nothing again; only the retryable (blocked) videos are tried again
        calls = (dict(fk.channel_calls), dict(fk.page_calls), dict(fk.timedtext_counts))
        with pytest.raises(Incomplete) as e2:
            scrape_youtube_flow(channels=list(world.channels), out=str(out), concurrency=4)
        s2 = e2.value.summary
        assert (dict(fk.channel_calls), dict(fk.page_calls), dict(fk.timedtext_counts)) == calls
        assert s2["api_units"] == 0 and s2["fetched"] == 0 and s2["due"] == len(world.of_kind("blocked"))

    # a crash between writing a part and marking its videos done: reconcile marks them done from the part
    with YouTubeLedger(out / LEDGER_NAME) as ledger:
        some = [v["video_id"] for v in ledger.videos("done")[:3]]
        ledger._tx([("UPDATE videos SET state = 'staged' WHERE video_id = ?", [(v,) for v in some]),
                    ("UPDATE videos SET state = 'staged', part = 'gone.parquet' WHERE video_id = ?", [(next(iter(world.of_kind("disabled"))),)])])
    assert reconcile(out) == {"recovered": 3, "reset": 1, "released": 0}
    with YouTubeLedger(out / LEDGER_NAME) as ledger:
        assert all(ledger.video(v)["state"] == "done" for v in some) and ledger.counts()["staged"] == 0


def test_new_uploads_are_picked_up_by_a_later_run(tmp_path, fake_env):
    """A channel listed to the end is checked again once `refresh_after_hours` have passed (a nightly run): its
    new uploads (the newest page first) are listed and fetched, with one page per channel, nothing refetched."""
    from fake_youtube import Video

    from flows.scrape_youtube import scrape_youtube_flow

    world = FakeWorld(n_channels=2, videos_per_channel=60, kinds=("ok",), empty_channel=False)
    out = tmp_path / "yt"
    with FakeYouTube(world) as fk:
        fake_env(fk)
        s1 = scrape_youtube_flow(channels=list(world.channels), out=str(out))
        assert s1["fetched"] == 120 and fk.units == 2 + 4  # channels.list each, 2 pages each
        # within refresh_after_hours: nothing is listed again
        s2 = scrape_youtube_flow(channels=list(world.channels), out=str(out))
        assert s2["api_units"] == 0 and s2["fetched"] == 0

        # channel 0 uploads 3 videos (they come first in the uploads playlist); the next night's run
        c0 = world.channels[channel_id(0)]
        for j in range(3):
            vid = f"n{j:02d}newvideo"[:11]
            world.videos[vid] = Video(vid, c0.channel_id, f"New video {j}", "ok", [f"new segment {j} " + "word " * 5])
            c0.videos.insert(0, vid)
        pages_before, texts_before = dict(fk.page_calls), dict(fk.timedtext_counts)
        s3 = scrape_youtube_flow(channels=list(world.channels), out=str(out), refresh_after_hours=0)
        assert s3["new_videos"] == 3 and s3["fetched"] == 3 and s3["api_units"] == 2  # the newest page of each channel
        assert {k: n - pages_before.get(k, 0) for k, n in fk.page_calls.items() if n != pages_before.get(k, 0)} == {
            (f"UU{cid[2:]}", ""): 1 for cid in world.channels}
        assert all(fk.timedtext_counts[v] == texts_before[v] for v in texts_before)  # nothing fetched twice
        assert sorted(vid_of(d) for d in docs_in(out)) == sorted(world.videos)

        # more new uploads than a page holds, and the quota runs out after the first page: the next run goes on
        for j in range(55):
            vid = f"m{j:02d}morevideo"[:11]
            world.videos[vid] = Video(vid, c0.channel_id, f"More {j}", "ok", [f"more segment {j} " + "word " * 5])
            c0.videos.insert(0, vid)
        s4 = scrape_youtube_flow(channels=[c0.channel_id], out=str(out), refresh_after_hours=0, quota=1)
        assert s4["stopped"] == "quota" and s4["fetched"] == 50  # the newest page, listed before the quota ran out
        s5 = scrape_youtube_flow(channels=[c0.channel_id], out=str(out), refresh_after_hours=0)
        assert s5["new_videos"] == 5 and s5["fetched"] == 5 and sorted(vid_of(d) for d in docs_in(out)) == sorted(world.videos)


# --- 2. SIGKILL and resume through the command line ------------------------------------------------


@pytest.mark.timeout(200)
def test_sigkill_then_rerun_fetches_nothing_twice(cook_env, tmp_path):
    world = FakeWorld(n_channels=2, videos_per_channel=60, kinds=("ok", "generated", "ok", "disabled", "ok", "flaky"))
    out = tmp_path / "yt"
    with FakeYouTube(world, caption_latency=0.03) as fk:
        env = {**cook_env, **FAST, "COOK_YOUTUBE_API_URL": fk.api_url, "COOK_YOUTUBE_URL": fk.url,
               "COOK_YOUTUBE_API_KEY": fk.key, "COOK_YOUTUBE_PART_DOCS": "6"}
        # each run on its own temporary Prefect API: on a server, the killed run's output-folder slot
        # (tasks/core/lock.py) would hold the rerun back until its lease expires; this test is about the ledger
        env.pop("PREFECT_API_URL")
        env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
        args = [*channel_args(world), "--out", out, "--concurrency", 2]
        proc = subprocess.Popen(cli(args), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if out.exists() and len(list(out.glob("*.parquet"))) >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, "finished before the kill: " + proc.stderr.read().decode()[-2000:]
        durable = {vid_of(d) for d in docs_in(out)}
        assert 0 < len(durable) < len(world.fetchable())
        listed = (dict(fk.channel_calls), dict(fk.page_calls))

        again = subprocess.run(cli(args), env=env, cwd=REPO, capture_output=True, text=True, timeout=150)
        assert again.returncode == 0, again.stderr[-3000:]
        ids = [vid_of(d) for d in docs_in(out)]
        assert len(ids) == len(set(ids)) and set(ids) == world.fetchable(), "a video lost or written twice"
        assert all(fk.timedtext_counts[v] == 1 for v in durable), "a video written before the kill was fetched again"
        assert sum(n - 1 for n in fk.timedtext_counts.values()) <= 6 + 4, "only fetches not yet written may repeat"
        assert (dict(fk.channel_calls), dict(fk.page_calls)) == listed, "a channel was listed again"
        with YouTubeLedger(out / LEDGER_NAME) as ledger:
            assert ledger.counts()["done"] == len(world.fetchable()) and ledger.counts()["staged"] == 0


# --- 3. the quota ----------------------------------------------------------------------------------


@pytest.mark.timeout(200)
def test_quota_stops_cleanly_and_rerun_continues(cook, cook_env, tmp_path):
    world = FakeWorld(n_channels=2, videos_per_channel=10, big=100, kinds=("ok", "disabled", "generated"))
    out = tmp_path / "yt"
    with FakeYouTube(world) as fk:
        env = {**cook_env, **FAST, "COOK_YOUTUBE_API_URL": fk.api_url, "COOK_YOUTUBE_URL": fk.url, "COOK_YOUTUBE_API_KEY": fk.key}
        args = ["scrape", "youtube", *channel_args(world), "--out", out, "--quota", 3]
        r = cook(args, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "quota" in r.stdout and "3 units" in r.stdout
        assert fk.units == 3 and sum(fk.page_calls.values()) == 2  # channels.list + two pages of the big channel
        with YouTubeLedger(out / LEDGER_NAME) as ledger:
            c0 = ledger.channel(channel_id(0))
            assert not c0["listed"] and c0["page_token"] == "tok100" and len(ledger.videos()) == 100
            assert ledger.counts()["done"] == len(world.fetchable() & {v["video_id"] for v in ledger.videos()})

        r2 = cook(args[:-2], env=env)
        assert r2.returncode == 0, r2.stderr[-3000:]
        assert all(n == 1 for n in fk.page_calls.values()) and all(n == 1 for n in fk.channel_calls.values())
        ids = [vid_of(d) for d in docs_in(out)]
        assert len(ids) == len(set(ids)) and set(ids) == world.fetchable()
        assert all(fk.timedtext_counts[v] == 1 for v in world.fetchable())


# --- 4. the API key is never written anywhere ------------------------------------------------------


def _all(read, page: int = 200) -> list:
    """Every record a client `read_*` method returns, page by page."""
    out: list = []
    while True:
        batch = read(limit=page, offset=len(out))
        out += batch
        if len(batch) < page:
            return out


@pytest.mark.timeout(200)
def test_api_key_appears_in_no_log_artifact_ledger_or_output(cook, cook_env, tmp_path):
    from prefect.client.orchestration import get_client

    world = FakeWorld(n_channels=3, videos_per_channel=8)
    hostile = channel_id(90)  # answers 400 with the key inside its error message
    out = tmp_path / "yt"
    with FakeYouTube(world, flaky_api=True, echo_key_channels={hostile}, quota_limit=6) as fk:
        key = fk.key
        env = {**cook_env, **FAST, "COOK_YOUTUBE_API_URL": fk.api_url, "COOK_YOUTUBE_URL": fk.url, "COOK_YOUTUBE_API_KEY": key,
               "PREFECT_LOGGING_LEVEL": "DEBUG", "PREFECT_LOGGING_EXTRA_LOGGERS": "httpx,httpcore,urllib3,requests"}
        r = cook(["--debug", "scrape", "youtube", "--channel", hostile, *channel_args(world), "--out", out], env=env)
        assert r.returncode == 0, r.stderr[-3000:]  # the quota is a planned stop: exit 0, with a message
        assert "stopped early (quota)" in r.stdout  # the API's 403 quotaExceeded stopped the listing cleanly
        assert fk.key_in_url == 0

    texts = [r.stdout, r.stderr]
    time.sleep(1.0)  # the run's last log batch
    with get_client(sync_client=True) as client:
        offset = 0
        while True:
            logs = client.read_logs(limit=200, offset=offset)
            texts += [f"{log.name} {log.message}" for log in logs]
            offset += len(logs)
            if len(logs) < 200:
                break
        runs = _all(client.read_flow_runs)
        texts += [repr(f.parameters) + str(f.state and f.state.message) for f in runs]
        texts += [repr(t.state and t.state.message) + repr(t.task_inputs) for t in _all(client.read_task_runs)]
        arts = _all(client.read_artifacts)  # every artifact of the session's server, not just the latest
        texts += [repr(a.data) + str(a.description) for a in arts]
    this_run = max((f for f in runs if f.parameters.get("out") == str(out)), key=lambda f: f.created)
    mine = [a for a in arts if a.flow_run_id == this_run.id]
    assert any(a.type == "progress" for a in mine), "no progress artifact"
    summary = [a for a in mine if a.key == "scrape-youtube-summary"]
    assert summary and "quota" in repr(summary[0].data)  # the API's 403 quotaExceeded stopped the listing cleanly
    assert "***" in repr(summary[0].data)  # the hostile channel's error, redacted
    assert any("scrape youtube:" in t for t in texts), "the run's logs were not collected"
    # every file cook wrote: the output folder and the whole data dir, Prefect's result files included
    data_dir = Path(cook_env["COOK_DATA_DIR"])
    results = list((data_dir / ".cook" / "results").glob("*"))
    assert results, "no Prefect result files under DATA/.cook/results"
    files, decoded = written_texts([out, data_dir])
    assert decoded, "no base64 payload was decoded: the result files' contents were not scanned"
    texts += files
    assert len(texts) > 10
    leaks = [t[:200] for t in texts if key in t]
    assert not leaks, leaks


def written_texts(roots: list[Path]) -> tuple[list[str], int]:
    """Every file under `roots` as text, plus what is inside it: parquet rows, SQLite dumps, and the strings of
    JSON files decoded from base64 (Prefect's result files keep their payload so), recursively. Returns
    (texts, how many base64 payloads were decoded)."""
    import base64
    import binascii
    import json

    texts: list[str] = []
    decoded = 0

    def strings(obj):
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from strings(k)
                yield from strings(v)
        elif isinstance(obj, list):
            for v in obj:
                yield from strings(v)

    def inside(raw: bytes, depth: int = 0) -> None:
        nonlocal decoded
        texts.append(raw.decode("latin-1"))
        if depth > 3:
            return
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return
        for s in strings(obj):
            if len(s) >= 8 and len(s) % 4 == 0:
                try:
                    payload = base64.b64decode(s, validate=True)
                except (binascii.Error, ValueError):
                    continue
                decoded += 1
                inside(payload, depth + 1)

    for root in roots:
        for p in sorted(root.rglob("*")):
            if not p.is_file():
                continue
            inside(p.read_bytes())
            if p.suffix == ".parquet":
                texts.append(repr(pq.read_table(p).to_pylist()))
            if p.suffix in (".sqlite", ".db"):
                db = sqlite3.connect(p)
                texts.append("\n".join(db.iterdump()))
                db.close()
    return texts, decoded


# --- 5. blocked ------------------------------------------------------------------------------------


def test_repeated_blocks_end_the_run_cleanly(tmp_path, fake_env):
    from flows.scrape_youtube import scrape_youtube_flow

    world = FakeWorld(n_channels=2, videos_per_channel=30, kinds=("ok",))
    out = tmp_path / "yt"
    with FakeYouTube(world, block_all=True) as fk:
        fake_env(fk, COOK_YOUTUBE_MAX_BLOCKED="3")
        with pytest.raises(Incomplete) as e:  # stopped to spare the IP: an honest "run again later", not success
            scrape_youtube_flow(channels=list(world.channels), out=str(out), concurrency=2, batch_size=20)
        s = e.value.summary
        assert s["stopped"] == "blocked" and "blocking" in s["message"] and s["fetched"] == 0
        assert "videos left pending (YouTube kept blocking requests: retry later, or set a proxy" in str(e.value)
        assert not fk.timedtext_counts and not list(out.glob("*.parquet"))
        with YouTubeLedger(out / LEDGER_NAME) as ledger:
            c = ledger.counts()
            assert 3 <= c["blocked"] <= 3 + 2 and c["pending"] == 60 - c["blocked"]  # the rest left for a later run
        # once YouTube answers again, the next run fetches everything
        fk.block_all = False
        s2 = scrape_youtube_flow(channels=list(world.channels), out=str(out), concurrency=2, batch_size=20)
        assert s2["stopped"] is None and s2["fetched"] == 60 and sorted(map(vid_of, docs_in(out))) == sorted(world.videos)
