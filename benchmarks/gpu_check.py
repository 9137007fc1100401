"""Helpers of benchmarks/gpu_check.sh: the machine's description, an offline corpus, and one JSON line per run.

    python benchmarks/gpu_check.py device              JSON: torch, CUDA, the GPUs (name, memory, capability, bf16)
    python benchmarks/gpu_check.py text OUT --docs N   a text-format corpus (documents ending in <|endoftext|>) of
                                                       word salad drawn from Python's own help topics: offline, seeded
    python benchmarks/gpu_check.py summary RUN --config NAME --flags="FLAGS" --wall S --log LOG
                                                       JSON: medians of RUN/metrics.jsonl's train records (tokens/s,
                                                       ms/iter, MFU), the peak memory, losses, and the log's warnings
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
from pathlib import Path

SEPARATOR = "\n<|endoftext|>\n"  # cook's text format (tasks/corpus/documents.py): `cook tokenize` reads each document


def device() -> dict:
    import torch

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": []}
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        p = torch.cuda.get_device_properties(i)
        out["gpus"].append({"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1),
                            "capability": f"{p.major}.{p.minor}", "bf16": p.major >= 8})
    return out


def text(out: Path, docs: int, words: int, seed: int = 0) -> None:
    """`docs` documents of about `words` words each, drawn from the vocabulary of Python's help topics."""
    from pydoc_data.topics import topics

    vocab = sorted({w for t in topics.values() for w in re.findall(r"[A-Za-z][a-z]+", t)})
    rng = random.Random(seed)
    weights = [1 / (rank + 1) for rank in range(len(vocab))]  # Zipf-like, so common words repeat as in prose
    rng.shuffle(vocab)
    with open(out, "w", encoding="utf-8") as f:
        for _ in range(docs):
            n = rng.randint(words // 2, words * 3 // 2)
            sentence = rng.choices(vocab, weights, k=n)
            body = " ".join(w + ("." if rng.random() < 0.07 else "") for w in sentence)
            f.write(body + SEPARATOR)


def summary(run: Path, config: str, flags: str, wall: float | None, log: Path | None) -> dict:
    """What one configuration achieved: medians over the train records past the first 10% of the run (compilation
    and warm-up excluded), the peak memory over all of them, the losses, and any warnings its log printed."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    last_iter = max((r["iter"] for r in train), default=0)
    steady = [r for r in train if r["iter"] > max(1, last_iter // 10)] or train[-1:]
    info = json.loads((run / "run.json").read_text())

    def median(key: str):
        vals = [r[key] for r in steady if isinstance(r.get(key), (int, float))]
        return round(statistics.median(vals), 4) if vals else None

    peaks = [r["peak_mem_mb"] for r in train if isinstance(r.get("peak_mem_mb"), (int, float))]
    warnings = []
    if log is not None and log.is_file():
        warnings = [line.strip()[:200] for line in log.read_text(errors="replace").splitlines()
                    if re.search(r"warn", line, re.IGNORECASE)]
    return {
        "config": config, "flags": flags, "preset": info.get("preset"),
        "batch_size": info["train"].get("batch_size"), "grad_accum": info["train"].get("grad_accum"),
        "block_size": info["model"].get("block_size"), "iters": last_iter,
        "mfu": median("mfu"), "tokens_per_s": median("tokens_per_s"), "ms_per_iter": median("ms_per_iter"),
        "peak_mem_mb": max(peaks) if peaks else None,
        "loss_first": train[0]["loss"] if train else None, "loss_last": train[-1]["loss"] if train else None,
        "val_loss": evals[-1].get("val_loss") if evals else None,
        "wall_s": wall, "warnings": warnings[:5],
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("device")
    t = sub.add_parser("text")
    t.add_argument("out", type=Path)
    t.add_argument("--docs", type=int, default=3000)
    t.add_argument("--words", type=int, default=800)
    s = sub.add_parser("summary")
    s.add_argument("run", type=Path)
    s.add_argument("--config", required=True)
    s.add_argument("--wall", type=float)
    s.add_argument("--log", type=Path)
    s.add_argument("--flags", default="", help="the configuration's own cook train flags, as one string")
    a = ap.parse_args(argv)
    if a.cmd == "device":
        print(json.dumps(device()))
    elif a.cmd == "text":
        text(a.out, a.docs, a.words)
    else:
        print(json.dumps(summary(a.run, a.config, a.flags, a.wall, a.log)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
