"""Training-step throughput of cook's GPT beside nanoGPT's model.py, measured in the same run.

One iteration = forward + backward + grad clip (1.0) + AdamW step + zero_grad, on random token
batches of the preset's shape; both models get the same shape, batch, optimizer settings and
thread count, bf16 autocast on CUDA (and torch.compile with --compile). Warm-up iterations are
excluded and the two are measured in alternating rounds (median per-iteration time of the
rounds) so drift and load from other processes hit both alike. Prints ONE
JSON line:

    python benchmarks/bench_train.py [--preset bench] [--warmup N] [--iters N] [--compile]

On CPU the bench shape takes seconds per iteration (the 50k-wide output head dominates), so the
CPU defaults are 2 warm-up and 8 measured iterations per model (about a minute and a half on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import redirect_stdout
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model.gpt import GPT  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.train import train_step  # noqa: E402


def train_step_fn(model, optimizer, device, grad_clip):
    """cook's real training step (model/train.py `train_step`, grad_accum 1) bound to one model; the same
    step drives both models, so the comparison is of the models."""
    lr = optimizer.param_groups[0]["lr"]
    return lambda x, y: train_step(model, optimizer, [(x, y)], 1, lr, grad_clip, device)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="bench")
    ap.add_argument("--vocab-size", type=int, default=None, help="default: 50304 for bench, else 50257")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the preset's")
    ap.add_argument("--warmup", type=int, default=None, help="default: 5 on CUDA, 2 on CPU")
    ap.add_argument("--iters", type=int, default=None, help="default: 20 on CUDA, 8 on CPU (seconds each)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating measurement rounds per model (default: one per iteration on CPU, 4 on CUDA)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    cpu = not args.device.startswith("cuda")
    args.warmup = args.warmup if args.warmup is not None else (2 if cpu else 5)
    args.iters = args.iters if args.iters is not None else (8 if cpu else 20)
    args.rounds = args.rounds or (args.iters if cpu else 4)

    import nanogpt_baseline as nano

    if args.threads:
        torch.set_num_threads(args.threads)
    vocab = args.vocab_size or (50304 if args.preset == "bench" else 50257)
    config, train = get_preset(args.preset, vocab)
    config.dropout = 0.0
    B, T = args.batch_size or train["batch_size"], config.block_size
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    opt_kw = dict(weight_decay=train["weight_decay"], learning_rate=train["learning_rate"], betas=train["betas"],
                  device_type=device.type)

    torch.manual_seed(0)
    ours = GPT(config).to(device)
    our_opt = ours.configure_optimizer(**opt_kw)
    our_run = ours
    torch.manual_seed(0)
    with open(os.devnull, "w") as devnull, redirect_stdout(devnull):  # nanoGPT prints its sizes
        base = nano.GPT(nano.GPTConfig(block_size=T, vocab_size=config.padded_vocab_size, n_layer=config.n_layer,
                                       n_head=config.n_head, n_embd=config.n_embd, dropout=0.0,
                                       bias=config.bias)).to(device)
        base_opt = base.configure_optimizers(**opt_kw)
    base_run = base
    if args.compile:
        our_run, base_run = torch.compile(ours), torch.compile(base)

    our_step = train_step_fn(our_run, our_opt, args.device, train["grad_clip"])
    base_step = train_step_fn(base_run, base_opt, args.device, train["grad_clip"])

    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (B, T + 1), generator=g) for _ in range(4)]
    batches = [(b[:, :-1].contiguous().to(device), b[:, 1:].contiguous().to(device)) for b in batches]

    def run(step, n, start):
        for i in range(n):
            x, y = batches[(start + i) % len(batches)]
            step(x, y)
        if cuda:
            torch.cuda.synchronize()

    for step in (our_step, base_step):
        run(step, args.warmup, 0)

    per_round = max(1, args.iters // args.rounds)
    times: dict[str, list[float]] = {"ours": [], "base": []}
    for r in range(args.rounds):
        order = [("ours", our_step), ("base", base_step)]
        for name, step in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            run(step, per_round, r * per_round)
            times[name].append((time.perf_counter() - t0) / per_round)

    ours_dt, base_dt = statistics.median(times["ours"]), statistics.median(times["base"])
    result = {
        "tokens_per_s": round(B * T / ours_dt, 1),
        "ms_per_iter": round(ours_dt * 1e3, 2),
        "config": dict(n_layer=config.n_layer, n_head=config.n_head, n_embd=config.n_embd, block_size=T,
                       batch_size=B, vocab_size=vocab),
        "mfu": round(mfu, 4) if cuda and (mfu := ours.estimate_mfu(B, ours_dt)) is not None else None,
        "baseline": {"name": "nanoGPT", "tokens_per_s": round(B * T / base_dt, 1), "ms_per_iter": round(base_dt * 1e3, 2)},
        "speedup": round(base_dt / ours_dt, 3),
        "device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "preset": args.preset,
        "step": "model/train.py train_step",
        "compile": args.compile,
        "iters": per_round * args.rounds,
        "warmup": args.warmup,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
