"""The dump reader on generated dumps: formats, namespaces/redirects, truncation, entity bombs, multistream
parallelism, the flow (cache) and the CLI."""

from __future__ import annotations

import bz2
import json
import resource
from pathlib import Path

import pytest

from model.errors import CookError
from tasks.sources.wikidump import (
    check_wiki_dump_args,
    dump_lang,
    extract_dump,
    find_index,
    iter_dump_documents,
    read_output,
)
from tests.dumpgen import CLUTTER, bomb_xml, external_entity_xml, make_pages, write_dump

pytestmark = pytest.mark.timeout(300)

PAGES = make_pages(450, seed=3)
KEPT = [p for p in PAGES if p.kept]


@pytest.fixture(scope="module")
def dumps(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("dumps")
    return {
        "xml": write_dump(d / "enwiki-20240101-pages-articles.xml", PAGES),
        "bz2": write_dump(d / "enwiki-20240101-pages-articles.xml.bz2", PAGES),
        "multi": write_dump(d / "enwiki-20240101-pages-articles-multistream.xml.bz2", PAGES, multistream=True, pages_per_stream=20),
    }


def _ids(docs) -> list[str]:
    return [d["id"] for d in docs]


@pytest.mark.parametrize("kind", ["xml", "bz2", "multi"])
def test_reads_every_article_in_order(dumps, kind):
    docs = list(iter_dump_documents(dumps[kind]))
    assert _ids(docs) == [f"wikipedia:en:{p.id}" for p in KEPT]  # ns 0 only, no redirects
    by_id = {p.id: p for p in KEPT}
    for d in docs:
        p = by_id[int(d["id"].rsplit(":", 1)[1])]
        assert d["text"].split() == p.expected.split()
        assert CLUTTER not in d["text"]
        assert d["title"] == p.title and d["revid"] == p.revid and d["source"] == "wikipedia"
        assert d["url"].startswith("https://en.wikipedia.org/wiki/") and " " not in d["url"]
        assert d["license"] == "CC BY-SA 4.0" and d["fetched_at"].year == 2024


def test_multistream_parallel_equals_sequential(dumps):
    assert find_index(dumps["multi"]) is not None
    seq = list(iter_dump_documents(dumps["multi"], use_index=False))
    par = list(iter_dump_documents(dumps["multi"], workers=2, processes=True))
    assert par == seq
    plain_par = list(iter_dump_documents(dumps["xml"], workers=2, processes=True))
    assert plain_par == seq


def test_truncated_xml_keeps_complete_pages(dumps, tmp_path):
    data = dumps["xml"].read_bytes()
    cut_page = KEPT[200]
    cut = data.find(f"<id>{cut_page.id}</id>".encode()) + 5  # mid-page
    cut_file = tmp_path / "enwiki-cut-pages-articles.xml"
    cut_file.write_bytes(data[:cut])
    summary = extract_dump(cut_file, tmp_path / "out")
    assert summary["truncated"] and "cut off" in summary["truncation"]
    assert _ids(read_output(tmp_path / "out")) == [f"wikipedia:en:{p.id}" for p in KEPT[:200]]


def test_truncated_bz2_keeps_complete_pages(dumps, tmp_path):
    raw = bz2.decompress(dumps["bz2"].read_bytes())
    cut_file = tmp_path / "enwiki-cut-pages-articles.xml.bz2"
    data = dumps["bz2"].read_bytes()
    cut_file.write_bytes(data[: len(data) * 2 // 3])
    docs = list(iter_dump_documents(cut_file))
    summary = extract_dump(cut_file, tmp_path / "out")
    assert summary["truncated"] and "end-of-stream" in summary["truncation"]
    assert 0 < len(docs) < len(KEPT) and _ids(docs) == [f"wikipedia:en:{p.id}" for p in KEPT[: len(docs)]]
    # every page wholly inside the decompressible prefix came out
    got = bz2.BZ2Decompressor().decompress(cut_file.read_bytes())
    complete = got.count(b"</page>")
    assert len(raw) > len(got) and summary["pages_seen"] == complete


def test_truncated_multistream(dumps, tmp_path):
    src = dumps["multi"]
    data = src.read_bytes()
    cut_file = tmp_path / src.name
    cut_file.write_bytes(data[: len(data) // 2])
    index = find_index(src)
    (tmp_path / index.name).write_bytes(index.read_bytes())
    docs = list(iter_dump_documents(cut_file, workers=2, processes=True))
    assert 0 < len(docs) < len(KEPT) and _ids(docs) == [f"wikipedia:en:{p.id}" for p in KEPT[: len(docs)]]
    summary = extract_dump(cut_file, tmp_path / "out", workers=2)
    assert summary["truncated"] and summary["kept"] == len(docs)


@pytest.mark.parametrize("make", [bomb_xml, external_entity_xml])
@pytest.mark.parametrize("suffix", [".xml", ".xml.bz2"])
def test_entity_bombs_refused(tmp_path, make, suffix):
    data = make().encode()
    path = tmp_path / f"enwiki-bomb-pages-articles{suffix}"
    path.write_bytes(bz2.compress(data) if suffix.endswith("bz2") else data)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CookError) as e:
        extract_dump(path, tmp_path / "out")
    msg = str(e.value)
    assert "\n" not in msg and "DTD" in msg and "never expanded" in msg
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB: nothing was expanded
    assert not (tmp_path / "out").exists()


def test_undeclared_entity_in_text_refused(tmp_path):
    data = bomb_xml()
    body = data[data.index("<mediawiki"):]  # no DTD at all, but the text still references &lol9;
    path = tmp_path / "enwiki-x-pages-articles.xml"
    path.write_text(body)
    with pytest.raises(CookError, match="undefined XML entity reference &lol9"):
        list(iter_dump_documents(path))


def test_check_args(tmp_path, dumps):
    with pytest.raises(CookError, match="not found"):
        check_wiki_dump_args(str(tmp_path / "nope.xml"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CookError, match="expected a .xml or .xml.bz2"):
        check_wiki_dump_args(str(tmp_path / "a.txt"))
    (tmp_path / "b.xml.bz2").write_text("<xml/>")
    with pytest.raises(CookError, match="not a bz2 file"):
        check_wiki_dump_args(str(tmp_path / "b.xml.bz2"))
    with pytest.raises(CookError, match="workers"):
        check_wiki_dump_args(str(dumps["xml"]), None, 0)
    d = tmp_path / "bad"
    d.mkdir()
    m = write_dump(d / "enwiki-x-pages-articles-multistream.xml.bz2", PAGES[:30], multistream=True)
    find_index(m).write_bytes(bz2.compress(b"garbage line\n"))
    with pytest.raises(CookError, match="bad multistream index"):
        check_wiki_dump_args(str(m))
    (tmp_path / "c.xml").write_text("<notwiki></notwiki>")
    with pytest.raises(CookError, match="not a MediaWiki XML dump"):
        list(iter_dump_documents(tmp_path / "c.xml"))
    assert dump_lang("dewiki-20240101-pages-articles.xml") == "de"
    assert dump_lang("zh_yuewiki-latest-pages-articles.xml.bz2") == "zh-yue"
    assert dump_lang("dump.xml") == "en"


def test_memory_is_flat(tmp_path):
    """A dump ~8x larger adds (almost) nothing to peak memory: pages stream through in bounded segments."""
    from tests.dumpgen import repeat_pages

    big = write_dump(tmp_path / "enwiki-big-pages-articles.xml", repeat_pages(KEPT[:50], 6000))
    assert big.stat().st_size > 25e6
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n = 0
    for _ in iter_dump_documents(big, processes=False):
        n += 1
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert n == 6000 and grown_mb < 60, grown_mb


def test_flow_writes_shards_and_caches(dumps, tmp_path):
    from flows.wiki_dump import wiki_dump_flow

    out = tmp_path / "wiki"
    s1 = wiki_dump_flow(dump=str(dumps["multi"]), out=str(out), workers=2)
    assert s1["kept"] == len(KEPT) and not s1["truncated"] and s1["multistream"]
    assert s1["skipped"]["redirect"] + s1["skipped"]["namespace"] == len(PAGES) - len(KEPT)
    assert json.loads((out / "summary.json").read_text())["kept"] == len(KEPT)
    assert len(list(read_output(out))) == len(KEPT)
    mtime = (out / "summary.json").stat().st_mtime_ns
    s2 = wiki_dump_flow(dump=str(dumps["multi"]), out=str(out), workers=2)
    assert s2 == s1 and (out / "summary.json").stat().st_mtime_ns == mtime  # a cache hit: nothing rewritten


def test_cli_truncated_and_bomb(cook, dumps, tmp_path):
    data = dumps["xml"].read_bytes()
    cut = tmp_path / "enwiki-cut-pages-articles.xml"
    cut.write_bytes(data[: len(data) // 2])
    r = cook(["scrape", "wiki-dump", cut, "--out", tmp_path / "out"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "truncated" in (r.stdout + r.stderr).lower()
    bomb = tmp_path / "enwiki-bomb-pages-articles.xml"
    bomb.write_text(bomb_xml())
    r = cook(["scrape", "wiki-dump", bomb, "--out", tmp_path / "out2"])
    assert r.returncode != 0
    errors = [l for l in (r.stdout + r.stderr).splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "DTD" in errors[0], r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_cli_fetch_takes_titles_from_the_dump(cook, cook_env, tmp_path):
    """`--fetch`: the dump only names the pages; each is fetched once through the API scraper (fake server)."""
    from tasks.corpus.documents import read_documents
    from tests.dumpgen import Page
    from tests.fake_mediawiki import FakeMediaWiki, FakeWiki

    wiki = FakeWiki(n_pages=8, seed=3)
    titles = [p.title for p in wiki.pages.values()]
    pages = [Page(t, 0, 100 + i, 500 + i, "Some '''wikitext'''.", "Some wikitext.") for i, t in enumerate(titles)]
    pages.append(Page("Talk:Not an article", 1, 999, 999, "talk", ""))
    dump = write_dump(tmp_path / "enwiki-test-pages-articles.xml", pages)
    out = tmp_path / "fetched"
    with FakeMediaWiki(wiki) as api:
        env = {**cook_env, "COOK_WIKIPEDIA_API_URL": api.url}
        proc = cook(["scrape", "wiki-dump", dump, "--fetch", "--out", out], env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "fetched 8 pages" in proc.stdout
        assert sorted(api.parse_counts) == sorted(wiki.pages) and set(api.parse_counts.values()) == {1}
    docs = [d for p in sorted(out.glob("*.parquet")) for d in read_documents(p)]
    assert sorted(d["id"] for d in docs) == sorted(f"wikipedia:en:{pid}" for pid in wiki.pages)
    assert {d["title"] for d in docs} == set(titles)
