"""`--dask` with workers that share nothing with the flow's machine but the bucket.

A real Dask cluster started here: `dask scheduler` and two `dask worker` processes (one single-threaded worker
each), every one in its own empty folder with its own HOME, COOK_CACHE_DIR, TMPDIR and Prefect home, the S3
server's endpoint and keys in its environment and no COOK_DATA_DIR. Each worker runs in a private mount namespace
(`unshare --mount`) where the flow's local folders (its working directory, its cache, the test session's Prefect
home and temp files) are hidden under an empty read-only tmpfs: a task that got a local path of the flow's machine,
or read the flow's settings, fails there as it would on another machine.

Then `cook unparquet`, `cook merge`, `cook tokenize` and `cook scrape wiki-dump` run with
`--dask tcp://127.0.0.1:PORT` and COOK_DATA_DIR=s3://BUCKET/dask, and the same commands on the thread runner into
s3://BUCKET/threads (wiki-dump: see below): the outputs are byte-identical (as tests/test_bucket_corpus.py compares
them: documents but their fetch time, shards and token files byte for byte, stats.json and meta.json but the inputs
they name; wiki-dump's shards byte for byte, summary.json but its time and the locations it names), the stages'
tasks ran on the workers (the scheduler's task stream), a rerun on the cluster is a cache hit (records and outputs
in the bucket), the workers logged no error (Prefect only logs a result record it could not write) and left no
scratch in their caches.

wiki-dump takes its defaults from the bucket: the newest dump under DATA/dumps (a multistream dump and its index,
which a worker copies into its own cache) into DATA/wikipedia-dump; its reference is the same dump read here from a
local file (what the thread runner's task does). A rerun on the flow's machine is a cache hit from the record a
worker wrote (the dump is not copied); a missing dump object and `--fetch` into the bucket are one line each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import distributed
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cook
from dumpgen import make_pages, write_dump
from model import storage
from s3server import free_port
from tasks.sources.wikidump import extract_dump, find_index
from test_bucket_corpus import ORDERS, _objects
from test_pipeline import _cosmo, _prose

pytestmark = pytest.mark.timeout(300)

DASK = str(Path(sys.executable).with_name("dask"))


def _can_unshare() -> str | None:
    """None when a private mount namespace with a tmpfs can be made here, else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    import tempfile

    folder = tempfile.mkdtemp(prefix="cook-unshare-")
    try:
        probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                f"mount -t tmpfs -o ro none '{folder}'"], capture_output=True, text=True)
    finally:
        os.rmdir(folder)
    return None if probe.returncode == 0 else f"unshare --mount not permitted: {probe.stderr.strip()[:200]}"


class Cluster:
    """A scheduler and `n` worker processes on loopback; `hidden` folders are empty (read-only) in the workers."""

    def __init__(self, root: Path, env: dict, hidden: list[Path], n: int = 2):
        self.root, self.env, self.hidden, self.n = root, env, hidden, n
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []

    def _start(self, name: str, argv: list[str], env: dict) -> None:
        home = self.root / name
        home.mkdir(parents=True, exist_ok=True)
        log = home / "log.txt"
        self.logs.append(log)
        with open(log, "wb") as out:
            # a session of its own: stop() ends the process group (nanny and worker process)
            self.procs.append(subprocess.Popen(argv, env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT,
                                               stdin=subprocess.DEVNULL, start_new_session=True))

    def own_env(self, name: str) -> dict:
        home = self.root / name
        env = {**self.env, "HOME": str(home), "COOK_CACHE_DIR": str(home / "cache"), "TMPDIR": str(home / "tmp"),
               "DASK_TEMPORARY_DIRECTORY": str(home / "dask"), "PREFECT_HOME": str(home / "prefect"),
               "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "prefect" / "storage"),
               "TIKTOKEN_CACHE_DIR": str(home / "tiktoken")}
        return env

    def __enter__(self) -> "Cluster":
        try:
            self._start("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                      "--no-dashboard"], self.own_env("scheduler"))
            for i in range(self.n):
                name = f"worker{i}"
                env = self.own_env(name)
                (self.root / name / "tmp").mkdir(parents=True, exist_ok=True)
                worker = [DASK, "worker", self.address, "--nworkers", "1", "--nthreads", "1", "--memory-limit", "0",
                          "--no-dashboard", "--local-directory", str(self.root / name / "dask")]
                if self.hidden:  # in a mount namespace of its own, the flow's folders under empty read-only tmpfs
                    mounts = " && ".join(f"mount -t tmpfs -o ro none '{d}'" for d in self.hidden)
                    worker = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              f"{mounts} && exec " + " ".join(f"'{a}'" for a in worker)]
                self._start(name, worker, env)
            with distributed.Client(self.address, timeout=60) as client:
                client.wait_for_workers(self.n, timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        import signal

        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self) -> str:
        return "\n".join(f"--- {p.parent.name}\n" + p.read_text(errors="replace")[-3000:] for p in self.logs if p.exists())


