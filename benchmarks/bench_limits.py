"""Benchmark what the per-host Prefect global limits (tasks/core/limits.py, `cook server-setup`) cost and buy, on
a Prefect server backed by SQLite and on one backed by PostgreSQL, side by side in one run.

    python benchmarks/bench_limits.py --requests 120 --latency 0.05 --concurrency 4 --rate 20 --many 6

Per database, a real `prefect server start` in a subprocess on a free loopback port, with its own PREFECT_HOME:
SQLite is Prefect's default (`prefect.db` there); PostgreSQL is a scratch database on 127.0.0.1:5432 (trust auth,
user postgres or root: tests/pgdb.py), created for the run and dropped after it. Without PostgreSQL the SQLite
figures come alone, with the reason. A loopback HTTP server answers each request after `latency` seconds and
counts requests in flight. Each run is a flow run in its own process (as a worker runs deployments), sending
`requests` GETs through one PoliteClient(concurrency, rate) from a pool of 2 x concurrency threads. Six cases per
database, each against a fresh loopback port (so a fresh host):

  1. one run, no global limits (the baseline: the client warns once and keeps its own limits);
  2. one run, the host's global limits created (ensure_limits with the same concurrency and rate);
  3. two parallel runs, no global limits;
  4. two parallel runs, global limits;
  5. `many` parallel runs, no global limits;
  6. `many` parallel runs, global limits (the write load where SQLite locks).

Per case: requests/s over every run (first start to last answer, after the runs met at a barrier), the most
requests the host had in flight at once, the most request starts it saw in any one-second window, the longest wait
between two starts (a stall on the Prefect API shows there), and `locked`: the "database is locked" errors the
server logged meanwhile (PREFECT_SERVER_LOG_RETRYABLE_ERRORS=true logs each; the server answers a request that hit
one with 503, and Prefect's client waits ~2 s and retries it; `retried` counts those 503s).
Cost: global / none requests/s per run count. What they buy: the parallel cases' in flight and starts/s, against
the per-host limits (without global limits N runs may reach N times them). PostgreSQL / SQLite requests/s for the
global cases. Prints one JSON line on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

# before prefect is imported, here and in the spawned run processes (they inherit the environment)
_OWN_HOME = "COOK_BENCH_PREFECT_HOME" not in os.environ  # the spawned run processes find the parent's
if _OWN_HOME:
    os.environ["COOK_BENCH_PREFECT_HOME"] = tempfile.mkdtemp(prefix="cook-bench-limits-")
os.environ["PREFECT_HOME"] = os.environ["COOK_BENCH_PREFECT_HOME"]
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_UI_ENABLED"] = "false"


def log(msg: str) -> None:
    print(f"[bench_limits] {msg}", file=sys.stderr, flush=True)


class PrefectServer:
    """`prefect server start` in its own process group on a free loopback port, its log in `home`/server.log;
    `database_url` None: SQLite in `home`. Stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, home: Path, database_url: str | None = None):
        self.home, self.database_url = home, database_url
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = home / "server.log"

    def __enter__(self) -> PrefectServer:
        import httpx

        self.home.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "COOK_"))}
        env.update({"PREFECT_HOME": str(self.home), "PREFECT_SERVER_UI_ENABLED": "false",
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true"})
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                                          "127.0.0.1", "--port", str(self.port)], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"the Prefect server did not start:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def __exit__(self, *exc) -> None:
        """SIGTERM to the server's process group (the CLI and its uvicorn), SIGKILL to whatever is left after 20 s."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.proc.poll()  # reap the CLI, so that an exited one leaves the group
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def errors_since(self, offset: int) -> tuple[int, int]:
        """("database is locked" errors, requests answered 503 for a retryable database error) in the server's log
        after byte `offset`. Each error is one log record (a timestamped line and its traceback); uvicorn logs
        a request's error a second time ("Exception in ASGI application"), which is not counted again."""
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        records = re.split(r"^(?=\d\d:\d\d:\d\d\.\d+ \| )", text, flags=re.M)
        locked = sum("database is locked" in r and "Exception in ASGI application" not in r.split("\n", 1)[0]
                     for r in records)
        return locked, sum("Encountered retryable exception in request" in r.split("\n", 1)[0] for r in records)


def one_run(url: str, requests: int, concurrency: int, rate: float, start) -> tuple[int, float, float]:
    """One flow run in this (spawned) process: wait for the others at `start`, then send `requests` GETs through
    one PoliteClient. Returns (answers 200, first start, last answer) on the system-wide monotonic clock."""
    from prefect import flow

    from tasks.core.http import PoliteClient

    @flow(name="bench-limits-crawl", log_prints=False)
    def crawl(url: str) -> tuple[int, float, float]:
        client = PoliteClient(concurrency=concurrency, rate_limit=rate, retries=0)
        try:
            start.wait(timeout=120)
            t0 = time.monotonic()
            with ThreadPoolExecutor(max_workers=2 * concurrency) as pool:
                ok = sum(r.status_code == 200 for r in pool.map(lambda i: client.get(f"{url}/p{i}"), range(requests)))
            return ok, t0, time.monotonic()
        finally:
            client.close()

    return crawl(url)


def case(server: PrefectServer, runs: int, global_limits: bool, args) -> dict:
    """Run `runs` parallel flow runs (one process each) against a fresh loopback host; returns the figures."""
    from loopback import Loopback
    from prefect.client.orchestration import get_client

    from tasks.core.limits import Limits, ensure_limits, host_of, limit_names

    log_at = server.log_size()
    with Loopback(hold_s=args.latency) as site:  # each request answered after the latency
        host = host_of(site.url)
        if global_limits:
            with get_client(sync_client=True) as client:
                ensure_limits(client, {host: Limits(args.concurrency, args.rate)})
        ctx = mp.get_context("spawn")
        with ctx.Manager() as manager:
            start = manager.Barrier(runs)
            with ctx.Pool(runs) as pool:
                results = pool.starmap(one_run, [(site.url, args.requests, args.concurrency, args.rate, start)] * runs)
        if global_limits:
            with get_client(sync_client=True) as client:
                for name in limit_names(host):
                    client.delete_global_concurrency_limit_by_name(name)
    ok = sum(r[0] for r in results)
    assert ok == runs * args.requests, f"{ok} of {runs * args.requests} requests answered"
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    time.sleep(1)  # the server's last log lines
    locked, retried = server.errors_since(log_at)
    return {"req_per_s": round(ok / elapsed, 2), "seconds": round(elapsed, 2), "max_in_flight": site.max_in_flight,
            "peak_starts_per_s": site.peak_starts_per_s(), "longest_gap_s": round(site.longest_gap_s(), 2),
            "locked": locked, "retried": retried}


def run_cases(database: str, database_url: str | None, args) -> dict:
    """Start a Prefect server on `database`, run the cases against it; {case: figures} and the server's totals."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    with PrefectServer(Path(os.environ["PREFECT_HOME"]) / f"server-{database}", database_url) as server:
        os.environ["PREFECT_API_URL"] = server.api_url  # the run processes (spawned: they take the environment)
        log(f"{database}: Prefect server at {server.api_url} ({time.monotonic() - t0:.1f} s to start)")
        figures = {"server_start_s": round(time.monotonic() - t0, 1)}
        with temporary_settings({PREFECT_API_URL: server.api_url}):  # this process's clients (ensure_limits)
            for name, runs, global_limits in (("one_run", 1, False), ("one_run_global", 1, True),
                                              ("two_runs", 2, False), ("two_runs_global", 2, True),
                                              ("many_runs", args.many, False), ("many_runs_global", args.many, True)):
                figures[name] = case(server, runs, global_limits, args)
                log(f"{database} {name}: {figures[name]}")
        figures["locked_total"], figures["retried_total"] = server.errors_since(0)  # services' errors too
    return figures


def run_postgresql(args) -> tuple[dict | None, str]:
    """The cases on a scratch PostgreSQL database (dropped after), or (None, why not)."""
    import pgdb

    server, why = pgdb.probe()
    if server is None:
        log(f"postgresql: skipped, {why}")
        return None, why
    with pgdb.scratch_database(server, "cook_bench_limits") as name:
        figures = run_cases("postgresql", server.url(name), args)
    figures["server_version"] = server.version.split()[0]
    return figures, ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=120, help="requests per run")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the loopback host takes per request")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=20.0, help="request starts per second")
    ap.add_argument("--many", type=int, default=6, help="parallel runs in the many_runs cases")
    args = ap.parse_args()

    import prefect

    t0 = time.monotonic()
    try:
        results = {"sqlite": run_cases("sqlite", None, args)}
        results["postgresql"], skipped = run_postgresql(args)
    finally:
        if _OWN_HOME:
            shutil.rmtree(os.environ["COOK_BENCH_PREFECT_HOME"], ignore_errors=True)

    line = {"bench": "limits", "prefect": prefect.__version__, "databases": [db for db, f in results.items() if f],
            "requests_per_run": args.requests, "latency_s": args.latency, "concurrency": args.concurrency,
            "rate": args.rate, "many_runs": args.many}
    if skipped:
        line["postgresql_skipped"] = skipped
    cases = ("one_run", "one_run_global", "two_runs", "two_runs_global", "many_runs", "many_runs_global")
    for db, figures in results.items():
        if not figures:
            continue
        line.update({f"{db}_{k}_{f}": figures[k][f] for k in cases
                     for f in ("req_per_s", "max_in_flight", "peak_starts_per_s", "longest_gap_s", "locked", "retried")})
        for runs in ("one_run", "two_runs", "many_runs"):
            line[f"{db}_ratio_{runs}_global_vs_none"] = round(figures[f"{runs}_global"]["req_per_s"] / figures[runs]["req_per_s"], 2)
        line.update({f"{db}_{k}": figures[k] for k in ("locked_total", "retried_total", "server_start_s", "server_version")
                     if k in figures})
    if results["postgresql"]:
        for k in ("one_run_global", "two_runs_global", "many_runs_global"):
            line[f"ratio_{k}_postgresql_vs_sqlite"] = round(
                results["postgresql"][k]["req_per_s"] / results["sqlite"][k]["req_per_s"], 2)
    line.update({"total_s": round(time.monotonic() - t0, 1), "cores": os.cpu_count(),
                 "load_avg_1m": round(os.getloadavg()[0], 2)})
    print(json.dumps(line))


if __name__ == "__main__":
    main()
