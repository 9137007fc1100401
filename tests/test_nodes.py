"""`cook train --nodes 2` on one machine as two "nodes": two cook commands, each launching a torchrun agent per
chunk, meeting at a c10d rendezvous on a loopback port (gloo, CPU). With the data and the run on a bucket and a cache
per node, weights match one process doing the same micro-batches; a node that never comes fails the other with one
line, within the rendezvous timeout; a node killed mid-chunk fails the other, and the same commands resume."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from chardata import make_char_data
from test_ddp import ARGS, _free_port, assert_matches_one_process  # ARGS: grad_accum 2 = one micro-batch on each node's one process; dropout on

from model import storage
from model.checkpoint import read_state
from model.errors import CookError
from model.launch import Nodes
from model.train import ChunkOptions, RunSpec
from tasks.training.train import check_train_args

REPO = Path(__file__).resolve().parents[1]


def _flags(args: dict) -> list[str]:
    return [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))]


def _train(data: Path | str, run: Path | str, port: int, node_rank: int, timeout_s: int,
           args: dict = ARGS) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "train", "--data", str(data), "--run", str(run), "--device", "cpu",
            "--gpus", "1", "--nodes", "2", "--rdzv-endpoint", f"127.0.0.1:{port}", "--node-rank", str(node_rank),
            "--rdzv-timeout", str(timeout_s), *_flags(args)]


def _missing(chunk: int, port: int, timeout_s: int) -> str:
    """Node 0's one line when node 1 does not come."""
    return (f"error: chunk {chunk}: not all 2 nodes joined the rendezvous at 127.0.0.1:{port} within {timeout_s} s: start the "
            "same `cook train` with --node-rank 1..1 on the other machines (or raise --rdzv-timeout)")


@contextlib.contextmanager
def _started(cmds: list[list[str]], env: dict | list[dict], logs: list[Path]):
    """Start the commands (with `env`, or each with its own), stdout to LOG and stderr to LOG.err (a file: a pipe left unread could fill and block);
    on the way out, kill what is left of them and their torchrun trees."""
    procs = []
    try:
        for i, (cmd, log) in enumerate(zip(cmds, logs)):
            with open(log, "w") as out, open(f"{log}.err", "w") as err:
                procs.append(subprocess.Popen(cmd, env=env[i] if isinstance(env, list) else env, cwd=REPO, stdout=out,
                                              stderr=err))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(psutil.NoSuchProcess):
                    for c in psutil.Process(p.pid).children(recursive=True):
                        c.kill()
                p.kill()
            p.wait(timeout=30)


def _read(log: Path) -> tuple[str, str]:
    """(stdout, stderr) of a command started by _started."""
    return log.read_text(), Path(f"{log}.err").read_text()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_data(tmp_path_factory.mktemp("nodes") / "tokens", n_words=3000, val_share=0.1)


