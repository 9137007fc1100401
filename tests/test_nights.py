"""Nights, not runs: a month of nightly `cook scrape ...` runs (through the CLI, as subprocesses) against the fake
servers, with events between them — pages edited, new links, new pages, a page failing then recovering, a part
deleted by hand. After every night:

- the merged output equals the merge of ONE clean run into an empty folder against the site as it is now
  (ids and texts), so refreshing, retrying and re-making lost parts leave nothing stale, missing or doubled;
- no page was fetched without a reason (new, changed, failed last night, or lost with a deleted part), per the
  fake server's counters;
- the exit code says how it went: 3 on a night that left a failing page, 0 otherwise.

Events are plain functions of the `Night` harness: to add one, write a function that changes the fake site (or the
output folder) and returns the page ids it gives a reason to fetch again, and put it in the list of nights.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
from fake_britannica import FakeBritannica, FakeSite
from fake_mediawiki import FakeMediaWiki, FakeWiki
from scraped import docs_in

from tasks.core.ledger import Ledger
from tasks.corpus.merge import merge_documents

pytestmark = pytest.mark.timeout(600)


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def cook(args: list, env: dict) -> Ran:
    """`cook ARGS` through the real command line (typer's app, in this process: a subprocess per night would cost
    seconds of start-up each), with `env` set around it; exit code and output as a subprocess would give them."""
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.core.settings import get_settings

    get_settings.cache_clear()
    try:
        r = CliRunner().invoke(app, [str(a) for a in args], env=env)
    finally:
        get_settings.cache_clear()
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return Ran(r.exit_code, r.stdout, r.stderr)


def merged(out: Path, tmp: Path) -> dict[str, str]:
    """{id: text} of `cook merge` over a scraper's output (the step that turns parts into one corpus)."""
    dest = tmp / f"merged-{len(list(tmp.glob('merged-*')))}"
    merge_documents([out], dest, min_chars=1)
    return {d["id"]: d["text"] for d in docs_in(dest) if d}


def pid_of(doc_id: str) -> int:
    return int(doc_id.rsplit(":", 1)[1])


# --- Wikipedia -----------------------------------------------------------------------------------------


@dataclass
class WikiNight:
    """One night: `event(harness)` changes the world and returns page ids now due a fetch; `exit` is the code expected."""

    name: str
    event: Callable[["WikiNights"], set[int]] = lambda h: set()
    exit: int = 0
    env: Callable[["WikiNights"], dict] | None = None  # settings for this night's run only
    run: Callable[["WikiNights", dict | None], "Ran"] | None = None  # how the night runs (default: one nightly run)
    runs: int = 1  # how many runs that makes (each checks the revisions of the known pages)