def test_dask_workers_that_share_only_the_bucket(s3, cook_env, tmp_path):
    why = _can_unshare()  # None: the workers are kept from the flow's folders for real
    bucket = s3.url
    a = _prose(24, 0)
    b = _prose(18, 100) + [a[3], None, ""]  # a duplicate across subsets, a null and an empty text
    raw = tmp_path / "flow" / "raw"
    for subset, texts, order in (("stanford", a, ORDERS[0]), ("stories", b, ORDERS[1])):
        path = _cosmo(raw / subset / "train-00000-of-00001.parquet", texts, order)
        storage.put_file(path, f"{bucket}/raw/cosmopedia/data/{subset}/{path.name}")
    # a small multistream dump and its index, in the flow's folder (hidden from the workers) and under DATA/dumps
    (tmp_path / "flow" / "dumps").mkdir(parents=True)
    dump = write_dump(tmp_path / "flow" / "dumps" / "enwiki-20240101-pages-articles-multistream.xml.bz2",
                      make_pages(60, seed=5), multistream=True, pages_per_stream=10)
    for f in (dump, find_index(dump)):
        storage.put_file(f, f"{bucket}/dask/dumps/{f.name}")

    work, cache = tmp_path / "flow" / "work", tmp_path / "flow" / "cache"
    work.mkdir(parents=True)
    env = {**cook_env, **s3.env(), "COOK_CACHE_DIR": str(cache)}
    # the workers' environment: the S3 endpoint and keys, the Prefect API; nothing of the flow's (no COOK_DATA_DIR)
    worker_env = {k: v for k, v in os.environ.items() if not k.startswith(("COOK_", "PREFECT_", "AWS_"))}
    worker_env.update(s3.env(), PREFECT_API_URL=cook_env["PREFECT_API_URL"], COOK_VERBOSE="1", PYTHONUNBUFFERED="1")
    # hidden from the workers: every local folder of the flow's (its working directory and cache under tmp_path/flow,
    # the session's Prefect home with its temp folder)
    hidden = [tmp_path / "flow", Path(os.environ["PREFECT_HOME"])] if why is None else []

    def cook(args, data: str, dask: str | None = None) -> str:
        run_env = {**env, "COOK_DATA_DIR": data}
        proc = run_cook(args + (["--dask", dask] if dask else []), run_env, cwd=work)
        assert proc.returncode == 0, proc.stderr[-4000:] + (cluster.log_tail() if dask else "")
        return proc.stdout + proc.stderr

    D, T = f"{bucket}/dask", f"{bucket}/threads"
    src = f"{bucket}/raw/cosmopedia/data"
    with Cluster(tmp_path / "cluster", worker_env, hidden) as cluster, distributed.Client(cluster.address) as observer:
        with distributed.get_task_stream(client=observer) as ts:
            out = cook(["unparquet", src, "--out", f"{D}/cosmopedia"], D, cluster.address)
            assert "(2 workers)" in out
            # the same documents into both merges: unparquet stamps each document with the time it was fetched
            cook(["merge", f"{D}/cosmopedia", "--out", f"{D}/merged", "--shard-size", "20KB"], D, cluster.address)
            cook(["tokenize", f"{D}/merged", "--encoding", "gpt2", "--out", f"{D}/tokens"], D, cluster.address)
            # a rerun on the cluster: the workers find the finished work by its records and outputs in the bucket
            out = cook(["unparquet", src, "--out", f"{D}/cosmopedia"], D, cluster.address)
            assert "(0 converted, 2 cached)" in out
            # wiki-dump with its defaults: the newest dump under D/dumps -> D/wikipedia-dump
            out = cook(["scrape", "wiki-dump", "--workers", "2"], D, cluster.address)
            assert "-> " + f"{D}/wikipedia-dump (written)" in out
        ran = [t["key"] for t in ts.data]
        hosts = set(observer.run(os.getpid).values())
        flow_dir = str(tmp_path / "flow")
        # what each worker sees of the flow's folder: an empty, read-only folder
        views = observer.run(lambda: (os.listdir(flow_dir), os.access(flow_dir, os.W_OK)))
    if why is None:
        assert list(views.values()) == [([], False)] * 2
    for log in cluster.logs[1:]:  # a result record that could not be written is only logged by Prefect, as an error
        text = log.read_text(errors="replace")
        assert "| ERROR" not in text and "Traceback" not in text, text[-4000:]
    for name, n in (("unparquet", 4), ("merge", 1), ("tokenize", 1), ("read_dump", 1)):
        assert len([k for k in ran if name in str(k)]) == n, (name, ran)
    assert os.getpid() not in hosts

    cook(["unparquet", src, "--out", f"{T}/cosmopedia"], T)
    cook(["merge", f"{D}/cosmopedia", "--out", f"{T}/merged", "--shard-size", "20KB"], T)
    cook(["tokenize", f"{T}/merged", "--encoding", "gpt2", "--out", f"{T}/tokens"], T)

    docs_d, docs_t = _objects(s3, f"{D}/cosmopedia"), _objects(s3, f"{T}/cosmopedia")
    assert sorted(docs_d) == sorted(docs_t) == ["stanford__train-00000-of-00001.parquet", "stories__train-00000-of-00001.parquet"]
    for name in docs_d:
        ours, ref = (pq.read_table(pa.BufferReader(x[name])) for x in (docs_d, docs_t))
        assert ours.num_rows > 0 and ours.drop_columns(["fetched_at"]).equals(ref.drop_columns(["fetched_at"]))
    for stage, meta in (("merged", "stats.json"), ("tokens", "meta.json")):
        ours, ref = _objects(s3, f"{D}/{stage}"), _objects(s3, f"{T}/{stage}")
        assert sorted(ours) == sorted(ref) and meta in ours
        for k in ours:
            if k != meta:
                assert ours[k] == ref[k], k
        a_meta, b_meta = json.loads(ours[meta]), json.loads(ref[meta])
        assert {k: v for k, v in a_meta.items() if k != "inputs"} == {k: v for k, v in b_meta.items() if k != "inputs"}
    assert len([k for k in _objects(s3, f"{D}/merged") if k.startswith("shard_")]) > 1
    assert s3.keys(f"{D}/.cook/results/"), "the tasks' result records live in the bucket"
    assert list(work.iterdir()) == []
    for i in range(2):  # each worker's scratch (merge's, tokenize's) was under its own cache, and is gone
        assert not list((tmp_path / "cluster" / f"worker{i}" / "cache" / "tmp").glob("*"))
    # the worker that read the dump copied it and its index into its own cache
    copies = [p.name for i in range(2) for p in (tmp_path / "cluster" / f"worker{i}" / "cache" / "dumps").rglob("*.bz2")]
    assert sorted(copies) == sorted([dump.name, find_index(dump).name]), copies

    # the reference: the same dump read here from the local file, as the thread runner's task does
    ref_dir = tmp_path / "flow" / "wiki-ref"
    extract_dump(dump, ref_dir, workers=2)
    ours = _objects(s3, f"{D}/wikipedia-dump")
    ref = {p.name: p.read_bytes() for p in ref_dir.iterdir()}
    assert sorted(ours) == sorted(ref) and "summary.json" in ours and len(ours) > 1
    for k in ours:  # the shards, byte for byte
        if k != "summary.json":
            assert ours[k] == ref[k], k
    a_sum, b_sum = json.loads(ours["summary.json"]), json.loads(ref["summary.json"])
    assert (a_sum["dump"], a_sum["out"]) == (f"{D}/dumps/{dump.name}", f"{D}/wikipedia-dump") and a_sum["kept"] > 0
    assert {k: v for k, v in a_sum.items() if k not in ("dump", "out", "seconds")} == \
        {k: v for k, v in b_sum.items() if k not in ("dump", "out", "seconds")}
    # a rerun on the flow's machine: a cache hit from the record the worker wrote in the bucket, nothing copied here
    before = {k: storage.info(f"{D}/wikipedia-dump/{k}").get("ETag") for k in ours}
    assert "-> " + f"{D}/wikipedia-dump (cached, unchanged dump)" in cook(["scrape", "wiki-dump"], D)
    assert {k: storage.info(f"{D}/wikipedia-dump/{k}").get("ETag") for k in ours} == before
    assert not (cache / "dumps").exists()
    # bad input is one line, found before anything runs (the CLI's usage error): a missing dump object, --fetch
    # into the bucket
    from flows.wiki_dump import check_args
    from model.errors import CookError

    for args, line in (((f"{D}/dumps/enwiki-nope-pages-articles.xml.bz2", None, None),
                        f"dump not found: {D}/dumps/enwiki-nope-pages-articles.xml.bz2"),
                       ((str(dump), f"{D}/fetched", None, True), "--fetch with a bucket --out is not supported yet: ")):
        with pytest.raises(CookError) as e:
            check_args(*args)
        assert str(e.value).startswith(line) and "\n" not in str(e.value) and s3.SECRET not in str(e.value)
    if why is not None:
        pytest.skip(f"the workers had their own folders but could see the flow's (the strict part): {why}")


