"""Pool workers end with their parent: tokenize's encoders and wiki-dump's parsers are ProcessPoolExecutor
workers, which wait on a queue whose write end they hold themselves; a parent killed mid-stage (SIGKILL, or a
non-daemonic Dask worker stopped mid-task) would leave them waiting forever without `exit_with_parent`."""

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
