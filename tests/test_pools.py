"""Pool workers end with their parent: tokenize's encoders and wiki-dump's parsers are ProcessPoolExecutor
workers, which wait on a queue whose write end they hold themselves; a parent killed mid-stage (SIGKILL, or a
non-daemonic Dask worker stopped mid-task) would leave them waiting forever without tasks/core/spawn.py's
`process_pool` watch. And a killed `cook tokenize`, run again, ends as one clean run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tasks.corpus.documents import write_documents

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]

# Starts a pool, takes its first result, prints the pool's worker pids and kills itself (SIGKILL: no cleanup).
_PARENT = """
import json, multiprocessing, os, signal, sys
from pathlib import Path

import numpy as np

def results(kind):
    if kind == "tokenize":
        from model.tokenizer import get_tokenizer
        from tasks.corpus.tokenize import encoded_pieces, plan_pieces

        return encoded_pieces(plan_pieces([Path(p) for p in sys.argv[2:]]), get_tokenizer("gpt2"), np.dtype(np.uint16), 2)
    from tasks.sources.dumpio import ordered

    return ordered(os.getpid, [()] * 8, 2)

if __name__ == "__main__":
    for _ in results(sys.argv[1]):
        print(json.dumps([c.pid for c in multiprocessing.active_children()]), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # exited, not reaped by an orphan's new parent
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize("kind", ["tokenize", "wiki-dump"])
def test_pool_workers_end_when_their_parent_is_killed(kind, tmp_path):
    files = []
    for k in range(4):  # four pieces: both workers get work
        docs = [{"id": f"{k}-{i}", "source": "t", "url": "", "title": "", "text": f"Document {k} {i}. " * 200} for i in range(50)]
        files.append(str(write_documents(tmp_path / f"{k}.parquet", docs)))
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as o, err.open("w") as e:  # files, not pipes: the workers hold them too
        r = subprocess.run([sys.executable, "-c", _PARENT, kind, *files], cwd=REPO, stdout=o, stderr=e, timeout=90)
    assert r.returncode == -signal.SIGKILL, err.read_text()
    pids = json.loads(out.read_text().splitlines()[0])
    assert len(pids) == 2
    deadline = time.monotonic() + 15
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [p for p in pids if not _gone(p)]
    for p in left:  # never leave them behind, whatever the outcome
        psutil.Process(p).kill()
    assert not left, f"{kind}'s pool workers outlived their killed parent"


def _pool_workers(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [c for c in proc.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


def test_cook_tokenize_killed_mid_run_leaves_no_worker_and_a_rerun_equals_a_clean_run(cook_env, tmp_path):
    """`cook tokenize --workers 2` SIGKILLed while its workers encode: its workers end, nothing is published; the
    same command again gives the folder a clean run gives (and no temp folder of the killed run is left)."""
    from tasks.corpus.tokenize import tokenize_corpus

    files = []
    for k in range(8):  # ~24 MB of text in 8 pieces: seconds of encoding
        docs = [{"id": f"{k}-{i}", "source": "t", "url": "", "title": "",
                 "text": " ".join(f"word{(i * 7 + j * k) % 5003} Lorem ipsum {j}." for j in range(120))} for i in range(1000)]
        files.append(str(write_documents(tmp_path / "in" / f"{k}.parquet", docs)))
    args = [sys.executable, "-m", "flows.cli", "tokenize", *files, "--out", str(tmp_path / "run" / "tokens"), "--workers", "2"]
    proc = subprocess.Popen(args, env=cook_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(workers := _pool_workers(parent)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(workers) == 2, "the run ended before its workers were seen"
        proc.kill()
        assert proc.wait(timeout=30) == -signal.SIGKILL
        gone, alive = psutil.wait_procs(workers, timeout=15)
        for p in alive:
            p.kill()
        assert not alive, "tokenize's workers outlived the killed command"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (tmp_path / "run" / "tokens").exists()  # nothing half-published

    r = subprocess.run(args, env=cook_env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    clean = tokenize_corpus([Path(f) for f in files], "gpt2", tmp_path / "clean" / "tokens", workers=1)
    # what any run leaves beside its output: the folder and its writer lock (tasks/core/lock.py); no temp folder
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".tokens.lock", "tokens"]
    got = {p.relative_to(tmp_path / "run" / "tokens"): p.read_bytes() for p in (tmp_path / "run" / "tokens").rglob("*") if p.is_file()}
    want = {p.relative_to(clean): p.read_bytes() for p in clean.rglob("*") if p.is_file()}
    assert got == want
