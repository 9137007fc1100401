"""`cook scrape britannica` against a loopback fake site: clean text, every article exactly once across
overlapping queries, faults survived, limits and robots.txt kept, structure changes warned about,
failures retried and done articles skipped by the next run, cached queries, the command line."""

from __future__ import annotations

import sqlite3
from collections import Counter

import pyarrow.parquet as pq
import pytest
from fake_britannica import BOILERPLATE, MARK, FakeBritannica, FakeSite
from scraped import docs_in, token_f1

from model.errors import CookError
from tasks.sources.britannica import (
    DEFAULT_QUERIES,
    LEDGER_NAME,
    RESULT_SELECTORS,
    SOURCE,
    Crawler,
    check_scrape_britannica_args,
    extract_article,
    parse_search,
)
from tasks.corpus.documents import REQUIRED
from tasks.core.ledger import Ledger

pytestmark = pytest.mark.timeout(120)

QUERIES = ["Alpha", "Beta", "Gamma", "Changed"]


def slug_of(doc_id: str) -> str:
    assert doc_id.startswith("britannica:topic/"), doc_id
    return doc_id.rsplit("/", 1)[1]


def reachable(site: FakeSite, queries: list[str], dead: set[str] = frozenset()) -> set[str]:
    """Slugs a crawl collects: the queries' hits that are allowed, have paragraphs and answer."""
    hits = {s for q in queries if q != "Changed" for s in site.queries[q] if not site.redirects.get(s, "").startswith("http")}
    return {site.redirects.get(s, s).removeprefix("/topic/") for s in hits} - {"secret-files", "secret-beta", "empty-shell"} - set(dead)


# --- parsing ---------------------------------------------------------------------------------------


def test_extraction_f1_and_no_clutter():
    site = FakeSite(seed=3)
    for slug, a in site.articles.items():
        title, text = extract_article(a.html)
        if slug == "empty-shell":
            assert text == ""
            continue
        assert title == a.title
        assert token_f1(text, site.body_text(slug)) >= 0.97, slug
        assert MARK not in text and not any(b in text for b in BOILERPLATE), slug
        assert "History" in text.split("\n\n") and text.startswith(a.title)
    assert extract_article("") == ("", "")
    assert extract_article("<html><body><h1>T</h1><p>Our editors will review what you’ve submitted.</p><p>Kept.</p></body></html>") == ("T", "Kept.")


def test_parse_search_both_markups_and_the_end():
    site, base = FakeSite(), "https://www.britannica.com"
    html, slugs = site.search_page("Alpha", 1, 4, base)
    paths, empty = parse_search(html, base)
    assert paths == [f"/topic/{s}" for s in slugs] and not empty  # both selectors, in page order; no video, quiz, other host
    assert parse_search(site.search_page("Alpha", 99, 4, base)[0], base) == ([], True)  # past the end: not a structure change
    assert parse_search(site.search_page("Changed", 1, 4, base)[0], base) == ([], False)  # unknown markup
    old = '<a class="font-weight-bold font-18" href="/place/Antarctica">A</a><a class="md-crosslink" href="/biography/Ada-Lovelace/">B</a>'
    assert parse_search(old, base)[0] == ["/place/Antarctica", "/biography/Ada-Lovelace"]


def test_check_args(tmp_path):
    assert len(DEFAULT_QUERIES) == len(set(DEFAULT_QUERIES)) >= 38
    assert check_scrape_britannica_args() == DEFAULT_QUERIES
    f = tmp_path / "q.txt"
    f.write_text("# topics\nDNA\n\nAntarctica\nDNA\n")
    assert check_scrape_britannica_args(["Ocean"], str(f)) == ["Ocean", "DNA", "Antarctica"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "afile").write_text("x")
    bad = [dict(queries_file=str(tmp_path / "nope.txt")), dict(queries_file=str(tmp_path / "empty.txt")),
           dict(max_pages_per_query=0), dict(concurrency=0), dict(rate_limit=0), dict(queries=[" "]), dict(out=str(tmp_path / "afile"))]
    for kw in bad:
        with pytest.raises(CookError) as e:
            check_scrape_britannica_args(**kw)
        assert "\n" not in str(e.value)


# --- crawling under faults -------------------------------------------------------------------------


