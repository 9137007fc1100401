"""`cook merge`: idempotent byte-identical shards, dedup across sources, every document accounted for."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
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

REPO = Path(__file__).resolve().parents[1]

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
        words[1:1], words[5:5] = ["the"], ["and"]  # stop words, as prose has (Gopher's quality rule wants two)
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
              "pour tailler la mèche et polir la grande lentille. Les pêcheurs du village racontaient qu'elle n'avait "
              "jamais manqué une seule nuit, même pendant la tempête de l'hiver dernier, quand les vagues couvraient "
              "entièrement les rochers noirs du cap. Elle répétait souvent la phrase anglaise « to be or not to be, that "
              "is the question » en riant.")  # English stop words: the quality rules pass it, the language filter decides
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


# --- worker processes ----------------------------------------------------------------------------------------------

MAX = 50_000  # max_chars of the mixed corpus


def _invalid_utf8_parquet(path: Path, rows: list[tuple[str, bytes]]) -> None:
    """A bare parquet file (id, source, text) whose string column holds the given raw bytes (Arrow writes them as is)."""
    import numpy as np

    offsets = np.cumsum([0] + [len(b) for _, b in rows]).astype(np.int32)
    text = pa.Array.from_buffers(pa.string(), len(rows), [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(b"".join(b for _, b in rows))])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [i for i, _ in rows], "source": ["raw"] * len(rows), "text": text}), path)


@pytest.fixture
def mixed(tmp_path) -> Path:
    """Several files of several row groups, bare and cook text files: exact and near duplicates across files and
    row groups, a reject of every reason. The first row group is far slower to judge than the ones after it, so
    worker processes finish out of order."""
    from datetime import timedelta

    from tasks.corpus.documents import TEXT_SEPARATOR, DocumentWriter

    d = tmp_path / "mixed"
    d.mkdir()
    rng = random.Random(3)
    with DocumentWriter(d / "a_heavy.parquet", row_group_size=6) as w:  # ~30 KB documents, then small ones
        for i in range(6):
            w.write(mk(f"h{i}", prose(5000 + i, 250)))
        for i in range(30):
            w.write(mk(f"a{i}", prose(i, 20)))
    near = []
    for i in range(0, 30, 3):  # a few words changed
        words = prose(i, 20).split()
        for j in rng.sample(range(len(words)), 3):
            words[j] = "changed"
        near.append(mk(f"n{i}", " ".join(words), "mirror"))
    others = [
        mk("dup-upper", prose(4, 20).upper(), "books"), mk("dup-heavy", prose(5002, 250), "books"),
        mk("empty", ""), mk("null", None), mk("short", "Too short."),
        mk("spam", "\n".join(["Click here to win a free prize today!"] * 10)),
        mk("long", prose(61, 20) + " " + prose(62, 700)),                        # over MAX, under 3 x MAX
        mk("nul-padded", prose(63, 20) + "\x00" * (3 * MAX + 1)),                # over 3 x MAX before normalizing: too-long
        mk("nul-some", prose(64, 20) + "\x00" * (MAX + 10)),                     # under 3 x MAX: normalized, then kept
        mk("crlf", prose(65, 20).replace(". ", ".\r\n")),
        mk("old", prose(66, 20)), mk("p1", prose(67, 20)),
    ]
    with DocumentWriter(d / "b_more.parquet", row_group_size=5) as w:
        for doc in near + others:
            w.write(doc)
    write_documents(d / "c_newer.parquet", [{**mk("old", prose(68, 20)), "fetched_at": T0 + timedelta(days=1)},
                                           mk("dup-of-near", near[0]["text"], "books")])
    dict_text = pa.array([prose(70, 20), prose(71, 20), prose(4, 20)]).dictionary_encode()
    pq.write_table(pa.table({"id": ["dict0", "dict1", "dict-dup"], "text": dict_text}), d / "d_dict.parquet")
    _invalid_utf8_parquet(d / "e_raw.parquet", [("ok", prose(72, 20).encode()), ("bad", b"caf\xe9 " + prose(73, 20).encode())])
    (d / "f_note.txt").write_text(prose(74, 20), encoding="utf-8")
    (d / "g_latin1.txt").write_bytes(("Caf\u00e9 " + prose(75, 20)).encode("latin-1"))
    (d / "h_docs.txt").write_text(prose(76, 20) + TEXT_SEPARATOR + prose(3, 20) + TEXT_SEPARATOR, encoding="utf-8")
    return d


def _merge_mixed(mixed: Path, out: Path, workers: int, **kw) -> dict:
    return merge_documents([mixed], out, "20KB", min_chars=100, max_chars=MAX, workers=workers, **kw)


@pytest.mark.parametrize("near_dedup,fmt,counts", [(True, "parquet", (1, 2, 3)), (False, "text", (1, 2))])
def test_output_is_byte_identical_whatever_the_worker_count(mixed, tmp_path, near_dedup, fmt, counts):
    runs = {n: _merge_mixed(mixed, tmp_path / f"w{n}", n, near_dedup=near_dedup, fmt=fmt) for n in counts}
    hashes = {n: file_hashes(tmp_path / f"w{n}") for n in counts}
    assert all(hashes[n] == hashes[1] for n in counts), "the output depends on the worker count"
    stats = runs[1]
    assert all(runs[n] == stats for n in counts) and len(stats["shards"]) > 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"] + [f"w{n}" for n in counts]  # no scratch left
    why = {d["id"]: (d["reason"], d["duplicate_of"]) for d in read_all(tmp_path / "w1" / "rejects")}
    expected = {
        "empty": ("empty", None), "null": ("empty", None), "short": ("too-short", None),
        "long": ("too-long", None), "nul-padded": ("too-long", None), "old": ("superseded", "old"),
        "bad": ("invalid-utf8", None), "g_latin1.txt": ("invalid-utf8", None),
        "dup-upper": ("exact-duplicate", "a4"), "dup-heavy": ("exact-duplicate", "h2"), "dict-dup": ("exact-duplicate", "a4"),
        "h_docs.txt:1": ("exact-duplicate", "a3"),
    }
    assert {k: why.get(k) for k in expected} == expected
    assert why["spam"][0].startswith("repetition:")
    if near_dedup:
        assert {k: v for k, v in why.items() if v[0] == "near-duplicate"} == {
            **{f"n{i}": ("near-duplicate", f"a{i}") for i in range(0, 30, 3)}}
        assert why["dup-of-near"] == ("exact-duplicate", "a0")  # a copy of n0 (which passed the filters): its root
    else:
        assert "n0" not in why and why["dup-of-near"] == ("exact-duplicate", "n0")
    if fmt == "parquet":
        kept = read_all(tmp_path / "w1")
        by_id = {d["id"]: d["text"] for d in kept}
        assert by_id["nul-some"] == prose(64, 20)  # normalized: under 3 x max_chars, the length check is after it
        assert by_id["crlf"] == prose(65, 20).replace(". ", ".\n") and by_id["dict0"] == prose(70, 20)
        assert by_id["f_note.txt"] == prose(74, 20) and by_id["h_docs.txt:0"] == prose(76, 20) and by_id["ok"] == prose(72, 20)
        order = [d["id"] for d in kept]  # input order: files sorted, rows in file order
        assert order[:8] == ["h0", "h1", "h2", "h3", "h4", "h5", "a0", "a1"] and order[-3:] == ["ok", "f_note.txt", "h_docs.txt:0"]
        bad = next(d for d in read_all(tmp_path / "w1" / "rejects") if d["id"] == "bad")
        assert bad["text"].startswith("caf\ufffd ")  # invalid bytes replaced: the rejects are valid UTF-8
    for n in counts:
        s = runs[n]["sources"]
        assert sum(v["documents_in"] for v in s.values()) == runs[n]["documents_in"] == sum(
            v["documents_out"] + sum(v["rejected"].values()) for v in s.values())


WORKER_IMPORTS = """
import os, sys
from tasks.corpus.merge import merge_documents
os.environ["PYTHONPROFILEIMPORTTIME"] = "1"  # read at start-up: only the worker processes started now list their imports
merge_documents([sys.argv[1]], sys.argv[2], "20KB", max_chars=50_000, near_dedup=True, workers=2)
"""


def test_worker_processes_import_no_prefect(mixed, tmp_path):
    proc = subprocess.run([sys.executable, "-c", WORKER_IMPORTS, str(mixed), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imports = [l.rsplit("|", 1)[-1].strip() for l in proc.stderr.splitlines() if l.startswith("import time:")]
    assert "tasks.corpus.filters" in imports and "pyarrow" in imports  # the workers started and listed their imports
    assert not [m for m in imports if m.split(".")[0] in ("prefect", "flows", "typer", "pytest")]


def test_worker_error_is_one_line_and_leaves_nothing(mixed, tmp_path):
    """A file only a worker reads (no id column: the main process never opens its rows) with a bad column."""
    pq.write_table(pa.table({"text": [prose(1)], "fetched_at": ["yesterday"]}), mixed / "z_bad.parquet")
    out = tmp_path / "out"
    with pytest.raises(CookError, match=r"z_bad.parquet: documents do not fit the document format \(column 'fetched_at'"):
        _merge_mixed(mixed, out, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]  # no output, no temp or scratch folder


def test_integer_text_column_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["x"], "text": [42]}), tmp_path / "in" / "ints.parquet")
    with pytest.raises(CookError, match=r"ints.parquet: column 'text' is int64, not text"):
        check_merge_args([tmp_path / "in"], tmp_path / "out")


def test_cli_workers_flag(cook, mixed, tmp_path):
    """--workers 2, and --dedup-memory too small for the corpus (the disk path): the bytes of an in-process merge."""
    merge_documents([mixed], tmp_path / "here", workers=1)
    proc = cook(["merge", mixed, "--out", tmp_path / "cli", "--workers", "2", "--dedup-memory", "1KB"])
    assert proc.returncode == 0, proc.stderr
    assert file_hashes(tmp_path / "cli") == file_hashes(tmp_path / "here")
    proc = cook(["merge", mixed, "--out", tmp_path / "bad", "--workers", "-1"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "--workers" in proc.stderr
    assert not (tmp_path / "bad").exists()


def test_reads_are_bounded_in_rows_too(tmp_path):
    """A dictionary hides repeated texts from the footer's sizes: reads are bounded in rows as well."""
    from tasks.corpus.merge_work import READ_ROWS, plan

    pq.write_table(pa.table({"text": [prose(1, 60)] * 20_000}), tmp_path / "dict.parquet", row_group_size=20_000)
    items = plan([tmp_path / "dict.parquet"])
    assert {i.batch_rows for i in items} == {READ_ROWS} and sum(i.batches for i in items) == -(-20_000 // READ_ROWS)


def test_auto_worker_count_follows_uncompressed_text(tmp_path):
    from tasks.corpus.merge_work import WORKER_MIN_BYTES, auto_workers, cpu_count, plan

    write_documents(tmp_path / "in" / "a.parquet", [mk(f"d{i}", prose(i, 40)) for i in range(50)])
    items = plan([tmp_path / "in" / "a.parquet"])
    text = sum(len(prose(i, 40).encode()) for i in range(50))
    assert 0.9 * text <= sum(i.text_bytes for i in items) <= 1.1 * text  # from the footer, not the compressed size
    assert auto_workers(sum(i.text_bytes for i in items)) == 1
    assert auto_workers(100 * WORKER_MIN_BYTES) == min(cpu_count(), 8)


# --- dedup on disk: two passes over the judged batches ------------------------------------------------------------

def _with_many(mixed: Path) -> dict[str, tuple]:
    """Add to `mixed` a file of 1,100 documents in row groups of 300: past one of the disk path's index ranges
    (1,024 documents), with chains that end in earlier ranges. Returns the expected near-dedup decisions."""
    from tasks.corpus.documents import DocumentWriter

    rng = random.Random(5)
    edited = prose(9005, 8).split()
    for j in rng.sample(range(len(edited)), 3):
        edited[j] = "changed"
    with DocumentWriter(mixed / "y_many.parquet", row_group_size=300) as w:
        for i in range(1100):
            w.write(mk(f"m{i}", prose(9000 + i, 8), "many"))
        w.write(mk("m-near", " ".join(edited), "many"))            # near m5 (range 1 -> range 0)
        w.write(mk("m-near-copy", " ".join(edited).upper(), "many"))  # exact copy of a near duplicate: root m5
        w.write(mk("m-n3-copy", prose(3, 20).replace("changed", "x"), "many"))  # = a3 exactly
    return {"m-near": ("near-duplicate", "m5"), "m-near-copy": ("exact-duplicate", "m5"), "m-n3-copy": ("exact-duplicate", "a3")}


def _dedup_path_logged(caplog) -> list[str]:
    return ["on disk" in r.getMessage() for r in caplog.records if r.getMessage().startswith("merge: dedup")]


@pytest.mark.parametrize("near_dedup", [True, False])
def test_disk_dedup_path_gives_the_same_bytes(mixed, tmp_path, caplog, near_dedup):
    """A --dedup-memory too small for the corpus drives the disk path: pass 1 keeps the judged batches and feeds
    dedup in order, pass 2 reads them back with its decisions. Every byte of every shard, of the rejects and of
    stats.json is what the memory path writes, with 1 or 2 workers; no scratch or dedup folder is left."""
    import logging

    caplog.set_level(logging.INFO, logger="tasks.corpus.merge")
    expected = _with_many(mixed)
    memory = _merge_mixed(mixed, tmp_path / "memory", 1, near_dedup=near_dedup)
    assert _dedup_path_logged(caplog) == [False]
    counts = (1, 2) if near_dedup else (2,)
    for n in counts:
        disk = _merge_mixed(mixed, tmp_path / f"disk{n}", n, near_dedup=near_dedup, dedup_memory="1KB")
        assert disk == memory
        assert file_hashes(tmp_path / f"disk{n}") == file_hashes(tmp_path / "memory"), f"disk path, {n} workers"
    assert _dedup_path_logged(caplog) == [False] + [True] * len(counts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["disk1", "disk2", "memory", "mixed"][2 - len(counts):]
    why = {d["id"]: (d["reason"], d["duplicate_of"]) for d in read_all(tmp_path / "disk2" / "rejects")}
    assert len(memory["shards"]) > 3 and memory["documents_in"] > 1024
    assert {r for r, _ in why.values()} >= {"empty", "too-short", "too-long", "superseded", "invalid-utf8",
                                            "exact-duplicate"} and any(r.startswith("repetition:") for r, _ in why.values())
    assert why["m-n3-copy"] == expected["m-n3-copy"] and why["dup-upper"] == ("exact-duplicate", "a4")
    if near_dedup:
        assert {k: why[k] for k in expected} == expected
        assert why["dup-of-near"] == ("exact-duplicate", "a0") and why["n3"] == ("near-duplicate", "a3")
    else:
        assert "m-near" not in why and why["m-near-copy"] == ("exact-duplicate", "m-near")


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_dedup_path_leaves_nothing_on_error(mixed, tmp_path, workers):
    """An error in pass 1, after earlier items were kept in the scratch folder: one line, no output, no scratch or
    dedup folder left."""
    pq.write_table(pa.table({"text": [prose(1)], "fetched_at": ["yesterday"]}), mixed / "z_bad.parquet")
    with pytest.raises(CookError, match=r"z_bad.parquet: documents do not fit the document format"):
        _merge_mixed(mixed, tmp_path / "out", workers, near_dedup=True, dedup_memory="1KB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mixed"]


def test_cli_bad_dedup_memory(cook, mixed, tmp_path):
    proc = cook(["merge", mixed, "--out", tmp_path / "bad", "--dedup-memory", "lots"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "bad size 'lots'" in proc.stderr
    assert not (tmp_path / "bad").exists()


# --- memory: measured in a fresh process ---------------------------------------------------------------------------

MEASURE = """
import json, sys, time
from benchmarks.peak import ChildPeaks, hwm_mb
from tasks.corpus.merge import merge_documents

t = time.process_time()
with ChildPeaks() as workers:  # each worker's own peak, read while it runs
    s = merge_documents([sys.argv[1]], sys.argv[2], min_chars=int(sys.argv[3]), workers=int(sys.argv[4]))
cpu = time.process_time() - t
print(json.dumps({"rss_mb": hwm_mb(), "workers_rss_mb": workers.peak_mb, "workers": workers.count,
                  "cpu_s": cpu, "rejected": s["rejected"], "kept": s["documents_out"]}))
"""


def _measure(folder: Path, out: Path, min_chars: int = 100, workers: int = 1) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(folder), str(out), str(min_chars), str(workers)],
                          cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_100mb_document_is_rejected_without_being_normalized(tmp_path):
    """One 100 MB document, in a parquet file and as a .txt: too-long at once (the check before normalization),
    in flat memory. (Before: 9 s and 2 GB, normalizing it first.)"""
    big = "Lorem ipsum dolor sit amet, caf\u00e9 cr\u00e8me.\r\n" * 2_500_000  # 100 MB, not NFC-checked as ASCII
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["big"], "text": [big]}), folder / "big.parquet")
    (folder / "big.txt").write_text(big, encoding="utf-8", newline="")
    del big
    r = _measure(folder, tmp_path / "out")
    assert r["rejected"] == {"too-long": 2}
    assert r["rss_mb"] < 700, r  # measured 570 MB: the document, the parquet page it is encoded into, imports


