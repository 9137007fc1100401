"""`cook scrape youtube` night after night, through the CLI against the loopback fake YouTube.

Between nights the world changes (new uploads, videos gaining captions), the user changes `--languages`, the key
goes bad, youtube.com goes away and comes back, a video is bot-checked, a part is deleted by hand; the ledger is
aged by a day (`age`: every timestamp moved back, as if the night had passed). After every night:
- the documents (ids and texts) equal one clean run against the fake's current state (a second fake server on
  the same world, run in this process into a fresh folder), or, on a night that fails, are unchanged;
- the fake's request counters show that nothing was fetched twice without a reason: each night's transcript
  fetches (timedtext) and caption checks (player) are exactly the videos that had one;
- failures give one line and their exit code (3 transient, 5 key rejected / host unreachable).

The small pieces (caption choice, every shape of a refused key, a dead API host, proxy secrets) are at the end.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_youtube import DENIALS, FakeWorld, FakeYouTube, Video, channel_id
from scraped import docs_in

from model.errors import Incomplete, SourceUnavailable
from tasks.sources.youtube import LEDGER_NAME
from tasks.sources.youtube_ledger import YouTubeLedger

REPO = Path(__file__).resolve().parents[1]
FAST = {"COOK_YOUTUBE_RETRY_BACKOFF_S": "0.01", "COOK_YOUTUBE_BLOCKED_BACKOFF_S": "0.02", "COOK_YOUTUBE_RATE_LIMIT": "0"}
DAY = 24.0


def dead_url() -> str:
    """An http URL on a loopback port where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def docs(out: Path) -> dict[str, str]:
    """{video id: text} of the documents in `out`; an id written twice is a failure."""
    rows = docs_in(out) if out.exists() else []
    ids = [d["id"].split(":", 1)[1] for d in rows]
    assert len(ids) == len(set(ids)), f"a video written twice: {sorted(i for i, n in Counter(ids).items() if n > 1)}"
    return {d["id"].split(":", 1)[1]: d["text"] for d in rows}


def age(out: Path, hours: float = DAY) -> None:
    """A night passes: every time in the ledger moves back by `hours` (due times, listings, refresh frontiers)."""
    d = hours * 3600.0
    db = sqlite3.connect(out / LEDGER_NAME)
    try:
        with db:
            db.execute("UPDATE videos SET next_try_at = next_try_at - ?, created_at = created_at - ?, updated_at = updated_at - ?", (d, d, d))
            db.execute("UPDATE channels SET updated_at = updated_at - ?", (d,))
            for key, value in db.execute("SELECT key, value FROM meta WHERE key LIKE 'frontier:%'").fetchall():
                f = json.loads(value)
                f["at"] -= d
                db.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(f), key))
    finally:
        db.close()


def grew(before: Counter, after: Counter) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


class Nights:
    """The nightly output folder, the fake that serves it, and a clean-run oracle on a second fake of the same world."""

    def __init__(self, world: FakeWorld, fake: FakeYouTube, oracle: FakeYouTube, out: Path, env: dict, tmp: Path, monkeypatch):
        self.world, self.fake, self.oracle, self.out, self.env, self.tmp, self.mp = world, fake, oracle, out, env, tmp, monkeypatch
        self.channels = list(world.channels)
        self.n = 0

    def run(self, languages: str = "en", **env: str) -> tuple[subprocess.CompletedProcess, float, dict, dict]:
        """One night through the CLI. Returns (process, seconds, transcripts fetched {video: n}, caption checks {video: n})."""
        texts, players = Counter(self.fake.timedtext_counts), Counter(self.fake.player_calls)
        args = [sys.executable, "-m", "flows.cli", "scrape", "youtube", *[a for c in self.channels for a in ("--channel", c)],
                "--out", str(self.out), "--languages", languages]
        t0 = time.monotonic()
        r = subprocess.run(args, env={**self.env, **env}, cwd=REPO, capture_output=True, text=True, timeout=240)
        took = time.monotonic() - t0
        self.n += 1
        return r, took, grew(texts, self.fake.timedtext_counts), grew(players, self.fake.player_calls)

    def clean(self, languages: list[str]) -> dict[str, str]:
        """The documents of one clean run against the world as it is now (Incomplete runs count: what they wrote)."""
        from flows.scrape_youtube import scrape_youtube_flow
        from tasks.core.settings import get_settings

        out = self.tmp / f"clean-{self.n}"
        for k, v in {**FAST, "COOK_YOUTUBE_API_URL": self.oracle.api_url, "COOK_YOUTUBE_URL": self.oracle.url,
                     "COOK_YOUTUBE_API_KEY": self.oracle.key, "COOK_DATA_DIR": str(self.tmp / "clean-data")}.items():
            self.mp.setenv(k, v)
        get_settings.cache_clear()
        try:
            scrape_youtube_flow(channels=self.channels, out=str(out), languages=languages)
        except Incomplete:
            pass
        finally:
            get_settings.cache_clear()
        return docs(out)

    def states(self) -> dict[str, str]:
        with YouTubeLedger(self.out / LEDGER_NAME) as ledger:
            return {v["video_id"]: v["state"] for v in ledger.videos()}

    def upload(self, channel: int, kind: str, tag: str) -> str:
        """A new upload (first in its channel's uploads playlist)."""
        c = self.world.channels[channel_id(channel)]
        vid = f"{tag}{len(self.world.videos):04d}zzzzzz"[:11]
        self.world.videos[vid] = Video(vid, c.channel_id, f"New upload {tag}", kind, [f"fresh words {tag} one", f"fresh words {tag} two"])
        c.videos.insert(0, vid)
        return vid


