"""Benchmark cook's Wikipedia fetcher against a sequential fetcher (what the original did: one request after the
other) on the loopback fake MediaWiki API with a fixed latency per request.

    python benchmarks/bench_wikipedia.py --pages 200 --latency 0.05 --concurrency 4

Both fetch the same pages by id through `action=parse` and extract their text. cook runs `Crawler.fetch`
(ledger, atomic parquet parts included) with the rate limit set well above concurrency / latency, so the
concurrency limit is the binding one. The goal: at least 0.9 x concurrency / latency pages/s. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def sequential(url: str, pages: list[int], user_agent: str) -> float:
    """The original's way: a plain httpx loop, one page after the other; every <p> of the page. Returns seconds."""
    import httpx
    from selectolax.lexbor import LexborHTMLParser

    t0 = time.perf_counter()
    with httpx.Client(headers={"User-Agent": user_agent}, timeout=30) as client:
        for pid in pages:
            r = client.get(url, params={"action": "parse", "pageid": pid, "prop": "text|links|revid", "format": "json", "formatversion": "2"})
            html = r.json()["parse"]["text"]
            "\n".join(p.text() for p in LexborHTMLParser(html).css("p"))
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()

    from fake_mediawiki import FakeMediaWiki, FakeWiki
    from tasks.core.settings import get_settings
    from tasks.sources.wikipedia import Crawler

    wiki = FakeWiki(n_pages=args.pages, seed=0)
    ids = sorted(wiki.pages)
    targets = [(pid, wiki.pages[pid].title) for pid in ids]
    rate = 2.0 * args.concurrency / args.latency  # above what the concurrency allows: concurrency binds
    with FakeMediaWiki(wiki, latency_s=args.latency) as api, tempfile.TemporaryDirectory() as tmp:
        seq_s = sequential(api.url, ids, get_settings().user_agent)
        with Crawler(Path(tmp) / "out", api_url=api.url, concurrency=args.concurrency, rate_limit=rate) as c:
            t0 = time.perf_counter()
            done, failed = c.fetch(targets, tag="bench")
            cook_s = time.perf_counter() - t0
        assert len(done) == len(ids) and not failed
        assert api.max_in_flight <= args.concurrency

    cook_pps, seq_pps = len(ids) / cook_s, len(ids) / seq_s
    goal = 0.9 * args.concurrency / args.latency
    print(json.dumps({
        "bench": "wikipedia", "pages": len(ids), "latency_s": args.latency, "concurrency": args.concurrency,
        "rate_limit": rate, "cook_pages_per_s": round(cook_pps, 1), "sequential_pages_per_s": round(seq_pps, 1),
        "speedup": round(cook_pps / seq_pps, 2), "goal_pages_per_s": round(goal, 1), "goal_met": cook_pps >= goal,
        "max_in_flight": api.max_in_flight, "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
