"""Chunked training: checkpoints, seeds, LR continuity, resume after SIGKILL / SIGTERM, bad inputs, --init-from."""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from chardata import make_char_data
from conftest import artifacts_of, cancel_tagged, new_tag, tagged_flow_runs
from safetensors.torch import load_file

from model.checkpoint import load_model_file, read_state
from model.dataloader import TokenBatches, derive_seed
from model.errors import CookError
from model.gpt import GPT, GPTConfig
from model.schedule import Schedule
from model.train import ChunkOptions, RunSpec, lr_at, pre_cooldown_checkpoint, prepare_run, read_run, train_worker
from tasks.training.train import check_train_args

REPO = Path(__file__).resolve().parents[1]
REF_TAG = new_tag()  # marks the reference run's flow run
# the reference run: 3 chunks, dropout on (so a resume must replay the dropout masks); the subprocess test must use
# the very same flags
CHUNKS, ITERS, SEED, DROPOUT = 3, 60, 7, 0.1
FLAGS = ["--chunks", CHUNKS, "--iters-per-chunk", ITERS, "--seed", SEED, "--eval-interval", ITERS, "--eval-iters", 4,
         "--dropout", DROPOUT]
PRE = "chunk_000003-iter_0000144"  # where the reference run's cooldown starts (the last 20% of 180 iterations)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def chunk_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir() and p.name.startswith("chunk_"))


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_data(tmp_path_factory.mktemp("data") / "tokens")


@pytest.fixture(scope="module")
def ref_run(data, tmp_path_factory, prefect_api) -> Path:
    """An uninterrupted 3-chunk run through the Prefect flow, in this process."""
    import prefect

    from flows.train import train_flow

    run = tmp_path_factory.mktemp("ref") / "run"
    with prefect.tags(REF_TAG):
        train_flow(data=str(data), run=str(run), preset="tiny", chunks=CHUNKS, iters_per_chunk=ITERS, seed=SEED,
                   eval_interval=ITERS, eval_iters=4, dropout=DROPOUT)
    return run


def test_lr_schedule():
    lrs = [lr_at(i, 10, 100, 1e-3, 1e-4) for i in range(120)]
    assert lrs[0] == pytest.approx(1e-3 / 11) and lrs[9] == pytest.approx(1e-3 * 10 / 11)
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # cosine only decays
    assert lrs[55] == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi * 0.5)) * 9e-4)
    assert all(lr == 1e-4 for lr in lrs[100:])  # past the run's length: min_lr


def test_batches_are_stateless(data):
    b = TokenBatches(data, "train", block_size=16, batch_size=4)
    x1, y1 = b.batch(123, 5, 0)
    x2, y2 = TokenBatches(data, "train", block_size=16, batch_size=4).batch(123, 5, 0)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # targets are the next tokens
    assert not torch.equal(b.batch(123, 6, 0)[0], x1) and not torch.equal(b.batch(124, 5, 0)[0], x1)
    assert not torch.equal(b.batch(123, 5, 1)[0], x1)
    assert derive_seed(7, "chunk", 1) != derive_seed(7, "chunk", 2)


