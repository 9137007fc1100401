"""Polite HTTP for every scraper: a descriptive User-Agent, bounded concurrency, a rate limit, timeouts,
and retries with exponential backoff and jitter that honour Retry-After (429, 503, and answers a parser
asks to retry, such as MediaWiki's maxlag).

Guards on every request of a `PoliteClient`'s httpx client (event hooks, so they also hold for code that calls
`client.http` directly, such as YouTube's DataAPI, and behind a proxy):

- a size cap (`COOK_MAX_RESPONSE_MB`, decoded bytes) and an overall deadline per response
  (`COOK_RESPONSE_DEADLINE_S`, on top of httpx's per-read timeout): a huge or trickling answer cannot hold a worker;
- secret headers (an API key) never follow a redirect to another origin: the request is refused instead;
- a warning, once per host and process, when `COOK_USER_AGENT` is still the placeholder on a real public host;
- connection-level failures counted per host (tasks/core/health.py): after `COOK_MAX_CONNECT_FAILURES` in a row,
  `get` raises `SourceUnavailable` naming the host and its setting, for every worker of the process.
"""

from __future__ import annotations

import contextvars
import email.utils
import logging
import random
import threading
import time
import zlib
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import httpx

from tasks.core import health
from tasks.core.limits import HostLimits, host_of

log = logging.getLogger("cook.http")

RETRY_STATUS = {429, 500, 502, 503, 504}
# headers that are never secret; any other header given to a client is, unless it names its `secret_headers`
PUBLIC_HEADERS = frozenset({"user-agent", "accept", "accept-encoding", "accept-language"})
# public sites whose operators ask for a User-Agent that names the bot and a contact
NAMED_UA_DOMAINS = ("wikipedia.org", "wikimedia.org", "britannica.com", "googleapis.com", "youtube.com")
_ORIGIN, _SENT, _ANSWERED = "cook_origin", "cook_sent", "cook_answered"  # our keys in request.extensions


class FetchError(Exception):
    """A request that still failed after every retry, or an answer that retrying cannot fix."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


class ResponseTooLarge(FetchError):
    """An answer over the size cap: not retried."""


class ResponseTooSlow(FetchError):
    """An answer not complete within the overall deadline: retried like a timeout."""


class RedirectRefused(FetchError):
    """A redirect that would carry a secret header to another origin: not followed."""


class Retry(Exception):
    """Raised by a response parser: try again (after `after` seconds, if the server said so)."""

    def __init__(self, reason: str, after: float | None = None):
        super().__init__(reason)
        self.after = after


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def origin(url: httpx.URL | str) -> str:
    """scheme://host:port, the unit a secret header is bound to."""
    u = httpx.URL(str(url))
    port = u.port or {"http": 80, "https": 443}.get(u.scheme)
    return f"{u.scheme}://{u.host}:{port}"


def needs_named_user_agent(url: httpx.URL | str) -> bool:
    """A real Wikimedia, Britannica or Google host (never a loopback or test host)."""
    host = (httpx.URL(str(url)).host or "").lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in NAMED_UA_DOMAINS)


_warned_ua: set[str] = set()
_warned_lock = threading.Lock()


class _Guarded(httpx.SyncByteStream):
    """A response body that stops at `max_bytes` (raw and, for gzip/deflate, decoded; counted without
    inflating more than the cap) and at a monotonic `deadline`, checked at every chunk (a chunk's own wait
    is bounded by the per-read timeout)."""

    def __init__(self, inner: httpx.SyncByteStream, url: str, max_bytes: int, deadline: float, deadline_s: float,
                 encoding: str):
        self._inner, self.url, self.max_bytes, self.deadline, self.deadline_s = inner, url, max_bytes, deadline, deadline_s
        self._inflate = zlib.decompressobj(32 + zlib.MAX_WBITS) if encoding in ("gzip", "x-gzip", "deflate") else None

    def __iter__(self) -> Iterator[bytes]:
        raw = decoded = 0
        for chunk in self._inner:
            raw += len(chunk)
            if self._inflate is not None:
                try:  # at most cap+1 bytes out: a bomb is stopped without inflating it
                    decoded += len(self._inflate.decompress(chunk, self.max_bytes + 1 - decoded))
                except zlib.error:  # httpx's own decoder reports a corrupt body
                    self._inflate = None
            if max(raw, decoded) > self.max_bytes:
                raise ResponseTooLarge(f"{self.url}: the answer is over the size cap of {_mib(self.max_bytes)} "
                                       f"(COOK_MAX_RESPONSE_MB)", code="too_large")
            if time.monotonic() > self.deadline:
                raise ResponseTooSlow(f"{self.url}: no complete answer within {self.deadline_s:g} s "
                                      f"(COOK_RESPONSE_DEADLINE_S)", code="too_slow")
            yield chunk

    def close(self) -> None:
        self._inner.close()


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


