"""The CPU-heavy stages on Dask (prefect-dask's DaskTaskRunner) on a real LocalCluster made here.

Each stage runs twice, on the flow's own thread runner and on the cluster: the outputs must be the
same bytes, and the scheduler's task stream must show the stage's tasks ran on the cluster's worker
processes (not in this one). This module's workers are daemonic (Dask's default), so the stages' own
multiprocessing pools must step aside there: run with processes forced on, on a worker, they still give
the same bytes. `--dask local` starts non-daemonic workers, where the pools run.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import socket
from functools import partial
from pathlib import Path

import dask
import distributed  # the `dev` extra installs prefect-dask: a missing one fails here, never skips
import prefect_dask  # noqa: F401
import pytest

from flows.merge import merge_flow
from flows.runners import dask_target
from flows.tokenize import tokenize_flow
from flows.unparquet import unparquet_flow
from flows.wiki_dump import wiki_dump_flow
from model.errors import CookError
from tasks.corpus.documents import write_documents
from tasks.corpus.merge import merge_documents
from tasks.corpus.tokenize import tokenize_corpus  # noqa: E402
from tasks.sources.wikidump import extract_dump  # noqa: E402
from tests.dumpgen import make_pages, write_dump  # noqa: E402
from tests.test_merge import prose  # noqa: E402

pytestmark = pytest.mark.timeout(180)

def _text(i: int) -> str:
    """A paragraph the merge filters keep (varied words, some non-ASCII), deterministic by `i`."""
    return f"Über naïve 日本 😀 {i}: " + prose(i)


def tree_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """COOK_DATA_DIR for this module (task results land under it), set before the cluster's workers start."""
    from tasks.core.settings import get_settings

    d = tmp_path_factory.mktemp("dask") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COOK_DATA_DIR", str(d))
        get_settings.cache_clear()
        yield d
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def cluster(data_dir):
    saved = dict(os.environ)  # distributed's nanny sets OMP_NUM_THREADS=1 here for good: keep it to this module
    try:
        with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1, dashboard_address=None) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _children_cpu(fn, *args, **kwargs) -> float:
    """Run fn(*args, **kwargs); the CPU seconds of this process's children that finished meanwhile."""
    import resource

    def children() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    before = children()
    fn(*args, **kwargs)
    return children() - before


def test_local_cluster_workers_may_spawn_and_leave_the_environment_alone(data_dir, docs, tmp_path, monkeypatch):
    """`--dask local`: the cluster's workers are not daemonic, so a stage's one task there starts its own process
    pool (tokenize's encoders ran in child processes of the worker, same bytes as here); and the cluster does not
    leave OMP_NUM_THREADS=1 behind in the flow's process."""
    from prefect import flow

    from tasks.core.spawn import can_spawn

    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # not the tests' 1, so that a nanny's reset to 1 shows

    from flows.runners import stage_runner

    inputs = sorted(docs.glob("*.parquet"))

    @flow
    def probe() -> tuple[int, set, float]:
        with stage_runner("local") as r:
            client = r.runner.client
            spawn = set(client.run(can_spawn).values())
            child_cpu = client.submit(_children_cpu, tokenize_corpus, inputs, "gpt2", tmp_path / "worker", None, 0.1,
                                      "auto", 3000, 2, pure=False).result()
            return len(client.scheduler_info()["workers"]), spawn, child_cpu

    before = dict(os.environ)
    workers, spawn, child_cpu = probe()
    assert workers >= 1 and spawn == {True}
    assert child_cpu > 0  # the encoders were processes of the worker's own
    assert dict(os.environ) == before
    assert dask.config.get("distributed.worker.daemon") is True  # Dask's default is back
    tokenize_corpus(inputs, "gpt2", tmp_path / "here", None, 0.1, "auto", 3000, 1)
    assert tree_hashes(tmp_path / "here") == tree_hashes(tmp_path / "worker")


