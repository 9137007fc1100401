"""One writer per output folder: every stage that writes a folder holds that folder's lock for the whole write.

    @flow(...)
    @one_writer
    def some_flow(..., out=None):
        check the arguments                # bad input is refused before anything is locked or created
        hold_output(out_dir)               # refused at once (OutputBusy, exit 4) or, on a Prefect server, waits its turn
        ... clean up, then write ...       # so start-up clean-up only ever meets this run's own leftovers

- A file lock (`filelock`: flock(2) on Unix), taken without waiting: `OUT/.cook.lock` in a folder written in place
  (the scrapers, unparquet, a training run), or `PARENT/.NAME.lock` beside a folder that is replaced whole by a
  rename (merge, tokenize, wiki-dump: `model.atomic.atomic_dir`), so that the lock outlives the rename. Beside it,
  `<lock>.info` names the holder (pid, host, start time, flow run). A second writer fails at once with one line:
  "another cook run is writing OUT (pid N on HOST since T)". The kernel drops a flock when its process dies, so a
  crashed run's lock is simply taken by the next run, whatever its stale `.info` file says.
- On a Prefect server (PREFECT_API_URL set), first a global concurrency limit of 1 slot named after the folder
  (`limit_name`: `cook-out-<name>-<hash>`, created if missing): runs of one folder from any deployment (`default`,
  `nightly`) queue there, and the waiting run says in its log that it waits, and for whom. The slot is a lease of
  LEASE_S seconds, renewed in a background thread while the run goes on (the client's lease calls, as
  `tasks/core/limits.py` uses them: Prefect's own `concurrency()` hides the lease id and logs an ERROR for every
  full-limit answer). A run killed without a goodbye leaves its lease id in its `.info` file: the next run on this
  host sees the process is gone and gives the slot back at once. Otherwise a server's repossessor service frees it
  once the lease runs out (a temporary server, as in the tests, runs no such service).

An output on object storage (a URL, model/storage.py) has no folder to hold a lock file: its lock file is local,
`<cache>/locks/<name>-<hash of the URL>.lock` (COOK_CACHE_DIR), so it keeps one writer per URL among the runs of
this machine only. Runs on several machines writing one URL need the Prefect server's queue above, which is keyed
by the URL as well (the slot is the same for every machine that reports to that server).

The lock files have hidden names: folder readers skip them (`tasks.corpus.documents.expand_inputs`) and
`model.atomic.clean_stale_temps` leaves them alone (it removes `.*.tmp` and `.*.old-*` only).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from filelock import FileLock, Timeout

from model import storage
from model.atomic import atomic_write_text, clean_stale_temps
from model.errors import CookError, OutputBusy

log = logging.getLogger("cook.lock")

LOCK_NAME = ".cook.lock"  # inside a folder written in place
INFO_SUFFIX = ".info"  # beside the lock file: who holds it
LIMIT_PREFIX = "cook-out-"
LEASE_S = 60.0  # the server-side slot of a run that died unannounced is free again after this

F = TypeVar("F", bound=Callable)


# --- where ---------------------------------------------------------------------------------------------


def canonical(out: str | os.PathLike) -> Path | str:
    """The folder's absolute path, its parent's symlinks resolved (the folder itself may not exist yet); a URL
    as it may be shown (no credentials, no trailing slash)."""
    if storage.is_remote(out):
        return storage.redact(out).rstrip("/")
    p = Path(out).expanduser().absolute()
    return p.parent.resolve() / p.name


def lock_path(out: str | os.PathLike, replaced: bool = False) -> Path:
    """The lock file of `out`: inside it, or beside it when the folder is replaced whole by a rename; for a URL,
    a local file under the cache keyed by the URL (one writer per URL on this machine)."""
    out = canonical(out)
    if isinstance(out, str):
        return storage.cache_dir() / "locks" / f".{storage.cache_key(out)}.lock"
    return out.parent / f".{out.name}.lock" if replaced else out / LOCK_NAME


def info_path(lock: Path) -> Path:
    return lock.with_name(lock.name + INFO_SUFFIX)


def limit_name(out: str | os.PathLike) -> str:
    """The Prefect global concurrency limit of `out`: `cook-out-<folder name>-<hash of its path>`."""
    out = canonical(out)
    slug = re.sub(r"[^a-z0-9]+", "-", storage.name(out).lower()).strip("-")[:40] or "root"
    return f"{LIMIT_PREFIX}{slug}-{hashlib.sha256(str(out).encode()).hexdigest()[:10]}"


# --- who -----------------------------------------------------------------------------------------------


def read_holder(lock: Path) -> dict | None:
    """The holder's info ({pid, host, since, flow_run, out}) as its `.info` file says, or None."""
    try:
        info = json.loads(info_path(lock).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and "pid" in info else None


def _alive_here(info: dict) -> bool:
    """False only for a holder on this host whose process is gone (a stale `.info` file)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True
    return True


def _current_holder(lock: Path, wait_s: float = 1.0) -> dict | None:
    """The live holder's info. A new holder writes it just after taking the lock, so a missing or stale file is
    read again for up to `wait_s` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        info = read_holder(lock)
        if (info is not None and _alive_here(info)) or time.monotonic() >= deadline:
            return info
        time.sleep(0.05)


def describe(info: dict | None, flow_run: bool = False) -> str:
    """`pid N on HOST since T` (`flow run NAME, ` before it if asked and known)."""
    if not info:
        return "its pid, host and start time are not known"
    run = f"flow run {info['flow_run']!r}, " if flow_run and info.get("flow_run") else ""
    return f"{run}pid {info.get('pid')} on {info.get('host')} since {info.get('since')}"


def _flow_run() -> tuple[str | None, str | None]:
    """(id, name) of the Prefect flow run this code runs in, or (None, None)."""
    try:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is not None and ctx.flow_run is not None:
            return str(ctx.flow_run.id), ctx.flow_run.name
    except Exception:  # noqa: BLE001 - outside Prefect
        pass
    return None, None


def _logger():
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run
        return log


# --- the file lock -------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(out: str | os.PathLike, replaced: bool = False, lease_id: str | None = None) -> Iterator[Path]:
    """Hold `out`'s file lock for the block, or raise OutputBusy at once naming the holder; yields the lock path.
    `lease_id`: the server slot this run holds, written into the `.info` file so that a later run can give it back
    should this process die."""
    out = canonical(out)
    path = lock_path(out, replaced)
    lock = FileLock(str(path), timeout=0)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire(blocking=False)
    except Timeout:
        raise OutputBusy(f"another cook run is writing {out} ({describe(_current_holder(path))})") from None
    except OSError as e:
        raise CookError(f"cannot lock {out}: {e.strerror or e} ({path})") from None
    try:
        run_id, run_name = _flow_run()
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "flow_run": run_name, "flow_run_id": run_id, "out": str(out), "lease_id": lease_id}
        atomic_write_text(info_path(path), json.dumps(info, indent=1) + "\n")
        yield path
    finally:
        try:
            with contextlib.suppress(FileNotFoundError):
                info_path(path).unlink()
        finally:
            lock.release()


