"""Fail fast on a dead host: connection-level failures in a row, counted per host across every client of the process.

A connection-level failure is one where no HTTP answer came back: DNS, refused, reset, TLS, timeout. Any answer,
even a 503, resets the count. After `COOK_MAX_CONNECT_FAILURES` (5) in a row, `failed()` raises
`SourceUnavailable` naming the host and the setting that points at it; so does every later `check()` for that
host in this process until something resets it, so the crawl's other workers stop too and leave their items pending.
"""

from __future__ import annotations

import threading

from model.errors import SourceUnavailable
from tasks.core.limits import host_of

_lock = threading.Lock()
_streak: dict[str, int] = {}
_down: dict[str, str] = {}  # host -> the message that stopped it


def setting_for(url: str) -> str | None:
    """The COOK_ setting whose URL names this URL's host, e.g. COOK_WIKIPEDIA_API_URL (None when no setting does)."""
    from tasks.core.settings import get_settings

    s = get_settings()
    host = host_of(url)
    for field in ("wikipedia_api_url", "wikipedia_dumps_url", "britannica_url", "youtube_api_url", "youtube_url", "hf_endpoint"):
        if host_of(getattr(s, field)) == host:
            return f"COOK_{field.upper()}"
    return None


def limit() -> int:
    from tasks.core.settings import get_settings

    return max(1, int(get_settings().max_connect_failures))


def check(url: str) -> None:
    """Raise SourceUnavailable when this URL's host was found down in this process."""
    message = _down.get(host_of(url))
    if message is not None:
        raise SourceUnavailable(message)


def ok(url: str) -> None:
    """An answer came back from this URL's host: its count starts again."""
    host = host_of(url)
    if _streak.get(host):
        with _lock:
            _streak[host] = 0


def failed(url: str, reason: str) -> None:
    """One connection-level failure to this URL's host; raises SourceUnavailable once `limit()` came in a row."""
    host = host_of(url)
    with _lock:
        n = _streak[host] = _streak.get(host, 0) + 1
        if n >= limit() and host not in _down:
            setting = setting_for(url)
            where = f"; check {setting}" if setting else ""
            _down[host] = f"cannot reach {host}: {n} connection failures in a row ({reason}){where}"
    check(url)


def reset(host_or_url: str | None = None) -> None:
    """Forget one host's (every host's) failures: a new run starts with a clean slate."""
    with _lock:
        if host_or_url is None:
            _streak.clear()
            _down.clear()
            return
        host = host_of(host_or_url) if "://" in host_or_url else host_or_url
        _streak.pop(host, None)
        _down.pop(host, None)
