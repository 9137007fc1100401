"""A loopback HTTP server that counts requests in flight and their starts: tests/test_limits.py and
benchmarks/bench_limits.py check politeness limits against it."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks.core.limits import host_of


class Loopback:
    """A loopback HTTP server that counts requests in flight. Each request is held until `gather` requests are
    in flight at once or `hold_s` has passed, so whatever the clients allow to overlap does overlap."""

    def __init__(self, gather: int = 99, hold_s: float = 0.3):
        self.gather, self.hold_s = gather, hold_s
        self.in_flight = self.max_in_flight = 0
        self.starts: list[float] = []
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real hosts

            def do_GET(self):
                with outer.cond:
                    outer.starts.append(time.monotonic())
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                    outer.cond.notify_all()
                    outer.cond.wait_for(lambda: outer.in_flight >= outer.gather, timeout=outer.hold_s)
                    outer.in_flight -= 1
                body = b"ok"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.host = host_of(self.url)

    def __enter__(self):
        self.thread = threading.Thread(target=self.server.serve_forever, name="loopback", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()  # serve_forever returns: the thread ends
        self.server.server_close()
        self.thread.join(timeout=10)

    def peak_starts_per_s(self) -> int:
        """The most request starts within any one-second window."""
        s = sorted(self.starts)
        best, j = 0, 0
        for i, t in enumerate(s):
            while s[j] <= t - 1.0:
                j += 1
            best = max(best, i - j + 1)
        return best

    def longest_gap_s(self) -> float:
        """The longest wait between two consecutive request starts (a stall shows here)."""
        s = sorted(self.starts)
        return max((b - a for a, b in zip(s, s[1:])), default=0.0)