# --- the server's queue --------------------------------------------------------------------------------


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _ensure_limit(client, name: str) -> None:
    """Create the limit (1 slot) if missing; set it back to 1 active slot if someone changed it."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    try:
        have = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1, active=True))
        except Exception:  # noqa: BLE001 - another run created it at the same moment: read it below
            pass
        have = client.read_global_concurrency_limit_by_name(name)
    if have.limit != 1 or not have.active:
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=1, active=True))


HOLDER_INFO_WAIT_S = 3.0  # how long a waiting run looks for the holder's info before saying it waits on "a run"


def _full_for(error: BaseException) -> float | None:
    """Seconds to wait when an acquisition found the limit full (HTTP 423 and its Retry-After, kept within
    0.5-5 s), else None."""
    response = getattr(error, "response", None)
    if getattr(response, "status_code", None) != 423:
        return None
    try:
        return min(max(float(response.headers.get("Retry-After", 1.0)), 0.5), 5.0)
    except ValueError:
        return 1.0


def _take_slot(client, name: str, out: Path, lock: Path, logger) -> str:
    """The limit's one slot, as a lease id: at once if free, else after saying once that this run waits, and for
    whom. A slot whose holder is known dead (its `.info` names a process of this host that is gone, and the
    lease it held) is given back at once rather than after its lease runs out."""
    from uuid import UUID

    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    run_id, _ = _flow_run()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=UUID(run_id)) if run_id else None
    said, released = False, set()
    first_full = None  # when the limit was first found full
    while True:
        try:
            answer = client.increment_concurrency_slots_with_lease(names=[name], slots=1, mode="concurrency",
                                                                   lease_duration=LEASE_S, holder=holder).json()
            if not answer.get("limits"):
                raise CookError(f"the global concurrency limit {name} is gone")
            if said:
                logger.info("%s is free: this run writes it now", out)
            return str(answer["lease_id"])
        except Exception as e:  # noqa: BLE001
            wait = _full_for(e)
            if wait is None:
                raise
        info = read_holder(lock)
        stale = info.get("lease_id") if info and not _alive_here(info) else None
        if stale and stale not in released:
            released.add(stale)
            with contextlib.suppress(Exception):  # already expired or given back
                client.release_concurrency_slots_with_lease(UUID(stale))
            logger.info("%s: the run that held it (%s) is gone; its slot is given back", out, describe(info))
            continue
        first_full = first_full or time.monotonic()
        # the holder takes the slot, then writes its info: give it a moment, so the line can name it
        if not said and (info or time.monotonic() - first_full >= HOLDER_INFO_WAIT_S):
            whom = describe(info, flow_run=True) if info else "a run on the Prefect server"
            logger.info("waiting for %s: another cook run is writing it (%s); this run goes on when that one ends "
                        "(global concurrency limit %s)", out, whom, name)
            said = True
        time.sleep(wait if said else min(wait, 0.25))


def _renew(lease: str, stop: threading.Event, logger) -> None:
    """Renew the lease every LEASE_S / 2 seconds until `stop`; a failed renewal is logged, and the run goes on."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(LEASE_S / 2):
            try:
                client.renew_concurrency_lease(UUID(lease), LEASE_S)
            except Exception as e:  # noqa: BLE001 - the file lock still keeps one writer on this machine
                logger.warning("could not renew this run's slot of its output folder's global concurrency limit (%s): "
                               "another deployment's run may start and then stop at the file lock",
                               str(e).splitlines()[0] if str(e) else type(e).__name__)


