"""Benchmark: cook's dump reader vs `wikiextractor --no-templates` on the same dumps, in the same run.

Cases: two differently shaped generators x single-stream `.xml.bz2` and plain `.xml` (and, with --multistream,
a multistream `.xml.bz2` + index):
  - `dumpgen`: tests/dumpgen.py, mid-sized articles of tricky wikitext, 8% redirects, 8% other namespaces,
    400 pages repeated (bz2 compresses it ~11x);
  - `alt`: benchmarks/dumpgen_alt.py, log-normal article lengths (stubs to 150 KB articles dense with refs,
    infoboxes, tables, inline templates), 40% redirects, 12% other namespaces, nothing repeated (~4.5x in bz2).

For each case, three commands run as fresh subprocesses on the same file:
  - cook, whole: `cook scrape wiki-dump DUMP --out DIR --workers N` (Prefect flow, as a user runs it);
  - cook, reader: `extract_dump` (parse, clean, write the parquet shards) timed inside a fresh process, so
    the time past start-up (imports, Prefect) is measured, not estimated;
  - wikiextractor 3.1.0: `python -m wikiextractor.WikiExtractor DUMP --no-templates --processes N -o DIR`.
Start-up of each whole command is measured on a 40-page dump of the same generator and format and subtracted:
"past start-up" = articles / (whole seconds - start-up seconds) (`ratio_past_startup`; noisy, as Prefect's
start-up varies by seconds between runs). `ratio_command_read` uses the read's own duration inside the command
(`seconds` in its summary.json) instead. CPU seconds are user+sys of the command and
all its children (`RUSAGE_CHILDREN`), which stay comparable on a loaded machine where wall time does not.

Prints ONE JSON line per case (goal: ratio_past_startup >= 2 on bz2):

    python benchmarks/bench_wikidump.py [--mb 200] [--quick] [--workers 2] [--generators dumpgen,alt]
                                        [--formats bz2,xml] [--multistream] [--no-cook-command]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.dumpgen_alt import write_alt_dump  # noqa: E402
from tests.dumpgen import make_pages, repeat_pages, write_dump  # noqa: E402

READER = """
import json, resource, sys, time
def cpu():
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))
t0 = time.perf_counter()
from tasks.sources.wikidump import extract_dump
import prefect  # noqa: F401 - start-up: extract_dump's progress bar asks Prefect whether it runs in a flow
t1, c1 = time.perf_counter(), cpu()
s = extract_dump(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]))
t2, c2 = time.perf_counter(), cpu()
print(json.dumps({"import_s": t1 - t0, "extract_s": t2 - t1, "extract_cpu_s": c2 - c1, "kept": s["kept"]}))
"""


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float, subprocess.CompletedProcess]:
    """(wall seconds, CPU seconds of the command and all its children, result)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-800:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), r


def _wikiextractor(dump: Path, out: Path, workers: int) -> tuple[float, float, int]:
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, _ = _run([sys.executable, "-m", "wikiextractor.WikiExtractor", str(dump), "--no-templates", "-o", str(out),
                         "--processes", str(workers), "-q"])
    n = sum(len(re.findall(r"^<doc ", p.read_text(encoding="utf-8"), re.M)) for p in out.rglob("wiki_*"))
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, n


def _cook_command(dump: Path, out: Path, workers: int, env: dict) -> tuple[float, float, int, float]:
    """(wall, CPU, articles, seconds the read took inside the command: the summary's `seconds`)."""
    shutil.rmtree(out, ignore_errors=True)
    cook = shutil.which("cook", path=str(Path(sys.executable).parent)) or "cook"
    wall, cpu, r = _run([cook, "scrape", "wiki-dump", str(dump), "--out", str(out), "--workers", str(workers)], env)
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, summary["kept"], summary["seconds"]


