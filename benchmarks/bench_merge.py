"""Benchmark `cook merge` (clean + exact dedup, then also --near-dedup) against the original approach on the same input.

    python benchmarks/bench_merge.py --mb 200

The input is generated: several document parquet files from several sources, built from paragraphs of
Python's help topics (real English and code), with a known number of planted exact duplicates (case,
whitespace and NFC variants, in other files and sources) and near-duplicates (a few words changed).
The baseline is the original `append_files`: every input's texts appended to one file in
`os.listdir` order, streaming, no cleaning and no dedup. Each run is a child process (its peak RSS
is its own). MB/s are of input text. Prints one JSON line.
"""

from __future__ import annotations

import argparse
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
mode, src, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
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
    s = merge_documents([src], out, "2GB", near_dedup=(mode == "near"))
    result = {"exact": s["exact_duplicates"], "near": s["near_duplicates"], "kept": s["documents_out"],
              "rejected": s["documents_rejected"], "filtered": s["documents_rejected"] - s["exact_duplicates"] - s["near_duplicates"]}
result["seconds"] = time.perf_counter() - t
result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
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


def make_corpus(folder: Path, mb: int, files: int = 6, dup_frac: float = 0.05, near_frac: float = 0.03, seed: int = 0) -> dict:
    """~`mb` MB of documents in `files` files over three sources; returns the planted duplicate counts."""
    from pydoc_data.topics import topics

    from tasks.corpus.documents import DocumentWriter

    paras = sorted({p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 80})
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


def _child(mode: str, src: Path, out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(src), str(out)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200, help="size of the generated input in MB of text")
    ap.add_argument("--no-near", action="store_true", help="skip the --near-dedup run")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        tmp = Path(tmp)
        src = tmp / "in"
        src.mkdir()
        corpus = make_corpus(src, args.mb)
        mb = corpus["text_mb"]
        base = _child("baseline", src, tmp / "appended.txt")
        exact = _child("exact", src, tmp / "merged")
        line = {
            "bench": "merge",
            "input_mb": round(mb, 1),
            "documents": corpus["documents"],
            "baseline_append_mb_s": round(mb / base["seconds"], 1),
            "merge_exact_mb_s": round(mb / exact["seconds"], 1),
            "ratio_exact_vs_baseline": round(base["seconds"] / exact["seconds"], 3),
            "planted_exact": corpus["exact"],
            "found_exact": exact["exact"],
            "planted_near": corpus["near"],
            "filtered": exact["filtered"],
            "baseline_peak_rss_mb": round(base["peak_rss_mb"]),
            "merge_exact_peak_rss_mb": round(exact["peak_rss_mb"]),
        }
        if not args.no_near:
            near = _child("near", src, tmp / "merged-near")
            line.update({
                "merge_near_mb_s": round(mb / near["seconds"], 1),
                "ratio_near_vs_baseline": round(base["seconds"] / near["seconds"], 3),
                "found_near": near["near"],
                "found_exact_with_near": near["exact"],
                "merge_near_peak_rss_mb": round(near["peak_rss_mb"]),
            })
        print(json.dumps(line))


if __name__ == "__main__":
    main()
