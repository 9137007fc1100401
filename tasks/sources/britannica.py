"""Encyclopaedia Britannica through its public web pages: search result pages -> article pages -> clean text.

- `parse_search(html, base)`: article links of one search result page, with either of the result link
  selectors the site has used (`RESULT_SELECTORS`); other kinds of hits (videos, quizzes, other hosts) skipped.
- `extract_article(html)`: (title, text) from an article page with selectolax: paragraphs and headings of
  the article body, one block per paragraph; navigation, ads, quiz boxes, feedback forms and boilerplate
  sentences ("Our editors will review what you’ve submitted…") dropped.
- `Crawler`: robots.txt honoured (fetched once per base URL and process, its Crawl-delay too; a disallowed URL,
  redirect targets included, is skipped and counted; redirects are followed by hand so each hop is checked),
  every request through `tasks.core.http.PoliteClient` (User-Agent, bounded concurrency, rate limit,
  backoff honouring Retry-After), article paths deduplicated across queries and runs through a SQLite ledger
  (`OUT/ledger.sqlite`; an old path that redirects is recorded as an alias of its target), documents written in atomic parquet parts. A page that answers 200 but no longer
  matches the expected structure (no result links, no paragraphs) gives a warning naming the URL and the
  selectors; nothing empty is ever written. A failed article is recorded and retried by the next run (a dead
  host, `SourceUnavailable`, stops the crawl instead: what is left stays pending). At start, articles whose part
  file is gone go back to pending and are fetched again. `refresh` revisits known articles with conditional
  requests (If-None-Match / If-Modified-Since from the ETag / Last-Modified they were fetched with): a 304 costs
  no download; a changed article is written to a new part (newest `fetched_at` wins in `cook merge`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import urllib.robotparser
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import quote_plus, unquote, urljoin, urlparse

import httpx
from prefect import task
from selectolax.lexbor import LexborHTMLParser

from model.atomic import clean_stale_temps
from model.errors import CookError, SourceUnavailable
from tasks.core.caching import PERSISTED
from tasks.sources.crawl import CrawlerBase, outer_blocks, check_crawl_args, gather_queries, query_cache, refresh_cutoff, write_manifest
from tasks.core.http import FetchError, PoliteClient
from tasks.core.ledger import Ledger
from tasks.core.progress import progress

SOURCE = "britannica"
LEDGER_NAME = "ledger.sqlite"
log = logging.getLogger("cook.britannica")

# The original's topics (web-graze's search list: its duplicate "biological viruses" dropped, casing and typos
# fixed, e.g. "CRISPR CAS-9" -> "CRISPR-Cas9"), then two of its later ones to make 40.
DEFAULT_QUERIES = [
    "Antarctica", "Colonization", "World war", "Asia", "Africa", "Australia", "Holocaust", "Voyages of discovery",
    "Biological viruses", "Martin Luther King Jr.", "Abraham Lincoln", "Quarks", "Quantum mechanics", "Drugs",
    "Rockets", "Physics", "Mathematics", "Nuclear physics", "Nuclear fusion", "CRISPR-Cas9", "Virginia Woolf",
    "Cocaine", "Marijuana", "Apollo missions", "Birds", "Blogs", "Journals", "Adolf Hitler",
    "Presidents of the United States", "Gender and sex", "Journalism", "Mathematical theories",
    "Matter and particles", "Discoveries", "Authors and writers", "Poets and novelists", "Literature",
    "Awards and honors", "Climate change", "Renewable energy",
]

# Search result links: the original site's markup, then its later one. Both are tried on every page.
RESULT_SELECTORS = ("a.font-weight-bold.font-18", "a.md-crosslink")
# Where the article body lives (first match wins), and the blocks read from it.
BODY_SELECTORS = ("div.topic-content", "article", "main", "body")
BLOCKS = "p, h2, h3, h4, h5, h6"
HEADINGS = ("h2", "h3", "h4", "h5", "h6")
# Boxes around the article that are not its text.
CLUTTER = ", ".join([
    "script", "style", "noscript", "template", "iframe", "svg", "nav", "header", "footer", "aside", "form", "button",
    "figure", "figcaption", "table", "[role=navigation]", "[role=complementary]", "[role=dialog]", "[aria-hidden=true]",
    ".ad", "[class^=ad-]", "[class*=' ad-']", "[id^=ad-]", "[data-ad-slot]", "[data-ad]",
    "[class*=quiz]", "[class*=marketing]", "[class*=feedback]", "[class*=newsletter]", "[class*=promo]",
    "[class*=toc]", "[class*=breadcrumb]", "[class*=related]", "[class*=citation]", "[class*=share]",
])
# Boilerplate blocks, dropped by their opening words (compared case-insensitively).
BOILERPLATE = (
    "our editors will review", "britannica quiz", "britannica editors", "thank you for your feedback",
    "encyclopaedia britannica's editors oversee", "join britannica's publishing partner program",
    "unlock this article", "subscribe now", "related topics:", "see all related content", "external websites",
    "print cite share feedback",
)
BOILERPLATE_EXACT = {"advertisement", "table of contents"}
# Headings from which on the rest of the article is bibliography, not text (compared case-insensitively).
STOP_SECTIONS = {"additional reading", "further reading", "references", "external websites", "citation information",
                 "bibliography", "sources"}
# First path segments that are not articles (search also lists videos, quizzes, galleries...).
NOT_ARTICLES = {"video", "videos", "quiz", "quizzes", "gallery", "dictionary", "search", "browse", "games", "podcasts",
                "newsletters", "subscribe", "login", "editor", "contributor", ""}
# failures a later run would meet again (the page, not the network): reported, but they leave a query complete
PERMANENT_CODES = {"structure", "elsewhere", "redirects", "disallowed"}
NO_RESULTS = re.compile(r"\bno (search )?results|did not match any|\b0 results|no matches|nothing found", re.I)


def _clean(text: str) -> str:
    return " ".join(text.split())


def transient(error: Exception) -> bool:
    """Whether a later run may succeed where this failed: network trouble, 429 and 5xx yes; a page that is gone
    (4xx), that leads off the site or whose structure changed, no."""
    code = getattr(error, "code", None)
    if code in PERMANENT_CODES:
        return False
    return not (isinstance(code, str) and code.isdigit() and code.startswith("4") and code != "429")


def _version(r: httpx.Response, text: str) -> dict:
    """What a conditional request needs to ask "changed since?", and a digest of the text for sites that give neither."""
    return {"etag": r.headers.get("ETag"), "last_modified": r.headers.get("Last-Modified"),
            "sha": hashlib.sha256(text.encode()).hexdigest()[:16]}


def _load_version(v: str | None) -> dict:
    import json

    try:
        got = json.loads(v) if v else {}
    except ValueError:
        return {}
    return got if isinstance(got, dict) else {}


def _warn(message: str) -> None:
    """Log a warning to the Prefect run when inside one, else to Python logging."""
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:
        log.warning(message)


# --- parsing ---------------------------------------------------------------------------------------


def article_path(href: str, base: str) -> str | None:
    """A result link -> the article's path on the site (`/topic/DNA`), or None for other hosts and non-articles."""
    u = urlparse(urljoin(base.rstrip("/") + "/", href))
    if u.scheme not in ("http", "https") or u.netloc != urlparse(base).netloc:
        return None
    path = u.path.rstrip("/")
    if unquote(path.lstrip("/").split("/", 1)[0]).lower() in NOT_ARTICLES or path.count("/") < 2:
        return None
    return path