@pytest.fixture(scope="module")
def observer(cluster):
    """A client of our own: worker pids, and the scheduler's record of which worker ran which task."""
    with distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def on_workers(observer):
    """`with on_workers() as seen:` records the tasks the scheduler ran; seen() -> [(key, worker pid)]."""
    import contextlib

    @contextlib.contextmanager
    def record():
        pids = observer.run(os.getpid)
        with distributed.get_task_stream(client=observer) as ts:
            yield lambda: [(t["key"], pids[t["worker"]]) for t in ts.data]

    return record


def _assert_ran_on_workers(seen, name: str, count: int) -> None:
    runs = [(k, pid) for k, pid in seen if name in str(k)]
    assert len(runs) == count, f"expected {count} '{name}' task(s) on the cluster, saw {seen}"
    assert all(pid != os.getpid() for _, pid in runs)


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("docs")
    texts = [_text(i) for i in range(300)] + [_text(i) for i in range(20)]  # 20 exact duplicates for merge
    for part in range(3):
        write_documents(d / f"part{part}.parquet", [
            {"id": f"{part}-{i}", "source": ["web", "books"][part % 2], "url": f"u{i}", "title": f"t{i}", "text": t}
            for i, t in enumerate(texts[part::3])
        ])
    return d


def test_workers_are_daemonic_processes(observer):
    """The premise of the in-process fallbacks: a Dask worker may not start processes of its own."""
    assert set(observer.run(lambda: multiprocessing.current_process().daemon).values()) == {True}
    assert os.getpid() not in observer.run(os.getpid).values()


def test_tokenize_on_dask_same_bytes(cluster, docs, tmp_path, on_workers):
    inputs = [str(docs)]
    threads = tokenize_flow(inputs=inputs, encoding="gpt2", out=str(tmp_path / "threads"), val_fraction=0.1, shard_tokens=3000)
    with on_workers() as seen:
        dask = tokenize_flow(inputs=inputs, encoding="gpt2", out=str(tmp_path / "dask"), val_fraction=0.1, shard_tokens=3000,
                             dask=cluster.scheduler_address)
    _assert_ran_on_workers(seen(), "tokenize", 1)
    a, b = tree_hashes(Path(threads)), tree_hashes(Path(dask))
    assert len([n for n in a if n.startswith("train_")]) > 1
    assert a == b


def test_unparquet_on_dask_one_task_per_file(cluster, docs, tmp_path, on_workers):
    srcs = [str(p) for p in sorted(docs.glob("*.parquet"))]
    first = unparquet_flow(sources=srcs, out=str(tmp_path / "threads"), fmt="text")
    with on_workers() as seen:
        s = unparquet_flow(sources=srcs, out=str(tmp_path / "dask"), fmt="text", dask=cluster.scheduler_address)
    _assert_ran_on_workers(seen(), "unparquet", 3)
    assert (s["files"], s["converted"], s["failed"]) == (3, 3, [])
    assert s["written"] == first["written"] == 320
    assert tree_hashes(tmp_path / "threads") == tree_hashes(tmp_path / "dask")
    # one cache for both runners: on Dask, the thread run's files are cache hits, and the other way round
    with on_workers() as seen:
        again = unparquet_flow(sources=srcs, out=str(tmp_path / "threads"), fmt="text", dask=cluster.scheduler_address)
    _assert_ran_on_workers(seen(), "unparquet", 3)
    assert (again["converted"], again["cached"]) == (0, 3)
    back = unparquet_flow(sources=srcs, out=str(tmp_path / "dask"), fmt="text")
    assert (back["converted"], back["cached"]) == (0, 3)


def test_merge_on_dask_same_bytes(cluster, docs, tmp_path, on_workers):
    threads = merge_flow(inputs=[str(docs)], out=str(tmp_path / "threads"), shard_size="20KB")
    with on_workers() as seen:
        dask = merge_flow(inputs=[str(docs)], out=str(tmp_path / "dask"), shard_size="20KB", dask=cluster.scheduler_address)
    _assert_ran_on_workers(seen(), "merge", 1)
    assert dask == threads
    assert threads["exact_duplicates"] == 20 and len(threads["shards"]) > 1
    assert tree_hashes(tmp_path / "threads") == tree_hashes(tmp_path / "dask")


