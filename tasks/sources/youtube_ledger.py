"""The YouTube crawl ledger: one SQLite file (WAL) with a row per channel and a row per discovered video.

- `channels`: the uploads playlist, the next page token and whether the listing is complete, so a resumed
  run (or one stopped at the quota) lists nothing twice and goes on from the page where it stopped.
- `videos`: keyed by `video_id`, with its channel, title, state, attempts, the last error, the part file
  holding its document, `next_try_at` (retryable failures wait out a backoff; videos without captions wait
  for their next check), the caption `languages` last tried (comma-separated) and `misses` (checks in a row
  that found no captions: the next check waits `recheck_after * 2**(misses-1)`, capped).
- `meta`: small counters (Data API units spent, all runs together).

States: `pending` (to fetch), `staged` (being written to a part: after a crash, `reconcile` makes it done if
its part holds it, else pending), `done` (back to pending when its part file is gone: `release_missing`), the
lasting failures `disabled`, `no_transcript` (checked again after a growing delay, and `no_transcript` also
when languages not tried before are asked for) and `unavailable` (never again), and the retryable `blocked`
and `error`. A video is written here the moment its listing page arrives, in the same transaction as the
channel's next page token.
"""

from __future__ import annotations

import json
import time
from typing import Iterable

from tasks.core.ledger import SqliteFile

STATES = ("pending", "staged", "done", "disabled", "no_transcript", "unavailable", "blocked", "error")
PERMANENT = ("disabled", "no_transcript", "unavailable")
RECHECKED = ("disabled", "no_transcript")  # captions may be added later: checked again after a growing delay
RETRYABLE = ("blocked", "error")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS channels (
    channel_id TEXT PRIMARY KEY,
    title TEXT,
    uploads TEXT,
    page_token TEXT,
    listed INTEGER NOT NULL DEFAULT 0,
    videos INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    video_id TEXT PRIMARY KEY,
    channel_id TEXT NOT NULL,
    title TEXT,
    published_at TEXT,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s) for s in STATES)})),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    part TEXT,
    language TEXT,
    is_generated INTEGER,
    next_try_at REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    languages TEXT,
    misses INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS videos_state ON videos (state, next_try_at);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

_VIDEO_COLS = ("video_id, channel_id, title, published_at, state, attempts, error, part, language, is_generated, next_try_at, "
               "created_at, updated_at, languages, misses")
_ADDED = {"languages": "TEXT", "misses": "INTEGER NOT NULL DEFAULT 0"}  # columns newer than the first ledgers


def lang_key(languages: Iterable[str]) -> str:
    """Languages as stored: lower case, comma-separated, in order."""
    return ",".join(lang.strip().lower() for lang in languages if lang.strip())
_CHANNEL_COLS = "channel_id, title, uploads, page_token, listed, videos, error, updated_at"