@pytest.mark.timeout(600)
def test_a_season_of_nights(cook_env, tmp_path, monkeypatch):
    kinds = ("ok", "generated", "missing", "disabled", "regional", "ok", "unavailable")
    world = FakeWorld(n_channels=2, videos_per_channel=7, kinds=kinds, empty_channel=False)
    of = lambda *k: {v for v, x in world.videos.items() if x.kind in k}  # noqa: E731
    out = tmp_path / "yt"
    with FakeYouTube(world) as fake, FakeYouTube(world) as oracle:
        env = {**cook_env, **FAST, "COOK_YOUTUBE_API_URL": fake.api_url, "COOK_YOUTUBE_URL": fake.url, "COOK_YOUTUBE_API_KEY": fake.key}
        nights = Nights(world, fake, oracle, out, env, tmp_path, monkeypatch)

        # night 1: everything is new. `en` takes a `regional` video's manual en-GB track before its generated en ones
        r, _, texts, _ = nights.run()
        assert r.returncode == 0, r.stderr[-3000:]
        fetchable = of("ok", "generated", "regional")
        assert texts == {v: 1 for v in fetchable}
        got = docs(out)
        assert got == {v: world.videos[v].expected_text() for v in fetchable}  # the primary track of each
        assert got == nights.clean(["en"])
        assert {v for v, s in nights.states().items() if s == "no_transcript"} == of("missing")

        # night 2: three new uploads, one of them bot-checked (RequestBlocked); a `missing` and a `disabled` video
        # gain English captions. The videos without captions are checked again (20 h after they were found so);
        # the new and the gained ones are fetched; the blocked one is left to retry: exit 3, one line that says so
        age(out)
        new = {nights.upload(0, "ok", "a"), nights.upload(1, "ok", "b")}
        blocked = nights.upload(1, "blocked", "x")
        gained = {sorted(of("missing"))[0], sorted(of("disabled"))[0]}
        checked_again = of("missing", "disabled")
        for v in gained:
            world.videos[v].kind = "ok"
        r, _, texts, players = nights.run()
        assert r.returncode == 3, r.stderr[-3000:]
        line = error_lines(r.stderr)
        assert len(line) == 1 and "1 video failed for now (blocked 1)" in line[0] and "run the same command again" in line[0]
        assert "Traceback" not in r.stderr
        assert texts == {v: 1 for v in new | gained}
        assert players == {v: 1 for v in new | {blocked} | checked_again}
        assert docs(out) == nights.clean(["en"]) and new | gained <= set(docs(out))

        # night 3: --languages en,fr, and the block is gone. Each channel's newest page is listed (1 unit each);
        # the `no_transcript` videos (never tried in fr) are checked again and the French-only ones fetched; the
        # `disabled` one now waits 40 h (the delay doubles); no video done before is touched
        age(out)
        world.videos[blocked].kind = "ok"
        units = fake.units
        r, _, texts, players = nights.run("en,fr")
        assert r.returncode == 0, r.stderr[-3000:]
        assert fake.units - units == 2
        assert texts == {v: 1 for v in of("missing") | {blocked}} and players == texts
        assert docs(out) == nights.clean(["en", "fr"])

        # night 4: the key is rejected (today's API_KEY_INVALID shape): one line, exit 5, nothing listed or fetched
        age(out)
        before = docs(out)
        waiting = {nights.upload(0, "ok", "c"), nights.upload(1, "generated", "d")}
        r, _, texts, players = nights.run("en,fr", COOK_YOUTUBE_API_KEY="AIzaSy-a-key-that-was-revoked-000000")
        assert r.returncode == 5, r.stderr[-3000:]
        assert error_lines(r.stderr) == [r.stderr.strip().splitlines()[-1]] and "Traceback" not in r.stderr
        line = error_lines(r.stderr)[0]
        assert "rejected the API key" in line and "API_KEY_INVALID" in line and "COOK_YOUTUBE_API_KEY" in line
        assert "a-key-that-was-revoked" not in r.stderr + r.stdout and fake.key not in r.stderr + r.stdout
        assert (texts, players) == ({}, {}) and docs(out) == before and not waiting & set(nights.states())

        # night 5 (the same night): youtube.com cannot be reached. The new uploads are listed, then one line within
        # 60 s, exit 5, and they stay pending (not failed)
        dead = dead_url()
        r, took, texts, players = nights.run("en,fr", COOK_YOUTUBE_URL=dead)
        assert r.returncode == 5, r.stderr[-3000:]
        line = error_lines(r.stderr)
        assert len(line) == 1 and "Traceback" not in r.stderr
        assert f"cannot reach {dead.split('//')[1]}" in line[0] and "COOK_YOUTUBE_URL" in line[0] and took < 60
        assert (texts, players) == ({}, {}) and docs(out) == before
        assert {nights.states()[v] for v in waiting} == {"pending"}

        # night 6 (the same night): the host is back, and a part was deleted by hand. The pending videos and exactly
        # the lost ones are fetched; the `disabled` video is checked again (48 h since night 2: past its 40 h)
        part = sorted(out.glob("*.parquet"))[0]
        lost = set(docs(out))
        part.unlink()
        lost -= set(docs(out))
        assert lost
        r, _, texts, players = nights.run("en,fr")
        assert r.returncode == 0, r.stderr[-3000:]
        assert texts == {v: 1 for v in waiting | lost}
        assert players == {v: 1 for v in waiting | lost | of("disabled")}
        assert docs(out) == nights.clean(["en", "fr"])

    # over the whole season, a transcript was fetched twice only when its part had been deleted
    assert {v for v, n in fake.timedtext_counts.items() if n > 1} == lost
    assert fake.key_in_url == 0


