"""Benchmark `cook tokenize` (gpt2) with 1 and N workers against single-thread tiktoken `encode_ordinary`.

    python benchmarks/bench_tokenize.py --mb 1000                 # generated corpus from Python's own docs
    python benchmarks/bench_tokenize.py --input corpus/ --workers 1 2 4

Each cook run is the plain `tokenize_corpus` function in a fresh subprocess (`--workers W`), so its figures
cover the whole stage (Prefect imported beforehand, as in every real run): reading parquet, encoding, writing
shards, and the bigram baseline (fitted in the main process on the first 50M train tokens as the shards are
written, then scored on val). `encode_s` is the time to the shards (the fit included), without the scoring. Peak RSS is the largest of the child's own (VmHWM) and its workers' (ru_maxrss: an upper bound). CPU seconds are the
child's and its workers' together: on a loaded machine they stay honest where wall times do not, and
`2 x baseline_cpu / cook_cpu` bounds what 2 idle cores could give. The ceiling: one process per core doing nothing
but `encode_ordinary` on equal shares of the same texts, started together (on a 2-vCPU VM two such processes do
not reach 2x). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = """
import json, resource, sys, time
from pathlib import Path
import prefect.context, tasks.core.caching  # loaded before the task in every real run (the CLI's flow)
import tasks.corpus.tokenize as T

files, out, workers = json.loads(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
write_splits, phase = T._write_splits, {}

def timed(*a, **k):  # the time to the shards: reading, encoding, writing, fitting the baseline (scored after)
    t = time.perf_counter()
    try:
        return write_splits(*a, **k)
    finally:
        phase["encode_s"] = time.perf_counter() - t

T._write_splits = timed
t, cpu = time.perf_counter(), time.process_time()
T.tokenize_corpus([Path(f) for f in files], "gpt2", out, None, 0.005, "auto", 100_000_000, workers)
seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "encode_s": phase["encode_s"], "main_cpu_s": cpu,
                  "workers_cpu_s": kids.ru_utime + kids.ru_stime,
                  # VmHWM: this process's own peak (ru_maxrss would carry the parent's over the exec)
                  "main_rss_mb": int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) / 1024,
                  "worker_rss_mb": kids.ru_maxrss / 1024}))
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


def _encode_share(texts: list[str], start, done) -> None:
    """One of the ceiling's processes: encode its share of the texts once all are ready; report its wall time."""
    from model.tokenizer import get_tokenizer

    enc = get_tokenizer("gpt2").enc
    enc.encode_ordinary("warm up")
    start.wait()
    t = time.perf_counter()
    for text in texts:
        enc.encode_ordinary(text)
    done.put(time.perf_counter() - t)


def parallel_ceiling(texts: list[str], procs: int) -> float:
    """Wall time for `procs` processes that do nothing but encode_ordinary, each on an equal share of the texts
    (by bytes), started together: what this machine's cores give at best, with no reading, writing or IPC."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # the children inherit the texts: nothing is copied through a pipe
    shares: list[list[str]] = [[] for _ in range(procs)]
    sizes = [0] * procs
    for text in sorted(texts, key=len, reverse=True):
        i = sizes.index(min(sizes))
        shares[i].append(text)
        sizes[i] += len(text)
    start, done = ctx.Barrier(procs + 1), ctx.Queue()
    children = [ctx.Process(target=_encode_share, args=(share, start, done)) for share in shares]
    for c in children:
        c.start()
    start.wait()
    walls = [done.get() for _ in children]
    for c in children:
        c.join()
    return max(walls)


def run_cook(files: list[Path], out: Path, workers: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([str(f) for f in files]), str(out), str(workers)],
                       cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"cook tokenize --workers {workers} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the generated corpus in MB of text")
    ap.add_argument("--input", nargs="*", help="tokenize these documents instead of a generated corpus")
    ap.add_argument("--workers", type=int, nargs="*", help="worker counts to run [default: 1 and every core]")
    args = ap.parse_args()

    from model.tokenizer import default_threads, get_tokenizer
    from tasks.corpus.documents import expand_inputs, iter_texts

    cores = default_threads()
    counts = args.workers or sorted({1, cores})
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="cook-bench-tokenize-") as tmp:
        tmp = Path(tmp)
        files = expand_inputs(args.input) if args.input else make_corpus(tmp, args.mb)

        # baseline: single-thread tiktoken encode_ordinary, timing the encoding only
        enc = get_tokenizer("gpt2").enc
        n_bytes, base_s, base_cpu = 0, 0.0, 0.0
        texts: list[str] = []
        for f in files:
            for text in iter_texts(f):
                texts.append(text)
                n_bytes += len(text.encode("utf-8"))
                t, c = time.perf_counter(), time.process_time()
                enc.encode_ordinary(text)
                base_s += time.perf_counter() - t
                base_cpu += time.process_time() - c

        # the same encoding split over every core, nothing else: the most any worker count can reach here
        ceiling_s = parallel_ceiling(texts, cores) if cores > 1 else base_s
        del texts

        runs = {}
        for w in counts:
            r = run_cook(files, tmp / f"out{w}", w)
            cpu = r["main_cpu_s"] + r["workers_cpu_s"]
            runs[w] = {
                "seconds": round(r["seconds"], 2),
                "mb_per_s": round(n_bytes / 1e6 / r["seconds"], 2),
                "speedup": round(base_s / r["seconds"], 2),  # whole stage vs single-thread encode_ordinary
                "encode_speedup": round(base_s / r["encode_s"], 2),  # to the shards (no bigram baseline)
                "cpu_s": round(cpu, 1),
                "main_cpu_s": round(r["main_cpu_s"], 1),
                "cpu_bound_speedup": round(min(w, cores) * base_cpu / cpu, 2),  # what idle cores could give at best
                "peak_rss_mb": round(max(r["main_rss_mb"], r["worker_rss_mb"]), 1),
                "main_rss_mb": round(r["main_rss_mb"], 1),
            }
        same = len({(tmp / f"out{w}" / "meta.json").read_text() for w in counts}) == 1

    lo, hi = min(counts), max(counts)
    print(json.dumps({
        "bench": "tokenize",
        "mb": round(n_bytes / 1e6, 1),
        "baseline_mb_per_s": round(n_bytes / 1e6 / base_s, 2),
        "baseline_cpu_s": round(base_cpu, 1),
        # `cores` processes doing only encode_ordinary on equal shares: the speed-up this machine allows at best
        f"ceiling_{cores}_processes_speedup": round(base_s / ceiling_s, 2),
        "workers": {str(w): r for w, r in runs.items()},
        f"speedup_{hi}_over_{lo}_workers": round(runs[lo]["seconds"] / runs[hi]["seconds"], 2),
        # the whole stage with every core, as a share of what bare encoders on every core reached
        "share_of_ceiling": round(ceiling_s / runs[hi]["seconds"], 2),
        "same_output": same,  # meta.json (with every split's digest) identical across worker counts
        "cores": cores,
        "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # other work on the machine skews wall times
    }))


if __name__ == "__main__":
    main()