def parse_search(html: str, base: str) -> tuple[list[str], bool]:
    """One search result page -> (article paths in order, unique; whether the page says there are no results)."""
    tree = LexborHTMLParser(html)
    paths: dict[str, None] = {}
    for a in tree.css(", ".join(RESULT_SELECTORS)):  # both markups, in page order
        p = article_path(a.attributes.get("href") or "", base)
        if p:
            paths[p] = None
    body = tree.body
    empty = not paths and body is not None and bool(NO_RESULTS.search(body.text(separator=" ")))
    return list(paths), empty


def extract_article(html: str) -> tuple[str, str]:
    """An article page -> (title, text): paragraphs and headings of the body, blank line between blocks,
    whitespace collapsed; clutter, boilerplate and the trailing Additional Reading / References sections dropped. Text is "" when the page has no paragraphs."""
    tree = LexborHTMLParser(html)
    h1 = tree.css_first("h1")
    title = _clean(h1.text()) if h1 is not None else ""
    if not title and tree.css_first("title") is not None:
        title = _clean(tree.css_first("title").text()).split(" | ")[0]
    root = next((n for n in (tree.css_first(s) for s in BODY_SELECTORS) if n is not None), None)
    if root is None:
        return title, ""
    for node in root.css(CLUTTER):
        node.decompose()
    blocks: list[str] = []
    paragraphs = 0
    for node in outer_blocks(root, BLOCKS, ("p", *HEADINGS)):
        text = _clean(node.text(deep=True))
        low = text.lower()
        if node.tag in HEADINGS and low in STOP_SECTIONS:
            break
        if text and not low.startswith(BOILERPLATE) and low not in BOILERPLATE_EXACT and not (node.tag in HEADINGS and text == title):
            blocks.append(text)
            paragraphs += node.tag == "p"
    return title, "\n\n".join(blocks) if paragraphs else ""