# --- the pieces ------------------------------------------------------------------------------------


def test_caption_choice_regional_manual_first_in_language_order():
    from youtube_transcript_api import NoTranscriptFound

    from tasks.sources.youtube import language_rank, pick_transcript

    class T:
        def __init__(self, code: str, generated: bool):
            self.language_code, self.is_generated = code, generated

        def __repr__(self) -> str:
            return f"{self.language_code}{'*' if self.is_generated else ''}"

    def pick(tracks: list[T], langs: list[str]) -> str:
        return repr(pick_transcript(tracks, langs))

    assert language_rank("en-GB", ["de", "en"]) == (1, 1) and language_rank("EN", ["en"]) == (0, 0)
    assert language_rank("en", ["en-GB"]) is None and language_rank("eng", ["en"]) is None
    tracks = [T("en", True), T("en-US", True), T("en-GB", False), T("fr", False), T("de", True)]
    assert pick(tracks, ["en"]) == "en-GB"  # a manual regional track before the generated ones
    assert pick(tracks, ["fr", "en"]) == "fr" and pick(tracks, ["de", "en"]) == "de*"  # the language order first
    assert pick([T("en-US", True), T("en", True)], ["en"]) == "en*"  # the exact code before a regional one
    assert pick([T("en-US", False), T("en", True)], ["en-US"]) == "en-US"
    with pytest.raises(NoTranscriptFound):
        pick_transcript([T("fr", False)], ["en", "de"])


@pytest.fixture
def settings_env(monkeypatch):
    from tasks.core import health
    from tasks.core.settings import get_settings

    def use(**env: str) -> None:
        for k, v in {**FAST, **env}.items():
            monkeypatch.setenv(k, v)
        get_settings.cache_clear()
        health.reset()

    yield use
    get_settings.cache_clear()
    health.reset()


