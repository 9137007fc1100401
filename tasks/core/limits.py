"""Per-host politeness limits that hold across parallel runs, as Prefect global concurrency limits.

Every request to a host goes through a `HostLimits` guard: always the run's own limits (a semaphore of
`concurrency` and a token bucket of `rate` starts per second: what one run did before), and, against a
Prefect server that has them, the host's global limits as well, shared by every run and process:

- `cook-host-<host>-concurrency`: a global concurrency limit of N slots; a request holds one while in flight.
- `cook-host-<host>-rate`: a rate limit, a global limit of 1 slot that decays at `rate` slots per second; each
  request start occupies it, so starts across all runs are at least 1/rate s apart.

`cook server-setup` creates them (`ensure_limits`). Where a Prefect API is configured but a host's limits do
not exist, the run says so once (one warning per host and process) and keeps its own limits only; on the
ephemeral API (no PREFECT_API_URL) nothing is asked of Prefect at all.
"""

from __future__ import annotations

import atexit
import contextvars
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import urlsplit

log = logging.getLogger("cook.limits")

PREFIX = "cook-host-"
LEASE_S = 60.0  # a crashed run's concurrency slot is freed after this (the API's minimum lease)
RECHECK_S = 60.0  # a host found without global limits is looked up again after this


@dataclass(frozen=True)
class Limits:
    """One host's limits: requests in flight, and request starts per second (None: no rate limit)."""

    concurrency: int
    rate: float | None


# Each scraper's endpoint setting and its own defaults (tests/test_limits.py checks they match the modules):
# wikipedia: tasks.sources.wikipedia.Crawler; britannica: tasks.sources.britannica.Crawler; YouTube's Data API: tasks.sources.youtube.DataAPI;
# youtube.com (transcripts): tasks.sources.youtube.fetch_batch, whose threads are the concurrency, and COOK_YOUTUBE_RATE_LIMIT video fetches a second.
SCRAPER_DEFAULTS: dict[str, tuple[str, Limits]] = {
    "wikipedia": ("wikipedia_api_url", Limits(4, 10.0)),
    "britannica": ("britannica_url", Limits(4, 5.0)),
    "youtube-api": ("youtube_api_url", Limits(4, 20.0)),
    "youtube": ("youtube_url", Limits(4, 2.0)),
}


def host_of(url: str) -> str:
    """The host a URL's requests count against: `host` or `host:port`, lower case, no user info."""
    u = urlsplit(url)
    host = (u.hostname or "").lower()
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"{host}:{u.port}" if u.port else host


def limit_names(host: str) -> tuple[str, str]:
    """(concurrency limit name, rate limit name) for a host; valid Prefect names (no / % & < >)."""
    slug = re.sub(r"[^a-z0-9.-]+", "-", host.lower()).strip("-") or "unknown"
    return f"{PREFIX}{slug}-concurrency", f"{PREFIX}{slug}-rate"


def default_limits(concurrency: int | None = None, rate: float | None = None) -> dict[str, Limits]:
    """{host: Limits} for every scraper endpoint in the settings (a mirror or test server's host:port too).
    Scrapers sharing a host get the stricter of their limits; `concurrency`/`rate` override every host's
    (`rate` only where the host has a rate limit)."""
    from tasks.core.settings import get_settings

    s = get_settings()
    out: dict[str, Limits] = {}
    for field, lim in SCRAPER_DEFAULTS.values():
        host = host_of(getattr(s, field))
        c = concurrency if concurrency is not None else lim.concurrency
        r = lim.rate if lim.rate is None or rate is None else rate
        if host in out:
            prev = out[host]
            c = min(c, prev.concurrency)
            r = min((x for x in (r, prev.rate) if x is not None), default=None)
        out[host] = Limits(c, r)
    return out


