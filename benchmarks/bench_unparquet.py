"""Benchmark `cook unparquet` (streaming, text columns only) against the original approach (pandas
`read_parquet` of the whole file, then `to_csv` of every column) on a generated Cosmopedia-shaped file.

    python benchmarks/bench_unparquet.py --mb 500          # needs pandas (the `bench` extra)
    python benchmarks/bench_unparquet.py --input x.parquet  # a real Cosmopedia file

Each side runs in its own child process, so its peak RSS (VmHWM) is its own; imports are not timed. cook runs as the
plain `convert_file` function (no Prefect), in the text, parquet and csv formats. Prints one JSON line:
MB/s are MB of text (the `text` column's UTF-8 bytes) per second of wall time.
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

COLUMNS = ["prompt", "text", "text_token_length", "seed_data", "format", "audience"]  # Cosmopedia's, in one subset's order


def make_file(path: Path, mb: int, seed: int = 0, rows_per_group: int = 8192) -> Path:
    """~`mb` MB of text in a Cosmopedia-shaped parquet file: 2-8 KB texts, ~1 KB prompts, several row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydoc_data.topics import topics

    paras = [p.strip() for t in topics.values() for p in t.split("\n\n") if len(p.strip()) > 40]
    rng = random.Random(seed)
    rng.shuffle(paras)
    pool = "\n\n".join(paras * 4)  # ~15 MB of English and code to slice texts from
    fmts = ["textbook", "blogpost", "wikihow", "story", "textbook_narrative"]
    auds = ["college_students", "general", "young_children", "researchers", "high_school_students"]
    schema = pa.schema([(c, pa.int64() if c == "text_token_length" else pa.string()) for c in COLUMNS])
    target, size = mb * 1_000_000, 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, schema) as w:  # snappy, like the Hub's files
        while size < target:
            cols: dict[str, list] = {c: [] for c in COLUMNS}
            for _ in range(rows_per_group):
                n = rng.randint(2000, 8000)
                a = rng.randrange(0, len(pool) - n)
                text = pool[a : a + n]
                b = rng.randrange(0, len(pool) - 1200)
                cols["text"].append(text)
                cols["prompt"].append("Write a textbook chapter about the following extract:\n" + pool[b : b + rng.randint(300, 1200)])
                cols["text_token_length"].append(len(text) // 4)
                cols["seed_data"].append(rng.choice(["web_samples_v2", "stanford", "wikihow"]))
                cols["format"].append(rng.choice(fmts))
                cols["audience"].append(rng.choice(auds))
                size += len(text.encode("utf-8"))
                if size >= target:
                    break
            w.write_table(pa.table(cols, schema=schema))
    return path


_CHILD = """
import json, sys, time
side, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
if side == "pandas":
    import pandas as pd
else:
    from tasks.corpus.unparquet import convert_file
t = time.perf_counter()  # imports excluded: a constant, not a rate
if side == "pandas":
    df = pd.read_parquet(src)  # the original: the whole file in memory, every column
    df.to_csv(out + "/out.csv", index=False)
else:
    convert_file(src, out, side.split(":")[1])
seconds = time.perf_counter() - t
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the parent
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm / 1024}))
"""


def run_side(side: str, src: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", _CHILD, side, str(src), str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{side} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500, help="MB of text in the generated file")
    ap.add_argument("--input", help="a parquet file to convert instead of a generated one")
    args = ap.parse_args()
    try:
        import pandas  # noqa: F401
    except ImportError:
        sys.exit("the baseline needs pandas: pip install -e '.[bench]'")
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory(prefix="cook-bench-unparquet-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        src = Path(args.input) if args.input else make_file(tmp / "data" / "stanford" / "train-00000-of-00001.parquet", args.mb)
        gen_s = time.perf_counter() - t
        pf = pq.ParquetFile(src)
        text_mb = sum(pc.sum(pc.binary_length(pf.read_row_group(i, columns=["text"]).column("text"))).as_py() or 0
                      for i in range(pf.num_row_groups)) / 1e6
        file_mb = src.stat().st_size / 1e6
        res = {side: run_side(side, src, tmp / side.replace(":", "_")) for side in ("pandas", "cook:text", "cook:parquet", "cook:csv")}

    base = res["pandas"]["seconds"]
    fig = {"bench": "unparquet", "text_mb": round(text_mb, 1), "file_mb": round(file_mb, 1),
           "row_groups": pf.num_row_groups, "rows": pf.metadata.num_rows}
    for side, r in res.items():
        key = side.replace(":", "_")
        fig[f"{key}_mb_per_s"] = round(text_mb / r["seconds"], 1)
        fig[f"{key}_peak_rss_mb"] = round(r["peak_rss_mb"], 1)
        if side != "pandas":
            fig[f"{key}_speedup"] = round(base / r["seconds"], 2)
    fig["generate_s"] = round(gen_s, 1)
    fig["load_avg_1m"] = round(os.getloadavg()[0], 2)  # other work on the machine skews every figure
    print(json.dumps(fig))


if __name__ == "__main__":
    main()
