"""Benchmark what the per-host Prefect global limits (tasks/core/limits.py, `cook server-setup`) cost and buy.

    python benchmarks/bench_limits.py --requests 120 --latency 0.05 --concurrency 4 --rate 20

A real Prefect API (the test harness: Prefect's default SQLite server in a subprocess) and a loopback HTTP server
that answers each request after `latency` seconds and counts requests in flight. Each run is a flow run in its own
process (as a worker runs deployments), sending `requests` GETs through one PoliteClient(concurrency, rate) from
a pool of 2 x concurrency threads. Four cases, each against a fresh loopback port (so a fresh host):

  1. one run, no global limits (the baseline: the client warns once and keeps its own limits);
  2. one run, the host's global limits created (ensure_limits with the same concurrency and rate);
  3. two parallel runs, no global limits;
  4. two parallel runs, global limits.

Per case: requests/s over every run (first start to last answer, after the runs met at a barrier), the most
requests the host had in flight at once, the most request starts it saw in any one-second window, and the
longest wait between two starts (a stall on the Prefect API shows there).
Cost: case 2 / case 1 and case 4 / case 3 requests/s. What they buy: cases 3 and 4's in flight and starts/s,
against the per-host limits (case 3 may reach twice them: two runs, each within its own limits only).
Prints one JSON line on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
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


def case(runs: int, global_limits: bool, args) -> dict:
    """Run `runs` parallel flow runs (one process each) against a fresh loopback host; returns the figures."""
    from loopback import Loopback
    from prefect.client.orchestration import get_client

    from tasks.core.limits import Limits, ensure_limits, host_of, limit_names

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
    return {"req_per_s": round(ok / elapsed, 2), "seconds": round(elapsed, 2), "max_in_flight": site.max_in_flight,
            "peak_starts_per_s": site.peak_starts_per_s(), "longest_gap_s": round(site.longest_gap_s(), 2)}


def run_cases(args) -> dict[str, dict]:
    """Start the Prefect API, run the four cases against it; {case: figures}."""
    import prefect
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    t0 = time.monotonic()
    with prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # the run processes use this server
        log(f"Prefect {prefect.__version__} API at {os.environ['PREFECT_API_URL']} ({time.monotonic() - t0:.1f} s)")
        figures = {}
        for name, runs, global_limits in (("one_run", 1, False), ("one_run_global", 1, True),
                                          ("two_runs", 2, False), ("two_runs_global", 2, True)):
            figures[name] = case(runs, global_limits, args)
            log(f"{name}: {figures[name]}")
    return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=120, help="requests per run")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the loopback host takes per request")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rate", type=float, default=20.0, help="request starts per second")
    args = ap.parse_args()

    import prefect

    t0 = time.monotonic()
    try:
        figures = run_cases(args)
    finally:
        if _OWN_HOME:
            shutil.rmtree(os.environ["COOK_BENCH_PREFECT_HOME"], ignore_errors=True)

    print(json.dumps({
        "bench": "limits", "prefect": prefect.__version__, "database": "sqlite", "requests_per_run": args.requests,
        "latency_s": args.latency, "concurrency": args.concurrency, "rate": args.rate,
        **{f"{k}_{f}": v[f] for k, v in figures.items() for f in ("req_per_s", "max_in_flight", "peak_starts_per_s", "longest_gap_s")},
        "ratio_one_run_global_vs_none": round(figures["one_run_global"]["req_per_s"] / figures["one_run"]["req_per_s"], 2),
        "ratio_two_runs_global_vs_none": round(figures["two_runs_global"]["req_per_s"] / figures["two_runs"]["req_per_s"], 2),
        "total_s": round(time.monotonic() - t0, 1), "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