def test_a_100mb_row_group_is_read_in_bounded_batches(tmp_path):
    """A row group of 100 MB (20,000 documents of 5 KB) goes through normalization, filters and keys in bounded
    record batches: the peak is far below the row group's size twice over. (Before: 951 MB.)"""
    base = [prose(i, 60)[:5000] for i in range(200)]
    texts = pa.array([base[i % 200] for i in range(20_000)])
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(20_000)], "text": texts}), folder / "one_group.parquet",
                   row_group_size=20_000, use_dictionary=False)
    del texts
    md = pq.ParquetFile(folder / "one_group.parquet").metadata
    assert md.num_row_groups == 1 and md.row_group(0).total_byte_size > 100_000_000
    r = _measure(folder, tmp_path / "out", min_chars=10_000)  # all too-short: normalized and filtered, cheaply
    assert r["rejected"] == {"too-short": 20_000}
    assert r["rss_mb"] < 400, r  # measured 260 MB (150 of them imports); whole row groups at once: 525 MB
    r2 = _measure(folder, tmp_path / "out2", min_chars=10_000, workers=2)
    assert r2["rejected"] == {"too-short": 20_000}
    assert r2["workers"] == 2 and r2["rss_mb"] < 400 and r2["workers_rss_mb"] < 300, r2  # measured 230 and 140 MB


