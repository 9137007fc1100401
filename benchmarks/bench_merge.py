"""Benchmark `cook merge` (clean + exact dedup, then also --near-dedup) with 1 and 2 worker processes, against
the original approach, on the same input.

    python benchmarks/bench_merge.py --mb 200            # full scale (the figures in benchmarks/RESULTS.md)
    python benchmarks/bench_merge.py --mb 2 --dedup-docs 200000   # a quick check

The input is generated: several document parquet files from several sources, built from the prose
paragraphs of Python's help topics (real English: paragraphs where at least 85% of the words hold a letter,
as tests/test_pipeline.py's `_prose`; code samples left out, so that the filters keep nearly all of it), with a
known number of planted exact duplicates (case, whitespace and NFC variants, in other files and sources) and
near-duplicates (a few words changed). The share of documents the filters reject (`filtered_fraction`) and
the share rejected for any reason (`rejected_fraction`) are printed.
The baseline is the original `append_files`: every input's texts appended to one file in
`os.listdir` order, streaming, no cleaning and no dedup. Each run is a child process: its peak RSS is its
own (VmHWM), and its workers' peak is reported beside it (the largest worker's). MB/s are of input text.

Speed-up of N workers over 1 is given twice: by wall time, and by CPU time (what an idle machine with N
cores would show at best: one worker's CPU seconds over the larger of the main process's CPU seconds and
the whole run's CPU seconds spread over N cores), which holds when the machine is busy with other work.
Each run with more than one worker is checked to write the same bytes as the run with one.

The dedup disk path: one more exact-dedup merge, with the most workers, forced onto the disk path by a tiny
`--dedup-memory` (two passes over the judged batches): its speed, peak RSS and whether it wrote the same bytes
as the memory path. Then the peak RSS of exact dedup at `--dedup-docs` documents (default 10M at full scale)
on the disk path (merge's default 1GB setting) against the memory path. That case calls
benchmarks/bench_dedup.py's `exact_case`: DiskDedup/MemoryDedup in a fresh process, fed random 16-byte keys in
batches of 100k as merge feeds them, not 10M documents through the whole merge (which would take hours here).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = """
import json, os, resource, sys, time
from pathlib import Path
mode, src, out, workers = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])

from benchmarks.peak import ChildPeaks, hwm_mb
workers_peak = ChildPeaks(every=0.05).__enter__()  # each worker's own peak, read while it runs
t = time.perf_counter()
result = {}
if mode == "baseline":
    import pyarrow.parquet as pq
    with open(out, "a", encoding="utf-8") as f:  # the original: append mode, listdir order
        for name in os.listdir(src):
            pf = pq.ParquetFile(src / name)
            for i in range(pf.num_row_groups):
                for text in pf.read_row_group(i, columns=["text"]).column("text").to_pylist():
                    if text:
                        f.write(text + "\\n")
else:
    from tasks.corpus.merge import merge_documents
    s = merge_documents([src], out, "2GB", near_dedup=(mode == "near"), workers=workers,
                        dedup_memory="1KB" if mode == "exact-disk" else "1GB")
    result = {"exact": s["exact_duplicates"], "near": s["near_duplicates"], "kept": s["documents_out"],
              "rejected": s["documents_rejected"], "filtered": s["documents_rejected"] - s["exact_duplicates"] - s["near_duplicates"],
              "documents": s["documents_in"], "reasons": s["rejected"]}