def test_a_cluster_elsewhere_needs_a_prefect_api_it_can_reach(monkeypatch):
    """With COOK_DATA_DIR a URL the tasks' results go through a block on the flow's Prefect API: a cluster on other
    machines cannot reach a temporary API on this machine's loopback, so the stage stops with one line first."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.runners import check_api_reachable
    from model.errors import CookError
    from tasks.core.settings import get_settings

    monkeypatch.setenv("COOK_DATA_DIR", "s3://some-bucket/data")
    get_settings.cache_clear()
    try:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            assert not PREFECT_API_URL.value()
            with pytest.raises(CookError) as e:
                check_api_reachable("tcp://10.1.2.3:8786")
            assert "need a Prefect server they can reach (set PREFECT_API_URL" in str(e.value)
            check_api_reachable("tcp://127.0.0.1:8786")  # workers on this machine share the flow's temporary server
            monkeypatch.setenv("COOK_DATA_DIR", "/srv/shared/data")  # a shared filesystem: results on it
            get_settings.cache_clear()
            check_api_reachable("tcp://10.1.2.3:8786")
        monkeypatch.setenv("COOK_DATA_DIR", "s3://some-bucket/data")
        get_settings.cache_clear()
        check_api_reachable("tcp://10.1.2.3:8786")  # PREFECT_API_URL set (the test session's server)
    finally:
        get_settings.cache_clear()
