"""PoliteClient's guards against real loopback servers: a dead host stops the run with one line, a secret header
never follows a redirect to another origin, every answer has a size cap and an overall deadline, and a placeholder
User-Agent is named once per real host."""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from model.errors import SourceUnavailable
from tasks.core import health
from tasks.core.http import FetchError, PoliteClient, RedirectRefused, ResponseTooLarge, ResponseTooSlow

pytestmark = pytest.mark.timeout(180)

KEY = "AIzaSy-test-key-never-leaves-its-origin"


class Site:
    """A loopback HTTP server: `routes` maps a path to `fn(handler)`; every request's path and headers are kept."""

    def __init__(self, routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]):
        self.routes = routes
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.stop = threading.Event()
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                site.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                try:
                    site.routes.get(path, site.routes.get("*", not_found))(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up on this answer
                    self.close_connection = True

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.host = self.origin.split("//", 1)[1]

    def __enter__(self) -> "Site":
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def answer(h: BaseHTTPRequestHandler, body: bytes = b"ok", code: int = 200, headers: dict | None = None) -> None:
    h.send_response(code)
    for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
        h.send_header(k, v)
    h.end_headers()
    h.wfile.write(body)


def not_found(h: BaseHTTPRequestHandler) -> None:
    answer(h, b"not found", 404)


@contextmanager
def dead_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection is refused, and no one else can take it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    try:
        yield s.getsockname()[1]
    finally:
        s.close()


@pytest.fixture
def settings_env(monkeypatch):
    """Set COOK_ settings for this test: `settings_env(NAME=value, ...)`; health and settings start clean and end clean."""
    from tasks.core.settings import get_settings

    def set_(**values):
        for k, v in values.items():
            monkeypatch.setenv(k, str(v))
        get_settings.cache_clear()

    health.reset()
    get_settings.cache_clear()
    yield set_
    monkeypatch.undo()
    get_settings.cache_clear()
    health.reset()


# --- a dead host -------------------------------------------------------------------------------------


def test_dead_host_stops_after_n_failures_with_one_line(settings_env):
    with dead_port() as port:
        url = f"http://127.0.0.1:{port}/w/api.php"
        settings_env(COOK_WIKIPEDIA_API_URL=url, COOK_MAX_CONNECT_FAILURES=3)
        client = PoliteClient(retries=10, backoff=0.01)
        try:
            with pytest.raises(SourceUnavailable) as e:
                client.get(url, params={"action": "query"})
            assert client.stats["requests"] == 3  # not the 11 tries the retries allow
            message = str(e.value)
            assert "\n" not in message and f"127.0.0.1:{port}" in message and "COOK_WIKIPEDIA_API_URL" in message, message
            assert "3 connection failures in a row" in message
            # every later request to the host stops at once, without a connection attempt
            with pytest.raises(SourceUnavailable):
                client.get(f"http://127.0.0.1:{port}/other")
            assert client.stats["requests"] == 3
        finally:
            client.close()


def test_an_answer_between_failures_starts_the_count_again(settings_env):
    """A host that drops connections unanswered (a connection-level failure) but answers in between is not down;
    one whose first 3 connections drop is."""
    script = iter(["drop", "drop", "answer", "drop", "drop", "answer", "drop", "drop", "drop"])

    def flaky(h):
        if next(script) == "drop":
            h.close_connection = True  # closed without a byte of answer
        else:
            answer(h)

    with Site({"*": flaky}) as site:
        settings_env(COOK_MAX_CONNECT_FAILURES=3)
        client = PoliteClient(retries=3, backoff=0.01)
        try:
            assert client.get(f"{site.origin}/a").status_code == 200
            assert client.get(f"{site.origin}/b").status_code == 200
            with pytest.raises(SourceUnavailable, match=f"cannot reach {site.host}: 3 connection failures"):
                client.get(f"{site.origin}/c")
        finally:
            client.close()


def test_cli_on_a_dead_api_says_so_in_one_line_and_exits_5(cook, cook_env, tmp_path):
    """`cook scrape wikipedia` with its API on a dead port: one line naming the host and its setting, exit 5, long
    before the 40 built-in queries could each spend their retries (the subprocess timeout bounds it)."""
    with dead_port() as port:
        env = {**cook_env, "COOK_WIKIPEDIA_API_URL": f"http://127.0.0.1:{port}/w/api.php"}
        proc = cook(["scrape", "wikipedia", "--out", tmp_path / "wiki", "--max-pages", 20], env=env, timeout=150)
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert f"cannot reach 127.0.0.1:{port}" in errors[0] and "COOK_WIKIPEDIA_API_URL" in errors[0], errors[0]


# --- secrets stay on their origin --------------------------------------------------------------------


def test_secret_header_never_follows_a_redirect_to_another_origin(settings_env):
    with Site({"*": answer}) as other:
        def to_other(h):
            answer(h, b"", 302, {"Location": f"{other.origin}/steal"})

        def to_self(h):
            answer(h, b"", 302, {"Location": "/landing"})

        with Site({"/away": to_other, "/here": to_self, "/landing": answer}) as home:
            api = PoliteClient(headers={"X-goog-api-key": KEY, "Accept": "application/json"}, retries=2, backoff=0.01)
            try:
                with pytest.raises(RedirectRefused) as e:
                    api.get(f"{home.origin}/away")
                assert home.host in str(e.value) and other.host in str(e.value)
                assert "X-goog-api-key" in str(e.value) and KEY not in str(e.value)
                assert api.stats["requests"] == 1  # refused, not retried
                with pytest.raises(RedirectRefused):  # code calling the httpx client directly (DataAPI) too
                    api.http.get(f"{home.origin}/away")
                # a redirect within the origin keeps the key
                assert api.get(f"{home.origin}/here").status_code == 200
                assert home.requests[-1][0] == "/landing" and home.requests[-1][1].get("x-goog-api-key") == KEY
            finally:
                api.close()
            assert other.requests == []  # the other origin never even saw a request

            # a client without secrets follows the same redirect; a declared secret header is guarded as well
            plain = PoliteClient(headers={"Accept": "text/html"}, retries=0)
            declared = PoliteClient(headers={"X-Trace": "t"}, secret_headers=("X-Trace",), retries=0)
            try:
                assert plain.get(f"{home.origin}/away").status_code == 200
                with pytest.raises(RedirectRefused):
                    declared.get(f"{home.origin}/away")
            finally:
                plain.close()
                declared.close()
            assert [p for p, _ in other.requests] == ["/steal"]
            assert all(KEY not in str(headers) for _, headers in other.requests)


# --- size cap and deadline ---------------------------------------------------------------------------


def test_size_cap(settings_env):
    big = b"x" * (3 * 2**20)
    bomb = gzip.compress(b"\0" * (16 * 2**20))  # 16 KiB on the wire, 16 MiB once inflated

    def unbounded(h):  # no Content-Length: the body runs until the connection closes
        h.send_response(200)
        h.send_header("Connection", "close")
        h.end_headers()
        h.close_connection = True
        for i in range(0, len(big), 2**16):
            h.wfile.write(big[i : i + 2**16])

    routes = {"/big": lambda h: answer(h, big), "/unbounded": unbounded, "/ok": lambda h: answer(h, b"y" * 1000),
              "/bomb": lambda h: answer(h, bomb, headers={"Content-Encoding": "gzip"}),
              "/small-gzip": lambda h: answer(h, gzip.compress(b"z" * 500_000), headers={"Content-Encoding": "gzip"})}
    with Site(routes) as site:
        settings_env(COOK_MAX_RESPONSE_MB=1)
        client = PoliteClient(retries=3, backoff=0.01)
        try:
            assert client.max_bytes == 2**20  # from the setting
            for path in ("/big", "/unbounded", "/bomb"):
                before = client.stats["requests"]
                with pytest.raises(ResponseTooLarge) as e:
                    client.get(f"{site.origin}{path}", params={"q": "1"})
                assert f"{site.origin}{path}" in str(e.value) and "1 MiB" in str(e.value), str(e.value)
                assert client.stats["requests"] == before + 1  # not retried
            assert client.get(f"{site.origin}/ok").content == b"y" * 1000
            assert client.get(f"{site.origin}/small-gzip").content == b"z" * 500_000
        finally:
            client.close()


def test_a_trickling_answer_meets_the_deadline(settings_env):
    """One byte every 0.2 s of a 100-byte body: each read is quick (no per-read timeout fires), the whole is not."""

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        for _ in range(100):
            if site.stop.is_set():
                return
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.2)

    with Site({"/slow": trickle, "/ok": answer}) as site:
        settings_env(COOK_RESPONSE_DEADLINE_S=1, COOK_MAX_CONNECT_FAILURES=1)
        client = PoliteClient(retries=1, backoff=0.01, timeout=5.0)
        try:
            assert client.deadline_s == 1.0
            with pytest.raises(FetchError, match=r"no complete answer within 1 s \(COOK_RESPONSE_DEADLINE_S\)"):
                client.get(f"{site.origin}/slow")
            assert client.stats["requests"] == 2  # retried like a timeout
            with pytest.raises(ResponseTooSlow):
                client.http.get(f"{site.origin}/slow")
            assert client.get(f"{site.origin}/ok").status_code == 200  # a slow answer is not a dead host
        finally:
            client.close()