def test_wiki_dump_on_dask_same_documents(cluster, tmp_path, on_workers):
    dump = write_dump(tmp_path / "enwiki-20240101-pages-articles.xml.bz2", make_pages(60, seed=3))
    threads = wiki_dump_flow(dump=str(dump), out=str(tmp_path / "threads"))
    with on_workers() as seen:
        dask = wiki_dump_flow(dump=str(dump), out=str(tmp_path / "dask"), workers=2, dask=cluster.scheduler_address)
    _assert_ran_on_workers(seen(), "read", 1)
    assert dask["kept"] == threads["kept"] > 0
    assert tree_hashes(tmp_path / "threads", skip=("summary.json",)) == tree_hashes(tmp_path / "dask", skip=("summary.json",))


def test_process_pools_step_aside_on_a_worker(observer, docs, tmp_path):
    """Processes forced on, run on a (daemonic) worker: tokenize and wiki-dump, whose pools are multiprocessing's,
    work in-process; merge, whose workers are plain subprocesses, still starts them. Same bytes either way.
    (`partial`: `workers=` is a keyword of Client.submit itself.)"""
    inputs = sorted(docs.glob("*.parquet"))
    tokenize_corpus(inputs, "gpt2", tmp_path / "tok-here", processes=False)
    cpu = observer.submit(_children_cpu, tokenize_corpus, inputs, "gpt2", tmp_path / "tok-worker", processes=True,
                          pure=False).result()
    assert cpu == 0 and tree_hashes(tmp_path / "tok-here") == tree_hashes(tmp_path / "tok-worker")

    merge_documents(inputs, tmp_path / "merge-here", workers=1)
    cpu = observer.submit(partial(_children_cpu, merge_documents, workers=2), inputs, tmp_path / "merge-worker",
                          pure=False).result()
    assert cpu > 0 and tree_hashes(tmp_path / "merge-here") == tree_hashes(tmp_path / "merge-worker")

    dump = write_dump(tmp_path / "enwiki-20240101-pages-articles.xml", make_pages(40, seed=5))
    extract_dump(dump, tmp_path / "dump-here", workers=1, processes=False)
    observer.submit(partial(extract_dump, workers=2, processes=True), dump, tmp_path / "dump-worker", pure=False).result()
    assert tree_hashes(tmp_path / "dump-here", skip=("summary.json",)) == tree_hashes(tmp_path / "dump-worker", skip=("summary.json",))


def test_dask_target(monkeypatch):
    from tasks.core.settings import get_settings

    assert dask_target("off") is None
    assert dask_target("LOCAL") == "local"
    assert dask_target("tcp://10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    with pytest.raises(CookError, match="bad Dask address"):
        dask_target("tcp://a b:1")
    monkeypatch.setenv("COOK_DASK_ADDRESS", "tcp://127.0.0.1:8786")
    get_settings.cache_clear()
    try:
        assert dask_target(None) == "tcp://127.0.0.1:8786"
        assert dask_target("off") is None  # the parameter wins over the setting
    finally:
        get_settings.cache_clear()


def test_cli_dask(cook, cook_env, docs, tmp_path):
    """`cook merge --dask local` (a LocalCluster of its own) gives the same bytes; an unreachable scheduler is
    one error line."""
    merge_flow(inputs=[str(docs)], out=str(tmp_path / "here"), shard_size="20KB")
    # no Prefect server: the CLI's temporary API, which the local workers must share rather than start their own
    env = {k: v for k, v in cook_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    r = cook(["merge", str(docs), "--out", tmp_path / "cli", "--shard-size", "20KB", "--dask", "local"], env=env)
    assert r.returncode == 0, r.stderr
    assert "tasks run on Dask: tcp://127.0.0.1:" in r.stdout + r.stderr
    assert "Starting temporary server" not in r.stdout + r.stderr  # a worker would say so when it starts one
    assert tree_hashes(tmp_path / "here") == tree_hashes(tmp_path / "cli")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**cook_env, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    r = cook(["tokenize", str(docs), "--out", tmp_path / "nowhere", "--dask", f"tcp://127.0.0.1:{port}"], env=env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot reach the Dask scheduler at tcp://127.0.0.1:")
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "nowhere").exists()