@dataclass
class WikiNights:
    """The world: a fake wiki served twice (the nightly server, whose counters are checked, and a reference server
    for clean runs), a nightly output folder, and the CLI arguments of the nightly deployment."""

    tmp: Path
    env: dict
    wiki: FakeWiki = field(default_factory=lambda: FakeWiki(n_pages=24, seed=11, links_per_page=2, missing=0))
    queries: tuple[str, ...] = ("Alpha", "Beta")
    depth: int = 1
    failed_last: set[int] = field(default_factory=set)

    def __post_init__(self):
        self.out = self.tmp / "nightly"
        self.api = FakeMediaWiki(self.wiki)
        self.ref = FakeMediaWiki(self.wiki)
        self.ref.fail_always = self.api.fail_always  # one world: what fails for the nightly run fails for a clean one
        self.api.fail_retry_after = self.ref.fail_retry_after = "0"  # the client's retries of a failing page take no time

    def args(self, out: Path, refresh_after: float | None = 0) -> list:
        a = ["scrape", "wikipedia", *[x for q in self.queries for x in ("--query", q)], "--max-pages", 1000,
             "--depth", self.depth, "--rate-limit", 500, "--out", out]
        return a + (["--refresh-after", refresh_after] if refresh_after is not None else [])

    def nightly(self, refresh_after: float | None = 0, env: dict | None = None):
        return cook(self.args(self.out, refresh_after),
                    {"COOK_DATA_DIR": str(self.tmp / "data"), "COOK_WIKIPEDIA_API_URL": self.api.url, **(env or {})})

    def clean(self) -> dict[str, str]:
        """The merge of one clean run into an empty folder, against the reference server (same wiki): the crawl
        the flow's query tasks make, without Prefect around it (seconds per night saved)."""
        from tasks.sources.wikipedia import Crawler

        out = self.tmp / f"clean-{len(list(self.tmp.glob('clean-*')))}"
        with Crawler(out, api_url=self.ref.url, rate_limit=500.0) as c:
            for q in self.queries:  # the budget is far above the pages there are: every query gets all it finds
                c.crawl(q, quota=500, depth=self.depth)
        return merged(out, self.tmp)

    def have(self) -> set[int]:
        return {pid_of(d["id"]) for d in docs_in(self.out)} if self.out.exists() else set()

    def reachable(self) -> set[int]:
        return self.wiki.expected_crawl(list(self.queries), self.depth, search_limit=10_000, dead=frozenset(self.api.fail_always))

    # --- events ------------------------------------------------------------------------------------

    def edit(self, *pids: int, add_links: tuple[int, ...] = ()) -> set[int]:
        for p in pids:
            self.wiki.edit(p, add_links=list(add_links))
        return set(pids)

    def seeds(self) -> list[int]:
        """Known pages that searches find: their links are followed (at depth 1)."""
        return sorted(p for q in self.queries for p, _ in self.wiki.search(q) if p in self.have())

    def unreached(self) -> list[int]:
        return sorted(set(self.wiki.pages) - self.reachable())

    def delete_part(self) -> set[int]:
        """Delete by hand the part that holds the most current documents; return the pages it held."""
        with Ledger(self.out / "ledger.sqlite") as ledger:
            rows = ledger.items("wikipedia:en", "done")
        by_part = Counter(r["part"] for r in rows if r["part"])
        part = by_part.most_common(1)[0][0]
        (self.out / part).unlink()
        return {int(r["key"]) for r in rows if r["part"] == part}