class PoliteClient:
    """GET within a host's concurrency and rate limits, with retries. Thread-safe: share one per host. On a
    Prefect server, also within the host's limits shared by every run (`cook server-setup`, tasks/core/limits.py).

    `get(url, params, parse)` returns `parse(response)` (default: the response itself); `parse` may raise
    `Retry` to have the request tried again. Raises FetchError once `retries` are spent, or at once for
    an HTTP error that retrying cannot fix (4xx other than 429), an answer over the size cap, or a refused
    redirect; raises SourceUnavailable once the host is found down (health.py), leaving the caller's item pending.

    `secret_headers`: names among `headers` that must never leave their origin (default: every header given
    other than User-Agent/Accept*). `max_bytes` / `deadline_s`: the size cap and overall deadline per response
    (default: the settings).
    """

    def __init__(self, *, user_agent: str | None = None, concurrency: int = 4, rate_limit: float = 10.0,
                 timeout: float = 30.0, retries: int = 6, backoff: float = 0.5, max_wait: float = 120.0,
                 headers: dict[str, str] | None = None, secret_headers: Iterable[str] | None = None,
                 max_bytes: int | None = None, deadline_s: float | None = None):
        from tasks.core.settings import get_settings

        s = get_settings()
        self.concurrency = concurrency
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        self.max_bytes = int(max_bytes if max_bytes is not None else s.max_response_mb * 2**20)
        self.deadline_s = float(deadline_s if deadline_s is not None else s.response_deadline_s)
        headers = dict(headers or {})
        names = [h for h in headers if h.lower() not in PUBLIC_HEADERS] if secret_headers is None else secret_headers
        self._secret_names = {h.lower(): h for h in names}  # as the caller spelled them, for messages
        self.secret_headers = frozenset(self._secret_names)
        self._placeholder_ua = type(s).model_fields["user_agent"].default
        self._context = contextvars.copy_context()  # for warnings from worker threads (into the run's logs)
        # this client's own limits, plus each host's global limits on a Prefect server (tasks/core/limits.py)
        self.limits = HostLimits(concurrency, rate_limit)
        self.limiter = self.limits.limiter
        self.http = httpx.Client(
            headers={"User-Agent": user_agent or s.user_agent, "Accept-Encoding": "gzip", **headers},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=True,
            event_hooks={"request": [self._on_request], "response": [self._on_response]},
        )
        self.stats = {"requests": 0, "retries": 0}

    def close(self) -> None:
        self.http.close()

    # --- guards on every request (httpx event hooks) -----------------------------------------------

    def _on_request(self, request: httpx.Request) -> None:
        """Before each request, redirect hops included: refuse to carry a secret to another origin; warn about a
        placeholder User-Agent on a real host."""
        here = origin(request.url)
        first = request.extensions.setdefault(_ORIGIN, here)  # a redirect hop inherits the first request's extensions
        if first != here:
            carried = sorted(self._secret_names[h] for h in self.secret_headers if h in request.headers)
            if carried:
                raise RedirectRefused(f"{first} redirects to {here}: refusing to send {', '.join(carried)} to "
                                      f"another origin", code="redirect_refused")
        request.extensions[_SENT] = time.monotonic()
        if request.headers.get("User-Agent") == self._placeholder_ua and needs_named_user_agent(request.url):
            self._warn_placeholder_ua(request.url.host)

    def _on_response(self, response: httpx.Response) -> None:
        """Headers came: the host is alive; bound the body by size and time."""
        request = response.request
        request.extensions[_ANSWERED] = True
        url = str(request.url.copy_with(query=None))
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            response.close()
            raise ResponseTooLarge(f"{url}: the answer ({_mib(int(length))}) is over the size cap of "
                                   f"{_mib(self.max_bytes)} (COOK_MAX_RESPONSE_MB)", code="too_large")
        start = request.extensions.get(_SENT, time.monotonic())
        response.stream = _Guarded(response.stream, url, self.max_bytes, start + self.deadline_s, self.deadline_s,
                                   response.headers.get("Content-Encoding", "").strip().lower())

    def _warn_placeholder_ua(self, host: str) -> None:
        with _warned_lock:
            if host in _warned_ua:
                return
            _warned_ua.add(host)
        message = (f"COOK_USER_AGENT is still the placeholder {self._placeholder_ua!r}: set it to name you and a "
                   f"contact (URL or e-mail) before crawling {host}, whose operators ask for one")
        for ctx in (contextvars.copy_context(), self._context.copy()):  # this thread's run, else the creator's
            try:
                ctx.run(_run_warning, message)
                return
            except Exception:  # noqa: BLE001 - outside a run
                continue
        log.warning(message)

    # --- requests ----------------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        return min(self.max_wait, self.backoff * 2**attempt) * (0.5 + random.random())  # exponential, jittered

    def _hold(self, after: float) -> float:
        """Every request waits `after` (capped); this one also adds jitter."""
        after = min(self.max_wait, after)
        self.limiter.pause(after)
        return after + random.random() * self.backoff

    def get(self, url: str, params: dict | None = None, parse: Callable[[httpx.Response], Any] | None = None) -> Any:
        reason = ""
        for attempt in range(self.retries + 1):
            health.check(url)  # found down by any worker: stop now, the item stays pending
            wait = self._backoff(attempt)
            unreachable = False
            with self.limits.slot(url):  # at most `concurrency` in flight, each start within the rate
                self.stats["requests"] += 1
                try:
                    r = self.http.get(url, params=params)
                except ResponseTooSlow as e:
                    reason, r = str(e), None
                except FetchError:  # over the size cap, or a refused redirect: retrying cannot fix it
                    raise
                except httpx.TooManyRedirects as e:
                    raise FetchError(f"{url}: {e}", code="redirects") from None
                except httpx.DecodingError as e:
                    reason, r = f"undecodable body ({e})", None
                except httpx.TimeoutException as e:
                    reason, r, unreachable = f"timed out ({type(e).__name__})", None, not _answered(e)
                except httpx.TransportError as e:  # DNS, refused, TLS, reset, incomplete body
                    reason, r, unreachable = f"{type(e).__name__}: {e}", None, not _answered(e)
            if unreachable:
                health.failed(url, reason)  # raises SourceUnavailable at the limit
            else:
                health.ok(url)
            if r is not None:
                if r.status_code in RETRY_STATUS:
                    reason = f"HTTP {r.status_code}"
                    after = retry_after(r.headers.get("Retry-After"))
                    if after is not None:
                        wait = self._hold(after)
                elif r.status_code >= 400:
                    raise FetchError(f"HTTP {r.status_code} from {url}", code=str(r.status_code))
                else:
                    try:
                        return parse(r) if parse is not None else r
                    except Retry as e:
                        reason = str(e)
                        if e.after is not None:
                            wait = self._hold(e.after)
            if attempt < self.retries:
                self.stats["retries"] += 1
                time.sleep(wait)
        raise FetchError(f"{host_of(url)}: {reason} (after {self.retries + 1} tries)")


def _run_warning(message: str) -> None:
    from prefect import get_run_logger

    get_run_logger().warning(message)  # raises outside a run


def _answered(error: httpx.RequestError) -> bool:
    """Whether the failed request got as far as an answer's headers (then the host is alive)."""
    try:
        return bool(error.request.extensions.get(_ANSWERED))
    except RuntimeError:  # no request attached
        return False