# --- politeness ----------------------------------------------------------------------------------------


class Collect(logging.Handler):
    """The records of one logger, kept on the logger itself (Prefect's logging set-up may replace the root's handlers)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_placeholder_user_agent_warns_once_per_real_host(settings_env, monkeypatch):
    """Requests go through a loopback proxy (HTTP_PROXY), so real host names reach a local server."""
    from tasks.core import http

    with Site({"*": answer}) as proxy:
        monkeypatch.delenv("COOK_USER_AGENT", raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.origin)
        for k in ("no_proxy", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the Prefect API and /local go direct
        settings_env()
        http._warned_ua.clear()
        client = PoliteClient(retries=0)
        named = PoliteClient(retries=0, user_agent="cook-test/1 (ops@example.org)")
        collect = Collect()
        http.log.addHandler(collect)
        try:
            for url in ("http://en.wikipedia.org/w/api.php", "http://en.wikipedia.org/wiki/X",
                        "http://upload.wikimedia.org/x", "http://www.googleapis.com/youtube/v3/channels",
                        f"{proxy.origin}/local", "http://wikipedia.org.example.net/"):
                assert client.get(url).status_code == 200
            assert named.get("http://www.britannica.com/").status_code == 200
        finally:
            http.log.removeHandler(collect)
            client.close()
            named.close()
            http._warned_ua.clear()
    warned = [m for m in collect.messages if "COOK_USER_AGENT" in m]
    hosts = sorted(m.split("before crawling ", 1)[1].split(",", 1)[0] for m in warned)
    assert hosts == ["en.wikipedia.org", "upload.wikimedia.org", "www.googleapis.com"], warned
    assert [p.split("/")[2] for p, _ in proxy.requests if "://" in p][:3] == ["en.wikipedia.org"] * 2 + ["upload.wikimedia.org"]