def _edit_two(h: WikiNights) -> set[int]:
    have = sorted(h.have())
    return h.edit(have[0], have[len(have) // 2])


def _new_link(h: WikiNights) -> set[int]:
    """A known page now links to a page no crawl reached yet."""
    target = h.unreached()[0]
    return h.edit(h.seeds()[1], add_links=(target,))


def _new_link_to_failing_page(h: WikiNights) -> set[int]:
    """A known page links to a new page, which answers 503 all night: it fails, and the night ends with exit 3."""
    target = h.unreached()[0]
    h.api.fail_always.add(target)
    return h.edit(h.seeds()[2], add_links=(target,))


def _dead_host(h: WikiNights) -> dict:
    """The API's address points at a port nobody listens on: the run stops at once, naming the setting."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return {"COOK_WIKIPEDIA_API_URL": f"http://127.0.0.1:{port}/w/api.php", "COOK_MAX_CONNECT_FAILURES": "2"}


def _moved_api(h: WikiNights) -> dict:
    """The API's address moved: the setting names the old one, which answers 301 to the new (every request)."""
    from fake_mediawiki import MOVED_PATH

    return {"COOK_WIKIPEDIA_API_URL": h.api.url.replace("/w/api.php", MOVED_PATH)}


def _two_at_once(h: WikiNights, env: dict | None) -> Ran:
    """The nightly run and a second run on the same folder started together (say `default` and `nightly`): the
    second waits its turn on the Prefect server (its log says so), both succeed, and nothing is fetched twice."""
    import subprocess
    import sys

    from conftest import REPO

    h.api.latency_s = 0.5  # the first run lasts a few seconds: the second surely starts while it runs
    first_seen = len(h.api.arrivals)
    sub_env = {**h.env, "COOK_DATA_DIR": str(h.tmp / "data"), "COOK_WIKIPEDIA_API_URL": h.api.url}
    first = subprocess.Popen([sys.executable, "-m", "flows.cli", *map(str, h.args(h.out))], env=sub_env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(h.api.arrivals) == first_seen and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the first run is at work
        heard: list[str] = []
        ear = logging.Handler()
        ear.emit = lambda record: heard.append(record.getMessage())
        logging.getLogger("prefect.flow_runs").addHandler(ear)  # the run's log, as the Prefect UI shows it
        try:
            second = h.nightly(env=env)
        finally:
            logging.getLogger("prefect.flow_runs").removeHandler(ear)
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        h.api.latency_s = 0.0
    assert first.returncode == 0, out[-3000:]
    assert any(m.startswith(f"waiting for {h.out}") for m in heard), "the second run waited its turn, and said so"
    return second


def _recover(h: WikiNights) -> set[int]:
    h.api.fail_always.clear()
    return set()


def _new_page(h: WikiNights) -> set[int]:
    h.wiki.add_page("Alpha newly written article")
    return set()


WIKI_NIGHTS = [
    WikiNight("first night"),
    WikiNight("quiet night"),
    WikiNight("two pages edited", _edit_two),
    WikiNight("a new link", _new_link),
    WikiNight("a new page that fails", _new_link_to_failing_page, exit=3),
    WikiNight("the API host is down", exit=5, env=_dead_host),
    WikiNight("the page recovers", _recover),
    WikiNight("a part deleted by hand", WikiNights.delete_part),
    WikiNight("the API moved: its old address redirects", _edit_two, env=_moved_api),
    WikiNight("two runs at once on one folder", _edit_two, run=_two_at_once, runs=2),
    WikiNight("a new article", _new_page),
    WikiNight("quiet night again"),
]


def test_a_month_of_wikipedia_nights(tmp_path, cook_env):
    h = WikiNights(tmp_path, cook_env)
    with h.api, h.ref:
        for n, night in enumerate(WIKI_NIGHTS, start=1):
            have = h.have()
            due = night.event(h)  # pages with a reason: changed, lost...
            before = Counter(h.api.parse_counts)
            info_before = h.api.info_requests
            env = night.env(h) if night.env else None
            redirects = h.api.redirects
            proc = night.run(h, env) if night.run else h.nightly(env=env)
            if night.env is _moved_api:
                assert h.api.redirects > redirects, "the night went through the old address"
            where = f"night {n} ({night.name})"
            assert proc.returncode == night.exit, f"{where}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
            if night.exit == 5:  # nothing tried: one line naming the host and its setting; the output as it was
                last = proc.stderr.strip().splitlines()[-1]
                assert "cannot reach 127.0.0.1" in last and "COOK_WIKIPEDIA_API_URL" in last, last
                assert h.api.parse_counts == before and h.have() == have, where
                continue
            if night.exit == 3:
                last = proc.stderr.strip().splitlines()[-1]
                assert "1 page and 0 queries failed" in last and "run the same command again" in last, last
            fetched = h.api.parse_counts - before
            reasons = (due | h.failed_last | (h.reachable() - have)) & h.reachable()
            assert set(fetched) == reasons, f"{where}: fetched {sorted(fetched)}, reasons {sorted(reasons)}"
            assert all(c == 1 for c in fetched.values()), f"{where}: a page fetched twice: {fetched}"
            if have:  # a refresh: one revision check per 50 known pages
                assert 1 <= h.api.info_requests - info_before <= -(-len(have) // 50) * len(h.queries) * night.runs, where
            assert merged(h.out, tmp_path) == h.clean(), f"{where}: the output differs from one clean run's"
            h.failed_last = {p for p in h.api.fail_always if p in h.wiki.pages}  # retried by the next night

        # the default refresh age (20 h): the same night again is served from the cache, without a request
        requests = len(h.api.arrivals)
        proc = h.nightly(refresh_after=None)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert len(h.api.arrivals) == requests and "2 queries cached" in proc.stdout


# --- Britannica ----------------------------------------------------------------------------------------


@dataclass
class BritNight:
    name: str
    event: Callable[["BritNights"], set[str]] = lambda h: set()
    exit: int = 0


@dataclass
class BritNights:
    tmp: Path
    env: dict
    site: FakeSite = field(default_factory=lambda: FakeSite(seed=5))
    queries: tuple[str, ...] = ("Alpha", "Beta")
    failed_last: set[str] = field(default_factory=set)

    def __post_init__(self):
        self.out = self.tmp / "nightly"
        self.web = FakeBritannica(self.site, retry_after="0")  # the client's retries of a failing article take no time
        self.ref = FakeBritannica(self.site, retry_after="0")
        self.ref.fail_always = self.web.fail_always

    def nightly(self):
        args = ["scrape", "britannica", *[x for q in self.queries for x in ("--query", q)], "--max-pages-per-query", 10,
                "--rate-limit", 500, "--refresh-after", 0, "--out", self.out]
        return cook(args, {"COOK_DATA_DIR": str(self.tmp / "data"), "COOK_BRITANNICA_URL": self.web.url})

    def clean(self) -> dict[str, str]:
        """The merge of one clean run into an empty folder against the reference server (same site), by the
        crawl the flow's query tasks make, without Prefect around it."""
        from tasks.sources.britannica import Crawler

        out = self.tmp / f"clean-{len(list(self.tmp.glob('clean-*')))}"
        with Crawler(out, base_url=self.ref.url, rate_limit=500.0) as c:
            for q in self.queries:
                c.crawl(q, max_pages=10)
        return merged(out, self.tmp)

    def served(self) -> Counter[str]:
        """Articles answered 200 (redirects and refused paths are not articles)."""
        return Counter({p.split("/topic/", 1)[1]: n for p, n in self.web.served.items()
                        if p.startswith("/topic/") and p.split("/topic/", 1)[1] in self.site.articles})

    def have(self) -> set[str]:
        return {d["id"].rsplit("/", 1)[1] for d in docs_in(self.out)} if self.out.exists() else set()

    def failing(self) -> set[str]:
        return {p.split("/topic/", 1)[1] for p in self.web.fail_always}

    def delete_part(self) -> set[str]:
        with Ledger(self.out / "ledger.sqlite") as ledger:
            rows = ledger.items("britannica", "done")
        part = Counter(r["part"] for r in rows if r["part"]).most_common(1)[0][0]
        (self.out / part).unlink()
        return {r["key"].rsplit("/", 1)[1] for r in rows if r["part"] == part} & set(self.site.articles)  # not aliases


def _brit_edit(h: BritNights) -> set[str]:
    for slug in ("alpha-2", "beta-3"):
        h.site.edit(slug)
    return {"alpha-2", "beta-3"}


def _brit_new_failing(h: BritNights) -> set[str]:
    """A new article in Alpha's results, answering 503 all night."""
    from fake_britannica import Article

    a = Article("alpha-new", "Alpha new article")
    h.site._render(a, random.Random(7))
    h.site.articles["alpha-new"] = a
    h.site.queries["Alpha"].append("alpha-new")
    h.web.fail_always.add("/topic/alpha-new")
    return set()


def _brit_recover(h: BritNights) -> set[str]:
    h.web.fail_always.clear()
    return set()


BRIT_NIGHTS = [
    BritNight("first night"),
    BritNight("quiet night"),
    BritNight("two articles edited", _brit_edit),
    BritNight("a new article that fails", _brit_new_failing, exit=3),
    BritNight("it recovers", _brit_recover),
    BritNight("a part deleted by hand", BritNights.delete_part),
]


def test_britannica_nights(tmp_path, cook_env):
    h = BritNights(tmp_path, cook_env)
    with h.web, h.ref:
        for n, night in enumerate(BRIT_NIGHTS, start=1):
            have = h.have()
            due = night.event(h)
            before, not_modified = h.served(), sum(h.web.not_modified.values())
            proc = h.nightly()
            where = f"night {n} ({night.name})"
            assert proc.returncode == night.exit, f"{where}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
            if night.exit == 3:
                assert "run the same command again" in proc.stderr.strip().splitlines()[-1]
            fetched = h.served() - before
            clean = h.clean()
            # articles downloaded (200): only new, changed, failed last night or lost ones
            reasons = due | h.failed_last | ({i.rsplit("/", 1)[1] for i in clean} - have)
            assert set(fetched) == reasons - h.failing(), f"{where}: fetched {sorted(fetched)}, reasons {sorted(reasons)}"
            assert all(c == 1 for c in fetched.values()), f"{where}: an article fetched twice: {fetched}"
            if have:  # every known article revisited with one conditional request; unchanged ones answer 304
                assert sum(h.web.not_modified.values()) - not_modified == len(have - set(fetched)), where
            assert merged(h.out, tmp_path) == clean, f"{where}: the output differs from one clean run's"
            h.failed_last = h.failing()