MEASURE_DEDUP = """
import json, logging, sys
from tasks.corpus.merge import merge_documents
log = logging.getLogger("tasks.corpus.merge")  # the path merge took, on stderr
log.setLevel(logging.INFO)
log.addHandler(logging.StreamHandler())
from benchmarks.peak import hwm_mb

s = merge_documents([sys.argv[1]], sys.argv[2], near_dedup=True, workers=1, dedup_memory=sys.argv[3])
print(json.dumps({"rss_mb": hwm_mb(), "kept": s["documents_out"]}))
"""


def test_disk_dedup_path_memory_is_bounded(tmp_path):
    """100,000 small documents with near-dedup, each in a fresh process: the memory path's indexes grow by about
    1.2 KB a document (~120 MB here); the disk path's buffers are set by --dedup-memory (16MB), so its peak stays
    far below, and the output is the same."""
    import numpy as np

    from tasks.corpus.merge import dedup_bytes

    n = 100_000
    rng = np.random.default_rng(1)
    words = np.array(WORDS, dtype=object)[rng.integers(0, len(WORDS), size=(n, 4, 12))]
    texts = [". ".join(f"{s[0].capitalize()} the {' '.join(s[1:4])} and {' '.join(s[4:])}" for s in doc) + "." for doc in words]
    del words
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)], "text": texts}), tmp_path / "in" / "many.parquet",
                   row_group_size=4096)
    del texts
    runs = {}
    for path, setting in (("memory", "1GB"), ("disk", "16MB")):
        proc = subprocess.run([sys.executable, "-c", MEASURE_DEDUP, str(tmp_path / "in"), str(tmp_path / path), setting],
                              cwd=REPO, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[path] = json.loads(proc.stdout.strip().splitlines()[-1])
        assert f"merge: dedup {'on disk' if path == 'disk' else 'in memory'}" in proc.stderr, proc.stderr[-2000:]
    assert runs["memory"]["kept"] == runs["disk"]["kept"] == n
    assert file_hashes(tmp_path / "memory") == file_hashes(tmp_path / "disk")
    saved = runs["memory"]["rss_mb"] - runs["disk"]["rss_mb"]
    assert saved > dedup_bytes(n, True) / 2**20 / 3, runs  # measured: 460 MB against 347
