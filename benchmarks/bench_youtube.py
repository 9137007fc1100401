"""Benchmark cook's YouTube transcript fetcher against a sequential collector (what the original did: one
`YouTubeTranscriptApi` fetch after the other) on the loopback fake YouTube with a fixed latency per caption fetch.

    python benchmarks/bench_youtube.py --videos 60 --latency 0.2 --concurrency 4

Both fetch the same videos' transcripts (watch page, innertube player, timedtext) through youtube-transcript-api
1.2.5. cook runs `fetch_batch` (threads with one API instance each, ledger, atomic parquet parts included)
at its default concurrency. A video costs three round trips plus the caption latency either way, so the goal is
parallel efficiency: cook at least 0.8 x concurrency x the sequential rate. Prints one JSON line.
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


def sequential(youtube_url: str, videos: list[str]) -> float:
    """The original's way: one YouTubeTranscriptApi, one video after the other. Returns seconds."""
    from tasks.sources.youtube import YouTubeOptions, clean_segments, make_transcript_api

    api = make_transcript_api(YouTubeOptions(), youtube_url)  # the plain library, routed to the fake
    t0 = time.perf_counter()
    for vid in videos:
        clean_segments([s.text for s in api.fetch(vid, languages=["en"])])
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--videos", type=int, default=60)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=4)
    args = ap.parse_args()

    from fake_youtube import FakeWorld, FakeYouTube
    from tasks.sources.youtube import fetch_batch, list_channels
    from tasks.sources.youtube_ledger import YouTubeLedger

    world = FakeWorld(n_channels=1, videos_per_channel=args.videos, kinds=("ok",), empty_channel=False)
    with FakeYouTube(world, caption_latency=args.latency) as fk, tempfile.TemporaryDirectory() as tmp:
        ids = sorted(world.videos)
        seq_s = sequential(fk.url, ids)
        list_channels(list(world.channels), tmp, 100, fk.api_url, key=fk.key)
        with YouTubeLedger(Path(tmp) / "ledger.sqlite") as ledger:
            due = [v["video_id"] for v in ledger.due()]
        t0 = time.perf_counter()
        r = fetch_batch(due, tmp, ["en"], args.concurrency, youtube_url=fk.url, rate=0)  # concurrency alone, no rate limit
        cook_s = time.perf_counter() - t0
        assert r["fetched"] == len(ids) and not r["failed"], r

    cook_vps, seq_vps = len(ids) / cook_s, len(ids) / seq_s
    goal = 0.8 * args.concurrency * seq_vps
    print(json.dumps({
        "bench": "youtube", "videos": len(ids), "caption_latency_s": args.latency, "concurrency": args.concurrency,
        "cook_videos_per_s": round(cook_vps, 2), "sequential_videos_per_s": round(seq_vps, 2),
        "speedup": round(cook_vps / seq_vps, 2), "goal_videos_per_s": round(goal, 2), "goal_met": cook_vps >= goal,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