def test_crawl_with_faults_every_article_once_then_resume(tmp_path, caplog):
    site = FakeSite(seed=1)
    out = tmp_path / "b"
    with FakeBritannica(site, retry_after="0.3", hang_s=1.5) as b:
        b.faults = {"/topic/alpha-2": ["429", "429"], "/topic/beta-4": ["503", "hang"], "/topic/gamma-1": ["hang"],
                    "/search?query=Alpha&page=2": ["503"], "/search?query=Beta&page=1": ["429"]}
        b.fail_always.add("/topic/gamma-2")
        kw = dict(base_url=b.url, concurrency=3, rate_limit=40.0, timeout=0.6, retries=4, backoff=0.05, batch_pages=4)
        with Crawler(out, **kw) as c:
            results = {q: c.crawl(q, max_pages=10) for q in QUERIES}

        docs = docs_in(out)
        slugs = [slug_of(d["id"]) for d in docs]
        assert len(slugs) == len(set(slugs)), "an article was written twice"
        assert set(slugs) == reachable(site, QUERIES, {"gamma-2"})
        served = b.article_requests()
        assert all(b.served[f"/topic/{s}"] == 1 for s in slugs), "an article was fetched twice"
        assert "secret-files" not in served and "secret-beta" not in served and b.requests["/robots.txt"] == 1
        assert results["Beta"]["disallowed"] == 2  # one listed, one reached through a redirect
        assert served["gamma-3-old"] == served["alpha-0-old"] == 1 and b.served["/topic/gamma-3"] == b.served["/topic/alpha-0"] == 1
        assert b.max_in_flight <= 3
        assert b.max_in_window(1.0) <= 40 + 2, "rate limit exceeded"
        assert all(ua.startswith("cook/") for ua in b.user_agents)
        assert sum(b.faults_sent.values()) >= 7 and set(b.faults_sent) == {"429", "503", "hang"}
        for d in docs:
            a = site.articles[slug_of(d["id"])]
            assert d["source"] == SOURCE and d["url"] == f"{b.url}/topic/{a.slug}" and d["title"] == a.title
            assert token_f1(d["text"], site.body_text(a.slug)) >= 0.97 and MARK not in d["text"]
        assert list(pq.read_schema(next(out.glob("*.parquet"))).names[: len(REQUIRED)]) == list(REQUIRED)

        # structure changes: warnings name the URL and the selectors; nothing empty is written
        changed = results["Changed"]["warnings"]
        assert len(changed) == 1 and f"{b.url}/search?query=Changed&page=1" in changed[0]
        assert all(repr(sel) in changed[0] for sel in RESULT_SELECTORS)
        shell = [w for w in results["Gamma"]["warnings"] if "empty-shell" in w]
        assert len(shell) == 1 and f"{b.url}/topic/empty-shell" in shell[0] and "'div.topic-content p'" in shell[0]
        logged = " ".join(r.getMessage() for r in caplog.records)
        assert "query=Changed" in logged and "empty-shell" in logged
        assert {f["path"] for f in results["Gamma"]["failed"]} == {"/topic/gamma-2", "/topic/empty-shell", "/topic/gone-away"}
        assert results["Alpha"]["failed"] == [] and results["Alpha"]["done"] == len(site.queries["Alpha"])
        with Ledger(out / LEDGER_NAME) as ledger:
            assert ledger.counts(SOURCE) == {"pending": 0, "staged": 0, "done": len(slugs) + 3, "failed": 3}  # + 3 redirects
            assert ledger.get(SOURCE, "/topic/alpha-0-old")["data"] == {"alias": "/topic/alpha-0"}
            assert ledger.get(SOURCE, "/topic/beta-5-old")["data"] == {"disallowed": "/topic/secret-beta"}

        # the next run fetches only the failed articles and skips every done one
        b.fail_always.clear()
        before = Counter(b.requests)
        with Crawler(out, **kw) as c:
            again = {q: c.crawl(q, max_pages=10) for q in QUERIES}
        new = Counter({p: n for p, n in (b.requests - before).items() if p.startswith("/topic/")})
        assert set(new) == {"/topic/gamma-2", "/topic/empty-shell", "/topic/gone-away"}
        assert sum(r["fetched"] for r in again.values()) == 1
        slugs = [slug_of(d["id"]) for d in docs_in(out)]
        assert len(slugs) == len(set(slugs)) and set(slugs) == reachable(site, QUERIES)