def test_three_chunks_checkpoints_seeds_lr(ref_run):
    assert chunk_dirs(ref_run) == ["chunk_000001", "chunk_000002", "chunk_000003", PRE]
    ck = ref_run / "checkpoints"
    for name in chunk_dirs(ref_run):
        load_file(ck / name / "model.safetensors")  # plain safetensors, no pickle
        assert "transformer.h.0.attn.c_attn.weight.exp_avg" in load_file(ck / name / "optimizer.safetensors")
        cfg = json.loads((ck / name / "config.json").read_text())
        assert cfg["model"]["n_layer"] == 2 and cfg["tokenizer"]["encoding"] == "char" and cfg["data"]["fingerprint"]
    states = [read_state(ck / n) for n in chunk_dirs(ref_run) if "-iter_" not in n]
    assert [s["iteration"] for s in states] == [ITERS, 2 * ITERS, 3 * ITERS]
    seeds = [s["chunk_seed"] for s in states]
    assert len(set(seeds)) == 3 and states[-1]["chunk_seeds"] == {str(i + 1): s for i, s in enumerate(seeds)}
    assert all(s["rng"]["torch"] and s["data_cursor"]["iteration"] == s["iteration"] for s in states)
    info = read_run(ref_run)
    tc = info["train"]
    assert states[-1]["tokens_seen"] == 3 * ITERS * tc["batch_size"] * tc["grad_accum"] * info["model"]["block_size"]
    assert (ref_run / "tokenizer" / "tokenizer.json").is_file()
    best = json.loads((ck / "best.json").read_text())
    assert best["name"] in chunk_dirs(ref_run)
    from model.atomic import current_umask

    for f in ("model.safetensors", "optimizer.safetensors", "state.json"):  # readable by others, as open() would make them
        assert stat.S_IMODE((ck / "chunk_000001" / f).stat().st_mode) == 0o666 & ~current_umask(), f

    assert info["total_iters"] == CHUNKS * ITERS and info["seed"] == SEED and info["tokenizer"]["encoding"] == "char"
    assert info["model"]["dropout"] == DROPOUT and info["sampler"] == "epoch" and info["schedule"]["kind"] == "wsd"
    assert pre_cooldown_checkpoint(info) == (144, PRE) and read_state(ck / PRE)["iteration"] == 144
    train = [r for r in metrics(ref_run) if r["kind"] == "train"]
    iters = [r["iter"] for r in train]
    assert ITERS in iters and ITERS + 1 in iters and 2 * ITERS in iters and 2 * ITERS + 1 in iters  # both sides of each boundary
    sched = Schedule.from_run(info)
    for r in train:  # one schedule over the whole run, never restarted at a chunk
        assert r["lr"] == pytest.approx(sched.lr_at(r["iter"] - 1, CHUNKS * ITERS))
    assert {r["lr"] for r in train if tc["warmup_iters"] < r["iter"] <= 144} == {tc["learning_rate"]}  # stable
    assert train[-1]["lr"] < 0.2 * tc["learning_rate"]  # cooled down
    by_iter = {r["iter"]: r["lr"] for r in train}
    step = abs(by_iter[ITERS + 1] - by_iter[ITERS])
    assert step < 0.05 * tc["learning_rate"]
    evals = [r for r in metrics(ref_run) if r["kind"] == "eval"]
    assert [(r["chunk"], r["iter"]) for r in evals] == [(1, ITERS), (2, 2 * ITERS), (3, 3 * ITERS)]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert all(r["val_bpb"] == pytest.approx(r["val_loss"] * r_bytes_ratio(ref_run, "val")) for r in evals)
    assert [r["epochs"] for r in evals] == sorted(r["epochs"] for r in evals) and evals[0]["epochs"] > 0

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        arts = artifacts_of(client, tagged_flow_runs(client, REF_TAG), "train-chunk-2")
    assert len(arts) == 1 and "| iter | train loss | val loss | val bits/byte | epoch | lr |" in arts[0].data


def r_bytes_ratio(run: Path, split: str) -> float:
    """Tokens per byte / ln 2 of a split of the run's data: val_bpb = val_loss * this."""
    meta = json.loads((Path(read_run(run)["data"]["dir"]) / "meta.json").read_text())["splits"][split]
    return meta["tokens"] / meta["bytes"] / math.log(2)