@pytest.mark.timeout(300)
def test_two_nodes_match_one_process_with_data_and_run_on_a_bucket(data, s3, tmp_path, cook_env):
    """The token folder and the run on a bucket (a local S3-compatible server), each "machine" with its own cache
    and working directory. Node 1 starts first and waits; node 0 runs the flow. Both exit 0, rank 0 (on node 0)
    pushed the run to the bucket, and its weights equal one process doing both micro-batches of each step (up to
    float sums, as in test_ddp)."""
    storage.put_dir(data, f"{s3.url}/tokens")
    bucket_data, run = f"{s3.url}/tokens", f"{s3.url}/runs/nodes"
    port = _free_port()
    envs, works = [], []
    for node in (1, 0):
        work = tmp_path / f"machine{node}"
        (work / "home").mkdir(parents=True)
        envs.append({**cook_env, **s3.env(), "COOK_CACHE_DIR": str(work / "cache"), "HOME": str(work / "home")})
        works.append(work)
    logs = [tmp_path / "node1.log", tmp_path / "node0.log"]
    cmds = [_train(bucket_data, run, port, 1, 120), _train(bucket_data, run, port, 0, 120)]
    with _started(cmds, envs, logs) as (n1, n0):
        rc0, rc1 = n0.wait(timeout=240), n1.wait(timeout=120)
    out0, out1 = ("".join(_read(log)) for log in (logs[1], logs[0]))
    assert rc0 == 0 and rc1 == 0, (out0[-3000:], out1[-3000:])
    assert f"run: {run}" in out0 and "on node 0 of 2, rendezvous at 127.0.0.1" in out0
    assert "chunk 2 iter 8: eval train loss" in out0  # rank 0's log lines are on node 0, in its flow run's log
    assert "node 1: chunk 1 done" in out1 and "node 1: chunk 2 done (node 0's last)" in out1
    assert f"run: {run} (2 chunks trained with node 0)" in out1 and "Traceback" not in out0 + out1
    assert s3.SECRET not in out0 + out1
    for work in works:  # each machine cached the token shards once for itself
        assert len(list((work / "cache").rglob("meta.json"))) >= 1, work
    local = storage.get_dir(run, tmp_path / "run-from-bucket")
    for name, it in (("chunk_000001", 4), ("chunk_000002", 8)):
        state = read_state(local / "checkpoints" / name)
        assert state["world_size"] == 2 and state["iteration"] == it

    sa, sb = assert_matches_one_process(data, local, tmp_path / "one-process")
    assert sa["tokens_seen"] == sb["tokens_seen"] and sa["val_loss"] == pytest.approx(sb["val_loss"], abs=1e-4)

    # the same commands again: the run is done, node 1 does not wait for a chunk that will not come
    r = subprocess.run(_train(bucket_data, run, port, 1, 120), env=envs[0], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and f"run {run}: all 2 chunks already trained" in r.stdout, r.stdout + r.stderr


@pytest.mark.timeout(300)
def test_a_missing_node_fails_with_one_line(data, tmp_path, cook_env):
    """Node 0 alone, and node 1 alone (each at its own port): both give up after --rdzv-timeout with one line
    and no traceback; node 0 wrote no checkpoint and let go of the run folder (the next run takes it)."""
    env = {**cook_env, "OMP_NUM_THREADS": "1"}
    run0, run1 = tmp_path / "alone0", tmp_path / "alone1"
    logs = [tmp_path / "alone0.log", tmp_path / "alone1.log"]
    port0, port1 = _free_port(), _free_port()
    cmds = [_train(data, run0, port0, 0, 5), _train(data, run1, port1, 1, 5)]
    with _started(cmds, env, logs) as (n0, n1):
        rc0, rc1 = n0.wait(timeout=120), n1.wait(timeout=120)
    (out0, err0), (out1, err1) = _read(logs[0]), _read(logs[1])
    assert rc0 == 1 and [x for x in err0.splitlines() if x.startswith("error:")] == [
        _missing(1, port0, 5)], err0 + out0[-2000:]
    assert rc1 == 1 and len(err1.strip().splitlines()) == 1, err1 + out1[-2000:]  # node 1 runs no flow: no log lines
    assert err1.startswith(f"error: node 1: no chunk to train from node 0 at 127.0.0.1:{port1} within 5 s"), err1
    assert err0.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in out0 + err0 + out1 + err1
    assert not (run0 / "checkpoints").exists() or not os.listdir(run0 / "checkpoints")
    assert not run1.exists()  # node 1 never writes the run folder

    bad = subprocess.run(_train(data, run0, port0, 2, 5), env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --node-rank must be in 0..1 for --nodes 2 (got 2)", bad.stderr
    for nodes, message in ((Nodes(2), r"^--nodes 2 needs --rdzv-endpoint HOST:PORT: node 0's address"),
                           (Nodes(2, "10.0.0.1"), r"^--rdzv-endpoint must be HOST:PORT \(got '10.0.0.1'\)$"),
                           (Nodes(0), r"^--nodes must be a positive integer \(got 0\)$"),
                           (Nodes(2, "h:1", 0, 0), r"^--rdzv-timeout must be a positive integer \(got 0\)$"),
                           (Nodes(2, "h:29400"),
                            r"^--grad-accum 1 is not a multiple of --gpus 1 x --nodes 2 = 2 .*: pass --grad-accum 2$")):
        with pytest.raises(CookError, match=message):
            check_train_args(str(data), str(tmp_path / "r"), RunSpec(), ChunkOptions(device="cpu"), gpus=1, nodes=nodes)
    check_train_args(str(data), str(tmp_path / "r"), RunSpec(grad_accum=4), ChunkOptions(device="cpu"), gpus=2,
                     nodes=Nodes(2, "[::1]:29400", 1))


def _chunk_started(run: Path, chunk: int) -> bool:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return False
    return any(f'"chunk": {chunk}, "kind": "train"' in line for line in lines)


@pytest.mark.timeout(300)
def test_a_node_killed_mid_chunk_then_both_resume(data, tmp_path, cook_env):
    """SIGKILL node 1 (its cook, torchrun and rank) in chunk 2: node 0's chunk fails, its retry waits
    --rdzv-timeout for node 1 and fails with one line on a quiet console. The same two commands again resume
    from chunk 1's checkpoint and finish the run (resuming is bit-identical: tests/test_train.py)."""
    args = {**ARGS, "iters_per_chunk": 50, "eval_interval": 50}
    run = tmp_path / "run"
    env = {**cook_env, "OMP_NUM_THREADS": "1"}
    port = _free_port()
    logs = [tmp_path / "node1.log", tmp_path / "node0.log"]
    # node 1 waits up to 60 s for node 0's chunks (node 0's start is slow on a loaded machine); node 0's retry of
    # chunk 2 waits its 10 s for node 1
    with _started([_train(data, run, port, 1, 60, args), _train(data, run, port, 0, 10, args)],
                  {**env, "COOK_VERBOSE": "0"}, logs) as (n1, n0):
        deadline = time.monotonic() + 180
        while not _chunk_started(run, 2) and time.monotonic() < deadline and n0.poll() is None and n1.poll() is None:
            time.sleep(0.1)
        assert _chunk_started(run, 2) and n1.poll() is None, "".join(_read(logs[0]))[-2000:]
        tree = [psutil.Process(n1.pid)] + psutil.Process(n1.pid).children(recursive=True)
        for p in tree:
            p.kill()
        psutil.wait_procs(tree, timeout=30)
        rc0 = n0.wait(timeout=120)
    out0, err0 = _read(logs[1])
    assert rc0 == 1 and [x for x in err0.splitlines() if x.startswith("error:")] == [
        _missing(2, port, 10)], err0[-3000:] + out0[-2000:]
    assert err0.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in err0 + out0
    assert read_state(run / "checkpoints" / "chunk_000001")["iteration"] == 50
    assert not (run / "checkpoints" / "chunk_000002").exists()
    assert not [n for n in os.listdir(run / "checkpoints") if n.startswith(".")]  # no partial checkpoint left behind

    port = _free_port()
    logs = [tmp_path / "again1.log", tmp_path / "again0.log"]
    with _started([_train(data, run, port, 1, 60, args), _train(data, run, port, 0, 60, args)], env, logs) as (n1, n0):
        rc0, rc1 = n0.wait(timeout=180), n1.wait(timeout=60)
    out0, out1 = ("".join(_read(log)) for log in (logs[1], logs[0]))
    assert rc0 == 0 and rc1 == 0, (out0[-3000:], out1[-3000:])
    assert "(1 done)" in out0 and f"run: {run} (1 chunk trained with node 0)" in out1  # resumed: chunk 2 only
    state = read_state(run / "checkpoints" / "chunk_000002")
    assert state["iteration"] == 100 and state["world_size"] == 2
