"""A scraper with COOK_DATA_DIR on object storage, as a user runs it: the real `cook scrape wikipedia` against the
fake MediaWiki API (tests/fake_mediawiki.py) and a local S3-compatible server (moto, tests/s3server.py).

Its parts and a copy of its ledger land in the bucket, the ledger naming only parts the bucket holds; a fresh
machine (empty cache, home and working directory) restores the ledger from the bucket and fetches no page again;
a part deleted from the bucket is re-made, exactly its pages; `cook merge`'s default inputs take the source from
the bucket only; a bucket folder held by another machine's live lease is refused."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fake_mediawiki import FakeMediaWiki, FakeWiki

from conftest import run_cook
from model import storage
from model.errors import OutputBusy
from tasks.core.ledger import Ledger

pytestmark = pytest.mark.timeout(300)


def _page_ids(loc: str) -> list[int]:
    with storage.open_read(loc) as f:
        return [int(i.rsplit(":", 1)[1]) for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]


def _bucket_state(s3, remote: str, tmp: Path) -> tuple[dict[str, list[int]], set[str], dict[str, str]]:
    """({part name: page ids in it}, ledger done keys, {done key: part}) as the bucket holds them."""
    names = [k.rsplit("/", 1)[1] for k in s3.keys(remote + "/")]
    parts = {n: _page_ids(f"{remote}/{n}") for n in names if n.endswith(".parquet")}
    assert set(names) == {*parts, "ledger.sqlite"}, "the parts and the ledger, no lease left behind"
    local = storage.get_file(f"{remote}/ledger.sqlite", tmp / f"ledger-{time.monotonic_ns()}.sqlite")
    with Ledger(local) as ledger:
        done = {r["key"]: r["part"] for r in ledger.items("wikipedia:en", "done")}
    return parts, set(done), done


def test_scrape_on_a_bucket_resumes_on_a_fresh_machine(s3, cook_env, tmp_path, monkeypatch):
    data = f"{s3.url}/data"
    remote = f"{data}/wikipedia"
    wiki = FakeWiki(n_pages=30, seed=6, missing=0)
    args = ["scrape", "wikipedia", "--query", "Gamma", "--query", "Delta", "--max-pages", 12, "--depth", 1,
            "--rate-limit", 200]

    def machine(name: str) -> tuple[dict, Path, Path]:
        """A fresh 'machine': its own empty working directory, home and cache; COOK_DATA_DIR on the bucket."""
        work, cache, home = (tmp_path / name / d for d in ("work", "cache", "home"))
        for d in (work, home):
            d.mkdir(parents=True)
        return {**cook_env, **s3.env(), "COOK_DATA_DIR": data, "COOK_CACHE_DIR": str(cache), "HOME": str(home),
                "COOK_WIKIPEDIA_API_URL": api.url}, work, cache

    def scrape(env: dict, work: Path) -> None:
        r = run_cook(args, env, cwd=work)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        assert not any(work.iterdir()), "the working directory must stay empty"

    with FakeMediaWiki(wiki) as api:
        # machine A: a clean run; its parts and its ledger are on the bucket, the ledger naming only those parts
        env_a, work_a, cache_a = machine("a")
        scrape(env_a, work_a)
        parts, done, where = _bucket_state(s3, remote, tmp_path)
        ids = [p for ps in parts.values() for p in ps]
        assert len(ids) == len(set(ids)) == 12 and {str(p) for p in ids} == done
        assert set(where.values()) <= set(parts), "the bucket's ledger names a part the bucket lacks"
        fetched_once = Counter(api.parse_counts)
        assert set(fetched_once.values()) == {1}

        # machine B, fresh: the ledger comes from the bucket, no page is fetched again, the end state is A's
        env_b, work_b, cache_b = machine("b")
        scrape(env_b, work_b)
        assert api.parse_counts == fetched_once, "a fresh machine fetched pages the bucket already holds"
        assert list(cache_b.rglob("ledger.sqlite")), "the ledger was not restored on the fresh machine"
        assert not list(cache_b.rglob("*.parquet")), "parts on the bucket are not downloaded"
        parts_b, done_b, _ = _bucket_state(s3, remote, tmp_path)
        assert parts_b == parts and done_b == done

        # a part deleted from the bucket: the next run (on B, which never held it) fetches exactly its pages
        victim = sorted(parts)[0]
        storage.remove(f"{remote}/{victim}")
        before = Counter(api.parse_counts)
        scrape(env_b, work_b)
        assert api.parse_counts - before == Counter({p: 1 for p in parts[victim]}), "not exactly the lost pages were fetched"
        parts_c, done_c, where_c = _bucket_state(s3, remote, tmp_path)
        ids_c = [p for ps in parts_c.values() for p in ps]
        assert victim not in parts_c and len(ids_c) == len(set(ids_c)) and set(ids_c) == set(ids)
        assert done_c == done and set(where_c.values()) <= set(parts_c)

        # `--out URL` with a local COOK_DATA_DIR: the folder is worked on in the cache and copied to that URL
        other = f"{s3.url}/elsewhere/wiki"
        r = run_cook(["scrape", "wikipedia", "--query", "Gamma", "--max-pages", 3, "--depth", 0, "--out", other],
                     {**env_b, "COOK_DATA_DIR": str(tmp_path / "b" / "local-data")}, cwd=work_b)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        names = [k.rsplit("/", 1)[1] for k in s3.keys(other + "/")]
        assert "ledger.sqlite" in names and sum(n.endswith(".parquet") for n in names) >= 1, names
        assert not list((tmp_path / "b" / "local-data").rglob("*.parquet")) and not any(work_b.iterdir())

    # merge's default inputs: the source from the bucket only, not again from A's local working copy
    from tasks.core.settings import Settings

    monkeypatch.setenv("COOK_CACHE_DIR", str(cache_a))
    settings = Settings(data_dir=data)
    assert (settings.data_dir / "wikipedia" / "ledger.sqlite").is_file()
    assert [loc for loc in settings.source_locations() if "wikipedia" in loc] == [remote]

    # another machine's live lease on the folder refuses a run; a stale one (no heartbeat for STALE_S) does not
    from tasks.core.mirror import LEASE_NAME, STALE_S, writer_lease

    holder = {"host": "other-box", "pid": 4242, "token": "x", "started": "2026-01-01 00:00:00 UTC", "heartbeat": time.time()}
    storage.write_text(f"{remote}/{LEASE_NAME}", json.dumps(holder))
    with pytest.raises(OutputBusy, match=r"another cook run is writing s3://.*/data/wikipedia \(pid 4242 on other-box"):
        with writer_lease(remote):
            pass
    storage.write_text(f"{remote}/{LEASE_NAME}", json.dumps({**holder, "heartbeat": time.time() - STALE_S - 1}))
    with writer_lease(remote) as me:
        assert json.loads(storage.read_text(f"{remote}/{LEASE_NAME}"))["token"] == me["token"]
    assert not storage.exists(f"{remote}/{LEASE_NAME}")