@contextlib.contextmanager
def server_queue(out: str | os.PathLike, replaced: bool = False) -> Iterator[str | None]:
    """On a Prefect server: hold `out`'s global concurrency slot for the block (a lease, renewed in a background
    thread), waiting while another run has it; yields the lease id. A limit that cannot be used leaves a warning
    and yields None: the file lock alone then keeps one writer."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    out = canonical(out)
    name = limit_name(out)
    logger = _logger()
    with get_client(sync_client=True) as client:
        try:
            _ensure_limit(client, name)
            lease = _take_slot(client, name, out, lock_path(out, replaced), logger)
        except Exception as e:  # noqa: BLE001 - the API refused or is unreachable: fall back to the file lock alone
            logger.warning("cannot use the global concurrency limit %s on the Prefect server (%s): only the file lock "
                           "keeps one writer on %s", name, str(e).splitlines()[0] if str(e) else type(e).__name__, out)
            lease = None
        if lease is None:
            yield None
            return
        stop = threading.Event()
        renewer = threading.Thread(target=contextvars.copy_context().run, args=(_renew, lease, stop, logger),
                                   name="cook-output-lease", daemon=True)
        renewer.start()
        try:
            yield lease
        finally:
            stop.set()
            renewer.join(timeout=10)
            try:
                client.release_concurrency_slots_with_lease(UUID(lease))
            except Exception as e:  # noqa: BLE001 - the slot then frees itself when its lease runs out
                logger.warning("could not give back the slot of %s (%s): it frees itself within %d s", name,
                               str(e).splitlines()[0] if str(e) else type(e).__name__, int(LEASE_S))


# --- both ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, replaced: bool = False) -> Iterator[Path]:
    """Hold `out` for the block: on a Prefect server its queue first (wait your turn), then its file lock
    (refused at once, OutputBusy, if another process holds it). Yields the lock file's path."""
    with contextlib.ExitStack() as stack:
        lease = stack.enter_context(server_queue(out, replaced)) if _api_url() else None
        yield stack.enter_context(file_lock(out, replaced, lease))


_HELD: contextvars.ContextVar[contextlib.ExitStack | None] = contextvars.ContextVar("cook_output_locks", default=None)


def one_writer(fn: F) -> F:
    """Decorator for a flow function (under `@flow`): the locks its body takes with `hold_output` are released
    when it returns or raises."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return _call_holding(fn, args, kwargs)

    return wrapper  # type: ignore[return-value]


def _call_holding(fn: Callable, args: tuple, kwargs: dict):
    """`fn(*args, **kwargs)` with a fresh stack for `hold_output`. Module-level, so that the wrapper refers to no
    ContextVar itself: a Dask task runner cloudpickles the flow function by value, and a ContextVar cannot be."""
    with contextlib.ExitStack() as stack:
        token = _HELD.set(stack)
        try:
            return fn(*args, **kwargs)
        finally:
            _HELD.reset(token)


def hold_output(out: str | os.PathLike, replaced: bool = False) -> Path:
    """Take `out`'s lock (see `output_lock`) until the `@one_writer` function that calls this ends."""
    stack = _HELD.get()
    if stack is None:
        raise RuntimeError("hold_output() is for the body of a function decorated with @one_writer")
    return stack.enter_context(output_lock(out, replaced))


# --- start-up clean-up beside a replaced folder ---------------------------------------------------------


def clean_stale_beside(out: str | os.PathLike) -> int:
    """Remove what a crashed `atomic_dir(out)` left beside `out` (`.NAME.XXXXXXXX.tmp`, `.NAME.old-PID`), and
    nothing of other folders in the same parent; for a URL, the temp prefixes of `storage.staged_dir`. Call it
    while holding `out`'s lock. Returns how many."""
    if storage.is_remote(out):
        base = str(out).rstrip("/")
        own = re.compile(rf"\.{re.escape(storage.name(base))}\.(?:[a-z0-9_]+\.tmp|old-\d+)")
        return storage.clean_stale(storage.parent(base), own.fullmatch)
    out = canonical(out)
    own = re.compile(rf"\.{re.escape(out.name)}\.(?:[a-z0-9_]+\.tmp|old-\d+)")
    return clean_stale_temps(out.parent, own.fullmatch)
