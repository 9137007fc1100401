"""Dedup at scale: exact dedup RSS and time, memory path vs disk path, and MinHash signature speed, old vs new.

One JSON line per case. Each exact-dedup case runs in a fresh subprocess and reports its peak RSS
(VmHWM) and its growth above the process's start (Python + numpy), wall and CPU time. Keys are random 16-byte
digests, a tenth of them copies; documents are fed in batches of 100k as merge would.

    python benchmarks/bench_dedup.py                 # 10M documents (the issue's figure), ~1-2 min
    python benchmarks/bench_dedup.py --docs 200000   # a quick check
    python benchmarks/bench_dedup.py --near          # also the near-dedup disk path (band records)

Signature speed: MB/s of MinHash band keys (new: simplify + 16x7 bands, batched) against the previous
implementation (git HEAD~ version of tasks/corpus/dedup.py when available, else skipped), on the same
real-ish prose, in this process, single-threaded, CPU time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, resource, sys, tempfile, time, shutil
import numpy as np
from benchmarks.peak import hwm_mb
def hwm_kb():  # this process's own peak RSS (VmHWM; ru_maxrss can carry the parent's from before exec)
    return hwm_mb() * 1024
from tasks.corpus.dedup import DiskDedup, MemoryDedup
n, mode, memory, near = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
rng = np.random.default_rng(0)
tmp = tempfile.mkdtemp()
base = hwm_kb()
t0, c0 = time.time(), time.process_time()
dd = DiskDedup(near, tmp, memory=memory, expected_docs=n) if mode == "disk" else MemoryDedup(near, tmp)
batch, dups = 100_000, 0
ids = [""] * batch
with dd:
    for s in range(0, n, batch):
        m = min(batch, n - s)
        k = rng.integers(0, 2**64, size=(m, 2), dtype=np.uint64)
        k[::10] = k[0]
        bands = rng.integers(1, 2**64, size=(m, 16), dtype=np.uint64) if near else None
        dd.add(k.view(np.uint8).reshape(m, 16), bands, np.ones(m, bool), ids[:m])
        if mode == "memory":
            for _, kinds, _ in dd.decision_arrays():
                dups += int((kinds != 0).sum())
    if mode == "disk":
        for _, kinds, _ in dd.decision_arrays():
            dups += int((kinds != 0).sum())
shutil.rmtree(tmp, ignore_errors=True)
print(json.dumps({"base_mb": base / 1024, "peak_mb": hwm_kb() / 1024,
                  "wall_s": time.time() - t0, "cpu_s": time.process_time() - c0, "dups": dups}))
"""


def exact_case(n: int, mode: str, memory: int, near: bool = False) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(n), mode, str(memory), "1" if near else "0"], cwd=REPO,
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    grown = r["peak_mb"] - r["base_mb"]
    return {"case": f"{'near' if near else 'exact'} dedup, {mode} path", "docs": n,
            "memory_setting_mb": memory >> 20 if mode == "disk" else None,
            "peak_rss_mb": round(r["peak_mb"]), "rss_above_start_mb": round(grown),
            "bytes_per_doc": round(grown * 2**20 / n, 1), "wall_s": round(r["wall_s"], 1),
            "cpu_s": round(r["cpu_s"], 1),
            "duplicates": r["dups"]}


def _old_module():
    """The dedup module before this change (git), loaded under another name, or None."""
    import importlib.util

    for rev in ("HEAD~0", "HEAD~1"):
        src = subprocess.run(["git", "show", f"{rev}:tasks/corpus/dedup.py"], cwd=REPO, capture_output=True, text=True)
        if src.returncode == 0 and "class MinHashDedup" in src.stdout and "def band_keys" not in src.stdout:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "cook_old_dedup.py"
                path.write_text(src.stdout)
                spec = importlib.util.spec_from_file_location("cook_old_dedup", path)
                mod = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(mod)
            return mod
    return None


def signature_cases(docs: int) -> list[dict]:
    sys.path.insert(0, str(REPO / "tests"))
    from test_dedup import prose_docs

    from tasks.corpus.dedup import band_keys

    texts = prose_docs(docs, seed=7)
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = []
    band_keys(texts[:10])  # warm up (tables)
    c0 = time.process_time()
    band_keys(texts)
    rows.append({"case": "signature, new (simplify + 16x7 band keys, batched)", "mb": round(mb, 1),
                 "mb_per_s": round(mb / (time.process_time() - c0), 1)})
    c0 = time.process_time()
    for t in texts:
        band_keys([t])
    rows.append({"case": "signature, new, one document per call", "mb": round(mb, 1),
                 "mb_per_s": round(mb / (time.process_time() - c0), 1)})
    old = _old_module()
    if old is not None:
        m = old.MinHashDedup()
        c0 = time.process_time()
        for t in texts:
            m.signature(t)
        rows.append({"case": "signature, old (raw words, 14x8, per document)", "mb": round(mb, 1),
                     "mb_per_s": round(mb / (time.process_time() - c0), 1)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=10_000_000, help="documents for the exact dedup cases")
    ap.add_argument("--memory", type=str, default="512", help="disk path memory setting, MB")
    ap.add_argument("--sig-docs", type=int, default=1500, help="prose documents for the signature speed")
    ap.add_argument("--near", action="store_true", help="also run the near-dedup disk path (16 band records/doc)")
    args = ap.parse_args()
    memory = int(args.memory) << 20
    for row in signature_cases(args.sig_docs):
        print(json.dumps(row), flush=True)
    disk = exact_case(args.docs, "disk", memory)
    print(json.dumps(disk), flush=True)
    mem = exact_case(args.docs, "memory", memory)
    print(json.dumps(mem), flush=True)
    for r in (disk, mem):  # the path's own memory grows per document; extrapolate to 100M
        print(json.dumps({"case": f"extrapolated to 100M documents: {r['case']}",
                          "peak_rss_mb": round(r["peak_rss_mb"] - r["rss_above_start_mb"]
                                               + (r["bytes_per_doc"] * 1e8 / 2**20 if r is mem
                                                  else r["rss_above_start_mb"] + 1e8 / 8 / 2**20))}), flush=True)
    if args.near:
        print(json.dumps(exact_case(min(args.docs, 2_000_000), "disk", memory, near=True)), flush=True)


if __name__ == "__main__":
    main()