def test_staged_articles_are_recovered_from_parts_without_refetching(tmp_path):
    """A crash after a part was written but before its articles were marked done loses and refetches nothing."""
    out = tmp_path / "b"
    with FakeBritannica() as b:
        with Crawler(out, base_url=b.url, rate_limit=200.0, batch_pages=3) as c:
            c.crawl("Beta")
        n = len(docs_in(out))
        db = sqlite3.connect(out / LEDGER_NAME)  # the state a kill between a part's rename and mark_done leaves
        with db:
            db.execute("UPDATE items SET status = 'staged', part = NULL WHERE rowid IN "
                       "(SELECT rowid FROM items WHERE status = 'done' AND part IS NOT NULL LIMIT 3)")
            db.execute("INSERT INTO items (source, key, tag, status, attempts, updated_at) VALUES ('britannica', '/topic/beta-9', 'Beta', 'staged', 1, 0)")
        db.close()
        before = b.article_requests()
        with Crawler(out, base_url=b.url, rate_limit=200.0) as c:
            assert c.recovered == 3
            assert c.ledger.counts(SOURCE)["staged"] == 0 and c.ledger.get(SOURCE, "/topic/beta-9")["status"] == "pending"
            c.crawl("Beta")
        # the recovered ones are not fetched again; the one staged but never written is (it was lost)
        assert b.article_requests() - before == {"beta-9": 1} and len(docs_in(out)) == n


def test_robots_txt_semantics(tmp_path):
    """404: everything allowed; 401/403: nothing fetched at all; a Crawl-delay for our agent slows the rate down."""
    with FakeBritannica(robots=404) as b, Crawler(tmp_path / "a", base_url=b.url, rate_limit=100.0) as c:
        assert c.robots().can_fetch("cook", f"{b.url}/topic/secret-files")
    with FakeBritannica(robots=403) as b, Crawler(tmp_path / "b", base_url=b.url, rate_limit=100.0, retries=1) as c:
        r = c.crawl("Alpha")
        assert r["disallowed"] == 1 and r["found"] == 0 and "robots.txt disallows" in r["warnings"][0]
        assert set(b.requests) == {"/robots.txt"} and not list((tmp_path / "b").glob("*.parquet"))
    rules = "User-agent: cook\nCrawl-delay: 2\nDisallow: /private/\n\nUser-agent: *\nDisallow: /\n"
    with FakeBritannica(robots=rules) as b, Crawler(tmp_path / "c", base_url=b.url, rate_limit=100.0) as c:
        rp = c.robots()
        assert c.client.limiter.interval == 2.0
        assert rp.can_fetch(c.client.http.headers["User-Agent"], f"{b.url}/topic/alpha-0")
        assert not rp.can_fetch(c.client.http.headers["User-Agent"], f"{b.url}/private/x")


# --- the flow and the command line ------------------------------------------------------------------


def test_flow_caches_queries_and_cli_runs(tmp_path, monkeypatch, cook, cook_env):
    from flows.scrape_britannica import scrape_britannica_flow
    from tasks.core.settings import get_settings

    site = FakeSite(seed=2)
    out = tmp_path / "b"
    with FakeBritannica(site) as b:
        monkeypatch.setenv("COOK_BRITANNICA_URL", b.url)
        get_settings.cache_clear()
        try:
            kw = dict(queries=["Alpha", "Beta"], max_pages_per_query=2, out=str(out), rate_limit=200.0)
            s1 = scrape_britannica_flow(**kw)
            want = {s for q in ("Alpha", "Beta") for s in site.queries[q][:6]}  # 2 pages of 3
            assert s1["cached"] == 0 and s1["documents"] == len(want) and s1["fetched"] == len(want) and s1["failed"] == []
            assert s1["warnings"] == [] and s1["disallowed"] == 0 and s1["out"] == str(out.resolve())
            assert not b.requests["/search?query=Alpha&page=3"]
            n = sum(b.requests.values())
            s2 = scrape_britannica_flow(**kw)
            assert s2["cached"] == 2 and [q["state"] for q in s2["per_query"]] == ["Cached", "Cached"]
            assert sum(b.requests.values()) == n and s2["documents"] == len(want) and s2["fetched"] == 0
        finally:
            get_settings.cache_clear()
        assert {slug_of(d["id"]) for d in docs_in(out)} == want

        env = {**cook_env, "COOK_BRITANNICA_URL": b.url}
        proc = cook(["scrape", "britannica", "--query", "Gamma", "--query", "Alpha", "--out", out,
                     "--max-pages-per-query", 3, "--rate-limit", 100], env=env, timeout=100)
        assert proc.returncode == 0, proc.stderr[-3000:]
        slugs = [slug_of(d["id"]) for d in docs_in(out)]
        assert len(slugs) == len(set(slugs))
        assert set(slugs) == want | set(site.queries["Alpha"][:9]) | reachable(site, ["Gamma"])
        assert all(n == 1 for p, n in b.served.items() if p.startswith("/topic/")), "an article was fetched twice"
        assert b.requests["/topic/empty-shell"] == 1
        assert f"{b.url}/topic/empty-shell" in proc.stderr  # the structure-change warning reaches the user
        assert proc.stdout.startswith("britannica: ") and "2 failed, 1 warnings" in proc.stdout


