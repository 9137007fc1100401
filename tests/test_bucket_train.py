"""Training with the token folder and the run on object storage (a moto S3 server): the run resumes on a fresh
machine from the bucket alone, bit-identical to an uninterrupted run; nothing but caches is written locally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from chardata import make_char_data
from safetensors.torch import load_file

from model import storage
from model.train import train_worker

CHUNKS, ITERS, SEED = 2, 30, 11
KW = dict(preset="tiny", chunks=CHUNKS, iters_per_chunk=ITERS, seed=SEED, eval_interval=ITERS, eval_iters=2, warmup=5)
FLAGS = ["--preset", "tiny", "--chunks", CHUNKS, "--iters-per-chunk", ITERS, "--seed", SEED, "--eval-interval", ITERS,
         "--eval-iters", 2, "--warmup", 5, "--device", "cpu"]
CK = "checkpoints"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_char_data(tmp_path_factory.mktemp("tokens") / "tokens")


def same_tensors(a: Path, b: Path) -> bool:
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def bucket_checkpoints(s3, run_url: str) -> set[str]:
    """Names of the run's checkpoints that are complete in the bucket (their marker is there)."""
    prefix = run_url.split("/", 3)[3] + f"/{CK}/"
    return {k[len(prefix):].split("/")[0] for k in s3.keys(run_url + f"/{CK}/") if k.endswith("/" + storage.MARKER)}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_run_on_bucket_prunes_and_extends_from_a_fresh_cache(s3, data, tmp_path, monkeypatch):
    """In one process: a run at a URL prunes its bucket as a local run prunes its folder, and extending it on a
    fresh machine (empty cache) ends bit-identical to the same run trained locally."""
    storage.put_dir(data, f"{s3.url}/tokens")
    run_url, local_run = f"{s3.url}/runs/r", tmp_path / "local-run"
    kw = {**KW, "keep_last": 1, "iters_per_chunk": 10, "eval_interval": 10}
    monkeypatch.setenv("COOK_CACHE_DIR", str(tmp_path / "cache-a"))
    train_worker(f"{s3.url}/tokens", run_url, **kw)
    # what a machine that died mid-upload leaves: folders without their marker, which count for nothing
    storage.write_bytes(f"{run_url}/{CK}/chunk_000003/model.safetensors", b"half an upload")
    storage.write_bytes(f"{run_url}/{CK}/chunk_000009/state.json", b'{"iteration": 90}')
    monkeypatch.setenv("COOK_CACHE_DIR", str(tmp_path / "cache-b"))  # another machine: only the bucket is shared
    summaries = train_worker(f"{s3.url}/tokens", run_url, **{**kw, "chunks": 3})
    # extending goes back to where chunk 2's cooldown started (model.train): chunk 2 is finished again, then chunk 3
    assert [s["chunk"] for s in summaries] == [2, 3] and summaries[0]["start_iter"] == 16
    assert summaries[-1]["checkpoint"] == f"{run_url}/{CK}/chunk_000003"
    train_worker(data, local_run, **{**kw, "chunks": 3})
    local_names = {p.name for p in (local_run / CK).iterdir() if p.is_dir()}
    assert bucket_checkpoints(s3, run_url) == local_names  # pruned and rewound alike: latest, best, cooldown start
    assert not s3.keys(f"{run_url}/{CK}/chunk_000009")  # the stray half upload is gone
    assert {k.split("/")[-2] for k in s3.keys(f"{run_url}/cooled/") if k.endswith(storage.MARKER)} == {"chunk_000002"}
    got = tmp_path / "got"
    storage.get_dir(f"{run_url}/{CK}/chunk_000003", got)
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert same_tensors(got / f, local_run / CK / "chunk_000003" / f)
    info = json.loads(storage.read_text(f"{run_url}/run.json"))
    assert info["data"]["dir"] == f"{s3.url}/tokens" and info["chunks"] == 3
    # `cook sample` reads a run or a checkpoint by URL (a read-only copy under the cache)
    from flows.sample import sample_text

    text = sample_text(run_url, "the", max_new_tokens=8, device="cpu")
    assert text == sample_text(str(local_run), "the", max_new_tokens=8, device="cpu")
    assert sample_text(f"{run_url}/{CK}/chunk_000003", "the", max_new_tokens=8, device="cpu") == text
    evals = lambda text: [r for r in map(json.loads, text.splitlines()) if r["kind"] == "eval"]
    assert evals(storage.read_text(f"{run_url}/metrics.jsonl")) == evals((local_run / "metrics.jsonl").read_text())


