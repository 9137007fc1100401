"""A crawl ledger: which items of a source are done, failed or staged, in one SQLite file (WAL mode).

Crawlers (Wikipedia, later YouTube) record every item by `(source, key)`, e.g. `("wikipedia:en", "12345")`,
with its title, a `tag` (what found it, e.g. the query), `attempts`, the last error and a JSON `data` blob
(e.g. a page's outgoing links, so a resumed crawl can walk on without fetching the page again).

The order that makes a crawl crash-safe:

1. `stage(source, items)` records the fetched items (and their data) in one transaction;
2. the crawler writes them to an output file atomically (temp then rename);
3. `mark_done(source, keys, part)` marks them done in one transaction.

After a crash between 2 and 3, `reconcile(source, keys_in_outputs)` marks done the staged items found in
the output files, so nothing is lost and nothing is fetched twice. Staged items not found in any output
were never written: they count as not done.

Refreshing: each done item keeps the `version` it was fetched at (a revision id, an ETag) and when it was
last `checked_at`. A re-fetched item is written to a new part and `mark_done` points the item at it (the
older copy stays in its part; `cook merge` keeps the newest). `release_missing(source, out)` sends done
items whose part file is gone back to pending, so deleting an output re-makes exactly what was lost.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

STATUSES = ("pending", "staged", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    source TEXT NOT NULL,
    key TEXT NOT NULL,
    title TEXT,
    tag TEXT,
    status TEXT NOT NULL CHECK (status IN ('pending', 'staged', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    part TEXT,
    data TEXT,
    version TEXT,
    checked_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (source, key)
);
CREATE INDEX IF NOT EXISTS items_status ON items (source, status);
CREATE INDEX IF NOT EXISTS items_tag ON items (source, tag, status);
"""