def test_extend_rerun_and_retention(ref_run, tmp_path):
    """More chunks later: the run goes back to where it started cooling down and trains on at the full rate; a
    finished run re-runs as a no-op; no kept iteration's learning rate changes."""
    from flows.train import train_flow

    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    data = read_run(run)["data"]["dir"]
    kw = dict(data=data, run=str(run), preset="tiny", iters_per_chunk=ITERS, seed=SEED, eval_interval=ITERS, eval_iters=4,
              keep_last=2)
    before = len(metrics(run))
    train_flow(chunks=CHUNKS, **kw)  # nothing left to do
    train_flow(chunks=1, **kw)  # nor with fewer chunks than recorded
    assert len(metrics(run)) == before and chunk_dirs(run) == ["chunk_000001", "chunk_000002", "chunk_000003", PRE]

    train_flow(chunks=CHUNKS + 1, **kw)
    info = read_run(run)
    assert info["chunks"] == CHUNKS + 1 and info["total_iters"] == (CHUNKS + 1) * ITERS
    # the cooled chunk 3 is set aside, whole; training went on from iteration 144
    assert same_tensors(run / "cooled" / "chunk_000003" / "model.safetensors", ref_run / "checkpoints" / "chunk_000003" / "model.safetensors")
    lrs = {r["iter"]: r["lr"] for r in metrics(run) if r["kind"] == "train"}
    ref_lrs = {r["iter"]: r["lr"] for r in metrics(ref_run) if r["kind"] == "train"}
    assert all(lrs[i] == ref_lrs[i] for i in ref_lrs if i <= 144)  # the past before the cooldown is untouched
    assert [r for r in metrics(run) if r["iter"] <= 144] == [r for r in metrics(ref_run) if r["iter"] <= 144]
    sched = Schedule.from_run(info)
    assert all(lr == pytest.approx(sched.lr_at(i - 1, (CHUNKS + 1) * ITERS)) for i, lr in lrs.items())
    assert lrs[180] == info["train"]["learning_rate"]  # no longer cooled at the old end
    best = json.loads((run / "checkpoints" / "best.json").read_text())["name"]
    assert set(chunk_dirs(run)) == {"chunk_000003", "chunk_000004", "chunk_000004-iter_0000192", best}  # last 2, best, pre-cooldown


def test_one_chunk_extended_to_three_is_three_planned(ref_run, data, tmp_path):
    """Plan 1 chunk (it cools down at its end), then ask for 3: the run goes back to its pre-cooldown checkpoint,
    and ends bit-identical to the reference run planned for 3 chunks from the start."""
    from flows.train import train_flow

    run = tmp_path / "run"
    kw = dict(data=str(data), run=str(run), preset="tiny", iters_per_chunk=ITERS, seed=SEED, eval_interval=ITERS,
              eval_iters=4, dropout=DROPOUT)
    train_flow(chunks=1, **kw)
    short = {r["iter"]: r["lr"] for r in metrics(run) if r["kind"] == "train"}
    assert short[ITERS] < 0.2 * read_run(run)["train"]["learning_rate"]  # chunk 1 ended cooled down
    cooled = load_file(run / "checkpoints" / "chunk_000001" / "model.safetensors")
    train_flow(chunks=CHUNKS, **kw)
    assert load_file(run / "cooled" / "chunk_000001" / "model.safetensors").keys() == cooled.keys()
    for f in ("model.safetensors", "optimizer.safetensors"):
        for name in ("chunk_000001", "chunk_000002", "chunk_000003"):
            assert same_tensors(run / "checkpoints" / name / f, ref_run / "checkpoints" / name / f), (name, f)
    assert [r for r in metrics(run) if r["kind"] == "eval"] == [r for r in metrics(ref_run) if r["kind"] == "eval"]
    ref_train = {r["iter"]: (r["loss"], r["lr"]) for r in metrics(ref_run) if r["kind"] == "train"}
    train = {r["iter"]: (r["loss"], r["lr"]) for r in metrics(run) if r["kind"] == "train"}
    assert all(train[i] == ref_train[i] for i in set(train) & set(ref_train)) and len(set(train) & set(ref_train)) > 10
    # no kept iteration's learning rate changed: those before the old cooldown start (iteration 48) are as they were
    lrs = {r["iter"]: r["lr"] for r in metrics(run) if r["kind"] == "train"}
    assert all(lrs[i] == short[i] for i in short if i <= 48) and lrs[ITERS] == read_run(run)["train"]["learning_rate"]