@pytest.mark.timeout(300)
def test_sigkill_then_fresh_machine_resumes_from_bucket_bit_identical(s3, data, tmp_path, cook_env, prefect_api):
    """`cook train` with COOK_DATA_DIR, --data and --run on S3: SIGKILL once chunk 1's checkpoint is complete in the
    bucket, then the same command from a fresh empty working directory with a fresh empty cache resumes from the
    bucket and ends bit-identical to an uninterrupted run. Only the cache folders get files; no credentials are
    written anywhere."""
    data_url = f"{s3.url}/data"
    bucket = s3.url[len("s3://"):]
    tokens_url, run_url = f"{data_url}/tokens", f"{data_url}/runs/{bucket}"  # the flow run's name names the bucket
    storage.put_dir(data, tokens_url)
    ref = tmp_path / "ref"
    train_worker(data, ref, device="cpu", **KW)  # the uninterrupted run, in this process on local folders

    def machine(name: str) -> tuple[dict, Path, Path, Path]:
        root = tmp_path / name
        cwd, cache, home = root / "cwd", root / "cache", root / "home"
        for d in (cwd, cache, home):
            d.mkdir(parents=True)
        env = {**cook_env, **s3.env(), "COOK_DATA_DIR": data_url, "COOK_CACHE_DIR": str(cache), "HOME": str(home),
               "OMP_NUM_THREADS": str(torch.get_num_threads())}
        return env, cwd, cache, home

    cmd = [sys.executable, "-m", "flows.cli", "train", "--data", tokens_url, "--run", run_url, *map(str, FLAGS)]
    procs: list[subprocess.Popen] = []

    def start(env: dict, cwd: Path, log: Path) -> subprocess.Popen:
        with open(log, "w") as f:  # its own process group: killed whole, as a machine that goes away
            procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        env1, cwd1, cache1, home1 = machine("machine1")
        p = start(env1, cwd1, logs / "first.log")
        deadline = time.monotonic() + 180
        while "chunk_000001" not in bucket_checkpoints(s3, run_url):
            assert p.poll() is None, (logs / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "chunk 1's checkpoint never appeared complete in the bucket"
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
        assert "chunk_000002" not in bucket_checkpoints(s3, run_url), "chunk 2 finished before the kill: lengthen it"
        _expire_lease(cache1)

        env2, cwd2, cache2, home2 = machine("machine2")
        p = start(env2, cwd2, logs / "second.log")
        assert p.wait(timeout=240) == 0, (logs / "second.log").read_text()[-3000:]
    finally:
        for q in procs:
            if q.poll() is None:
                os.killpg(q.pid, signal.SIGKILL)
                q.wait(timeout=30)
    out = (logs / "second.log").read_text()
    assert "chunk 1 iter" not in out, out[-3000:]  # resumed: chunk 1 was not trained again
    assert "chunk 2 iter" in out and "Traceback" not in out
    assert f"run: {run_url}" in out

    # the run in the bucket ends where the uninterrupted run ended
    assert bucket_checkpoints(s3, run_url) == {p.name for p in (ref / CK).iterdir() if p.is_dir()}
    final = tmp_path / "final"
    storage.get_dir(f"{run_url}/{CK}/chunk_000002", final)
    for f in ("model.safetensors", "optimizer.safetensors"):
        assert same_tensors(final / f, ref / CK / "chunk_000002" / f), f
    state, ref_state = (json.loads((d / "state.json").read_text()) for d in (final, ref / CK / "chunk_000002"))
    assert state["rng"]["torch"] == ref_state["rng"]["torch"] and state["rng"]["numpy"] == ref_state["rng"]["numpy"]
    ref_evals = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    evals = [json.loads(x) for x in storage.read_text(f"{run_url}/metrics.jsonl").splitlines() if '"eval"' in x]
    assert evals == ref_evals

    # nothing written locally but caches: the working directories stay empty, and so do the homes but for other
    # libraries' caches (matplotlib's font cache); cook's own cache is COOK_CACHE_DIR
    for d in (cwd1, cwd2):
        assert list(d.iterdir()) == [], (d, list(d.rglob("*"))[:10])
    for d in (home1, home2):
        assert {p.name for p in d.iterdir()} <= {".cache", ".config"}, list(d.iterdir())
        assert not any("cook" in p.name for p in d.rglob("*")), list(d.rglob("*cook*"))
    assert files_under(cache2), "the second machine worked from its cache"

    # no credentials in what cook wrote: the bucket's run files, both caches (logs, working copies), the output,
    # the Prefect artifacts of the runs
    secrets = (s3.SECRET, s3.KEY_ID)
    texts = {f"log {p.name}": p.read_text(errors="replace") for p in logs.iterdir()}
    for cache in (cache1, cache2):
        for f in files_under(cache):
            if f.suffix in (".json", ".jsonl", ".log", ".txt", ".md") or f.name.endswith(".info"):
                texts[str(f)] = f.read_text(errors="replace")
    assert any(str(f).endswith("cook.log") for f in texts), "cook's log file is under the cache"
    for key in s3.keys(run_url):
        if key.endswith((".json", ".jsonl")):
            texts[key] = storage.read_text(f"{s3.url}/{key}")
    texts["artifacts"] = _artifacts_text(bucket)
    assert "Checkpoint: `s3://" in texts["artifacts"]
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a credential in {where}"


def _artifacts_text(bucket: str) -> str:
    """Every artifact of the flow runs whose name names the bucket, as one text."""
    from conftest import artifacts_of
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=bucket)))
        assert runs, "the flow runs are named after their run's URL"
        return "\n".join(json.dumps(a.data) + (a.description or "") for a in artifacts_of(client, runs))