def test_retry_after_pauses_every_worker(tmp_path):
    """After a 429 or 503 with Retry-After: 1, no request of any worker reaches the site for about a second (the
    fake's request log); a client that ignored it would retry after its 0.01 s backoff."""
    with FakeBritannica(FakeSite(seed=4), retry_after="1") as b:
        b.faults = {"/topic/alpha-2": ["429"], "/topic/alpha-5": ["503"], "/topic/beta-1": ["429"]}
        # 20 requests/s: the crawl lasts past each pause, so a client that skipped one would be seen in it
        with Crawler(tmp_path / "b", base_url=b.url, concurrency=3, rate_limit=20.0, backoff=0.01) as c:
            for q in ("Alpha", "Beta"):
                c.crawl(q)
        assert len(b.fault_times) == 3 and len(b.arrivals) >= 20
        # (requests already on their way when the answer left may land a moment later on a busy machine)
        too_soon = [(path, round(a - t, 3)) for t, path in b.fault_times for a in b.arrivals if t + 0.2 < a < t + 0.9]
        assert too_soon == [], too_soon
        slugs = [slug_of(d["id"]) for d in docs_in(tmp_path / "b")]
        assert {"alpha-2", "alpha-5", "beta-1"} <= set(slugs) and len(slugs) == len(set(slugs))


def test_refresh_sends_conditional_requests(tmp_path):
    """Known articles are revisited with If-None-Match: a 304 for the unchanged ones (nothing downloaded), a new
    part for a changed one, whose ledger row points to it; without validators, an unchanged text writes nothing."""
    import time

    site = FakeSite(seed=6)
    out = tmp_path / "b"
    with FakeBritannica(site) as b:
        with Crawler(out, base_url=b.url, rate_limit=200.0) as c:
            c.crawl("Gamma")
        parts = set(out.glob("*.parquet"))
        have = {slug_of(d["id"]) for d in docs_in(out)}
        site.edit("gamma-1")
        before = Counter(b.served)
        with Crawler(out, base_url=b.url, rate_limit=200.0) as c:
            r = c.refresh("Gamma", time.time())
            row = c.ledger.get(SOURCE, "/topic/gamma-1")
        assert r["checked"] == len(have) and r["changed"] == 1 and r["failed"] == []
        assert sum(b.not_modified.values()) == len(have) - 1
        assert b.served - before == Counter({"/topic/gamma-1": 1})
        new = set(out.glob("*.parquet")) - parts
        assert len(new) == 1 and row["part"] == next(iter(new)).name
        assert [d["text"] for d in pq.read_table(next(iter(new))).to_pylist()] == [extract_article(site.articles["gamma-1"].html)[1]]
    with FakeBritannica(site, validators=False) as b2:  # another base URL: a fresh folder for it
        with Crawler(tmp_path / "c", base_url=b2.url, rate_limit=200.0) as c:
            c.crawl("Gamma")
            n = len(list((tmp_path / "c").glob("*.parquet")))
            r = c.refresh("Gamma", time.time())
        assert r["changed"] == 0 and r["checked"] > 0 and len(list((tmp_path / "c").glob("*.parquet"))) == n
