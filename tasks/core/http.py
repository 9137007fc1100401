"""Polite HTTP for every scraper: a descriptive User-Agent, bounded concurrency, a rate limit, timeouts,
and retries with exponential backoff and jitter that honour Retry-After (429, 503, and answers a parser
asks to retry, such as MediaWiki's maxlag).
"""

from __future__ import annotations

import email.utils
import random
import time
from datetime import datetime, timezone
from typing import Any, Callable

import httpx

from tasks.core.limits import HostLimits

RETRY_STATUS = {429, 500, 502, 503, 504}


class FetchError(Exception):
    """A request that still failed after every retry, or an answer that retrying cannot fix."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code


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


class PoliteClient:
    """GET within a host's concurrency and rate limits, with retries. Thread-safe: share one per host. On a
    Prefect server, also within the host's limits shared by every run (`cook server-setup`, tasks/core/limits.py).

    `get(url, params, parse)` returns `parse(response)` (default: the response itself); `parse` may raise
    `Retry` to have the request tried again. Raises FetchError once `retries` are spent, or at once for
    an HTTP error that retrying cannot fix (4xx other than 429).
    """

    def __init__(self, *, user_agent: str | None = None, concurrency: int = 4, rate_limit: float = 10.0,
                 timeout: float = 30.0, retries: int = 6, backoff: float = 0.5, max_wait: float = 120.0,
                 headers: dict[str, str] | None = None):
        from tasks.core.settings import get_settings

        self.concurrency = concurrency
        self.retries, self.backoff, self.max_wait = retries, backoff, max_wait
        # this client's own limits, plus each host's global limits on a Prefect server (tasks/core/limits.py)
        self.limits = HostLimits(concurrency, rate_limit)
        self.limiter = self.limits.limiter
        self.http = httpx.Client(
            headers={"User-Agent": user_agent or get_settings().user_agent, "Accept-Encoding": "gzip", **(headers or {})},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=True,
        )
        self.stats = {"requests": 0, "retries": 0}

    def close(self) -> None:
        self.http.close()

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
            wait = self._backoff(attempt)
            with self.limits.slot(url):  # at most `concurrency` in flight, each start within the rate
                self.stats["requests"] += 1
                try:
                    r = self.http.get(url, params=params)
                except httpx.TimeoutException as e:
                    reason, r = f"timed out ({type(e).__name__})", None
                except httpx.TransportError as e:  # refused, reset, incomplete body
                    reason, r = f"{type(e).__name__}: {e}", None
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
        raise FetchError(f"{reason} (after {self.retries + 1} tries)")
