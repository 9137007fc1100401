"""A scraper's local folder kept copied to its place on the data store (COOK_DATA_DIR=s3://…, or --out URL).

A scraper writes parquet parts and a SQLite ledger, which needs a real file: it works in a local folder (under the
cache) and `Mirror` copies that folder to its URL, in an order that a crash may cut anywhere:

- after every batch, the new part is uploaded first (whole or not at all, model.storage.put_file), then, at most
  every LEDGER_EVERY_S seconds and always when the crawl ends, a consistent snapshot of the ledger (SQLite's
  backup API) as `URL/ledger.sqlite`: the bucket's ledger never names a part that the bucket lacks;
- at the start of a run (`start`), a machine with no ledger of its own, or with an older one than the bucket's
  (another machine ran since), takes the bucket's: it resumes where the last run stopped, fetching nothing already
  done. Parts on the bucket are not downloaded: a done item counts while its part is here or there (`has`), and
  goes back to pending when it is in neither. Local parts that the bucket lacks (a crash between writing and
  uploading) are uploaded.

`writer_lease` keeps one machine at a time on a bucket folder: `URL/.writer.json` names the writing run and its
heartbeat (refreshed every HEARTBEAT_S seconds); another machine's run stops at once with one line naming it,
unless the heartbeat is older than STALE_S (the holder died) or the holder is a process of this host that is gone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from model import storage
from model.errors import OutputBusy

log = logging.getLogger("cook.mirror")

LEDGER_NAME = "ledger.sqlite"
SYNC_NAME = ".ledger.sync.json"  # beside the local ledger: the fingerprint of the bucket's copy it was last synced with
LEDGER_EVERY_S = 30.0  # a ledger upload at most this often while a crawl runs (it is uploaded whole)
LEASE_NAME = ".writer.json"
HEARTBEAT_S = 60.0
STALE_S = 300.0  # 5 heartbeats: a lease not refreshed for this long belongs to a dead run


def resolve_out(out: str | os.PathLike | None, source_dir: str) -> tuple[Path, str | None]:
    """(the local folder a scraper writes, its place on the data store or None) for its `--out`: the default is
    `COOK_DATA_DIR/<source_dir>`, mirrored when COOK_DATA_DIR is a URL; a URL `--out` is worked on in a local
    folder under the cache keyed by the URL."""
    from tasks.core.settings import get_settings

    s = get_settings()
    if out is None:
        return (s.data_dir / source_dir).resolve(), s.location(source_dir) if s.data_url else None
    if storage.is_remote(out):
        url = os.fspath(out).rstrip("/")
        if s.data_url and url == s.location(source_dir):
            return (s.data_dir / source_dir).resolve(), url
        return (storage.cache_dir() / "scrape" / storage.cache_key(url)).resolve(), url
    return storage.local_path(out).resolve(), None


def _fingerprint(info: dict) -> str:
    """What identifies one version of an object: its ETag where the store gives one, else its time and size."""
    tag = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or info.get("created")
    return f"{tag}:{info.get('size')}"


class Mirror:
    """The local folder `local` copied to `remote` (see the module docstring)."""

    def __init__(self, local: str | os.PathLike, remote: str, ledger_name: str = LEDGER_NAME):
        self.local = Path(local)
        self.remote = remote.rstrip("/")
        self.ledger_name = ledger_name
        self._names: set[str] | None = None  # the bucket folder's entries (listed by `start`, added to by uploads)
        self._pushed_at = float("-inf")

    def _at(self, name: str) -> str:
        return storage.join(self.remote, name)

    def _synced(self) -> str | None:
        try:
            return json.loads((self.local / SYNC_NAME).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _record(self, fingerprint: str) -> None:
        from model.atomic import atomic_write_text

        atomic_write_text(self.local / SYNC_NAME, json.dumps({"fingerprint": fingerprint}) + "\n")

    def start(self) -> dict:
        """Before the ledger is opened: take the bucket's ledger if this machine has none or an older one, and
        upload the local parts that the bucket lacks. Returns {restored, uploaded}."""
        self.local.mkdir(parents=True, exist_ok=True)
        names = self._names = set(storage.listdir(self.remote))
        ledger, restored = self.local / self.ledger_name, False
        if self.ledger_name in names:
            fingerprint = _fingerprint(storage.info(self._at(self.ledger_name)))
            if not ledger.exists() or fingerprint != self._synced():
                if ledger.exists():
                    log.warning("%s: the ledger on the store is newer than this machine's (another machine ran since): "
                                "going on from it", storage.redact(self.remote))
                for suffix in ("-wal", "-shm"):  # the old file's journal must not be replayed into the new one
                    Path(f"{ledger}{suffix}").unlink(missing_ok=True)
                storage.get_file(self._at(self.ledger_name), ledger)
                self._record(fingerprint)
                restored = True
        uploaded = [p for p in sorted(self.local.glob("*.parquet")) if p.name not in names]
        for p in uploaded:
            storage.put_file(p, self._at(p.name))
            names.add(p.name)
        return {"restored": restored, "uploaded": len(uploaded)}

    def has(self, part: str) -> bool:
        """The part is here or on the store (as listed at `start`, plus what this mirror uploaded since)."""
        if (self.local / part).is_file():
            return True
        if self._names is None:
            self._names = set(storage.listdir(self.remote))
        return part in self._names

    def push(self, part: str | os.PathLike | None, ledger, force: bool = False) -> None:
        """After a batch: its part (if any) to the store, then the ledger if LEDGER_EVERY_S have passed (or `force`)."""
        if part is not None:
            part = Path(part)
            storage.put_file(part, self._at(part.name))
            if self._names is not None:
                self._names.add(part.name)
        if force or time.monotonic() - self._pushed_at >= LEDGER_EVERY_S:
            self.push_ledger(ledger)

    def push_ledger(self, ledger) -> None:
        """A consistent snapshot of the open ledger (a SqliteFile) to `remote/ledger.sqlite`, uploaded whole."""
        base = storage.cache_dir() / "tmp"
        base.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="ledger-", suffix=".sqlite", dir=base)
        os.close(fd)
        try:
            ledger.backup(tmp)
            storage.put_file(tmp, self._at(self.ledger_name))
        finally:
            Path(tmp).unlink(missing_ok=True)
        self._record(_fingerprint(storage.info(self._at(self.ledger_name))))
        self._pushed_at = time.monotonic()


# --- one writing machine per bucket folder --------------------------------------------------------------------


def _read_lease(loc: str) -> dict | None:
    try:
        return json.loads(storage.read_text(loc))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # a torn or foreign object: nobody's lease


def _alive(holder: dict, stale_s: float) -> bool:
    """The lease's run may still be writing: heartbeat recent, and not a process of this host that is gone."""
    if time.time() - float(holder.get("heartbeat") or 0) >= stale_s:
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, TypeError, ValueError):
            pass
    return True