@pytest.mark.parametrize("denial", DENIALS)
def test_every_refused_key_shape_stops_at_once(denial, tmp_path, settings_env):
    """Each answer Google gives for a refused key (old and new shapes) raises SourceUnavailable on the first call,
    as one line without the key; nothing else is asked."""
    from tasks.sources.youtube import list_channels

    world = FakeWorld(n_channels=3, videos_per_channel=2, kinds=("ok",), empty_channel=False)
    with FakeYouTube(world, deny=denial) as fk:
        settings_env(COOK_YOUTUBE_API_URL=fk.api_url, COOK_YOUTUBE_URL=fk.url)
        with pytest.raises(SourceUnavailable) as e:
            list_channels(list(world.channels), tmp_path, api_url=fk.api_url, key=fk.key)
        assert len(fk.log) == 1 and not fk.channel_calls
    message = str(e.value)
    assert "\n" not in message and fk.key not in message and "rejected the API key" in message
    assert {"API_KEY_INVALID": "API_KEY_INVALID", "keyInvalid": "keyInvalid", "accessNotConfigured": "accessNotConfigured",
            "forbidden": "forbidden"}[denial] in message


def test_a_dead_api_host_stops_after_the_limit_with_one_line(tmp_path, settings_env):
    from tasks.sources.youtube import list_channels

    dead = dead_url()
    settings_env(COOK_YOUTUBE_API_URL=dead + "/youtube/v3", COOK_MAX_CONNECT_FAILURES="3")
    t0 = time.monotonic()
    with pytest.raises(SourceUnavailable) as e:
        list_channels([channel_id(i) for i in range(40)], tmp_path, key="k", backoff=0.01)
    assert time.monotonic() - t0 < 30
    message = str(e.value)
    assert "\n" not in message and f"cannot reach {dead.split('//')[1]}: 3 connection failures in a row" in message
    assert "COOK_YOUTUBE_API_URL" in message


def test_proxy_credentials_are_secret_and_redacted(tmp_path, settings_env):
    """Proxy URLs are SecretStr; a dead proxy stops the run with one line that holds no password."""
    from tasks.sources.youtube import YouTubeOptions, fetch_batch, list_channels

    world = FakeWorld(n_channels=1, videos_per_channel=6, kinds=("ok",), empty_channel=False)
    proxy = dead_url().replace("http://", "http://someone:pr0xy-pa55word@")
    with FakeYouTube(world) as fk:
        settings_env(COOK_YOUTUBE_API_URL=fk.api_url, COOK_YOUTUBE_URL=fk.url, COOK_YOUTUBE_PROXY_HTTP=proxy,
                     COOK_YOUTUBE_PROXY_HTTPS=proxy, COOK_YOUTUBE_RETRIES="0")  # no retry budget: only the host's count stops
        opts = YouTubeOptions()
        assert "pr0xy-pa55word" not in repr(opts) + str(opts)
        list_channels(list(world.channels), tmp_path, api_url=fk.api_url, key=fk.key)
        with pytest.raises(SourceUnavailable) as e:
            fetch_batch(sorted(world.videos), tmp_path, ["en"], concurrency=2, opts=opts, youtube_url=fk.url)
        assert not fk.player_calls  # nothing went around the proxy
    assert "\n" not in str(e.value) and "pr0xy-pa55word" not in str(e.value) and "proxy" in str(e.value)
    with YouTubeLedger(tmp_path / LEDGER_NAME) as ledger:
        assert {v["state"] for v in ledger.videos()} == {"pending"}
    db = sqlite3.connect(tmp_path / LEDGER_NAME)
    assert "pr0xy-pa55word" not in "\n".join(db.iterdump())
    db.close()


def test_transcript_fetches_keep_their_rate(tmp_path, settings_env):
    """COOK_YOUTUBE_RATE_LIMIT spaces video starts across all threads (the fake's request log shows it)."""
    from tasks.sources.youtube import YouTubeOptions, fetch_batch, list_channels

    world = FakeWorld(n_channels=1, videos_per_channel=8, kinds=("ok",), empty_channel=False)
    with FakeYouTube(world) as fk:
        settings_env(COOK_YOUTUBE_API_URL=fk.api_url, COOK_YOUTUBE_URL=fk.url, COOK_YOUTUBE_RATE_LIMIT="10")
        list_channels(list(world.channels), tmp_path, api_url=fk.api_url, key=fk.key)
        r = fetch_batch(sorted(world.videos), tmp_path, ["en"], concurrency=4, opts=YouTubeOptions(), youtube_url=fk.url)
        assert r["fetched"] == 8
        starts = sorted(t for t, method, path in fk.log if path.startswith("/watch"))
    assert len(starts) == 8 and starts[-1] - starts[0] >= 7 * 0.1 * 0.8  # 8 starts at 10/s: 0.7 s at least