def _cook_reader(dump: Path, out: Path, workers: int) -> tuple[float, float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    wall, cpu, r = _run([sys.executable, "-c", READER, str(dump), str(out), str(workers)])
    shutil.rmtree(out, ignore_errors=True)
    return wall, cpu, json.loads(r.stdout.strip().splitlines()[-1])


def _make_xml(gen: str, path: Path, mb: float) -> Path:
    """A plain XML dump of at least `mb` MB from generator `gen`."""
    if gen == "alt":
        return write_alt_dump(path, mb, seed=7)[0]
    base = make_pages(400, seed=1)
    per_page = sum(len(p.text) for p in base) / len(base) + 500
    return write_dump(path, repeat_pages(base, max(40, int(mb * 1e6 / per_page) + 1)))


def _compress(xml: Path, out: Path) -> Path:
    """`xml` as ONE bz2 stream (lbzip2 when installed, which writes a single stream in parallel)."""
    if shutil.which("lbzip2"):
        with open(out, "wb") as f:
            subprocess.run(["lbzip2", "-9", "-c", str(xml)], stdout=f, check=True)
        return out
    import bz2

    with open(xml, "rb") as src, bz2.open(out, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    return out


def _multistream(xml: Path, out: Path) -> Path:
    """`xml` re-cut as a multistream dump (streams of 100 pages) + index, as Wikimedia publishes."""
    import bz2
    from concurrent.futures import ProcessPoolExecutor

    data = xml.read_bytes()
    first = data.find(b"<page>")
    cuts, pos = [0, first], first
    while True:
        n = 0
        end = pos
        while n < 100:
            e = data.find(b"</page>", end)
            if e < 0:
                break
            end, n = e + 8, n + 1
        if n == 0:
            break
        cuts.append(end)
        pos = end
    cuts.append(len(data))
    parts = [data[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        streams = list(pool.map(bz2.compress, parts, chunksize=16))
    lines, off = [], len(streams[0])
    with open(out, "wb") as f:
        for s in streams:
            f.write(s)
    for part, s in zip(parts[1:], streams[1:]):
        lines += [f"{off}:{m.decode()}:t\n" for m in re.findall(rb"<id>(\d+)</id>", part)[:1]]
        off += len(s)
    (out.parent / (out.name[: -len(".xml.bz2")] + "-index.txt.bz2")).write_bytes(bz2.compress("".join(lines).encode()))
    return out


def _dumps(gen: str, formats: list[str], folder: Path, stem: str, mb: float) -> dict[str, Path]:
    xml = _make_xml(gen, folder / f"{stem}.xml", mb)
    out = {"xml": xml}
    if "bz2" in formats:
        out["bz2"] = _compress(xml, folder / f"{stem}.xml.bz2")
    if "multistream" in formats:
        out["multistream"] = _multistream(xml, folder / f"{stem}-multistream.xml.bz2")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=200.0, help="XML size to generate per case (MB)")
    ap.add_argument("--quick", action="store_true", help="small dumps (--mb 12): checks the bench runs, times mean little")
    ap.add_argument("--workers", type=int, default=None, help="cook --workers and wikiextractor --processes (default: cores)")
    ap.add_argument("--generators", default="dumpgen,alt")
    ap.add_argument("--formats", default="bz2,xml")
    ap.add_argument("--multistream", action="store_true", help="also the same pages as a multistream .xml.bz2 + index")
    ap.add_argument("--no-cook-command", action="store_true", help="skip the whole `cook scrape wiki-dump` command")
    args = ap.parse_args()
    mb = 12.0 if args.quick else args.mb
    workers = args.workers or len(os.sched_getaffinity(0))
    formats = args.formats.split(",") + (["multistream"] if args.multistream else [])

    from tasks.sources import dumpio

    tmp = Path(tempfile.mkdtemp(prefix="bench-wikidump-"))
    env = {**os.environ, "COOK_DATA_DIR": str(tmp / "data"), "PYTHONUNBUFFERED": "1"}
    try:
        for gen in args.generators.split(","):
            d = tmp / gen
            d.mkdir()
            t0 = time.perf_counter()
            dumps = _dumps(gen, formats, d, f"enwiki-{gen}-pages-articles", mb)
            gen_s = time.perf_counter() - t0
            tinies = _dumps(gen, formats, d, f"enwiki-tiny{gen}-pages-articles", 0.1 if gen == "alt" else 0)
            xml_mb = dumps["xml"].stat().st_size / 1e6
            for fmt in formats:
                dump, tiny = dumps[fmt], tinies[fmt]
                res: dict = {"bench": "wikidump", "generator": gen, "format": fmt, "workers": workers,
                             "xml_mb": round(xml_mb, 1), "file_mb": round(dump.stat().st_size / 1e6, 1),
                             "generate_s": round(gen_s, 1),
                             "bz2_decoder": (f"indexed_bzip2 x{dumpio.decoder_threads(workers)}" if dumpio.indexed_bzip2 is not None and dumpio.decoder_threads(workers) >= 2 else "bz2 (one thread)") if fmt == "bz2" else
                             ("bz2 in the workers" if fmt == "multistream" else "none")}
                # wikiextractor
                we_s, we_cpu, we_n = _wikiextractor(dump, tmp / "we-out", workers)
                we_start, we_start_cpu, _ = _wikiextractor(tiny, tmp / "we-out", workers)
                res.update({"wikiextractor_articles": we_n, "wikiextractor_s": round(we_s, 2),
                            "wikiextractor_cpu_s": round(we_cpu, 2), "wikiextractor_startup_s": round(we_start, 2)})
                we_rate = we_n / max(we_s - we_start, 1e-6)
                res["wikiextractor_past_startup_articles_per_s"] = round(we_rate, 1)
                # cook's reader in a fresh process (extract_dump timed inside it)
                r_s, r_cpu, r = _cook_reader(dump, tmp / "cook-out", workers)
                res.update({"cook_articles": r["kept"], "cook_reader_s": round(r["extract_s"], 2),
                            "cook_reader_process_s": round(r_s, 2), "cook_reader_cpu_s": round(r_cpu, 2),
                            "cook_reader_articles_per_s": round(r["kept"] / r["extract_s"], 1)})
                res["ratio_reader_past_startup"] = round(res["cook_reader_articles_per_s"] / we_rate, 2)
                res["cook_reader_cpu_past_startup_s"] = round(r["extract_cpu_s"], 2)
                res["wikiextractor_cpu_past_startup_s"] = round(we_cpu - we_start_cpu, 2)
                res["ratio_cpu"] = round(we_cpu / r_cpu, 2)
                res["ratio_cpu_past_startup"] = round((we_cpu - we_start_cpu) / r["extract_cpu_s"], 2)
                # the whole command, as a user runs it
                if not args.no_cook_command:
                    c_s, c_cpu, c_n, c_read = _cook_command(dump, tmp / "cook-cmd-out", workers, env)
                    c_start, _, _, _ = _cook_command(tiny, tmp / "cook-cmd-out", workers, env)
                    rate = c_n / max(c_s - c_start, 1e-6)
                    res.update({"cook_command_s": round(c_s, 2), "cook_command_cpu_s": round(c_cpu, 2),
                                "cook_command_startup_s": round(c_start, 2),
                                "cook_command_read_s": round(c_read, 2),  # inside the command (summary.json)
                                "cook_command_past_startup_articles_per_s": round(rate, 1),
                                "ratio_past_startup": round(rate / we_rate, 2),
                                "ratio_command_read": round((c_n / c_read) / we_rate, 2),
                                "ratio_whole": round((c_n / c_s) / (we_n / we_s), 2)})
                res["same_articles"] = res["cook_articles"] == we_n
                res["goal_2x_past_startup_met"] = min(res["ratio_reader_past_startup"],
                                                      res.get("ratio_command_read", 1e9)) >= 2.0
                res["load_avg_1m"] = round(os.getloadavg()[0], 2)
                print(json.dumps(res), flush=True)
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