def test_bad_inputs_plain(ref_run, data, tmp_path):
    with pytest.raises(CookError, match=r"^--iters-per-chunk 6000 is above 5000: split training into more chunks$"):
        check_train_args(str(data), str(tmp_path / "r"), RunSpec(iters_per_chunk=6000), ChunkOptions())
    with pytest.raises(CookError, match="positive integer"):
        check_train_args(str(data), str(tmp_path / "r"), RunSpec(chunks=0), ChunkOptions())

    # truncated and garbage safetensors
    run = tmp_path / "run"
    shutil.copytree(ref_run, run)
    model_file = run / "checkpoints" / PRE / "model.safetensors"  # extending resumes from the pre-cooldown one
    model_file.write_bytes(model_file.read_bytes()[:-100])
    with pytest.raises(CookError, match=re.escape(f"{model_file}: truncated or corrupt safetensors file")):
        train_worker(str(data), str(run), chunks=CHUNKS + 1, iters_per_chunk=ITERS, seed=SEED, eval_iters=2)
    model_file.write_bytes(b"\xff" * 64)
    with pytest.raises(CookError, match="truncated or corrupt safetensors file"):
        load_model_file(model_file, GPT(GPTConfig(**read_run(run)["model"])))

    # a checkpoint of another shape
    other = GPT(GPTConfig(**{**read_run(ref_run)["model"], "n_embd": 32}))
    with pytest.raises(CookError, match=r"does not match the model: .* has shape"):
        load_model_file(ref_run / "checkpoints" / "chunk_000003" / "model.safetensors", other)
    # resuming with another preset / other flags
    with pytest.raises(CookError, match="created with preset tiny, not bench"):
        prepare_run(data, ref_run, RunSpec("bench", CHUNKS, ITERS, SEED))
    with pytest.raises(CookError, match="created with --iters-per-chunk 60, not 50"):
        prepare_run(data, ref_run, RunSpec("tiny", CHUNKS, 50, SEED))
    with pytest.raises(CookError, match="created with --lr"):
        prepare_run(data, ref_run, RunSpec("tiny", CHUNKS, ITERS, SEED, learning_rate=0.5))
    with pytest.raises(CookError, match="created with --cooldown 0.2, not 10"):
        prepare_run(data, ref_run, RunSpec("tiny", CHUNKS, ITERS, SEED, cooldown=10))
    with pytest.raises(CookError, match="created with --schedule wsd, not cosine"):
        prepare_run(data, ref_run, RunSpec("tiny", CHUNKS, ITERS, SEED, schedule="cosine"))
    # the same tokenizer but other tokens: no resume (that is what --init-from is for)
    moved = make_char_data(tmp_path / "other-tokens", seed=1)
    with pytest.raises(CookError, match="not the data run .* was trained on"):
        prepare_run(moved, ref_run, RunSpec("tiny", CHUNKS, ITERS, SEED))
    # a checkpoint written under another model config than the run's
    run2 = tmp_path / "run2"
    shutil.copytree(ref_run, run2)
    cfg_path = run2 / "checkpoints" / PRE / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["n_layer"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CookError, match=r"checkpoint from a different model config .* \(n_layer 3 vs 2\)"):
        train_worker(str(data), str(run2), chunks=CHUNKS + 1, iters_per_chunk=ITERS, seed=SEED, eval_iters=2)


def test_init_from(ref_run, data, tmp_path):
    from flows.train import train_flow

    ckpt = ref_run / "checkpoints" / "chunk_000003"
    # refuses data tokenized with another vocabulary, and a model of another shape
    other = make_char_data(tmp_path / "other-vocab", seed=0, extra_chars="XYZ")
    with pytest.raises(CookError, match="tokenized differently"):
        prepare_run(other, tmp_path / "bad", RunSpec("tiny", 1, 5, init_from=str(ckpt)))
    with pytest.raises(CookError, match="model config does not match preset bench"):
        prepare_run(data, tmp_path / "bad2", RunSpec("bench", 1, 5, init_from=str(ckpt)))
    assert not (tmp_path / "bad" / "run.json").exists() and not (tmp_path / "bad2" / "run.json").exists()

    # continued training on new data with the same tokenizer: trained weights, fresh optimizer and schedule
    new_data = make_char_data(tmp_path / "more-tokens", seed=3)
    run = tmp_path / "cont"
    train_flow(data=str(new_data), run=str(run), preset="tiny", chunks=1, iters_per_chunk=5, seed=1, init_from=str(ckpt),
               eval_interval=5, eval_iters=4)
    info = read_run(run)
    assert info["init_from"] == str(ckpt.resolve()) and info["total_iters"] == 5
    first = metrics(run)[0]
    assert info["schedule"]["warmup"] == 4  # the preset's 20 clipped to the cooldown start of a 5-iteration run
    assert first["iter"] == 1 and first["lr"] == pytest.approx(Schedule.from_run(info).lr_at(0, 5))
    ref_first = metrics(ref_run)[0]
    assert first["loss"] < ref_first["loss"] - 0.5  # starts from trained weights
    assert load_file(run / "checkpoints" / "chunk_000001" / "optimizer.safetensors")["transformer.wte.weight.step"].item() == 5


