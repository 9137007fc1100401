"""The Cosmopedia path (unparquet, merge, tokenize) with COOK_DATA_DIR on object storage, as a user runs it: the
real `cook` CLI against a local S3-compatible server (moto, tests/s3server.py), from an empty working directory.

The bucket's outputs are byte-identical to the same stages on a local data dir; nothing lands on local disk but
the cache (COOK_CACHE_DIR); a second run from a fresh working directory and an empty cache (another machine)
reuses every finished stage from the bucket (outputs and Prefect's result records); a merge that fails midway
leaves no object under its output, and the rerun completes to the same bytes; a bad URL is one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cook
from model import storage
from test_pipeline import _cosmo, _prose

pytestmark = pytest.mark.timeout(600)

ORDERS = (["prompt", "text", "text_token_length", "seed_data", "format", "audience"],
          ["text", "audience", "format", "seed_data", "text_token_length", "prompt"])


def _objects(s3, url: str) -> dict[str, bytes]:
    """Every object under `url` (relative key -> bytes), read straight from the server."""
    prefix = url[len("s3://"):].partition("/")[2].rstrip("/") + "/"
    bucket = url[len("s3://"):].partition("/")[0]
    return {k[len(prefix):]: storage.read_bytes(f"s3://{bucket}/{k}") for k in s3.keys(url.rstrip("/") + "/")}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _local_tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _bad_documents(path: Path, texts: list[str]) -> Path:
    """A document parquet file whose footer and ids read fine but whose last row group's text pages are garbage:
    merge fails on it midway, after shards of the earlier inputs were written."""
    n = len(texts)
    table = pa.table({"id": [f"bad/{i}" for i in range(n)], "source": ["bad"] * n, "url": [""] * n,
                      "title": [None] * n, "text": texts,
                      "fetched_at": pa.array([0] * n, pa.timestamp("us", tz="UTC"))})
    pq.write_table(table, path, row_group_size=max(1, n // 3), compression="snappy")
    md = pq.ParquetFile(path).metadata
    rg = md.row_group(md.num_row_groups - 1)
    col = next(rg.column(j) for j in range(rg.num_columns) if rg.column(j).path_in_schema == "text")
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + col.total_compressed_size] = b"\xff" * col.total_compressed_size
    path.write_bytes(bytes(data))
    return path


def test_cosmopedia_path_on_a_bucket(s3, cook_env, tmp_path):
    bucket = s3.url
    data = f"{bucket}/data"
    # the raw Cosmopedia-like parquet files: one copy in the bucket, one on local disk for the reference run
    raw = tmp_path / "raw" / "cosmopedia" / "data"
    a = _prose(24, 0)
    b = _prose(18, 100) + [a[3], None, ""]  # a duplicate across subsets, a null and an empty text
    for subset, texts, order in (("stanford", a, ORDERS[0]), ("stories", b, ORDERS[1])):
        path = _cosmo(raw / subset / "train-00000-of-00001.parquet", texts, order)
        storage.put_file(path, f"{bucket}/raw/cosmopedia/data/{subset}/{path.name}")

    def machine(name: str) -> tuple[dict, Path, Path]:
        """A fresh 'machine': its own empty working directory and cache, COOK_DATA_DIR on the bucket."""
        work, cache = tmp_path / name / "work", tmp_path / name / "cache"
        work.mkdir(parents=True)
        env = {**cook_env, **s3.env(), "COOK_DATA_DIR": data, "COOK_CACHE_DIR": str(cache)}
        return env, work, cache

    def cook(args, env, work, ok=True):
        proc = run_cook(args, env, cwd=work)
        if ok:
            assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    env, work, cache = machine("first")
    # unparquet: the bucket's raw files (a folder URL) -> DATA/cosmopedia
    cook(["unparquet", f"{bucket}/raw/cosmopedia/data", "--out", f"{data}/cosmopedia"], env, work)
    docs = _objects(s3, f"{data}/cosmopedia")
    assert sorted(docs) == ["stanford__train-00000-of-00001.parquet", "stories__train-00000-of-00001.parquet"]

    # merge, failing midway on a document file whose last row group is garbage: no object appears under
    # DATA/merged (nor any temp prefix beside it), though shards of the earlier inputs had been written
    bad = _bad_documents(tmp_path / "zz-bad.parquet", _prose(30, 7))
    storage.put_file(bad, f"{data}/cosmopedia/zz-bad.parquet")
    failed = cook(["merge", f"{data}/cosmopedia", "--out", f"{data}/merged", "--shard-size", "20KB", "--workers", "0"],
                  env, work, ok=False)
    assert failed.returncode != 0 and failed.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in failed.stderr
    assert [k for k in s3.keys(bucket) if "/merged" in k or "/.merged" in k] == []
    storage.remove(f"{data}/cosmopedia/zz-bad.parquet")

    cook(["merge", f"{data}/cosmopedia", "--out", f"{data}/merged", "--shard-size", "20KB"], env, work)
    merged = _objects(s3, f"{data}/merged")
    assert len([k for k in merged if k.startswith("shard_")]) > 1 and "stats.json" in merged
    cook(["tokenize", f"{data}/merged", "--encoding", "gpt2"], env, work)  # out: DATA/tokens, under COOK_DATA_DIR
    tokens = _objects(s3, f"{data}/tokens")
    assert "meta.json" in tokens and any(k.startswith("train_") for k in tokens) and any(k.startswith("tokenizer/") for k in tokens)
    assert [k for k in s3.keys(bucket) if "/." in k and "/.cook/" not in k] == [], "temp prefixes are gone"
    assert s3.keys(f"{data}/.cook/results/"), "Prefect's result records live in the bucket"

    # nothing on local disk but the cache: the working directory stays empty, no data dir appears
    assert _local_tree(work) == []
    assert not (tmp_path / "first" / "data").exists() and not (Path.cwd() / "data" / "cosmopedia").exists()
    assert all(not p.startswith("tmp/") for p in _local_tree(cache)), "scratch under the cache is removed"

    # the same stages on a local data dir give the same bytes (the local inputs being the bucket's, byte for byte)
    from tasks.corpus.merge import merge_documents
    from tasks.corpus.tokenize import tokenize_corpus
    from tasks.corpus.unparquet import convert_file

    local = tmp_path / "local-data"
    for subset in ("stanford", "stories"):
        convert_file(str(raw / subset / "train-00000-of-00001.parquet"), local / "cosmopedia")
    for name, blob in docs.items():  # unparquet: the same documents (fetched_at and the source's location differ)
        ours = pq.read_table(pa.BufferReader(blob))
        ref = pq.read_table(local / "cosmopedia" / name)
        drop = ["fetched_at", "url", "source_file"]
        assert ours.drop_columns(drop).equals(ref.drop_columns(drop))
        assert set(ours.column("url").to_pylist()) == {f"{bucket}/raw/cosmopedia/data/{name.split('__')[0]}/train-00000-of-00001.parquet"}
    bucket_docs = local / "bucket-docs"
    for name, blob in docs.items():
        (bucket_docs / name).parent.mkdir(parents=True, exist_ok=True)
        (bucket_docs / name).write_bytes(blob)
    merge_documents([bucket_docs], local / "merged", "20KB")
    tokenize_corpus([local / "merged"], "gpt2", local / "tokens")
    for ours, ref, meta in ((merged, _files(local / "merged"), "stats.json"), (tokens, _files(local / "tokens"), "meta.json")):
        assert sorted(ours) == sorted(ref)
        for k in ours:
            if k != meta:
                assert ours[k] == ref[k], k
        a_meta, b_meta = json.loads(ours[meta]), json.loads(ref[meta])
        assert {k: v for k, v in a_meta.items() if k != "inputs"} == {k: v for k, v in b_meta.items() if k != "inputs"}
    assert [i["path"] for i in json.loads(tokens["meta.json"])["inputs"]] == [f"{data}/merged/{k}" for k in sorted(merged)
                                                                             if k.startswith("shard_")]

    from model.tokenizer import load_tokenizer
    from tasks.corpus.tokenize import load_tokenizer_at

    assert load_tokenizer_at(f"{data}/tokens").hash == load_tokenizer(local / "tokens").hash  # --tokenizer URL

    # another machine (empty working directory and cache) runs the same commands: every stage is reused from the
    # bucket, nothing is rewritten
    before = {k: storage.info(f"{bucket}/{k}").get("ETag") for k in s3.keys(data + "/") if "/.cook/" not in k}
    env2, work2, cache2 = machine("second")
    out = cook(["unparquet", f"{bucket}/raw/cosmopedia/data", "--out", f"{data}/cosmopedia"], env2, work2)
    assert "(0 converted, 2 cached)" in out.stdout + out.stderr
    out = cook(["merge", f"{data}/cosmopedia", "--out", f"{data}/merged", "--shard-size", "20KB"], env2, work2)
    assert "(cached, unchanged inputs)" in out.stdout + out.stderr
    out = cook(["tokenize", f"{data}/merged", "--encoding", "gpt2"], env2, work2)
    assert "(cached, unchanged inputs)" in out.stdout + out.stderr
    assert {k: storage.info(f"{bucket}/{k}").get("ETag") for k in s3.keys(data + "/") if "/.cook/" not in k} == before
    assert _local_tree(work2) == []

    # an output gone from the bucket is made again: a cache hit counts only while the task's output is there
    storage.remove(f"{data}/cosmopedia/stories__train-00000-of-00001.parquet")
    out = cook(["unparquet", f"{bucket}/raw/cosmopedia/data", "--out", f"{data}/cosmopedia"], env2, work2)
    assert "(1 converted, 1 cached)" in out.stdout + out.stderr
    assert sorted(storage.listdir(f"{data}/cosmopedia")) == sorted(docs)
    assert any(p.startswith("locks/") for p in _local_tree(cache2)), "the URL's one-writer lock is under the cache"

    # a bad URL is one line: no such bucket, an unknown protocol
    for args in (["unparquet", "s3://cook-no-such-bucket-x/raw/a.parquet", "--out", f"{data}/x"],
                 ["merge", f"{data}/cosmopedia", "--out", "nosuchproto://b/merged"],
                 ["tokenize", f"{data}/merged", "--out", "s3://cook-no-such-bucket-x/tokens"]):
        proc = cook(args, env2, work2, ok=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
        assert s3.SECRET not in proc.stderr + proc.stdout
    assert "cook-no-such-bucket-x" in proc.stderr


def test_url_output_lock_is_local_and_keyed_by_url(tmp_path, monkeypatch):
    """One writer per output URL on this machine: a local lock file under the cache, keyed by the URL without
    credentials; the refusal names the URL, never a password in it."""
    from model.errors import OutputBusy
    from tasks.core.lock import file_lock, lock_path

    monkeypatch.setenv("COOK_CACHE_DIR", str(tmp_path / "cache"))
    url = "s3://some-bucket/data/merged"
    assert lock_path(url, replaced=True).parent == tmp_path / "cache" / "locks"
    assert lock_path(url + "/") == lock_path("s3://key:hunter2@some-bucket/data/merged") == lock_path(url, replaced=True)
    with file_lock(url, replaced=True):
        with pytest.raises(OutputBusy) as e:
            with file_lock("s3://key:hunter2@some-bucket/data/merged/", replaced=True):
                pass
    assert str(e.value).startswith(f"another cook run is writing {url} (") and "hunter2" not in str(e.value)
    with file_lock(url, replaced=True):  # released: taken again at once
        pass


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_staged_dir_replaces_a_folder_whole(where, tmp_path, request):
    """storage.staged_dir (merge's and tokenize's output folder): the old folder stays until the new one is
    complete, an error leaves it as it was and nothing beside it, and the marker object is copied last."""
    if where == "s3":
        base = request.getfixturevalue("s3").url + "/data/out"
    elif where == "memory":
        base = f"memory://cook-staged-{tmp_path.name}/out"
    else:
        base = str(tmp_path / "data" / "out")
    storage.write_bytes(storage.join(base, "old.bin"), b"old")
    storage.write_bytes(storage.join(base, "stats.json"), b"{}")
    with pytest.raises(RuntimeError):
        with storage.staged_dir(base, last="stats.json") as tmp:
            storage.write_bytes(storage.join(str(tmp), "new.bin"), b"new")
            raise RuntimeError("writer crashed")
    assert storage.listdir(base) == ["old.bin", "stats.json"] and storage.listdir(storage.parent(base)) == ["out"]
    with storage.staged_dir(base, last="stats.json") as tmp:
        for name, data in (("a/b.bin", b"ab"), ("c.bin", b"c"), ("stats.json", b"{1}")):
            storage.write_bytes(storage.join(str(tmp), *name.split("/")), data)
    assert [f[len(base) + 1:] for f in storage.find(base)] == ["a/b.bin", "c.bin", "stats.json"]
    assert storage.read_bytes(storage.join(base, "stats.json")) == b"{1}"
    assert storage.listdir(storage.parent(base)) == ["out"], "the temp folder or prefix is gone"
    if where != "local":  # a crashed run's temp prefix beside the folder is what clean_stale removes
        storage.write_bytes(storage.join(storage.parent(base), ".out.1a2b3c4d.tmp", "x.bin"), b"x")
        from tasks.core.lock import clean_stale_beside

        assert clean_stale_beside(base) == 1 and storage.listdir(storage.parent(base)) == ["out"]


def test_an_unfinished_merge_output_on_a_store_is_refused(tmp_path):
    """Merge shards without their stats.json (a merge being published, or cut off mid-copy) are not an input."""
    from model.errors import CookError
    from tasks.corpus.documents import expand_inputs

    base = f"memory://cook-unfinished-{tmp_path.name}/merged"
    storage.write_bytes(storage.join(base, "shard_00000.parquet"), b"PAR1")
    with pytest.raises(CookError, match="without their stats.json"):
        expand_inputs([base])
    storage.write_text(storage.join(base, "stats.json"), "{}")
    assert expand_inputs([base]) == [storage.join(base, "shard_00000.parquet")]
    storage.remove(base, recursive=True)


def test_file_urls_are_local_paths(tmp_path, monkeypatch):
    from tasks.core.settings import Settings
    from tasks.corpus.documents import expand_inputs

    (tmp_path / "docs").mkdir()
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "docs" / "a.parquet")
    assert expand_inputs([f"file://{tmp_path}/docs"]) == [tmp_path / "docs" / "a.parquet"]
    monkeypatch.setenv("COOK_DATA_DIR", f"file://{tmp_path}/data")
    s = Settings()
    assert s.data_dir == tmp_path / "data" and s.data_url is None and s.location("tokens") == str(tmp_path / "data" / "tokens")