class SqliteFile:
    """A durable SQLite file (WAL, full sync: a commit survives power loss, not only a killed process) with
    `schema` applied; safe to share between threads (one connection behind a lock)."""

    schema = ""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(self.schema)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def backup(self, path: str | os.PathLike) -> Path:
        """A consistent copy of the whole file (committed transactions only, WAL included) at `path`, as one plain
        SQLite file: what goes to the data store (tasks/core/mirror.py) while this one stays open."""
        with self._lock:
            dst = sqlite3.connect(path)
            try:
                self._db.backup(dst)
            finally:
                dst.close()
        return Path(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Ledger(SqliteFile):
    """The crawl ledger: one row per item of a source (a page, an article), with its status."""

    schema = _SCHEMA

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        with self._lock:  # ledgers written before refreshing existed lack these columns
            have = {r[1] for r in self._db.execute("PRAGMA table_info(items)")}
            for col, kind in (("version", "TEXT"), ("checked_at", "REAL")):
                if col not in have:
                    self._db.execute(f"ALTER TABLE items ADD COLUMN {col} {kind}")

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # --- writing -----------------------------------------------------------------------------------

    def stage(self, source: str, items: Iterable[dict]) -> None:
        """Record fetched items (`key`, `title`, `tag`, `data`) as staged, in one transaction; done items stay done."""
        now = time.time()
        rows = [(source, str(it["key"]), it.get("title"), it.get("tag"), json.dumps(it.get("data")), now) for it in items]
        self._write(
            "INSERT INTO items (source, key, title, tag, status, attempts, data, updated_at) VALUES (?, ?, ?, ?, 'staged', 1, ?, ?) "
            "ON CONFLICT (source, key) DO UPDATE SET title = excluded.title, tag = excluded.tag, data = excluded.data, "
            "attempts = attempts + 1, error = NULL, status = 'staged', updated_at = excluded.updated_at WHERE status != 'done'",
            rows,
        )

    def mark_done(self, source: str, keys: Iterable[Any], part: str | None = None, items: Iterable[dict] | None = None) -> None:
        """Mark items done (their output, `part`, is durably written), in one transaction. With `items` (dicts with
        `key` and optionally `data`, `version`, `title`), a done item fetched again takes its new data and version."""
        now = time.time()
        if items is None:
            items = [{"key": k} for k in keys]
        self._write(
            "UPDATE items SET status = 'done', part = ?, data = COALESCE(?, data), version = ?, title = COALESCE(?, title), "
            "checked_at = ?, updated_at = ? WHERE source = ? AND key = ?",
            [(part, json.dumps(it["data"]) if it.get("data") is not None else None, _version(it.get("version")), it.get("title"),
              now, now, source, str(it["key"])) for it in items])

    def set_versions(self, source: str, versions: dict[str, Any]) -> None:
        """Record the versions of items (key -> version) without changing anything else."""
        self._write("UPDATE items SET version = ? WHERE source = ? AND key = ?",
                    [(_version(v), source, str(k)) for k, v in versions.items()])

    def touch(self, source: str, keys: Iterable[Any]) -> None:
        """Record that done items were checked now and found unchanged."""
        now = time.time()
        self._write("UPDATE items SET checked_at = ? WHERE source = ? AND key = ?", [(now, source, str(k)) for k in keys])

    def release_missing(self, source: str, out: str | os.PathLike, exists: Callable[[str], bool] | None = None) -> list[str]:
        """Done items whose part file is gone from `out` (`exists(part name)`, when given, says where else it may
        be: the data store's copy of the folder) go back to pending (fetched again by the next crawl that meets
        them). Returns their keys."""
        with self._lock:
            rows = self._db.execute("SELECT key, part FROM items WHERE source = ? AND status = 'done' AND part IS NOT NULL",
                                    (source,)).fetchall()
        have = exists or (lambda part: (Path(out) / part).exists())
        lost = [k for k, part in rows if not have(part)]
        now = time.time()
        self._write("UPDATE items SET status = 'pending', part = NULL, version = NULL, checked_at = NULL, updated_at = ? "
                    "WHERE source = ? AND key = ?", [(now, source, k) for k in lost])
        return lost

    def unversioned(self, source: str) -> list[tuple[str, str]]:
        """(key, part) of done items with a document but no version (recorded before versions were kept)."""
        with self._lock:
            return self._db.execute("SELECT key, part FROM items WHERE source = ? AND status = 'done' AND part IS NOT NULL "
                                    "AND version IS NULL", (source,)).fetchall()

    def due(self, source: str, tag: str | None, checked_before: float) -> list[dict]:
        """Done items with a document (of `tag`, or every tag) last fetched or checked before `checked_before`."""
        return [r for r in self.items(source, "done", tag=tag)
                if r["part"] and (r["checked_at"] or r["updated_at"]) < checked_before]

    def mark_failed(self, source: str, key: Any, error: str, title: str | None = None, tag: str | None = None) -> None:
        """Record one failed attempt (a later run retries it); a done item stays done."""
        self._write(
            "INSERT INTO items (source, key, title, tag, status, attempts, error, updated_at) VALUES (?, ?, ?, ?, 'failed', 1, ?, ?) "
            "ON CONFLICT (source, key) DO UPDATE SET status = 'failed', attempts = attempts + 1, error = excluded.error, "
            "title = COALESCE(excluded.title, title), tag = COALESCE(tag, excluded.tag), updated_at = excluded.updated_at WHERE status != 'done'",
            [(source, str(key), title, tag, error[:500], time.time())],
        )

    def write_batch(self, source: str, out: str | os.PathLike, prefix: str, batch: list[tuple[dict | None, dict]],
                    schema=None) -> Path | None:
        """Record a batch of (document or None, item) crash-safely: stage the items, write the documents as one
        atomic part `OUT/<prefix>-<random>.parquet` (never an empty one), then mark the items done with it."""
        from tasks.corpus.documents import SCHEMA, write_documents

        items = [it for _, it in batch]
        docs = [d for d, _ in batch if d is not None]
        self.stage(source, items)
        part = None
        if docs:
            part = Path(out) / f"{prefix}-{uuid.uuid4().hex[:16]}.parquet"
            write_documents(part, docs, schema or SCHEMA)
        self.mark_done(source, [it["key"] for it in items], part.name if part else None, items)
        return part

    def recover(self, source: str, out: str | os.PathLike, key_of: Callable[[str], str | None]) -> int:
        """After a crash: staged items whose documents a part in `out` holds (`key_of(doc id)`) become done, the
        rest go back to pending. Returns how many were recovered as done."""
        if not self.counts(source)["staged"]:
            return 0
        import pyarrow.parquet as pq

        written: dict[str, str] = {}
        for part in sorted(Path(out).glob("*.parquet")):
            for doc_id in pq.read_table(part, columns=["id"]).column("id").to_pylist():
                key = key_of(doc_id)
                if key is not None:
                    written[key] = part.name
        return self.reconcile(source, written)

    def reconcile(self, source: str, written: dict[str, str]) -> int:
        """After a crash: items found in output files (`key -> part`) become done; other staged items go back to
        pending. Returns how many were recovered as done."""
        with self._lock:
            staged = {k for (k,) in self._db.execute("SELECT key FROM items WHERE source = ? AND status = 'staged'", (source,))}
        recovered = [k for k in staged if k in written]
        now = time.time()
        self._write("UPDATE items SET status = 'done', part = ?, updated_at = ? WHERE source = ? AND key = ?",
                    [(written[k], now, source, k) for k in recovered])
        self._write("UPDATE items SET status = 'pending', updated_at = ? WHERE source = ? AND key = ?",
                    [(now, source, k) for k in staged - set(recovered)])
        return len(recovered)

    # --- reading -----------------------------------------------------------------------------------

    def get(self, source: str, key: Any) -> dict | None:
        with self._lock:
            cur = self._db.execute(f"SELECT {_COLUMNS} FROM items "
                                   "WHERE source = ? AND key = ?", (source, str(key)))
            row = cur.fetchone()
        return None if row is None else _row(row)

    def items(self, source: str, status: str | None = None, tag: str | None = None) -> list[dict]:
        sql = f"SELECT {_COLUMNS} FROM items WHERE source = ?"
        args: list = [source]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY updated_at, key", args).fetchall()
        return [_row(r) for r in rows]

    def keys(self, source: str, status: str = "done") -> set[str]:
        with self._lock:
            return {k for (k,) in self._db.execute("SELECT key FROM items WHERE source = ? AND status = ?", (source, status))}

    def counts(self, source: str, tag: str | None = None) -> dict[str, int]:
        """Items per status (every status present, zero when none)."""
        sql, args = "SELECT status, COUNT(*) FROM items WHERE source = ?", [source]
        if tag is not None:
            sql += " AND tag = ?"
            args.append(tag)
        with self._lock:
            found = dict(self._db.execute(sql + " GROUP BY status", args).fetchall())
        return {s: found.get(s, 0) for s in STATUSES}


_COLUMNS = "key, title, tag, status, attempts, error, part, data, version, checked_at, updated_at"


def _version(v: Any) -> str | None:
    return None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _row(r: tuple) -> dict:
    key, title, tag, status, attempts, error, part, data, version, checked, updated = r
    return {"key": key, "title": title, "tag": tag, "status": status, "attempts": attempts, "error": error,
            "part": part, "data": json.loads(data) if data else None, "version": version, "checked_at": checked,
            "updated_at": updated}
