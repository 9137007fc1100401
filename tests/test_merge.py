"""`cook merge`: idempotent byte-identical shards, dedup across sources, every document accounted for."""

from __future__ import annotations

import hashlib
import json
import random
import sys
import unicodedata
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.errors import CookError
from tasks.corpus.documents import SCHEMA, read_text_documents, write_documents
from tasks.corpus.merge import check_merge_args, merge_documents, parse_size

pytestmark = pytest.mark.timeout(300)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


def _vocabulary() -> list[str]:
    import re
    from pydoc_data.topics import topics

    return sorted({w for t in topics.values() for w in re.findall(r"[a-z]{3,12}", t)})


WORDS = _vocabulary()  # a few thousand real English words


def prose(seed: int, sentences: int = 12) -> str:
    """A deterministic, non-repetitive paragraph: sentences of words drawn from a large vocabulary."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = rng.sample(WORDS, rng.randint(8, 16))
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def mk(doc_id: str, text: str | None, source: str = "web", **extra) -> dict:
    return {"id": doc_id, "source": source, "url": f"https://example.com/{doc_id}", "title": doc_id, "text": text,
            "fetched_at": T0, **extra}


def read_all(folder: Path, pattern: str = "shard_*.parquet") -> list[dict]:
    rows = []
    for p in sorted(folder.glob(pattern)):
        rows += pq.read_table(p).to_pylist()
    return rows


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """Two sources in three files; planted exact duplicates (case, whitespace, NFC), spam, empty and short texts."""
    d = tmp_path / "in"
    cafe = "Le café au coin de la rue ouvre tôt. " + prose(100)
    web = [mk(f"w{i}", prose(i)) for i in range(40)]
    web += [mk("w-cafe", cafe), mk("w-empty", ""), mk("w-null", None), mk("w-short", "Too short.")]
    web += [mk("w-spam", "\n".join(["Click here to win a free prize today!"] * 10))]
    books = [mk(f"b{i}", prose(1000 + i), "books") for i in range(30)]
    books += [
        mk("b-dup-case", prose(3).upper(), "books"),                            # = w3, upper case
        mk("b-dup-space", "  " + prose(5).replace(" ", "   \n ") + "\n", "books"),  # = w5, whitespace
        mk("b-dup-nfc", unicodedata.normalize("NFD", cafe), "books"),            # = w-cafe, decomposed accents
        mk("b-dup-self", prose(1000), "books"),                                  # = b0, same source
    ]
    write_documents(d / "a_web.parquet", web)
    write_documents(d / "b_books.parquet", books[:20])
    write_documents(d / "c_books.parquet", books[20:])
    return d


def test_parse_size():
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("2.5GB") == 2_500_000_000
    assert parse_size("500MB") == 500_000_000
    assert parse_size("64KiB") == 65536 and parse_size("10") == 10 and parse_size(1234) == 1234
    for bad in ("", "GB", "2XB", "-1GB", "0", "1.2.3MB"):
        with pytest.raises(CookError, match="bad size"):
            parse_size(bad)


def test_accounting_dedup_and_reasons(corpus, tmp_path):
    out = tmp_path / "out"
    stats = merge_documents([corpus], out, "2GB")
    kept, rejects = read_all(out), read_all(out / "rejects")
    in_docs = read_all(corpus, "*.parquet")
    # every input document is accounted for, per source
    assert sorted(d["id"] for d in kept + rejects) == sorted(d["id"] for d in in_docs)
    for src in ("web", "books"):
        s = stats["sources"][src]
        assert s["documents_in"] == sum(d["source"] == src for d in in_docs)
        assert s["documents_out"] + sum(s["rejected"].values()) == s["documents_in"]
        assert s["documents_out"] == sum(d["source"] == src for d in kept)
        assert s["bytes_in"] == sum(len((d["text"] or "").encode()) for d in in_docs if d["source"] == src)
        assert s["bytes_out"] == sum(len(d["text"].encode()) for d in kept if d["source"] == src)
    assert json.loads((out / "stats.json").read_text()) == stats
    # rejects carry their reasons, and duplicates the id of the kept document
    why = {d["id"]: (d["reason"], d["duplicate_of"]) for d in rejects}
    assert why == {
        "w-empty": ("empty", None), "w-null": ("empty", None), "w-short": ("too-short", None),
        "w-spam": ("repetition:dup-line-frac", None),
        "b-dup-case": ("exact-duplicate", "w3"), "b-dup-space": ("exact-duplicate", "w5"),
        "b-dup-nfc": ("exact-duplicate", "w-cafe"), "b-dup-self": ("exact-duplicate", "b0"),
    }
    assert stats["exact_duplicates"] == 4 and stats["near_duplicates"] == 0
    assert stats["rejected"]["exact-duplicate"] == 4
    # rejects keep the original document untouched; kept ones are normalized (NFC), first occurrence wins
    by_id = {d["id"]: d for d in in_docs}
    assert all(r["text"] == by_id[r["id"]]["text"] for r in rejects)
    assert all(unicodedata.is_normalized("NFC", d["text"]) for d in kept)
    # provenance columns and fetched_at come through as they were
    assert all(d["fetched_at"] == T0 and d["url"] == by_id[d["id"]]["url"] for d in kept)
    assert pq.read_schema(out / "shard_00000.parquet").names[: len(SCHEMA)] == SCHEMA.names
    assert pq.read_schema(out / "rejects" / "shard_00000.parquet").names[-2:] == ["reason", "duplicate_of"]


def test_idempotent_byte_identical(corpus, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    s1 = merge_documents([corpus], one, "3KB")
    merge_documents([corpus], two, "3KB")
    assert len(s1["shards"]) > 3
    h1, h2 = file_hashes(one), file_hashes(two)
    assert h1 == h2 and any(k.startswith("rejects/") for k in h1)
    # re-run into the same folder: replaced, never appended; no temp folders left beside it,
    # not even one a killed earlier run left behind
    stale = tmp_path / ".one.x1y2.tmp"
    (stale / "rejects").mkdir(parents=True)
    (stale / "shard_00000.parquet").write_bytes((one / "shard_00000.parquet").read_bytes())
    merge_documents([corpus], one, "3KB")
    assert file_hashes(one) == h1
    assert len(read_all(one)) == s1["documents_out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "one", "two"]


def test_worker_processes_give_the_same_bytes(corpus, tmp_path):
    """Filters in worker processes (as for big inputs) change nothing in the output."""
    merge_documents([corpus], tmp_path / "one", "3KB", near_dedup=True, workers=1)
    merge_documents([corpus], tmp_path / "two", "3KB", near_dedup=True, workers=2)
    assert file_hashes(tmp_path / "one") == file_hashes(tmp_path / "two")


def test_output_inside_inputs_is_not_merged_again(corpus):
    out = corpus / "merged"
    s1 = merge_documents([corpus], out, "2GB")
    s2 = merge_documents([corpus], out, "2GB")
    assert s1 == s2 and len(read_all(out)) == s1["documents_out"]
    # another merge's kept shards are documents (deduplicated away), its rejects are not inputs
    s3 = merge_documents([corpus], corpus.parent / "again", "2GB")
    assert s3["documents_out"] == s1["documents_out"]
    assert s3["exact_duplicates"] == s1["exact_duplicates"] + s1["documents_out"]
    assert not any("rejects" in i for i in s3["inputs"])


def test_shard_rolling_and_order(corpus, tmp_path):
    out = tmp_path / "out"
    size = 2500
    stats = merge_documents([corpus], out, size)
    shards = sorted(out.glob("shard_*.parquet"))
    assert [p.name for p in shards] == stats["shards"] == [f"shard_{i:05d}.parquet" for i in range(len(shards))]
    assert len(shards) >= 10
    for p in shards:
        texts = pq.read_table(p).column("text").to_pylist()
        assert sum(len(t.encode()) for t in texts) <= size or len(texts) == 1
    # deterministic order: files sorted by path, rows in file order
    expected = [d["id"] for f in sorted(corpus.glob("*.parquet")) for d in pq.read_table(f).to_pylist()]
    kept = [d["id"] for d in read_all(out)]
    assert kept == [i for i in expected if i in set(kept)]


def test_text_format_lossless(corpus, tmp_path):
    weird = tmp_path / "weird"
    tricky = prose(77) + " A model would see <|endoftext|> here, and <||endoftext|> there.\n"
    write_documents(weird / "z.parquet", [mk("z-tricky", tricky, "misc"), mk("z-ok", prose(78), "misc")])
    p_out, t_out = tmp_path / "p", tmp_path / "t"
    sp = merge_documents([corpus, weird], p_out, "4KB")
    st = merge_documents([corpus, weird], t_out, "4KB", fmt="text")
    assert st["shards"] == [n.replace(".parquet", ".txt") for n in sp["shards"]]
    texts = [t for n in st["shards"] for t in read_text_documents(t_out / n)]
    assert texts == [d["text"] for d in read_all(p_out)]
    assert tricky in texts
    assert (t_out / "rejects" / "shard_00000.parquet").is_file()  # rejects stay in the document format


def test_near_dedup(tmp_path):
    rng = random.Random(7)
    base = [prose(i, 25) for i in range(20)]
    docs = [mk(f"d{i}", t) for i, t in enumerate(base)]
    planted = {}
    for i in range(0, 20, 2):  # a few words changed in half of them, in another source
        words = base[i].split()
        for j in rng.sample(range(len(words)), 3):
            words[j] = "changed"
        planted[f"n{i}"] = f"d{i}"
        docs.append(mk(f"n{i}", " ".join(words), "mirror"))
    write_documents(tmp_path / "in" / "docs.parquet", docs)
    off = merge_documents([tmp_path / "in"], tmp_path / "off", "2GB")
    assert off["documents_out"] == 30 and off["near_duplicates"] == 0
    on = merge_documents([tmp_path / "in"], tmp_path / "on", "2GB", near_dedup=True)
    assert on["near_duplicates"] == 10 and on["documents_out"] == 20
    rejects = {d["id"]: (d["reason"], d["duplicate_of"]) for d in read_all(tmp_path / "on" / "rejects")}
    assert rejects == {k: ("near-duplicate", v) for k, v in planted.items()}
    assert {d["id"] for d in read_all(tmp_path / "on")} == {f"d{i}" for i in range(20)}  # distinct docs kept
    assert on["sources"]["mirror"]["rejected"] == {"near-duplicate": 10}
    merge_documents([tmp_path / "in"], tmp_path / "on2", "2GB", near_dedup=True)
    assert file_hashes(tmp_path / "on") == file_hashes(tmp_path / "on2")


def test_bad_input_leaves_nothing(corpus, tmp_path):
    bad = tmp_path / "bad"
    write_documents(bad / "ok.parquet", [mk("ok", prose(1))])
    table = pa.table({"id": ["x"], "source": ["web"], "text": [prose(2)], "fetched_at": ["yesterday"]})
    pq.write_table(table, bad / "zz.parquet")  # fetched_at is text, not a timestamp
    out = tmp_path / "out"
    with pytest.raises(CookError, match="document format"):
        merge_documents([corpus, bad], out, "2GB")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "in"]  # no temp folder either
    (bad / "notparquet.parquet").write_text("hello")
    with pytest.raises(CookError, match="notparquet.parquet"):
        check_merge_args([bad], out)


def test_check_merge_args(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert len(check_merge_args([corpus], out)) == 3
    with pytest.raises(CookError, match="bad size '2 parsecs'"):
        check_merge_args([corpus], out, "2 parsecs")
    with pytest.raises(CookError, match="unknown format 'csv'"):
        check_merge_args([corpus], out, fmt="csv")
    with pytest.raises(CookError, match="no inputs"):
        check_merge_args([], out)
    with pytest.raises(CookError, match="not found"):
        check_merge_args([tmp_path / "missing"], out)
    monkeypatch.setitem(sys.modules, "langdetect", None)  # as if not installed
    with pytest.raises(CookError, match="langdetect"):
        check_merge_args([corpus], out, languages=["en"])


def test_language_filter_in_merge(tmp_path):
    pytest.importorskip("langdetect")
    french = ("Le phare se dressait au bout d'une étroite langue de terre, et pendant la plus grande partie de l'année "
              "c'était le seul bâtiment que l'on pouvait voir depuis la mer. Sa gardienne montait l'escalier deux fois par jour "
              "pour tailler la mèche et polir la grande lentille.")
    write_documents(tmp_path / "in" / "x.parquet", [mk("en", prose(1)), mk("fr", french)])
    stats = merge_documents([tmp_path / "in"], tmp_path / "out", "2GB", languages=["en"])
    assert stats["rejected"] == {"language": 1} and [d["id"] for d in read_all(tmp_path / "out")] == ["en"]


def test_flow_publishes_summary(corpus, tmp_path):
    from conftest import artifacts_of, new_tag, tagged_flow_runs
    from prefect import tags
    from prefect.client.orchestration import get_client

    from flows.merge import merge_flow

    out = tmp_path / "out"
    tag = new_tag()
    with tags(tag):  # this test's run, never another test's merge
        stats = merge_flow(inputs=[str(corpus)], out=str(out), shard_size="2GB", fmt="parquet")
    assert stats["documents_in"] == 79 and (out / "stats.json").is_file()
    with get_client(sync_client=True) as client:
        arts = artifacts_of(client, tagged_flow_runs(client, tag), "merge-summary")
    assert len(arts) == 1 and "| books |" in arts[0].data and "Exact duplicates:** 4" in arts[0].data
    # a second run with unchanged inputs is a cache hit with the same stats
    assert merge_flow(inputs=[str(corpus)], out=str(out), shard_size="2GB", fmt="parquet") == stats


def test_cli_bad_shard_size(cook, corpus, tmp_path):
    out = tmp_path / "out"
    proc = cook(["merge", corpus, "--out", out, "--shard-size", "2 parsecs"])
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "bad size" in lines[0], proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("new_first", [False, True])
def test_newest_copy_of_an_id_supersedes_older_ones(tmp_path, new_first):
    """A page fetched again after it changed: one document per id, the newest `fetched_at`, whatever the file
    order; the older copies go to rejects as superseded (even one whose text equals another kept document)."""
    from datetime import timedelta

    old = [mk("p1", prose(11)), mk("p2", prose(12)), mk("p3", prose(13)), mk("solo", prose(14))]
    new = [{**mk("p1", prose(21)), "fetched_at": T0 + timedelta(days=1)},
           {**mk("p2", prose(12)), "fetched_at": T0 + timedelta(days=1)},  # re-fetched, unchanged text
           {**mk("p3", prose(23)), "fetched_at": T0 + timedelta(days=2)}]
    newer = [{**mk("p3", prose(33)), "fetched_at": T0 + timedelta(days=3)}]
    names = ["a", "b", "c"] if new_first else ["c", "b", "a"]  # sorted input order: newest first, or oldest first
    write_documents(tmp_path / "in" / f"{names[2]}.parquet", old)
    write_documents(tmp_path / "in" / f"{names[1]}.parquet", new)
    write_documents(tmp_path / "in" / f"{names[0]}.parquet", newer)
    stats = merge_documents([tmp_path / "in"], tmp_path / "out")
    kept = {d["id"]: d["text"] for d in read_all(tmp_path / "out")}
    assert kept == {"p1": prose(21), "p2": prose(12), "p3": prose(33), "solo": prose(14)}
    rejects = read_all(tmp_path / "out" / "rejects")
    assert sorted((d["id"], d["reason"], d["duplicate_of"]) for d in rejects) == [
        ("p1", "superseded", "p1"), ("p2", "superseded", "p2"), ("p3", "superseded", "p3"), ("p3", "superseded", "p3")]
    assert {d["text"] for d in rejects} == {prose(11), prose(12), prose(13), prose(23)}
    assert stats["rejected"] == {"superseded": 4}
