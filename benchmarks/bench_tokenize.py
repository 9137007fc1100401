"""Benchmark `cook tokenize` (gpt2, all cores) against single-thread tiktoken `encode_ordinary` on the same text.

    python benchmarks/bench_tokenize.py --mb 200          # generated corpus from Python's own docs
    python benchmarks/bench_tokenize.py --input corpus/   # your documents

cook runs as the plain `tokenize_corpus` function in a subprocess, so its peak RSS (ru_maxrss of the
child) covers the whole pipeline: reading parquet, encoding, writing shards. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = """
import json, sys, time
from pathlib import Path
from tasks.corpus.tokenize import tokenize_corpus
files, out = json.loads(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
tokenize_corpus([Path(f) for f in files], "gpt2", out, None, 0.005, "auto", 100_000_000, None)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def make_corpus(folder: Path, mb: int, seed: int = 0) -> list[Path]:
    """~`mb` MB of documents built from paragraphs of Python's help topics (real English and code)."""
    from pydoc_data.topics import topics

    from tasks.corpus.documents import DocumentWriter

    paras = [p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 40]
    rng = random.Random(seed)
    target, size, i = mb * 1_000_000, 0, 0
    path = folder / "corpus.parquet"
    with DocumentWriter(path) as w:
        while size < target:
            text = "\n\n".join(rng.choice(paras) for _ in range(rng.randint(2, 12)))
            w.write({"id": str(i), "source": "bench", "url": "", "title": f"doc {i}", "text": text})
            size += len(text.encode("utf-8"))
            i += 1
    return [path]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the generated corpus in MB of text")
    ap.add_argument("--input", nargs="*", help="tokenize these documents instead of a generated corpus")
    args = ap.parse_args()

    from model.tokenizer import default_threads, get_tokenizer
    from tasks.corpus.documents import expand_inputs, iter_texts

    with tempfile.TemporaryDirectory(prefix="cook-bench-tokenize-") as tmp:
        tmp = Path(tmp)
        files = expand_inputs(args.input) if args.input else make_corpus(tmp, args.mb)

        # cook: the whole pipeline in a child process
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(f) for f in files]), str(tmp / "out")],
                           cwd=REPO, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"cook tokenize failed:\n{r.stderr[-3000:]}")
        cook_s = json.loads(r.stdout.strip().splitlines()[-1])["seconds"]
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        peak_rss_mb, cook_cpu = child.ru_maxrss / 1024, child.ru_utime + child.ru_stime

        # baseline: single-thread tiktoken encode_ordinary, timing the encoding only
        enc = get_tokenizer("gpt2").enc
        n_bytes, base_s, base_cpu = 0, 0.0, 0.0
        for f in files:
            for text in iter_texts(f):
                n_bytes += len(text.encode("utf-8"))
                t, c = time.perf_counter(), time.process_time()
                enc.encode_ordinary(text)
                base_s += time.perf_counter() - t
                base_cpu += time.process_time() - c

    mb = n_bytes / 1e6
    print(json.dumps({
        "bench": "tokenize",
        "mb": round(mb, 1),
        "cook_mb_per_s": round(mb / cook_s, 2),
        "baseline_mb_per_s": round(mb / base_s, 2),
        "speedup": round(base_s / cook_s, 2),
        "cook_peak_rss_mb": round(peak_rss_mb, 1),
        # CPU seconds (all threads; cook's include startup, reading and writing): shows overhead when cores are busy
        "cook_cpu_s": round(cook_cpu, 1),
        "baseline_cpu_s": round(base_cpu, 1),
        "cores": default_threads(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both figures
    }))


if __name__ == "__main__":
    main()