class YouTubeLedger(SqliteFile):
    """The YouTube ledger: one row per video (keyed by video_id) and per channel (listing progress)."""

    schema = _SCHEMA

    def __init__(self, path):
        super().__init__(path)
        with self._lock:  # a ledger from an older cook: add the newer columns
            have = {r[1] for r in self._db.execute("PRAGMA table_info(videos)")}
            for col, decl in _ADDED.items():
                if col not in have:
                    self._db.execute(f"ALTER TABLE videos ADD COLUMN {col} {decl}")

    def _tx(self, statements: Iterable[tuple[str, list[tuple]]]) -> None:
        """Run (sql, rows) pairs in one transaction."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, rows in statements:
                    self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- channels ----------------------------------------------------------------------------------

    def channel(self, channel_id: str) -> dict | None:
        rows = self._query(f"SELECT {_CHANNEL_COLS} FROM channels WHERE channel_id = ?", (channel_id,))
        return dict(zip(_CHANNEL_COLS.split(", "), rows[0])) if rows else None

    def channels(self) -> list[dict]:
        return [dict(zip(_CHANNEL_COLS.split(", "), r)) for r in self._query(f"SELECT {_CHANNEL_COLS} FROM channels ORDER BY channel_id")]

    def set_channel(self, channel_id: str, title: str | None, uploads: str | None, listed: bool = False,
                    error: str | None = None) -> None:
        """Record a channel's uploads playlist (from channels.list); `listed` when there is nothing to list."""
        self._tx([("INSERT INTO channels (channel_id, title, uploads, listed, error, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                   "ON CONFLICT (channel_id) DO UPDATE SET title = excluded.title, uploads = excluded.uploads, "
                   "listed = excluded.listed, error = excluded.error, updated_at = excluded.updated_at",
                   [(channel_id, title, uploads, int(listed), error, time.time())])])

    def add_page(self, channel_id: str, videos: list[dict], next_token: str | None, refresh: bool = False) -> int:
        """One listing page, in one transaction: its videos (new ones pending; known ones untouched) and the
        channel's next page token (the listing is complete when there is none). Returns how many were new.
        A `refresh` page (new uploads of a listed channel) adds its videos and leaves the listing state alone."""
        now = time.time()
        with self._lock:
            before = self._db.execute("SELECT COUNT(*) FROM videos").fetchone()[0]
        insert = ("INSERT INTO videos (video_id, channel_id, title, published_at, state, created_at, updated_at) "
                  "VALUES (?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (video_id) DO NOTHING",
                  [(v["video_id"], channel_id, v.get("title"), v.get("published_at"), now, now) for v in videos])
        if refresh:
            self._tx([insert])
        else:
            self._tx([insert, ("UPDATE channels SET page_token = ?, listed = ?, videos = videos + ?, updated_at = ? "
                               "WHERE channel_id = ?", [(next_token, int(next_token is None), len(videos), now, channel_id)])])
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM videos").fetchone()[0] - before

    # --- videos ------------------------------------------------------------------------------------

    def video(self, video_id: str) -> dict | None:
        rows = self._query(f"SELECT {_VIDEO_COLS} FROM videos WHERE video_id = ?", (video_id,))
        return dict(zip(_VIDEO_COLS.split(", "), rows[0])) if rows else None

    def videos(self, state: str | None = None) -> list[dict]:
        sql, args = f"SELECT {_VIDEO_COLS} FROM videos", ()
        if state is not None:
            sql, args = sql + " WHERE state = ?", (state,)
        return [dict(zip(_VIDEO_COLS.split(", "), r)) for r in self._query(sql + " ORDER BY created_at, video_id", args)]

    def due(self, languages: Iterable[str] | None = None, now: float | None = None) -> list[dict]:
        """Videos to fetch now (oldest first): pending ones; retryable failures whose backoff has passed; videos
        without captions whose next check is due; and, given `languages`, `no_transcript` videos that were not
        tried in every one of them (a ledger from before languages were recorded: tried in none)."""
        now = time.time() if now is None else now
        want = set(lang_key(languages).split(",")) - {""} if languages is not None else set()
        rows = [dict(zip(_VIDEO_COLS.split(", "), r)) for r in self._query(
            f"SELECT {_VIDEO_COLS} FROM videos WHERE state = 'pending' OR (state IN ('blocked', 'error', 'disabled', "
            "'no_transcript') AND next_try_at <= ?) OR state = 'no_transcript' ORDER BY created_at, video_id", (now,))]
        return [r for r in rows if r["state"] != "no_transcript" or r["next_try_at"] <= now
                or want - set((r["languages"] or "").split(","))]

    def counts(self) -> dict[str, int]:
        found = dict(self._query("SELECT state, COUNT(*) FROM videos GROUP BY state"))
        return {s: found.get(s, 0) for s in STATES}

    def stage(self, video_ids: list[str], part: str, meta: dict[str, tuple[str, bool]], languages: Iterable[str] = ()) -> None:
        """Before writing `part`: these videos go in it (with their caption language and whether generated, and
        the languages asked for)."""
        now, langs = time.time(), lang_key(languages) or None
        self._tx([("UPDATE videos SET state = 'staged', part = ?, language = ?, is_generated = ?, attempts = attempts + 1, "
                   "error = NULL, misses = 0, languages = ?, updated_at = ? WHERE video_id = ? AND state != 'done'",
                   [(part, *meta[v], langs, now, v) for v in video_ids])])

    def mark_done(self, video_ids: list[str]) -> None:
        """After `part` is durably written."""
        now = time.time()
        self._tx([("UPDATE videos SET state = 'done', updated_at = ? WHERE video_id = ? AND state = 'staged'",
                   [(now, v) for v in video_ids])])

    def mark_failed(self, video_id: str, state: str, error: str, retry_in: float = 0.0, languages: Iterable[str] = ()) -> None:
        """One failed attempt: a lasting state (checked again after `retry_in` seconds where RECHECKED, with `misses`
        counted), or a retryable one tried again after `retry_in` seconds; `languages`: those asked for."""
        assert state in PERMANENT + RETRYABLE, state
        now, langs = time.time(), lang_key(languages) or None
        miss = 1 if state in RECHECKED else 0
        self._tx([("UPDATE videos SET state = ?, error = ?, attempts = attempts + 1, next_try_at = ?, updated_at = ?, "
                   "misses = CASE WHEN ? THEN misses + 1 ELSE misses END, languages = COALESCE(?, languages) "
                   "WHERE video_id = ? AND state != 'done'",
                   [(state, error[:500], now + retry_in, now, miss, langs, video_id)])])

    def reconcile(self, written: dict[str, str]) -> tuple[int, int]:
        """After a crash: staged videos found in their part (`written`: video_id -> part) become done, the others
        pending. Returns (recovered, reset)."""
        staged = self._query("SELECT video_id, part FROM videos WHERE state = 'staged'")
        ok = [v for v, part in staged if written.get(v) == part]
        back = [v for v, part in staged if written.get(v) != part]
        now = time.time()
        self._tx([("UPDATE videos SET state = 'done', updated_at = ? WHERE video_id = ?", [(now, v) for v in ok]),
                  ("UPDATE videos SET state = 'pending', part = NULL, attempts = MAX(attempts - 1, 0), updated_at = ? "
                   "WHERE video_id = ?", [(now, v) for v in back])])
        return len(ok), len(back)

    def release_missing(self, exists) -> int:
        """Done videos whose part file is gone (`exists(part)` false) go back to pending, so deleting an output
        re-makes exactly what was lost. Returns how many."""
        gone = [p for (p,) in self._query("SELECT DISTINCT part FROM videos WHERE state = 'done' AND part IS NOT NULL") if not exists(p)]
        if not gone:
            return 0
        n = self._query(f"SELECT COUNT(*) FROM videos WHERE state = 'done' AND part IN ({', '.join('?' * len(gone))})", tuple(gone))[0][0]
        self._tx([("UPDATE videos SET state = 'pending', part = NULL, updated_at = ? WHERE state = 'done' AND part = ?",
                   [(time.time(), p) for p in gone])])
        return n

    def staged_parts(self) -> set[str]:
        return {p for (p,) in self._query("SELECT DISTINCT part FROM videos WHERE state = 'staged' AND part IS NOT NULL")}

    # --- meta --------------------------------------------------------------------------------------

    def frontier(self, channel_id: str) -> dict | None:
        """{"at": time, "ids": the newest page's video ids} as of the channel's last complete listing or refresh."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (f"frontier:{channel_id}",))
        return json.loads(rows[0][0]) if rows else None

    def set_frontier(self, channel_id: str, ids: list[str]) -> None:
        """Record a complete listing or refresh: where the next refresh may stop, and when it is due."""
        self._tx([("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   [(f"frontier:{channel_id}", json.dumps({"at": time.time(), "ids": ids}))])])

    def add_units(self, n: int) -> int:
        """Count Data API units spent (all runs); returns the total."""
        self._tx([("INSERT INTO meta (key, value) VALUES ('api_units', ?) ON CONFLICT (key) DO UPDATE SET "
                   "value = CAST(CAST(value AS INTEGER) + CAST(excluded.value AS INTEGER) AS TEXT)", [(str(n),)])])
        return int(self._query("SELECT value FROM meta WHERE key = 'api_units'")[0][0])