def _expire_lease(cache: Path) -> None:
    """Free the Prefect concurrency slot the killed run held for the run's URL (its lease id is in the lock's
    `.info` file on that machine), as the server's lease expiry does LEASE_S after a machine goes away (the tests'
    server runs no repossessor): the new machine cannot know the dead run, so it waits for the server."""
    from uuid import UUID

    from prefect.client.orchestration import get_client

    infos = list((cache / "locks").glob("*.info"))
    assert len(infos) == 1, infos
    lease = json.loads(infos[0].read_text())["lease_id"]
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(UUID(lease))


def test_processes_of_one_machine_share_one_copy_of_the_tokens(s3, data, tmp_path):
    """Three processes (as torchrun ranks) ask for the bucket's token folder at once: one copy, whole, no leftovers."""
    url = f"{s3.url}/tokens"
    storage.put_dir(data, url)
    env = {**os.environ, **s3.env(), "COOK_CACHE_DIR": str(tmp_path / "cache")}
    code = "import sys; from model.runsync import local_data; print(local_data(sys.argv[1]))"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0] and len(set(outs)) == 1, outs
    copy = Path(outs[0])
    assert sorted(p.name for p in (tmp_path / "cache" / "tokens").iterdir()) == sorted([copy.name, f".{copy.name}.lock"])
    assert sorted(p.relative_to(copy) for p in files_under(copy)) == sorted(p.relative_to(data) for p in files_under(data))
    assert all((copy / p.relative_to(data)).read_bytes() == p.read_bytes() for p in files_under(data))