def ensure_limits(client: Any, hosts: dict[str, Limits]) -> list[dict]:
    """Create or update the global limits of these hosts (a sync Prefect client); idempotent. Returns one row
    per limit: {host, name, kind, limit, decay, action: created | updated | unchanged}."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectNotFound

    rows = []
    for host, lim in hosts.items():
        conc_name, rate_name = limit_names(host)
        wanted = [(conc_name, "concurrency", lim.concurrency, 0.0)]
        if lim.rate is not None:
            wanted.append((rate_name, "rate", 1, float(lim.rate)))
        for name, kind, limit, decay in wanted:
            try:
                have = client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, slot_decay_per_second=decay, active=True))
                action = "created"
            else:
                if have.limit == limit and float(have.slot_decay_per_second or 0.0) == decay and have.active:
                    action = "unchanged"
                else:
                    client.update_global_concurrency_limit(
                        name, GlobalConcurrencyLimitUpdate(limit=limit, slot_decay_per_second=decay, active=True))
                    action = "updated"
            rows.append({"host": host, "name": name, "kind": kind, "limit": limit, "decay": decay, "action": action})
        _REGISTRY.forget(host)
    return rows


class _Registry:
    """Which hosts have global limits on the Prefect server, looked up once per host and process (a missing
    one again after RECHECK_S); warns once per host when they are missing or cannot be used."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, tuple[bool, bool, float]] = {}  # host -> (has concurrency, has rate, checked at)
        self._warned: set[tuple[str, str]] = set()

    def forget(self, host: str | None = None) -> None:
        """Look the host (every host) up again, and warn again if need be."""
        with self._lock:
            for h in [host] if host else list(self._known):
                self._known.pop(h, None)
            self._warned = {w for w in self._warned if host is not None and w[0] != host}

    def lookup(self, host: str, api_url: str, need_rate: bool) -> tuple[bool, bool]:
        """(concurrency limit exists, rate limit exists) for the host; run in the caller's Prefect context."""
        with self._lock:
            known = self._known.get(host)
            if known and ((known[0] and (known[1] or not need_rate)) or time.monotonic() - known[2] < RECHECK_S):
                return known[0], known[1]
        from prefect.exceptions import ObjectNotFound

        names = limit_names(host)
        found = [False, False]
        try:
            client = _client()
            for i, name in enumerate(names):
                try:
                    client.read_global_concurrency_limit_by_name(name)
                    found[i] = True
                except ObjectNotFound:
                    pass
        except Exception as e:  # noqa: BLE001 - an unreachable API must not stop a crawl
            self.warn(host, "error", f"cannot read the global limits of {host} from the Prefect API at {api_url} "
                                     f"({type(e).__name__}): this run keeps its own limits for {host}")
        else:
            missing = [n for n, ok, wanted in zip(names, found, (True, need_rate)) if wanted and not ok]
            if missing:
                self.warn(host, "missing", f"no global limit {' or '.join(missing)} on the Prefect server: this run keeps "
                                           f"its own limits for {host} only; run `cook server-setup` to share them across runs")
        with self._lock:
            self._known[host] = (found[0], found[1], time.monotonic())
        return found[0], found[1]

    def lost(self, host: str, error: Exception) -> None:
        """A global limit failed mid-run (deleted, unreachable): drop it, say so once."""
        with self._lock:
            self._known[host] = (False, False, time.monotonic())
        self.warn(host, "lost", f"the global limits of {host} cannot be used ({str(error).splitlines()[0] if str(error) else type(error).__name__}): "
                                f"this run keeps its own limits for {host}")

    def warn(self, host: str, kind: str, message: str) -> None:
        with self._lock:
            if (host, kind) in self._warned:
                return
            self._warned.add((host, kind))
        try:
            from prefect import get_run_logger

            get_run_logger().warning(message)
        except Exception:  # noqa: BLE001 - outside a run
            log.warning(message)


_REGISTRY = _Registry()


def forget(host: str | None = None) -> None:
    """Look this host's (every host's) global limits up again on its next request, and warn again if missing."""
    _REGISTRY.forget(host)


