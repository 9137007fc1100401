"""`cook scrape wikipedia` against a loopback fake MediaWiki API: clean text, every page exactly once under
faults, limits kept, failures recorded and retried, SIGKILL then resume without refetching, cached queries."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pyarrow.parquet as pq
import pytest
from fake_mediawiki import MARK, FakeMediaWiki, FakeWiki
from scraped import docs_in, token_f1

from model.errors import CookError
from tasks.corpus.documents import REQUIRED
from tasks.core.ledger import Ledger
from tasks.sources.wikipedia import DEFAULT_QUERIES, LEDGER_NAME, Crawler, check_scrape_wikipedia_args, extract_text, fetch_pages

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
CLUTTER = (MARK, "[1]", "[2]", "[a]", "edit]", "displaystyle", "NewPP", "^ ")


def pid_of(doc_id: str) -> int:
    return int(doc_id.rsplit(":", 1)[1])


# --- extraction --------------------------------------------------------------------------------------


def test_extraction_f1_and_no_clutter():
    wiki = FakeWiki(n_pages=24, seed=3)
    for pid, page in wiki.pages.items():
        text = extract_text(page.html)
        score = token_f1(text, wiki.body_text(pid))
        assert score >= 0.97, (page.title, score)
        for c in CLUTTER:
            assert c not in text, (page.title, c)
        assert text.startswith(page.title)


def test_extraction_shapes():
    html = ('<div class="mw-parser-output"><p>Lead<sup class="reference"><a>[1]</a></sup> text.</p>'
            '<section><div class="mw-heading mw-heading2"><h2 id="A">Body</h2></div><p>Kept <span class="mwe-math-element">'
            '<math><semantics><mi>x</mi><annotation encoding="application/x-tex">x^2</annotation></semantics></math></span>here.</p></section>'
            '<section><h2><span class="mw-headline">Further reading</span></h2><p>gone</p></section><p>also gone</p></div>')
    assert extract_text(html) == "Lead text.\n\nBody\n\nKept here."
    assert extract_text("<html><body><p>no wrapper</p></body></html>") == "no wrapper"
    assert extract_text("") == ""


# --- arguments ---------------------------------------------------------------------------------------


def test_check_args(tmp_path):
    assert len(DEFAULT_QUERIES) == len(set(DEFAULT_QUERIES)) >= 38
    assert check_scrape_wikipedia_args() == DEFAULT_QUERIES
    f = tmp_path / "q.txt"
    f.write_text("# topics\nCRISPR\n\nAntarctica\nCRISPR\n")
    assert check_scrape_wikipedia_args(["Loss function"], str(f)) == ["Loss function", "CRISPR", "Antarctica"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "afile").write_text("x")
    bad = [dict(queries_file=str(tmp_path / "nope.txt")), dict(queries_file=str(tmp_path / "empty.txt")), dict(max_pages=0),
           dict(depth=-1), dict(concurrency=0), dict(rate_limit=0), dict(queries=[" "]), dict(out=str(tmp_path / "afile"))]
    for kw in bad:
        with pytest.raises(CookError) as e:
            check_scrape_wikipedia_args(**kw)
        assert "\n" not in str(e.value)


# --- crawling under faults ---------------------------------------------------------------------------

FAULTS = {"429": 3, "503": 4, "maxlag": 3, "truncate": 5, "hang": 2}


def test_crawl_with_faults_collects_every_page_once(tmp_path):
    wiki = FakeWiki(n_pages=45, seed=1)
    queries, depth, rate = ["Alpha", "Beta"], 2, 25.0
    expected = wiki.expected_crawl(queries, depth, search_limit=100)
    doomed = sorted(expected)[5]  # answered 503 every time: fails, recorded, retried next run
    out = tmp_path / "wiki"
    with FakeMediaWiki(wiki, faults=dict(FAULTS), fault_rate=0.5, retry_after="1", hang_s=2.0) as api:
        api.fail_always.add(doomed)
        kw = dict(api_url=api.url, concurrency=3, rate_limit=rate, timeout=0.6, retries=5, backoff=0.05, batch_pages=8)
        with Crawler(out, **kw) as c:
            results = [c.crawl(q, quota=1000, depth=depth, search_limit=100) for q in queries]
        docs = docs_in(out)
        ids = [pid_of(d["id"]) for d in docs]
        assert len(ids) == len(set(ids)), "a page was written twice"
        reached = wiki.expected_crawl(queries, depth, search_limit=100, dead=frozenset({doomed}))
        assert set(ids) == reached
        assert sum(api.faults_sent.values()) >= 12 and len(api.faults_sent) >= 4, api.faults_sent
        assert api.max_in_flight <= 3
        assert api.max_in_window(1.0) <= rate + 2, "rate limit exceeded"
        assert api.max_in_window(0.2) <= rate * 0.2 + 2
        assert api.missing_maxlag == 0 and all(ua.startswith("cook/") for ua in api.user_agents)
        failed = {f["pageid"]: f["error"] for r in results for f in r["failed"]}
        deleted = next(iter(wiki.deleted))
        assert set(failed) == {doomed, deleted}
        assert "nosuchpageid" in failed[deleted] and "503" in failed[doomed]
        for d in docs:
            assert d["id"] == f"wikipedia:en:{pid_of(d['id'])}" and d["source"] == "wikipedia" and d["license"] == "CC BY-SA 4.0"
            page = wiki.pages[pid_of(d["id"])]
            assert d["title"] == page.title and d["revid"] == page.revid
            assert d["url"] == api.url.rsplit("/w/", 1)[0] + "/wiki/" + quote(page.title.replace(" ", "_"), safe="(),")
            assert token_f1(d["text"], wiki.body_text(page.pageid)) >= 0.97
            assert not any(c in d["text"] for c in CLUTTER)
        assert list(pq.read_schema(next(out.glob("*.parquet"))).names[: len(REQUIRED)]) == list(REQUIRED)
        with Ledger(out / LEDGER_NAME) as ledger:
            assert ledger.counts("wikipedia:en") == {"pending": 0, "staged": 0, "done": len(reached), "failed": 2}
            row = ledger.get("wikipedia:en", doomed)
            assert row["status"] == "failed" and row["attempts"] == 1

        # the next run fetches only the failed page (now answering) and skips every done one
        api.fail_always.clear()
        before = Counter(api.parse_counts)
        with Crawler(out, **kw) as c:
            again = [c.crawl(q, quota=1000, depth=depth, search_limit=100) for q in queries]
        fetched_now = api.parse_counts - before
        assert set(fetched_now) == expected - reached and doomed in fetched_now  # it, and the pages only it links to
        assert sum(r["fetched"] for r in again) == len(expected - reached)
        ids = [pid_of(d["id"]) for d in docs_in(out)]
        assert len(ids) == len(set(ids)) and set(ids) == expected
        assert all(n == 1 for n in api.parse_counts.values())


def test_budget_dedup_and_fetch_pages(tmp_path):
    wiki = FakeWiki(n_pages=30, seed=2)
    with FakeMediaWiki(wiki) as api:
        with Crawler(tmp_path / "w", api_url=api.url, concurrency=4, rate_limit=200) as c:
            r1 = c.crawl("Alpha", quota=5, depth=2)
            r2 = c.crawl("a", quota=8, depth=1)  # overlaps Alpha's pages: not fetched again
        assert r1["done"] == 5 and 0 < r2["done"] <= 8  # the budget caps; pages Alpha has are not fetched again
        ids = [pid_of(d["id"]) for d in docs_in(tmp_path / "w")]
        assert len(ids) == len(set(ids)) == 5 + r2["done"]
        assert max(api.parse_counts.values()) == 1
        titles = [wiki.pages[i].title for i in ids[:3]] + [p.redirect for p in wiki.pages.values() if p.redirect][:2] + ["No such page"]
        s = fetch_pages(titles, tmp_path / "w", api_url=api.url, concurrency=2, rate_limit=200)
        assert s["skipped_done"] >= 3 and s["failed"] == []
        ids = [pid_of(d["id"]) for d in docs_in(tmp_path / "w")]
        assert len(ids) == len(set(ids)) == 5 + r2["done"] + s["fetched"]
        assert max(api.parse_counts.values()) == 1


def test_staged_pages_are_recovered_from_parts_without_refetching(tmp_path):
    """A crash after a part file was written but before its pages were marked done loses and refetches nothing."""
    wiki = FakeWiki(n_pages=20, seed=4)
    out = tmp_path / "w"
    with FakeMediaWiki(wiki) as api:
        with Crawler(out, api_url=api.url, rate_limit=200, batch_pages=4) as c:
            c.crawl("Gamma", quota=100, depth=3)
        n = len(docs_in(out))
        db = sqlite3.connect(out / LEDGER_NAME)  # the state a kill between the part's rename and mark_done leaves
        with db:
            db.execute("UPDATE items SET status = 'staged', part = NULL WHERE rowid IN (SELECT rowid FROM items WHERE status = 'done' LIMIT 3)")
            db.execute("INSERT INTO items (source, key, title, tag, status, attempts, updated_at) VALUES ('wikipedia:en', '1', 'x', 'Gamma', 'staged', 1, 0)")
        db.close()
        before = Counter(api.parse_counts)
        with Crawler(out, api_url=api.url, rate_limit=200) as c:
            assert c.recovered == 3
            assert c.ledger.counts(c.source)["staged"] == 0 and c.ledger.get(c.source, 1)["status"] == "pending"
            c.crawl("Gamma", quota=100, depth=3)
        assert api.parse_counts == before and len(docs_in(out)) == n


# --- SIGKILL and resume through the command line ------------------------------------------------------


def _argv(args: list) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "scrape", "wikipedia", *map(str, args)]


@pytest.mark.timeout(400)
def test_sigkill_then_rerun_loses_nothing_and_fetches_nothing_twice(cook_env, tmp_path):
    wiki = FakeWiki(n_pages=90, seed=5, links_per_page=3)
    queries, depth = ["Alpha", "Beta", "Gamma"], 3
    expected = wiki.expected_crawl(queries, depth, search_limit=10_000)
    out = tmp_path / "wiki"
    args = [a for q in queries for a in ("--query", q)] + ["--out", out, "--max-pages", 3000, "--depth", depth]
    with FakeMediaWiki(wiki, latency_s=0.02) as api:
        env = {**cook_env, "COOK_WIKIPEDIA_API_URL": api.url}
        proc = subprocess.Popen(_argv(args), env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 200
            while time.monotonic() < deadline and proc.poll() is None:
                parts = [p for p in out.glob("*.parquet")] if out.exists() else []
                if len(parts) >= 2:
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the crawl finished before it could be killed: " + proc.stderr.read().decode()[-2000:]
        durable = {pid_of(d["id"]) for d in docs_in(out)}
        assert 0 < len(durable) < len(expected)
        killed_counts = Counter(api.parse_counts)

        proc2 = subprocess.run(_argv(args), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc2.returncode == 0, proc2.stderr[-3000:]
        ids = [pid_of(d["id"]) for d in docs_in(out)]
        assert len(ids) == len(set(ids)), "a page was written twice"
        assert set(ids) == expected, "a page was lost"
        assert all(api.parse_counts[p] == 1 for p in durable), "a page written before the kill was fetched again"
        refetched = [p for p in ids if api.parse_counts[p] > 1]
        assert all(api.parse_counts[p] == 2 and killed_counts[p] == 1 for p in refetched)
        assert len(refetched) <= 16 + 4, "only pages fetched but not yet written at the kill may be fetched again"
        with Ledger(out / LEDGER_NAME) as ledger:
            assert ledger.counts("wikipedia:en")["done"] == len(expected)


# --- the flow: cached queries -------------------------------------------------------------------------


def test_flow_rerun_caches_completed_queries(tmp_path, monkeypatch):
    from flows.scrape_wikipedia import scrape_wikipedia_flow
    from tasks.core.settings import get_settings

    wiki = FakeWiki(n_pages=25, seed=6)
    out = tmp_path / "wiki"
    with FakeMediaWiki(wiki) as api:
        monkeypatch.setenv("COOK_WIKIPEDIA_API_URL", api.url)
        get_settings.cache_clear()
        try:
            kw = dict(queries=["Gamma", "Delta"], max_pages=12, depth=1, out=str(out), rate_limit=200.0)
            s1 = scrape_wikipedia_flow(**kw)
            assert s1["cached"] == 0 and s1["documents"] == 12 and [q["done"] for q in s1["per_query"]] == [6, 6]
            requests = sum(api.parse_counts.values())
            s2 = scrape_wikipedia_flow(**kw)
            assert s2["cached"] == 2 and [q["state"] for q in s2["per_query"]] == ["Cached", "Cached"]
            assert sum(api.parse_counts.values()) == requests and s2["documents"] == 12
            # a query whose outputs are gone runs again (and refetches nothing the ledger has)
            for p in (out / "queries").glob("Delta-*.json"):
                p.unlink()
            s3 = scrape_wikipedia_flow(**kw)
            assert [q["state"] for q in s3["per_query"]] == ["Cached", "Completed"] and s3["fetched"] == 0
            s4 = scrape_wikipedia_flow(**kw)
            assert [q["state"] for q in s4["per_query"]] == ["Cached", "Cached"]
        finally:
            get_settings.cache_clear()
        ids = [d["id"] for d in docs_in(out)]
        assert len(ids) == len(set(ids)) == 12


# --- nights: a failure is never cached; a deleted part is re-made; Retry-After pauses every worker -------------


def test_a_run_with_failures_is_not_cached_and_a_lost_part_is_remade(tmp_path, monkeypatch):
    """The issue's reproduction: run 1 (3 pages) is fine; run 2 (6 pages) has a page answering 503 and ends
    Incomplete; run 3, the page healthy again, must not come back Cached: it fetches that page (and only it).
    Then a part deleted by hand is re-made, exactly, by the next run (at the default refresh age)."""
    from flows.scrape_wikipedia import scrape_wikipedia_flow
    from model.errors import Incomplete
    from tasks.core.settings import get_settings

    wiki = FakeWiki(n_pages=25, seed=6, missing=0)
    out = tmp_path / "wiki"
    with FakeMediaWiki(wiki) as api:
        api.fail_retry_after = "0"
        monkeypatch.setenv("COOK_WIKIPEDIA_API_URL", api.url)
        get_settings.cache_clear()
        try:
            kw = dict(queries=["Gamma"], depth=1, out=str(out), rate_limit=200.0)
            s1 = scrape_wikipedia_flow(max_pages=3, **kw)
            assert s1["documents"] == 3 and s1["failed_pages"] == []
            have = {pid_of(d["id"]) for d in docs_in(out)}
            seeds = [p for p, _ in wiki.search("Gamma")]
            doomed = next(p for p in seeds if p not in have)  # the next seed run 2 fetches
            api.fail_always.add(doomed)
            with pytest.raises(Incomplete, match=r"1 page and 0 queries failed.*run the same command again"):
                scrape_wikipedia_flow(max_pages=6, **kw)
            api.fail_always.clear()
            before = Counter(api.parse_counts)
            s3 = scrape_wikipedia_flow(max_pages=6, **kw)
            assert [q["state"] for q in s3["per_query"]] == ["Completed"], "a run with failures was cached"
            # the failed page is retried whatever the budget (run 2 filled its place with the next page)
            assert set(api.parse_counts - before) == {doomed} and s3["documents"] == 7
            s4 = scrape_wikipedia_flow(max_pages=6, **kw)
            assert [q["state"] for q in s4["per_query"]] == ["Cached"]

            parts = sorted(out.glob("*.parquet"))
            lost = {pid_of(d["id"]) for d in pq.read_table(parts[0]).to_pylist()}
            parts[0].unlink()
            before = Counter(api.parse_counts)
            s5 = scrape_wikipedia_flow(max_pages=6, **kw)
            assert [q["state"] for q in s5["per_query"]] == ["Completed"] and s5["documents"] == 7
            assert api.parse_counts - before == Counter({p: 1 for p in lost}), "not exactly the lost pages were fetched"
            ids = [pid_of(d["id"]) for d in docs_in(out)]
            assert len(ids) == len(set(ids)) == 7
        finally:
            get_settings.cache_clear()


def _quiet_after(faults: list[tuple[float, str]], arrivals, after: float) -> list[tuple[str, float]]:
    """Requests that arrived within `after` seconds (less 0.2 s for requests already on their way on a busy
    machine) of a fault that carried Retry-After: `after`; (kind, delay) each."""
    bad = []
    for t, kind in faults:
        for a in arrivals:
            if t + 0.2 < a < t + after - 0.1:
                bad.append((kind, round(a - t, 3)))
    return bad


def test_retry_after_and_maxlag_pause_every_worker(tmp_path):
    """After a 429 or a maxlag answer with Retry-After: 1, no request of any worker reaches the server for about
    a second (the fake's request log); a client that ignored it would retry after its 0.01 s backoff."""
    wiki = FakeWiki(n_pages=30, seed=8, missing=0)
    with FakeMediaWiki(wiki, faults={"429": 2, "maxlag": 2}, fault_rate=0.25, retry_after="1", seed=3) as api:
        with Crawler(tmp_path / "w", api_url=api.url, concurrency=3, rate_limit=200, backoff=0.01) as c:
            c.crawl("a", quota=24, depth=1)
        assert api.faults_sent["429"] + api.faults_sent["maxlag"] >= 3, api.faults_sent
        assert len(api.fault_times) == sum(api.faults_sent.values())
        assert len(api.arrivals) >= 20
        assert _quiet_after(api.fault_times, list(api.arrivals), 1.0) == []


def test_nested_blocks_are_read_once():
    """A list inside a list item, or a definition inside a list: the inner text is part of the outer block, once."""
    from tasks.sources.wikipedia import extract_text

    html = ('<div class="mw-parser-output"><p>Intro.</p><ul><li>Outer item<ul><li>inner item</li></ul></li>'
            '<li>Second<dl><dd>a definition</dd></dl></li></ul></div>')
    text = extract_text(html)
    blocks = text.split("\n\n")
    assert len(blocks) == 3 and text.count("inner item") == 1 and text.count("a definition") == 1, text
    assert blocks[1].startswith("Outer item") and blocks[2].startswith("Second"), text
