"""Benchmark: cook's dump reader vs `wikiextractor --no-templates` on the same generated dump, same run.

Generates a pages-articles dump of at least `--mb` MB of XML (tests/dumpgen.py: tricky wikitext, redirects,
other namespaces), then times, on every core:
  - cook: `tasks.sources.wikidump.extract_dump` (parse + clean + write parquet shards) on the plain .xml,
    and (with --multistream) on a multistream .xml.bz2 + index of the same pages;
  - wikiextractor 3.x: `python -m wikiextractor.WikiExtractor DUMP --no-templates -o DIR --processes N`.
Prints ONE JSON line: articles/s and MB/s (of XML) for each, and the ratio (goal: >= 2x wikiextractor).

    python benchmarks/bench_wikidump.py [--mb 200] [--multistream]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.sources.wikidump import default_workers, extract_dump  # noqa: E402
from tests.dumpgen import make_pages, repeat_pages, write_dump  # noqa: E402


def _wikiextractor(dump: Path, out: Path, workers: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump), "--no-templates", "-o", str(out),
         "--processes", str(workers), "-q"],
        capture_output=True, text=True,
    )
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"wikiextractor failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    n = sum(len(re.findall(r"^<doc ", p.read_text(encoding="utf-8"), re.M)) for p in out.rglob("wiki_*"))
    return seconds, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200.0, help="XML size to generate (MB)")
    ap.add_argument("--multistream", action="store_true", help="also time cook on a multistream .xml.bz2 + index")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()
    workers = args.workers or default_workers()

    tmp = Path(tempfile.mkdtemp(prefix="bench-wikidump-"))
    try:
        base = make_pages(400, seed=1)
        per_page = sum(len(p.text) for p in base) / len(base) + 500
        total = int(args.mb * 1e6 / per_page) + 1
        t0 = time.perf_counter()
        xml = write_dump(tmp / "enwiki-bench-pages-articles.xml", repeat_pages(base, total))
        gen_s = time.perf_counter() - t0
        xml_mb = xml.stat().st_size / 1e6

        t0 = time.perf_counter()
        s = extract_dump(xml, tmp / "cook-out", workers=workers, processes=workers > 1)
        cook_s = time.perf_counter() - t0
        result = {
            "bench": "wikidump", "workers": workers, "xml_mb": round(xml_mb, 1), "pages": total, "generate_s": round(gen_s, 1),
            "cook_articles": s["kept"], "cook_s": round(cook_s, 2),
            "cook_articles_per_s": round(s["kept"] / cook_s, 1), "cook_mb_per_s": round(xml_mb / cook_s, 2),
        }
        shutil.rmtree(tmp / "cook-out")
        # the same in one process (no workers): on small or shared-core machines this can be the faster mode
        t0 = time.perf_counter()
        s1 = extract_dump(xml, tmp / "cook-out", workers=1, processes=False)
        one_s = time.perf_counter() - t0
        result.update({"cook_1proc_s": round(one_s, 2), "cook_1proc_articles_per_s": round(s1["kept"] / one_s, 1),
                       "cook_1proc_mb_per_s": round(xml_mb / one_s, 2)})
        shutil.rmtree(tmp / "cook-out")

        if args.multistream:
            ms = write_dump(tmp / "enwiki-bench-pages-articles-multistream.xml.bz2", repeat_pages(base, total),
                            multistream=True, processes=workers)
            t0 = time.perf_counter()
            s2 = extract_dump(ms, tmp / "cook-ms-out", workers=workers, processes=workers > 1)
            ms_s = time.perf_counter() - t0
            result.update({
                "multistream_bz2_mb": round(ms.stat().st_size / 1e6, 1), "cook_multistream_s": round(ms_s, 2),
                "cook_multistream_articles_per_s": round(s2["kept"] / ms_s, 1),
                "cook_multistream_xml_mb_per_s": round(xml_mb / ms_s, 2),
            })
            shutil.rmtree(tmp / "cook-ms-out")

        we_s, we_n = _wikiextractor(xml, tmp / "we-out", workers)
        result.update({
            "wikiextractor_articles": we_n, "wikiextractor_s": round(we_s, 2),
            "wikiextractor_articles_per_s": round(we_n / we_s, 1), "wikiextractor_mb_per_s": round(xml_mb / we_s, 2),
        })
        result["ratio_articles_per_s"] = round(result["cook_articles_per_s"] / result["wikiextractor_articles_per_s"], 2)
        result["ratio_1proc_articles_per_s"] = round(result["cook_1proc_articles_per_s"] / result["wikiextractor_articles_per_s"], 2)
        result["goal_2x_met"] = result["ratio_articles_per_s"] >= 2.0
        print(json.dumps(result))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