class RateLimiter:
    """Start at most `rate` requests per second: a token bucket of one token, so starts are `1/rate` s apart
    (any window of w seconds holds at most w*rate + 1 starts). `pause(s)` holds every start back (Retry-After)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)


class HostLimits:
    """The politeness guard around each request: `with limits.slot(url): send it`.

    Always this client's own limits (at most `concurrency` in flight, starts at most `rate` per second;
    `limiter.pause(s)` holds every start back), plus the host's global limits on a configured Prefect server.
    Thread-safe. The Prefect context where the guard is made (settings, flow or task run) is used for its
    calls from the worker threads that send the requests, so its warnings land in that run's logs.
    """

    def __init__(self, concurrency: int, rate: float | None):
        self.concurrency = concurrency
        self.limiter = RateLimiter(rate) if rate else None
        self._slots = threading.BoundedSemaphore(concurrency)
        self._context = contextvars.copy_context()
        self._api_url = self._context.run(_api_url)

    @contextmanager
    def slot(self, url: str) -> Iterator[None]:
        with self._slots:
            if self._api_url is None:  # ephemeral API: this process's limits only
                if self.limiter is not None:
                    self.limiter.acquire()
                yield
                return
            host = host_of(url)
            ctx = self._context.copy()  # one copy per request: worker threads cannot share one Context
            lease = ctx.run(self._acquire, host)
            try:
                yield
            finally:
                self._release(host, ctx, lease)

    def _acquire(self, host: str) -> str | None:
        """A global concurrency slot (its lease id), then this client's rate, then the global rate (in that order,
        so starts stay spaced after a wait). Each call to the API under the host's lock; a full limit (423 and its
        Retry-After) is waited for outside it, so this process's releases go on."""
        has_conc, has_rate = _REGISTRY.lookup(host, self._api_url or "", self.limiter is not None)
        conc_name, rate_name = limit_names(host)
        lock = _api_lock(host)
        lease = None
        if has_conc:
            lease, ok = _take(lock, host, lambda c: c.increment_concurrency_slots_with_lease(
                names=[conc_name], slots=1, mode="concurrency", lease_duration=LEASE_S).json()["lease_id"])
            has_rate = has_rate and ok
        if self.limiter is not None:
            self.limiter.acquire()
            if has_rate:  # a rate slot frees itself with time: this wait ends without anyone's release
                _take(lock, host, lambda c: c.increment_concurrency_slots(names=[rate_name], slots=1, mode="rate_limit"))
        return lease

    def _release(self, host: str, ctx: contextvars.Context, lease: str | None) -> None:
        if lease is None:
            return
        try:
            with _api_lock(host):
                ctx.run(lambda: _client().release_concurrency_slots_with_lease(lease))
        except Exception as e:  # noqa: BLE001 - the slot's lease then expires on the server by itself
            _REGISTRY.lost(host, e)


def _take(lock: threading.Lock, host: str, call) -> tuple[Any, bool]:
    """`call(client)` until the limit has room: (its result, True); (None, False) when the limit cannot be used,
    or stayed full for COOK_LIMIT_WAIT_S (slots held by a stuck run): then the run keeps its own limits for the
    host, says so once, and looks the limits up again after RECHECK_S."""
    from tasks.core.settings import get_settings

    patience = float(get_settings().limit_wait_s)
    give_up = time.monotonic() + patience
    while True:
        with lock:
            try:
                return call(_client()), True
            except Exception as e:  # noqa: BLE001 - full, deleted, or the API is gone
                wait = _full_for(e)
                if wait is None:  # keep crawling politely, on this client's limits
                    _REGISTRY.lost(host, e)
                    return None, False
        left = give_up - time.monotonic()
        if left <= 0:
            _REGISTRY.lost(host, TimeoutError(f"full for {patience:g} s (COOK_LIMIT_WAIT_S)"))
            return None, False
        time.sleep(min(wait, left))


# One Prefect client per process and API for the slot calls: a fresh client per call would cost a connection and
# a CSRF-token request each time (tens of ms on every release).
_CLIENTS: dict[tuple[int, str], Any] = {}
_CLIENTS_GUARD = threading.Lock()


def _client():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    key = (os.getpid(), PREFECT_API_URL.value() or "")
    with _CLIENTS_GUARD:
        client = _CLIENTS.get(key)
        if client is None:
            client = _CLIENTS[key] = get_client(sync_client=True).__enter__()
            atexit.register(client.__exit__, None, None, None)
        return client


# One call to the Prefect API per host at a time from this process: a SQLite-backed server answers concurrent
# writes with 503 (database is locked), which its client retries only after 2 s or more.
_API_LOCKS: dict[str, threading.Lock] = {}
_API_LOCKS_GUARD = threading.Lock()


def _api_lock(host: str) -> threading.Lock:
    with _API_LOCKS_GUARD:
        return _API_LOCKS.setdefault(host, threading.Lock())


def _full_for(error: Exception) -> float | None:
    """Seconds to wait when an acquisition found the limit full (HTTP 423 and its Retry-After), else None."""
    response = getattr(error, "response", None) or getattr(error.__cause__, "response", None)
    if getattr(response, "status_code", None) != 423:
        return None
    try:
        return min(max(float(response.headers.get("Retry-After", 1.0)), 0.05), 30.0)
    except ValueError:
        return 1.0





def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None
