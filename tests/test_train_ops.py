"""Training operations: the loss curve (RUN/loss.png and its artifacts), `--gpus N` (torchrun launched for you)."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from chardata import make_char_data
from safetensors.torch import load_file

from model.checkpoint import read_state
from model.errors import CookError
from model.train import ChunkOptions, RunSpec
from tasks.training.train import check_train_args

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# the DDP runs: the same flags as tests/test_ddp.py (grad_accum 2: one micro-batch per process)
DDP_ARGS = dict(preset="tiny", chunks=2, iters_per_chunk=4, seed=5, grad_accum=2, eval_interval=4, eval_iters=2)


def _flags(args: dict) -> list[str]:
    out = []
    for k, v in args.items():
        out += [f"--{k.replace('_', '-')}", str(v)]
    return out


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == PNG_MAGIC and png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))


def _chunk_dirs(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir() and p.name.startswith("chunk_"))


def _has_line(run: Path, chunk: int, after_iter: int = 0) -> bool:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("chunk") == chunk and rec.get("iter", 0) > after_iter:
            return True
    return False


def _wait_for(cond, alive=lambda: True, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        assert alive(), "the training process exited early"
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_data(tmp_path_factory.mktemp("ops") / "tokens", n_words=3000, val_share=0.1)


# ---------------------------------------------------------------- the loss curve


def test_loss_curve_png_and_artifacts(data, tmp_path):
    from flows.train import train_flow

    run = tmp_path / "run"
    state = train_flow(data=str(data), run=str(run), preset="tiny", chunks=2, iters_per_chunk=6, seed=3, eval_interval=3,
                       eval_iters=2, return_state=True)
    assert state.is_completed(), state
    png = (run / "loss.png").read_bytes()
    assert _png_size(png) == (800, 400)
    assert not [p for p in run.iterdir() if p.name.startswith(".loss.png")]  # no temp file left behind

    arts = _artifacts(state.state_details.flow_run_id)
    images = [a for a in arts if a.type == "image"]
    assert len(images) == 2 and {a.key for a in images} == {"train-loss"}  # one per chunk; the end adds none
    latest = max(images, key=lambda a: a.created)
    prefix = "data:image/png;base64,"
    assert latest.data.startswith(prefix) and base64.b64decode(latest.data[len(prefix):]) == png  # the same picture
    md = {a.key: a.data for a in arts if a.type == "markdown"}
    assert set(md) >= {"train-chunk-1", "train-chunk-2"}
    assert f"![loss curve]({latest.data})" in md["train-chunk-2"]
    assert "| iter | train loss | val loss | val bits/byte | epoch | lr |" in md["train-chunk-2"]

    # a finished run re-run: nothing trained, the curve is drawn and published once for that flow run
    again = train_flow(data=str(data), run=str(run), preset="tiny", chunks=2, iters_per_chunk=6, seed=3, eval_interval=3,
                       eval_iters=2, return_state=True)
    images = [a for a in _artifacts(again.state_details.flow_run_id) if a.type == "image"]
    assert len(images) == 1 and base64.b64decode(images[0].data[len(prefix):]) == (run / "loss.png").read_bytes()


def test_plotting_never_fails_training(data, tmp_path):
    """RUN/loss.png cannot be written (a folder is in the way): training completes, with a warning."""
    from flows.train import train_flow

    run = tmp_path / "run"
    (run / "loss.png").mkdir(parents=True)
    state = train_flow(data=str(data), run=str(run), preset="tiny", chunks=1, iters_per_chunk=3, seed=3, eval_interval=3,
                       eval_iters=2, return_state=True)
    assert state.is_completed(), state
    assert _chunk_dirs(run) == ["chunk_000001", "chunk_000001-iter_0000002"] and (run / "loss.png").is_dir()  # + where the cooldown starts
    arts = _artifacts(state.state_details.flow_run_id)
    assert not [a for a in arts if a.type == "image"]
    md = [a.data for a in arts if a.type == "markdown" and a.key == "train-chunk-1"]
    assert md and "![loss curve]" not in md[0]

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.time() + 10  # logs reach the API in batches
    while True:
        with get_client(sync_client=True) as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
        warned = [log.message for log in logs if "loss curve" in log.message and "not drawn" in log.message]
        if warned or time.time() > deadline:
            break
        time.sleep(0.3)
    assert warned


# ---------------------------------------------------------------- --gpus N


def test_gpus_bad_values(data, tmp_path, cook):
    with pytest.raises(CookError, match=r"^--gpus must be a positive integer \(got 0\)$"):
        check_train_args(str(data), str(tmp_path / "r"), RunSpec(), ChunkOptions(), gpus=0)
    if torch.cuda.device_count() < 2:
        with pytest.raises(CookError, match=r"^--gpus 2: only \d CUDA devices? visible$"):
            check_train_args(str(data), str(tmp_path / "r"), RunSpec(), ChunkOptions(device="cuda"), gpus=2)
    with pytest.raises(CookError, match=r"^--grad-accum 1 is not a multiple of --gpus 2 .*: pass --grad-accum 2$"):
        check_train_args(str(data), str(tmp_path / "r"), RunSpec(), ChunkOptions(device="cpu"), gpus=2)  # tiny's default grad_accum is 1
    check_train_args(str(data), str(tmp_path / "r"), RunSpec(grad_accum=4), ChunkOptions(device="cpu"), gpus=2)
    r = cook(["train", "--data", str(data), "--run", str(tmp_path / "r"), "--gpus", "-1"])
    assert r.returncode == 2 and r.stderr.strip() == "error: --gpus must be a positive integer (got -1)"


@pytest.mark.timeout(300)
def test_gpus_cli_matches_hand_torchrun(data, tmp_path, cook, cook_env):
    """`cook train --device cpu --gpus 2` trains on 2 gloo processes, like the documented torchrun command."""
    env = {**cook_env, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "launched"
    r = cook(["train", "--data", str(data), "--run", str(run), "--device", "cpu", "--gpus", "2", *_flags(DDP_ARGS)], env=env,
             timeout=240)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert f"run: {run}" in r.stdout
    assert "launching 2 processes (gloo) with torchrun" in r.stdout + r.stderr
    assert "chunk 2 iter 8: eval train loss" in r.stdout + r.stderr  # rank 0's log, streamed into the run's log
    assert _chunk_dirs(run) == ["chunk_000001", "chunk_000002", "chunk_000002-iter_0000006"]  # + the cooldown start
    for name, it in (("chunk_000001", 4), ("chunk_000002", 8)):
        state = read_state(run / "checkpoints" / name)
        assert state["world_size"] == 2 and state["iteration"] == it
    assert _png_size((run / "loss.png").read_bytes()) == (800, 400)

    hand = tmp_path / "by-hand"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "flows.cli", "train", "--",
           "--data", str(data), "--run", str(hand), "--device", "cpu", *_flags(DDP_ARGS)]
    h = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert h.returncode == 0, (h.stdout + h.stderr)[-3000:]
    assert f"run: {hand}" in h.stdout  # the documented torchrun command (rank 0 runs the Prefect flow); the
    # `--` keeps torchrun's own parser off our flags (it reads `--run` as an abbreviation of `--run-path`)
    state = read_state(hand / "checkpoints" / "chunk_000002")
    assert state["world_size"] == 2 and state["iteration"] == 8
    for f in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(run / "checkpoints" / "chunk_000002" / f)
        b = load_file(hand / "checkpoints" / "chunk_000002" / f)
        assert a.keys() == b.keys()
        diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        assert diff < 1e-5, (f, diff)
    sa, sb = (read_state(d / "checkpoints" / "chunk_000002") for d in (run, hand))
    assert sa["tokens_seen"] == sb["tokens_seen"] and sa["val_loss"] == pytest.approx(sb["val_loss"], abs=1e-5)


@pytest.mark.timeout(300)
def test_gpus_sigterm_then_cancellation(data, tmp_path, cook_env, prefect_api):
    """SIGTERM to `cook train --gpus 2`: the ranks save a mid-chunk checkpoint and exit, none left running.
    The same run resumed (in this process) from there, then cancelled from Prefect: the same again."""
    import prefect

    from conftest import cancel_tagged, new_tag
    from flows.train import train_flow

    run = tmp_path / "run"
    args = dict(preset="tiny", chunks=1, iters_per_chunk=5000, seed=9, grad_accum=2, eval_interval=5000, eval_iters=2)
    log = tmp_path / "term.log"
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "--data", str(data), "--run", str(run),
                              "--device", "cpu", "--gpus", "2", *_flags(args)], env={**cook_env, "OMP_NUM_THREADS": "1"},
                             cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    children: list[psutil.Process] = []
    try:
        _wait_for(lambda: _has_line(run, 1), lambda: p.poll() is None)
        children = psutil.Process(p.pid).children(recursive=True)  # torchrun and its 2 ranks
        ranks = [c for c in children if "model.launch" in c.cmdline() and "torch.distributed.run" not in c.cmdline()]
        assert len(ranks) == 2
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=120) != 0
    except BaseException:  # a failed check leaves neither the CLI nor its ranks running
        for proc in [psutil.Process(p.pid)] + children if p.poll() is None else children:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        p.wait(timeout=30)
        raise
    out = log.read_text()
    m = re.search(r"interrupted: saved checkpoint at iteration (\d+) \((\S+)\) — run the same command to resume", out)
    assert m, out[-3000:]
    saved = int(m.group(1))
    mid = f"chunk_000001-iter_{saved:07d}"
    assert 0 < saved < 5000 and _chunk_dirs(run) == [mid] and Path(m.group(2)).name == mid
    state = read_state(run / "checkpoints" / mid)
    assert state["iteration"] == saved and state["world_size"] == 2
    assert "Traceback" not in out
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive
    curve = (run / "loss.png").stat().st_mtime_ns  # drawn at the end of the flow, stopped or not

    box: dict = {}
    tag = new_tag()  # marks this test's flow run

    def target():
        try:
            with prefect.tags(tag):
                train_flow(data=str(data), run=str(run), device="cpu", gpus=2, **args)
        except BaseException as e:  # noqa: BLE001 - the outcome is what we check
            box["error"] = e

    t = threading.Thread(target=target)
    t.start()
    try:
        _wait_for(lambda: _has_line(run, 1, after_iter=saved), t.is_alive)
        first = min(json.loads(line)["iter"] for line in (run / "metrics.jsonl").read_text().splitlines()
                    if json.loads(line)["iter"] > saved)
        assert first == saved + 1  # resumed where it stopped
        runs = cancel_tagged(tag)
        assert len(runs) == 1 and runs[0].parameters.get("run") == str(run)
        t.join(timeout=120)
        assert not t.is_alive()
    finally:  # a failed check still stops the training thread (and its ranks, which the flow stops)
        if t.is_alive():
            cancel_tagged(tag)
            t.join(timeout=120)
    m2 = re.search(r"interrupted: saved checkpoint at iteration (\d+)", str(box.get("error")))
    assert m2 and int(m2.group(1)) > saved, box
    assert f"chunk_000001-iter_{int(m2.group(1)):07d}" in _chunk_dirs(run)
    assert (run / "loss.png").stat().st_mtime_ns > curve


# ---------------------------------------------------------------- torch.compile fallback


def test_compile_failure_warns_and_trains_eagerly(data, tmp_path, cook, cook_env):
    """torch.compile that cannot compile (here: no C++ compiler for Inductor) costs a warning on the quiet console,
    not the run: the chunk trains eagerly and ends with the same weights as a --no-compile run."""
    from model.train import train_worker

    args = dict(preset="tiny", chunks=1, iters_per_chunk=4, seed=3, eval_interval=4, eval_iters=2)
    ref = tmp_path / "eager"
    train_worker(str(data), str(ref), compile=False, sample_tokens=0, **args)
    run = tmp_path / "compiled"
    env = {k: v for k, v in cook_env.items() if k != "COOK_VERBOSE"}
    env["CXX"] = str(tmp_path / "no-such-compiler")
    r = cook(["train", "--data", str(data), "--run", str(run), "--compile", *_flags(args)], env=env)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert re.search(r"warning: torch\.compile failed \(.*\); training eagerly", r.stdout + r.stderr)
    for f in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(run / "checkpoints" / "chunk_000001" / f), load_file(ref / "checkpoints" / "chunk_000001" / f)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f