# --- robots.txt and redirects ---------------------------------------------------------------------

REDIRECTS = {301, 302, 303, 307, 308}
MAX_HOPS = 5


def follow(client: PoliteClient, url: str, allowed: Callable[[str], bool] | None = None) -> tuple[str, httpx.Response]:
    """GET `url`, following redirects by hand (the crawler's client does not), each hop within the rate limits
    and, with `allowed`, checked first (robots.txt). Returns (final URL, response)."""
    for _ in range(MAX_HOPS + 1):
        if allowed is not None and not allowed(url):
            raise FetchError(f"robots.txt disallows {url}", code="disallowed")
        r = client.get(url)
        if r.status_code not in REDIRECTS:
            return url, r
        url = urljoin(url, r.headers.get("Location", ""))
    raise FetchError(f"more than {MAX_HOPS} redirects from {url}")


_robots: dict[str, urllib.robotparser.RobotFileParser] = {}
_robots_lock = threading.Lock()


def robots_for(client: PoliteClient, base: str) -> urllib.robotparser.RobotFileParser:
    """BASE/robots.txt, fetched once per base URL and process, with urllib.robotparser's rules: 401/403
    disallow everything, another 4xx allows everything. A robots.txt that cannot be fetched stops the crawl."""
    with _robots_lock:
        rp = _robots.get(base)
        if rp is not None:
            return rp
        rp = urllib.robotparser.RobotFileParser(base.rstrip("/") + "/robots.txt")
        try:
            _, r = follow(client, rp.url)
            rp.parse(r.text.splitlines())
        except FetchError as e:
            if e.code in ("401", "403"):
                rp.disallow_all = True
            elif e.code and e.code.startswith("4"):
                rp.allow_all = True
            else:
                raise FetchError(f"robots.txt unreachable at {rp.url}: {e}") from None
        _robots[base] = rp
        return rp


# --- the crawl -------------------------------------------------------------------------------------