def _wait_for(cond, proc, timeout=120.0):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process exited early with {proc.returncode}")
        time.sleep(0.02)
    raise AssertionError("timed out")


def _has_line(run: Path, chunk: int) -> bool:
    try:
        return any(f'"chunk": {chunk},' in line for line in (run / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return False


@pytest.mark.timeout(400)
def test_sigkill_then_sigterm_resume_bit_identical(ref_run, data, tmp_path, cook_env):
    """Kill -9 in chunk 2, rerun; SIGTERM in chunk 3, rerun: the final weights equal the uninterrupted run's."""
    env = {**cook_env, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli", "train", "--data", str(data), "--run", str(run), "--preset", "tiny", *map(str, FLAGS)]

    procs: list[subprocess.Popen] = []

    def start(name: str) -> tuple[subprocess.Popen, Path]:
        log = tmp_path / f"{name}.log"
        with open(log, "w") as f:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT))
        return procs[-1], log

    try:
        _kill_term_finish(start, run, ref_run)
    finally:  # a failed check leaves no training behind
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)


def _kill_term_finish(start, run: Path, ref_run: Path) -> None:
    p, _ = start("kill")
    _wait_for(lambda: _has_line(run, 2), p)
    p.kill()
    p.wait(timeout=30)
    assert chunk_dirs(run) == ["chunk_000001"]

    p, log = start("term")
    _wait_for(lambda: _has_line(run, 3), p)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=60) != 0
    out = log.read_text()
    assert f"chunk 2 iter {ITERS + 1}:" in out  # resumed chunk 2 from its start
    m = re.search(r"interrupted: saved checkpoint at iteration (\d+) \((\S+)\) — run the same command to resume", out)
    assert m, out[-2000:]
    saved = int(m.group(1))
    assert 2 * ITERS <= saved < 3 * ITERS
    mid = f"chunk_000003-iter_{saved:07d}"
    assert mid in chunk_dirs(run) and Path(m.group(2)).name == mid
    assert read_state(run / "checkpoints" / mid)["iteration"] == saved
    assert "Traceback" not in out

    p, log = start("finish")
    assert p.wait(timeout=300) == 0, log.read_text()[-3000:]
    out = log.read_text()
    first = re.search(r"chunk 3 iter (\d+):", out)
    assert first and int(first.group(1)) == saved + 1  # resumed mid-chunk
    assert set(chunk_dirs(run)) == {"chunk_000001", "chunk_000002", "chunk_000003", PRE}  # the SIGTERM one is pruned
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert same_tensors(run / "checkpoints" / "chunk_000003" / f, ref_run / "checkpoints" / "chunk_000003" / f)
    # the RNG states were restored, not only saved: torch's and numpy's end where the reference run's did (python's
    # `random` is also drawn from by Prefect's threads in the reference process, so it is not compared)
    rng, ref_rng = (read_state(r / "checkpoints" / "chunk_000003")["rng"] for r in (run, ref_run))
    assert rng["torch"] == ref_rng["torch"] and rng["numpy"] == ref_rng["numpy"]
    iters = [r["iter"] for r in metrics(run) if r["kind"] == "train"]
    assert iters == sorted(set(iters)) and set(iters) >= {r["iter"] for r in metrics(ref_run) if r["kind"] == "train"}
    assert [r for r in metrics(run) if r["kind"] == "eval"] == [r for r in metrics(ref_run) if r["kind"] == "eval"]