@contextlib.contextmanager
def writer_lease(remote: str, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S) -> Iterator[dict]:
    """Hold `remote/.writer.json` for the block: OutputBusy at once if another live run holds it; the heartbeat is
    refreshed every `heartbeat_s` in a background thread, and the lease is deleted at the end. Best effort: two
    runs that start within the same second may both pass (a Prefect server's queue, keyed by the URL, is strict)."""
    loc = storage.join(remote.rstrip("/"), LEASE_NAME)
    shown = storage.redact(remote.rstrip("/"))
    holder = _read_lease(loc)
    if holder is not None and _alive(holder, stale_s):
        age = time.time() - float(holder.get("heartbeat") or 0)
        raise OutputBusy(f"another cook run is writing {shown} (pid {holder.get('pid')} on {holder.get('host')} since "
                         f"{holder.get('started')}, last heard from {age:.0f} s ago; its lease {LEASE_NAME} there is "
                         f"free once {stale_s:.0f} s pass without a heartbeat)")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
          "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"), "heartbeat": time.time()}
    storage.write_text(loc, json.dumps(me))
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                storage.write_text(loc, json.dumps({**me, "heartbeat": time.time()}))
            except Exception as e:  # noqa: BLE001 - a missed heartbeat is retried at the next one
                log.warning("%s: lease heartbeat failed (%s)", shown, type(e).__name__)

    thread = threading.Thread(target=beat, name="cook-writer-lease", daemon=True)
    thread.start()
    try:
        yield me
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            if (_read_lease(loc) or {}).get("token") == me["token"]:
                storage.remove(loc)