class Crawler(CrawlerBase):
    """A crawl into one output folder: its ledger, its client, its parquet parts. Use as a context manager."""

    def __init__(self, out: str | Path, *, base_url: str | None = None, concurrency: int = 4, rate_limit: float = 5.0,
                 timeout: float = 30.0, retries: int = 6, backoff: float = 0.5, batch_pages: int = 16,
                 on_article: Callable[[bool], None] | None = None, on_todo: Callable[[int], None] | None = None,
                 remote: str | None = None):
        from tasks.core.settings import get_settings

        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.out)
        self._start_mirror(self.out, remote)  # `remote`: the folder's copy on the data store
        self.base = (base_url or get_settings().britannica_url).rstrip("/")
        self.client = PoliteClient(concurrency=concurrency, rate_limit=rate_limit, timeout=timeout, retries=retries,
                                   backoff=backoff, headers={"Accept": "text/html,application/xhtml+xml"})
        self.client.http.follow_redirects = False  # followed by hand: every hop checked against robots.txt and the ledger
        self._conditional: dict[str, dict[str, str]] = {}  # URL -> If-None-Match / If-Modified-Since of a refresh
        self.client.http.event_hooks["request"].append(self._add_conditional)
        self.ua = self.client.http.headers["User-Agent"]
        self._claimed: set[str] = set()  # article paths done or being fetched (redirect targets included)
        self._claim_lock = threading.Lock()
        self.ledger = Ledger(self.out / LEDGER_NAME)
        self.batch_pages = batch_pages
        self.on_article, self.on_todo = on_article, on_todo  # progress: one article finished; how many a query fetches
        # more workers than request slots: while some parse HTML, the client keeps `concurrency` requests in flight
        self._pool = ThreadPoolExecutor(max_workers=2 * concurrency, thread_name_prefix="britannica")
        self._buffer: list[tuple[dict | None, dict]] = []  # (document or None for a redirect, ledger item)
        self.recovered = self._reconcile()

    @staticmethod
    def doc_id(path: str) -> str:
        return f"{SOURCE}:{path.lstrip('/')}"

    def _reconcile(self) -> int:
        """Articles staged before a crash: done if a part file holds them, else back to pending; done articles
        whose part is gone (deleted by hand) back to pending too (`self.released`)."""
        head = SOURCE + ":"
        recovered = self.ledger.recover(SOURCE, self.out, lambda i: "/" + i[len(head):] if i.startswith(head) else None)
        self.released = self.ledger.release_missing(SOURCE, self.out, self._part_exists)
        return recovered

    def _add_conditional(self, request: httpx.Request) -> None:
        """httpx request hook: a refresh's conditional headers on its URL's request."""
        extra = self._conditional.get(str(request.url))
        if extra:
            request.headers.update(extra)

    def _recheck(self, row: dict) -> dict:
        """One conditional request for a known article: {unchanged} (304, or the same text), or the new article."""
        url = self.base + row["key"]
        v = _load_version(row["version"])
        headers = {k: v[f] for k, f in (("If-None-Match", "etag"), ("If-Modified-Since", "last_modified")) if v.get(f)}
        self._conditional[url] = headers
        try:
            r = self.client.get(url)
        finally:
            self._conditional.pop(url, None)
        if r.status_code == 304 or r.status_code in REDIRECTS:  # unchanged (a move is left to the search walk)
            return {"unchanged": True}
        title, text = extract_article(r.text)
        if not text:
            raise FetchError(f"{url} answered 200 but no paragraph matched on refresh (page structure changed?)", code="structure")
        version = _version(r, text)
        if v.get("sha") == version["sha"]:
            return {"unchanged": True, "version": version}
        return {"path": row["key"], "title": title, "text": text, "version": version}

    def refresh(self, tag: str | None, checked_before: float) -> dict:
        """Revisit the done articles of `tag` (None: every tag) last fetched or checked before `checked_before`
        with conditional requests; write the changed ones to a new part. Returns {checked, changed, refetched, failed}."""
        due = [r for r in self.ledger.due(SOURCE, tag, checked_before) if not r["data"]]  # articles, not redirects
        futures = {self._pool.submit(self._recheck, r): r for r in due}
        same, changed, failed = [], 0, []
        for fut in as_completed(futures):
            row = futures[fut]
            try:
                got = fut.result()
            except SourceUnavailable:
                raise
            except Exception as e:  # one article never stops the refresh; it stays done, and due
                error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                failed.append({"path": row["key"], "error": error, "transient": transient(e)})
                continue
            if got.get("unchanged"):
                same.append(row["key"])
                continue
            changed += 1
            doc = {"id": self.doc_id(got["path"]), "source": SOURCE, "url": self.base + got["path"],
                   "title": got["title"] or got["path"].rsplit("/", 1)[-1], "text": got["text"], "fetched_at": datetime.now(timezone.utc)}
            self._buffer.append((doc, {"key": got["path"], "title": doc["title"], "tag": row["tag"], "version": got["version"]}))
            if len(self._buffer) >= self.batch_pages:
                self._flush()
        self._flush()
        self.ledger.touch(SOURCE, same)
        return {"checked": len(due), "changed": changed, "refetched": changed, "failed": failed}

    def _flush(self) -> None:
        """Write the buffered articles: one atomic part, recorded in the ledger crash-safely. Aliases (paths
        that redirect to an article) carry no document: they are done with their batch."""
        if self._buffer:
            self._write_batch(SOURCE, SOURCE, self._buffer)
            self._buffer = []

    def robots(self) -> urllib.robotparser.RobotFileParser:
        """The site's robots.txt rules; a Crawl-delay for our agent slows the rate limit down to it."""
        rp = robots_for(self.client, self.base)
        delay = rp.crawl_delay(self.ua)
        if delay:
            self.client.limiter.interval = max(self.client.limiter.interval, float(delay))
        return rp

    def _claim(self, path: str) -> bool:
        """Take `path` for fetching; False when it is done or taken already."""
        with self._claim_lock:
            if path in self._claimed:
                return False
            self._claimed.add(path)
            return True

    def _article(self, path: str, robots: urllib.robotparser.RobotFileParser) -> dict:
        """Fetch one article, following redirects by hand: {path (final), title, text}, or {alias: target} when
        it redirects to an article done or taken already, or {disallowed: target} when robots.txt rules it out."""
        current = path
        for _ in range(MAX_HOPS + 1):
            r = self.client.get(self.base + current)
            if r.status_code not in REDIRECTS:
                title, text = extract_article(r.text)
                return {"path": current, "title": title, "text": text, "version": _version(r, text)}
            location = r.headers.get("Location", "")
            target = article_path(urljoin(self.base + current, location), self.base)
            if target is None or target == current:  # elsewhere, or to itself on another scheme (a wrong base URL)
                raise FetchError(f"{self.base + current} redirects to {location or 'nowhere'}, not an article of this site",
                                 code="elsewhere")
            if not robots.can_fetch(self.ua, self.base + target):
                return {"disallowed": target}
            if not self._claim(target):
                return {"alias": target}
            current = target
        raise FetchError(f"more than {MAX_HOPS} redirects from {self.base + path}", code="redirects")

    def crawl(self, query: str, max_pages: int = 10, refresh_before: float | None = None) -> dict:
        """One query: walk its search result pages (1..`max_pages`, stopping at the first page with no new
        results) and fetch every article not done before (by any query, any run), articles starting while the
        walk goes on. A path that redirects is recorded as an alias of where it leads, fetched at most once.
        With `refresh_before` (a time), this query's articles checked before it are revisited first (`refresh`);
        its articles whose part was lost are fetched again.
        Returns {query, found, done, fetched, failed: [{path, error, transient}], disallowed, warnings, refreshed, parts}."""
        robots = self.robots()
        refreshed = self.refresh(query, refresh_before) if refresh_before is not None else None
        found: dict[str, None] = {}
        warnings: list[str] = []
        failed: list[dict] = []
        disallowed = 0
        with self._claim_lock:
            self._claimed = self.ledger.keys(SOURCE, "done")
        futures: dict[Future, str] = {}
        lost = []
        for r in self.ledger.items(SOURCE, "pending", tag=query):  # lost with a deleted part: re-made whatever the search says
            if robots.can_fetch(self.ua, self.base + r["key"]) and self._claim(r["key"]):
                lost.append(r["key"])
                futures[self._pool.submit(self._article, r["key"], robots)] = r["key"]

        def warn(msg: str) -> None:
            warnings.append(msg)
            _warn(msg)

        for page in range(1, max_pages + 1):
            url = f"{self.base}/search?query={quote_plus(query)}&page={page}"
            try:
                url, r = follow(self.client, url, lambda u: robots.can_fetch(self.ua, u))
                paths, says_empty = parse_search(r.text, self.base)
            except FetchError as e:
                if e.code == "disallowed":
                    disallowed += 1
                    warn(f"britannica: {e}; query {query!r} skipped")
                    break
                warn(f"britannica: search page {url} failed: {e}")
                failed.append({"path": url, "error": str(e), "transient": transient(e)})
                break
            if not paths:
                if not says_empty:
                    warn(f"britannica: {url} answered 200 but no result link matched "
                         f"{' or '.join(repr(s) for s in RESULT_SELECTORS)} (page structure changed?)")
                break
            new = [p for p in paths if p not in found]
            if not new:  # past the last page some sites repeat it
                break
            for p in new:
                found[p] = None
                if not robots.can_fetch(self.ua, self.base + p):
                    disallowed += 1
                elif self._claim(p):  # not done by any query nor run, nor taken by this one
                    futures[self._pool.submit(self._article, p, robots)] = p

        if self.on_todo:
            self.on_todo(len(futures))
        fetched = 0
        for fut in as_completed(futures):
            path = futures[fut]
            try:
                got = fut.result()
                if "disallowed" in got or "alias" in got:  # a redirect: done with where it leads, not fetched again
                    self._buffer.append((None, {"key": path, "tag": query, "data": got}))
                    disallowed += "disallowed" in got
                    if self.on_article:
                        self.on_article(True)
                    continue
                final, title, text = got["path"], got["title"], got["text"]
                url = self.base + final
                if not text:
                    raise FetchError(f"{url} answered 200 but no paragraph matched "
                                     f"{' nor '.join(repr(s + ' p') for s in BODY_SELECTORS)} (page structure changed?)", code="structure")
            except SourceUnavailable:  # a dead host stops the crawl; what is left stays pending
                raise
            except Exception as e:  # one article never stops the crawl
                error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if getattr(e, "code", None) == "structure":
                    warn(f"britannica: {error}")
                self.ledger.mark_failed(SOURCE, path, error, tag=query)
                failed.append({"path": path, "error": error, "transient": transient(e)})
                if self.on_article:
                    self.on_article(False)
                continue
            doc = {"id": self.doc_id(final), "source": SOURCE, "url": url, "title": title or final.rsplit("/", 1)[-1],
                   "text": text, "fetched_at": datetime.now(timezone.utc)}
            self._buffer.append((doc, {"key": final, "title": doc["title"], "tag": query, "version": got["version"]}))
            if final != path:  # reached through a redirect: the old path is done with it
                self._buffer.append((None, {"key": path, "tag": query, "data": {"alias": final}}))
            fetched += 1
            if self.on_article:
                self.on_article(True)
            if len(self._buffer) >= self.batch_pages:
                self._flush()
        self._flush()
        for p in lost:
            found.setdefault(p, None)
        rows = [self.ledger.get(SOURCE, p) for p in found]
        done = [r for r in rows if r and r["status"] == "done"]
        parts = {r["part"] for r in done if r["part"]}
        for r in done:  # an alias's document lives in its target's part
            target = self.ledger.get(SOURCE, r["data"]["alias"]) if not r["part"] and "alias" in (r["data"] or {}) else None
            if target and target["part"]:
                parts.add(target["part"])
        if refreshed:
            failed = refreshed["failed"] + failed
            fetched += refreshed["refetched"]
        return {"query": query, "found": len(found), "done": len(done), "fetched": fetched, "failed": failed,
                "disallowed": disallowed, "warnings": warnings, "parts": sorted(parts),
                "refreshed": {k: v for k, v in (refreshed or {}).items() if k != "failed"}}