def test_cli_bad_input_one_line(cook, data, tmp_path):
    r = cook(["train", "--data", str(data), "--run", str(tmp_path / "r"), "--iters-per-chunk", "6000"])
    assert r.returncode != 0
    assert r.stderr.strip() == "error: --iters-per-chunk 6000 is above 5000: split training into more chunks"
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.timeout(200)
def test_prefect_cancellation_saves_checkpoint(data, tmp_path, prefect_api):
    """Cancelling the flow run from Prefect stops training at the next iteration with a checkpoint."""
    import threading

    import prefect

    from flows.train import train_flow

    run = tmp_path / "run"
    box: dict = {}
    tag = new_tag()  # marks this test's flow run

    def target():
        try:
            with prefect.tags(tag):
                train_flow(data=str(data), run=str(run), preset="tiny", chunks=1, iters_per_chunk=5000, seed=1,
                           eval_interval=5000, eval_iters=2)
        except BaseException as e:  # noqa: BLE001 - the outcome is what we check
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    try:
        deadline = time.time() + 120
        while not _has_line(run, 1) and time.time() < deadline:
            time.sleep(0.05)
        runs = cancel_tagged(tag)
        assert len(runs) == 1 and runs[0].parameters.get("run") == str(run)
        t.join(timeout=120)
        assert not t.is_alive()
    finally:  # a failed check still stops the training thread
        if t.is_alive():
            cancel_tagged(tag)
            t.join(timeout=120)
    assert "interrupted: saved checkpoint at iteration" in str(box.get("error"))
    mids = [n for n in chunk_dirs(run) if "-iter_" in n]
    assert len(mids) == 1 and 0 < read_state(run / "checkpoints" / mids[0])["iteration"] < 5000


def test_schedule_shapes_and_refusals():
    """WSD: warmup, flat, linear cooldown to min_lr at the planned end; a longer plan only moves the cooldown later.
    Cosine: nanoGPT's. Bad --cooldown / --warmup values are one-line errors."""
    from model.schedule import parse_cooldown

    s = Schedule("wsd", 1e-3, 1e-4, 10, 0.2)
    lrs = [s.lr_at(i, 100) for i in range(100)]
    assert lrs[9] == pytest.approx(1e-3 * 10 / 11) and set(lrs[10:80]) == {1e-3}
    assert lrs[80] == 1e-3 and lrs[99] == pytest.approx(1e-4 + 9e-4 / 20) and all(a > b for a, b in zip(lrs[80:], lrs[81:]))
    longer = [s.lr_at(i, 300) for i in range(300)]
    assert longer[:80] == lrs[:80] and set(longer[10:240]) == {1e-3}  # the past before the old cooldown is kept
    assert Schedule("wsd", 1e-3, 1e-4, 10, 25).cooldown_start(100) == 75
    c = Schedule("cosine", 1e-3, 1e-4, 10, 0, 100)
    assert [c.lr_at(i, 999) for i in range(120)] == [lr_at(i, 10, 100, 1e-3, 1e-4) for i in range(120)]
    assert parse_cooldown("0.25") == 0.25 and parse_cooldown(300) == 300 and parse_cooldown(0) == 0
    for bad in ("inf", "nan", "1.5", "-0.1", "x"):
        with pytest.raises(CookError, match=r"^--cooldown"):
            parse_cooldown(bad)
    with pytest.raises(CookError, match=r"^warmup of 90 iterations runs past the cooldown start at iteration 80"):
        Schedule("wsd", 1e-3, 1e-4, 90, 0.2).check(100)
    with pytest.raises(CookError, match=r"^cooldown of 100 iterations leaves nothing"):
        Schedule("wsd", 1e-3, 1e-4, 0, 100).check(100)
    with pytest.raises(CookError, match=r"^--total-iters is the length of a cosine schedule"):
        check_train_args("x", "y", RunSpec(total_iters=10), ChunkOptions())