result["seconds"] = time.perf_counter() - t
workers_peak.__exit__()
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
result["cpu_main_s"] = me.ru_utime + me.ru_stime
result["cpu_workers_s"] = kids.ru_utime + kids.ru_stime
result["peak_rss_mb"] = hwm_mb()
result["worker_peak_rss_mb"] = workers_peak.peak_mb
print(json.dumps(result))
"""


def _variant(text: str, rng: random.Random) -> str:
    """The same text as exact dedup sees it: other case, spacing or unicode form."""
    kind = rng.randrange(3)
    if kind == 0:
        return text.upper()
    if kind == 1:
        return "  " + text.replace(" ", "  ").replace("\n", " \n") + "\n"
    return unicodedata.normalize("NFD", text)  # differs wherever the text has composed characters


def make_corpus(folder: Path, mb: float, files: int = 6, dup_frac: float = 0.05, near_frac: float = 0.03, seed: int = 0) -> dict:
    """~`mb` MB of documents in `files` files over three sources; returns the planted duplicate counts."""
    from pydoc_data.topics import topics

    from tasks.corpus.documents import DocumentWriter

    from tasks.corpus.filters import split_words

    def prose_like(p: str) -> bool:  # not a code sample: the quality filter wants 80% of words to hold a letter
        ws = split_words(p)
        return sum(any(c.isalpha() for c in w) for w in ws) >= 0.85 * len(ws)

    paras = sorted({p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 80 and prose_like(p.strip())})
    rng = random.Random(seed)
    sources = ["web", "books", "wiki"]
    writers = [DocumentWriter(folder / f"part_{i:02d}.parquet") for i in range(files)]
    target, size, i = mb * 1_000_000, 0, 0
    originals: list[str] = []
    planted = {"exact": 0, "near": 0}
    try:
        while size < target:
            r = rng.random()
            if originals and r < dup_frac:
                text, kind = _variant(rng.choice(originals), rng), "exact"
            elif originals and r < dup_frac + near_frac:
                words = rng.choice(originals).split(" ")
                for j in rng.sample(range(len(words)), max(1, len(words) // 150)):
                    words[j] = "altered"
                text, kind = " ".join(words), "near"
            else:
                header = " ".join(rng.choice(paras[k].split()) for k in rng.sample(range(len(paras)), 14)).capitalize()
                text, kind = header + ".\n\n" + "\n\n".join(rng.sample(paras, rng.randint(3, 10))), None
                if rng.random() < 0.2:  # later duplicates copy from a bounded pool of earlier documents
                    originals.append(text)
            if kind:
                planted[kind] += 1
            w = writers[rng.randrange(files)]
            w.write({"id": f"d{i}", "source": rng.choice(sources), "url": "", "title": f"doc {i}", "text": text, "fetched_at": None})
            size += len(text.encode("utf-8"))
            i += 1
    finally:
        for w in writers:
            w.close()
    return {"documents": i, "text_mb": size / 1e6, **planted}


def _child(mode: str, src: Path, out: Path, workers: int = 1) -> dict:
    cmd = [sys.executable, "-c", _CHILD, mode, str(src), str(out), str(workers)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _runs(mode: str, src: Path, tmp: Path, mb: float, counts: list[int]) -> dict:
    """Merge runs with each worker count; figures keyed `{mode}_w{N}_...`, speed-ups of N over the first."""
    line: dict = {}
    first = None
    for n in counts:
        out = tmp / f"merged-{mode}-{n}"
        r = _child(mode, src, out, n)
        cpu = r["cpu_main_s"] + r["cpu_workers_s"]
        key = f"{mode}_w{n}"
        line.update({
            f"{key}_mb_s": round(mb / r["seconds"], 1),
            f"{key}_seconds": round(r["seconds"], 2),
            f"{key}_cpu_s": round(cpu, 2),
            f"{key}_peak_rss_mb": round(r["peak_rss_mb"]),
            f"{key}_worker_peak_rss_mb": round(r["worker_peak_rss_mb"]),
        })
        if first is None:
            first = (n, r, cpu, _hashes(out))
            line.update({f"{mode}_found_exact": r["exact"], f"{mode}_found_near": r["near"], f"{mode}_filtered": r["filtered"],
                         f"{mode}_kept": r["kept"], f"{mode}_filtered_fraction": round(r["filtered"] / r["documents"], 4),
                         f"{mode}_rejected_fraction": round(r["rejected"] / r["documents"], 4),
                         f"{mode}_rejected_by_reason": r["reasons"]})
            continue
        n1, r1, cpu1, h1 = first
        bound = max(r["cpu_main_s"], cpu / n)  # the busiest core of an idle N-core machine, at best
        line.update({
            f"{mode}_speedup_w{n}_over_w{n1}": round(r1["seconds"] / r["seconds"], 3),
            f"{mode}_cpu_speedup_w{n}_over_w{n1}": round(cpu1 / bound, 3),
            f"{mode}_w{n}_identical_to_w{n1}": _hashes(out) == h1,
        })
    return line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=200, help="size of the generated input in MB of text (e.g. 5 for a quick run)")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare, the first is the reference (default 1,2)")
    ap.add_argument("--no-near", action="store_true", help="skip the --near-dedup runs")
    ap.add_argument("--no-baseline", action="store_true", help="skip the append-only baseline")
    ap.add_argument("--no-disk", action="store_true", help="skip the merge on the dedup disk path")
    ap.add_argument("--dedup-docs", type=int, default=None,
                    help="documents for the exact-dedup RSS case (default 10M from --mb 100 up, else 100k; 0: skip)")
    args = ap.parse_args()
    dedup_docs = args.dedup_docs if args.dedup_docs is not None else (10_000_000 if args.mb >= 100 else 100_000)
    counts = [int(x) for x in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        corpus = make_corpus(src, args.mb)
        mb = corpus["text_mb"]
        line = {"bench": "merge", "input_mb": round(mb, 1), "documents": corpus["documents"],
                "planted_exact": corpus["exact"], "planted_near": corpus["near"]}
        if not args.no_baseline:
            base = _child("baseline", src, tmp / "appended.txt")
            line.update({"baseline_append_mb_s": round(mb / base["seconds"], 1), "baseline_peak_rss_mb": round(base["peak_rss_mb"])})
        line.update(_runs("exact", src, tmp, mb, counts))
        if not args.no_disk:
            line.update(_disk_run(src, tmp, mb, counts))
        if not args.no_near:
            line.update(_runs("near", src, tmp, mb, counts))
        if dedup_docs:
            line.update(_dedup_rss(dedup_docs))
        print(json.dumps(line))


def _disk_run(src: Path, tmp: Path, mb: float, counts: list[int]) -> dict:
    """Exact dedup merge on the disk path (a 1KB --dedup-memory), with the most workers; same bytes as memory?"""
    n = max(counts)
    out = tmp / f"merged-exact-disk-{n}"
    r = _child("exact-disk", src, out, n)
    same = _hashes(out) == _hashes(tmp / f"merged-exact-{n}")
    return {f"exact_disk_w{n}_mb_s": round(mb / r["seconds"], 1), f"exact_disk_w{n}_seconds": round(r["seconds"], 2),
            f"exact_disk_w{n}_cpu_s": round(r["cpu_main_s"] + r["cpu_workers_s"], 2),
            f"exact_disk_w{n}_peak_rss_mb": round(r["peak_rss_mb"]), f"exact_disk_w{n}_identical_to_memory_path": same}


def _dedup_rss(docs: int) -> dict:
    """Peak RSS of exact dedup at `docs` documents, disk path (merge's default setting) against memory path."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from bench_dedup import exact_case

    from tasks.corpus.merge import DEDUP_MEMORY, parse_size

    memory = parse_size(DEDUP_MEMORY)
    disk, mem = exact_case(docs, "disk", memory), exact_case(docs, "memory", memory)
    return {"dedup_docs": docs, "dedup_method": "bench_dedup.exact_case: DiskDedup/MemoryDedup in a fresh process, "
            "random 16-byte keys in batches of 100k (not the whole merge)", "dedup_disk_setting_mb": round(memory / 1e6),
            "dedup_disk_peak_rss_mb": disk["peak_rss_mb"], "dedup_memory_peak_rss_mb": mem["peak_rss_mb"],
            "dedup_disk_s": disk["wall_s"], "dedup_memory_s": mem["wall_s"],
            "dedup_same_duplicates": disk["duplicates"] == mem["duplicates"]}


if __name__ == "__main__":
    main()