# --- arguments and the Prefect task ----------------------------------------------------------------


def default_out() -> Path:
    from tasks.core.settings import get_settings

    return get_settings().data_dir / "britannica"


def check_scrape_britannica_args(queries: list[str] | None = None, queries_file: str | None = None,
                                 max_pages_per_query: int = 10, out: str | None = None, concurrency: int = 4,
                                 rate_limit: float = 5.0, refresh_after_hours: float | None = 20.0) -> list[str]:
    """Validate before anything runs; return the queries to crawl (given ones, then the file's, de-duplicated;
    the built-in list when neither is given)."""
    from tasks.core.settings import get_settings

    qs = gather_queries(queries, queries_file, DEFAULT_QUERIES)
    if not 1 <= max_pages_per_query <= 1000:
        raise CookError(f"--max-pages-per-query must be between 1 and 1000 (got {max_pages_per_query})")
    check_crawl_args(concurrency, rate_limit, out, ("COOK_BRITANNICA_URL", get_settings().britannica_url), refresh_after_hours)
    return qs


def crawl_query(query: str, max_pages: int, out: str, base_url: str | None = None, concurrency: int = 4,
                rate_limit: float = 5.0, refresh_after_hours: float | None = None, remote: str | None = None,
                **crawler_kw) -> dict:
    """Crawl one query into `out` (see Crawler.crawl; its articles fetched or checked more than
    `refresh_after_hours` ago are revisited first) and record its manifest: complete only when no transient
    failure is left (warnings about structure changes do not count). With `remote`, `out` is kept copied to that
    place on the data store (tasks/core/mirror.py)."""
    with progress(f"britannica: {query}") as bar:
        with Crawler(out, base_url=base_url, concurrency=concurrency, rate_limit=rate_limit,
                     on_article=lambda ok: bar.advance(1), on_todo=bar.set_total, remote=remote, **crawler_kw) as c:
            summary = c.crawl(query, max_pages, refresh_before=refresh_cutoff(refresh_after_hours))
    complete = not any(f.get("transient", True) for f in summary["failed"])
    write_manifest(out, query, {"max_pages": max_pages}, summary, complete)
    return summary


@task(name="crawl-britannica-query", cache_policy=query_cache(("max_pages",), version="2"), **PERSISTED)
def crawl_query_task(query: str, max_pages: int, out: str, base_url: str, concurrency: int = 4,
                     rate_limit: float = 5.0, refresh_after_hours: float | None = 20.0, remote: str | None = None) -> dict:
    """Prefect wrapper of `crawl_query`; cached on (query, max_pages, out, base_url, remote) while its manifest says
    the run left no transient failure, is younger than `refresh_after_hours` and its parts exist (here or on the
    data store)."""
    return crawl_query(query, max_pages, out, base_url=base_url, concurrency=concurrency, rate_limit=rate_limit,
                       refresh_after_hours=refresh_after_hours, remote=remote)
