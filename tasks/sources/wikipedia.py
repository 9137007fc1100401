"""Wikipedia through the MediaWiki Action API: polite fetching, clean text extraction, a resumable crawl.

- `WikiClient`: one host, a descriptive User-Agent, `maxlag=5` on every request, at most `concurrency`
  requests in flight and at most `rate_limit` requests started per second (both never exceeded), timeouts,
  and retries with exponential backoff and jitter that honour Retry-After (429, 503, `maxlag`), and retry
  truncated bodies and hangs.
- `extract_text(html)`: parser output HTML -> plain text (paragraphs, headings, list items; no citation
  markers, infoboxes, navboxes, hatnotes, tables, edit links, figures, math, style, nor the trailing
  See also / Notes / References / Further reading / External links sections), with selectolax.
- `Crawler`: `list=search` seeds, `action=parse` per page (by page id), link following in the main
  namespace breadth-first, page-id dedup across queries and runs through a SQLite ledger
  (`OUT/ledger.sqlite`, see tasks.core.ledger), documents written in atomic parquet parts. A page that fails
  is recorded failed and the crawl goes on; the next run retries it (a dead host, `SourceUnavailable`,
  stops the crawl instead: the pages left stay pending). At start, pages whose part file is gone go back
  to pending and are fetched again. `refresh` re-checks known pages' revision ids, 50 per request
  (`prop=info`), and fetches again only the changed ones, into a new part (newest `fetched_at` wins).
- `fetch_pages(titles, out)`: fetch given titles (e.g. from a dump) through the same machinery.
"""

from __future__ import annotations

import json
import math
import re
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable
from urllib.parse import quote, urlparse

import httpx
import pyarrow as pa
from prefect import task
from selectolax.lexbor import LexborHTMLParser

from model.atomic import clean_stale_temps
from model.errors import CookError, SourceUnavailable
from tasks.core.caching import PERSISTED
from tasks.sources.crawl import CrawlerBase, outer_blocks, check_crawl_args, gather_queries, query_cache, refresh_cutoff, write_manifest
from tasks.corpus.documents import SCHEMA
from tasks.core.http import FetchError, PoliteClient, Retry, retry_after
from tasks.core.ledger import Ledger
from tasks.core.progress import progress

SOURCE = "wikipedia"
LICENSE = "CC BY-SA 4.0"
DOC_SCHEMA = pa.schema(list(SCHEMA) + [pa.field("license", pa.string()), pa.field("revid", pa.int64())])
LEDGER_NAME = "ledger.sqlite"

# The original's topics (typos fixed), plus a few more: breadth over science, history, culture.
DEFAULT_QUERIES = [
    "Antarctica", "World war", "Quantum mechanics", "CRISPR", "Loss function", "Bayesian probability",
    "Photosynthesis", "Roman Empire", "Renaissance", "Industrial Revolution", "Evolution", "General relativity",
    "Thermodynamics", "Plate tectonics", "Climate change", "DNA", "Immune system", "Vaccine",
    "Black hole", "Solar System", "Periodic table", "Linear algebra", "Calculus", "Prime number",
    "Algorithm", "Machine learning", "Neural network", "Information theory", "Computer science", "Internet",
    "Democracy", "Economics", "Philosophy", "Music theory", "Printing press", "Ancient Egypt",
    "Mount Everest", "Amazon rainforest", "Ocean", "Language",
]

# Headings from which on everything is dropped (compared case-insensitively).
STOP_SECTIONS = {"see also", "notes", "references", "further reading", "external links", "notes and references",
                 "footnotes", "citations", "sources", "bibliography", "works cited"}
# Clutter removed before reading the text (real parser output class names).
CLUTTER = ", ".join([
    "sup.reference", "sup.noprint", ".mw-ref", "span.mw-editsection", "style", "script", "link", "meta",
    "table", ".infobox", ".navbox", ".vertical-navbox", ".sidebar", ".hatnote", "[role=note]", "[role=navigation]",
    ".shortdescription", ".ambox", ".metadata", ".noprint", ".mw-empty-elt", "#toc", ".toc",
    "figure", ".thumb", ".thumbcaption", "figcaption", ".gallery", "img",
    ".mwe-math-element", "math", ".mwe-math-fallback-image-inline", ".mwe-math-fallback-image-display",
    "ol.references", ".reflist", ".mw-references-wrap", ".mw-cite-backlink", ".refbegin",
])
BLOCKS = "p, h2, h3, h4, h5, h6, li, dd, dt"
HEADINGS = ("h2", "h3", "h4", "h5", "h6")
RETRY_CODES = {"maxlag", "ratelimited"}  # API errors answered after a wait
MISSING_CODES = {"missingtitle", "nosuchpageid", "invalidtitle"}


class WikiClient(PoliteClient):
    """GET requests to one MediaWiki API endpoint, within the concurrency and rate limits, with retries.

    `get(params)` returns the decoded JSON (API errors other than maxlag/ratelimited included, under
    `error`), or raises FetchError once `retries` are spent.
    """

    def __init__(self, api_url: str | None = None, *, maxlag: int = 5, **kw: Any):
        from tasks.core.settings import get_settings

        super().__init__(**kw)
        self.api_url = api_url or get_settings().wikipedia_api_url
        self.maxlag = maxlag

    def _parse(self, r: httpx.Response) -> dict:
        try:
            data = json.loads(r.content)
        except ValueError:
            raise Retry("truncated or invalid JSON body") from None
        code = (data.get("error") or {}).get("code") if isinstance(data, dict) else None
        if code in RETRY_CODES:
            after = retry_after(r.headers.get("Retry-After"))
            raise Retry(f"API error {code}", self.maxlag if after is None else after)
        return data

    def get(self, params: dict) -> dict:  # type: ignore[override]
        params = {**params, "format": "json", "formatversion": "2", "maxlag": str(self.maxlag)}
        return super().get(self.api_url, params, self._parse)

    def site(self) -> tuple[str, str]:
        """(language code, article URL pattern with `$1`) from siteinfo; derived from the API URL if that fails."""
        u = urlparse(self.api_url)
        host = u.hostname or ""
        first = host.split(".")[0]
        lang = first if host.count(".") >= 2 and re.fullmatch(r"[a-z][a-z-]{1,11}", first) else "en"
        pattern = f"https://{u.netloc}/wiki/$1" if u.scheme == "https" or host.count(".") >= 2 else f"{u.scheme}://{u.netloc}/wiki/$1"
        try:
            g = self.get({"action": "query", "meta": "siteinfo", "siprop": "general"})["query"]["general"]
            server = g["server"]
            server = "https:" + server if server.startswith("//") else server
            return g.get("lang") or lang, server + g.get("articlepath", "/wiki/$1")
        except (FetchError, KeyError, TypeError):
            return lang, pattern


# --- extraction ------------------------------------------------------------------------------------


def _clean(text: str) -> str:
    return " ".join(text.split())


def _cut_trailing_sections(root) -> None:
    """Drop the first stop heading (See also, References, ...) and everything after it, in both heading shapes:
    `<h2><span class="mw-headline">…</span></h2>` and `<div class="mw-heading"><h2>…</h2></div>`."""
    for h in root.css(", ".join(HEADINGS)):
        if _clean(h.text()).lower() not in STOP_SECTIONS:
            continue
        node = h
        parent = h.parent
        if parent is not None and "mw-heading" in (parent.attributes.get("class") or ""):
            node = parent
        start = node
        while node is not None and node.mem_id != root.mem_id:
            sib = node.next
            while sib is not None:
                nxt = sib.next
                sib.decompose()
                sib = nxt
            node = node.parent
        start.decompose()
        return


def extract_text(html: str) -> str:
    """Parser output HTML -> plain text: paragraphs, headings and list items, one block per paragraph
    (blank line between), whitespace collapsed; clutter and the trailing sections dropped."""
    tree = LexborHTMLParser(html)
    root = tree.css_first("div.mw-parser-output") or tree.body
    if root is None:
        return ""
    for node in root.css(CLUTTER):
        node.decompose()
    _cut_trailing_sections(root)
    blocks: list[str] = []
    for node in outer_blocks(root, BLOCKS, ("p", "li", "dd", "dt", *HEADINGS)):
        text = _clean(node.text(deep=True))
        if text:
            blocks.append(text)
    return "\n\n".join(blocks)


# --- API calls -------------------------------------------------------------------------------------


def search(client: WikiClient, query: str, limit: int) -> list[tuple[int, str]]:
    """Main-namespace search hits for `query`, up to `limit`, following `continue`: [(pageid, title)]."""
    hits: list[tuple[int, str]] = []
    cont: dict = {}
    while len(hits) < limit:
        data = client.get({"action": "query", "list": "search", "srsearch": query, "srnamespace": "0",
                           "srlimit": str(min(50, limit - len(hits))), "srprop": "", **cont})
        if "error" in data:
            raise FetchError(f"search {query!r}: {data['error'].get('code')}: {data['error'].get('info')}", data["error"].get("code"))
        batch = (data.get("query") or {}).get("search") or []
        hits += [(int(h["pageid"]), h["title"]) for h in batch if h.get("ns", 0) == 0 and "pageid" in h]
        cont = data.get("continue") or {}
        if not cont or not batch:
            break
    return hits[:limit]


def resolve_titles(client: WikiClient, titles: list[str]) -> list[tuple[int, str]]:
    """Titles -> existing main-namespace pages [(pageid, title)], redirects followed, in first-seen order, unique."""
    out: list[tuple[int, str]] = []
    seen: set[int] = set()
    for i in range(0, len(titles), 50):
        data = client.get({"action": "query", "titles": "|".join(titles[i : i + 50]), "redirects": "1"})
        if "error" in data:
            raise FetchError(f"title lookup: {data['error'].get('code')}: {data['error'].get('info')}", data["error"].get("code"))
        q = data.get("query") or {}
        by_title = {p["title"]: p for p in q.get("pages") or [] if "pageid" in p and not p.get("missing") and p.get("ns") == 0}
        step = {d["from"]: d["to"] for d in (q.get("normalized") or []) + (q.get("redirects") or [])}
        for t in titles[i : i + 50]:
            for _ in range(4):  # title -> normalized -> redirect target
                if t in by_title or t not in step:
                    break
                t = step[t]
            p = by_title.get(t)
            if p is not None and p["pageid"] not in seen:
                seen.add(p["pageid"])
                out.append((int(p["pageid"]), p["title"]))
    return out


def fetch_page(client: WikiClient, pageid: int | None = None, title: str | None = None) -> dict:
    """One page by id (or title): {pageid, revid, title, html, links (main-namespace titles that exist)}.

    Raises FetchError (code `missingtitle`/`nosuchpageid` for a page that is gone)."""
    params = {"action": "parse", "prop": "text|links|revid", "redirects": "1",
              "disablelimitreport": "1", "disableeditsection": "1", "disabletoc": "1"}
    params.update({"pageid": str(pageid)} if pageid is not None else {"page": str(title)})
    data = client.get(params)
    if "error" in data:
        err = data["error"]
        raise FetchError(f"{err.get('code')}: {err.get('info', '')}".strip(), err.get("code"))
    p = data["parse"]
    text = p["text"] if isinstance(p["text"], str) else p["text"]["*"]  # formatversion 2 / 1
    links = [link["title"] for link in p.get("links") or [] if link.get("ns") == 0 and link.get("exists", True)]
    return {"pageid": int(p["pageid"]), "revid": int(p.get("revid") or 0), "title": p["title"], "html": text, "links": links}


# --- the crawl -------------------------------------------------------------------------------------


def seeds_for(quota: int, depth: int) -> int:
    """Search hits to seed a query with: the budget split evenly between the seeds and each level of links."""
    return max(1, math.ceil(quota / (depth + 1)))


class Crawler(CrawlerBase):
    """A crawl into one output folder: its ledger, its client, its parquet parts. Use as a context manager."""

    def __init__(self, out: str | Path, *, api_url: str | None = None, concurrency: int = 4, rate_limit: float = 10.0,
                 timeout: float = 30.0, retries: int = 6, backoff: float = 0.5, batch_pages: int = 16,
                 on_page: Callable[[bool], None] | None = None, remote: str | None = None):
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(self.out)
        self._start_mirror(self.out, remote)  # `remote`: the folder's copy on the data store
        self.client = WikiClient(api_url, concurrency=concurrency, rate_limit=rate_limit, timeout=timeout,
                                 retries=retries, backoff=backoff)
        self.lang, self._pattern = self.client.site()
        self.source = f"{SOURCE}:{self.lang}"
        self.ledger = Ledger(self.out / LEDGER_NAME)
        self.batch_pages = batch_pages
        self.on_page = on_page
        # more workers than request slots: while some parse HTML, the client's semaphore keeps `concurrency` requests in flight
        self._pool = ThreadPoolExecutor(max_workers=2 * concurrency, thread_name_prefix="wikipedia")
        self._buffer: list[tuple[dict, dict]] = []
        self.recovered = self._reconcile()

    def doc_id(self, pageid: int) -> str:
        return f"{SOURCE}:{self.lang}:{pageid}"

    def url(self, title: str) -> str:
        return self._pattern.replace("$1", quote(title.replace(" ", "_"), safe=";@$!*(),/~:"))

    def _reconcile(self) -> int:
        """Pages staged before a crash: done if a part file holds them, else back to pending. Done pages whose
        part is gone (deleted by hand) go back to pending too (`self.released`), and done pages recorded before
        revision ids were kept get theirs from their part."""
        prefix = f"{SOURCE}:{self.lang}:"
        recovered = self.ledger.recover(self.source, self.out, lambda i: i[len(prefix):] if i.startswith(prefix) else None)
        self.released = self.ledger.release_missing(self.source, self.out, self._part_exists)
        self._backfill_versions(prefix)
        return recovered

    def _backfill_versions(self, prefix: str) -> None:
        import pyarrow.parquet as pq

        by_part: dict[str, set[str]] = {}
        for key, part in self.ledger.unversioned(self.source):
            if not (self.out / part).is_file():
                continue  # on the data store only: not downloaded for this
            by_part.setdefault(part, set()).add(key)
        found: dict[str, str] = {}
        for part, keys in by_part.items():
            t = pq.read_table(self.out / part, columns=["id", "revid"]).to_pylist()
            found.update({d["id"][len(prefix):]: str(d["revid"]) for d in t
                          if d["id"].startswith(prefix) and d["id"][len(prefix):] in keys and d["revid"]})
        if found:
            self.ledger.set_versions(self.source, found)

    # --- fetching ----------------------------------------------------------------------------------

    def _flush(self) -> None:
        """Write the buffered pages: one atomic part, recorded in the ledger crash-safely."""
        if self._buffer:
            self._write_batch(self.source, f"{SOURCE}-{self.lang}", self._buffer, DOC_SCHEMA)
            self._buffer = []

    def _one(self, pageid: int, title: str) -> dict:
        page = fetch_page(self.client, pageid=pageid)
        page["text"] = extract_text(page.pop("html"))
        return page

    def fetch(self, pages: list[tuple[int, str]], tag: str, budget: int | None = None) -> tuple[dict[int, list[str]], list[dict]]:
        """Fetch `pages` (ids not done yet), at most `budget` successes, failures replaced by the next ones.

        Returns ({pageid: links} of the pages written, [failures {pageid, title, error}])."""
        done: dict[int, list[str]] = {}
        failed: list[dict] = []
        todo = list(pages)
        while todo and (budget is None or len(done) < budget):
            take = len(todo) if budget is None else budget - len(done)
            chunk, todo = todo[:take], todo[take:]
            futures = {self._pool.submit(self._one, pid, title): (pid, title) for pid, title in chunk}
            for fut in as_completed(futures):
                pid, title = futures[fut]
                try:
                    page = fut.result()
                except SourceUnavailable:  # a dead host stops the crawl; pages not fetched stay pending
                    raise
                except Exception as e:  # one page never stops the crawl
                    error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    self.ledger.mark_failed(self.source, pid, error, title=title, tag=tag)
                    # a page that is gone stays gone: reported, but nothing a later run can fix
                    failed.append({"pageid": pid, "title": title, "error": error,
                                   "transient": getattr(e, "code", None) not in MISSING_CODES})
                    if self.on_page:
                        self.on_page(False)
                    continue
                doc = {"id": self.doc_id(page["pageid"]), "source": SOURCE, "url": self.url(page["title"]), "title": page["title"],
                       "text": page["text"], "fetched_at": datetime.now(timezone.utc), "license": LICENSE, "revid": page["revid"]}
                self._buffer.append((doc, {"key": pid, "title": page["title"], "tag": tag, "data": {"links": page["links"]},
                                           "version": str(page["revid"])}))
                done[pid] = page["links"]
                if self.on_page:
                    self.on_page(True)
                if len(self._buffer) >= self.batch_pages:
                    self._flush()
        self._flush()
        return done, failed

    def refresh(self, tag: str | None, checked_before: float) -> dict:
        """Re-check the done pages of `tag` (None: every tag) last fetched or checked before `checked_before`: their
        current revision ids, 50 pages per request (`prop=info`), then fetch again only the changed ones (each
        into a new part; the ledger points to it). Returns {checked, changed, refetched, gone, failed}."""
        due = self.ledger.due(self.source, tag, checked_before)
        changed: list[tuple[int, str]] = []
        gone = 0
        for i in range(0, len(due), 50):
            batch = due[i : i + 50]
            data = self.client.get({"action": "query", "prop": "info", "pageids": "|".join(r["key"] for r in batch)})
            if "error" in data:
                raise FetchError(f"revision check: {data['error'].get('code')}: {data['error'].get('info')}", data["error"].get("code"))
            now = {str(p["pageid"]): p for p in (data.get("query") or {}).get("pages") or [] if "pageid" in p}
            same = []
            for r in batch:
                p = now.get(r["key"])
                if p is None or p.get("missing") or "lastrevid" not in p:
                    gone += 1  # deleted since: its document stays, nothing to fetch
                elif str(p["lastrevid"]) != r["version"]:
                    changed.append((int(r["key"]), p.get("title") or r["title"]))
                else:
                    same.append(r["key"])
            self.ledger.touch(self.source, same)
        new, failed = self.fetch(changed, tag or "refresh") if changed else ({}, [])
        return {"checked": len(due), "changed": len(changed), "refetched": len(new), "gone": gone, "failed": failed}

    def crawl(self, query: str, quota: int, depth: int = 1, search_limit: int | None = None,
              refresh_before: float | None = None) -> dict:
        """Crawl one query: search seeds, then main-namespace links breadth-first to `depth`, until `quota`
        pages carry this query's tag. Pages done before (by any query, any run) are not fetched again;
        their links come from the ledger, so the walk goes on through them and a resumed crawl walks the same way.

        First, with `refresh_before` (a time), every known page checked before it is refreshed (see `refresh`;
        all of them, not only this query's, so the walk below follows today's links whoever fetched a page; the
        next query finds them checked), and this query's pages whose part was lost, or that failed last time (for
        a reason other than being gone), are fetched again, whatever the budget: they were chosen within it."""
        refreshed = self.refresh(None, refresh_before) if refresh_before is not None else None
        fetched, failures = (refreshed["refetched"], list(refreshed["failed"])) if refreshed else (0, [])
        lost = [(int(r["key"]), r["title"] or "") for r in self.ledger.items(self.source, "pending", tag=query)]
        lost += [(int(r["key"]), r["title"] or "") for r in self.ledger.items(self.source, "failed", tag=query)
                 if (r["error"] or "").split(":")[0] not in MISSING_CODES]
        if lost:  # lost with a deleted part, staged at a crash and never written, or failed last time: first
            new, failed = self.fetch(lost, query)
            fetched += len(new)
            failures += failed
        before = self.ledger.counts(self.source, tag=query)["done"]
        budget = quota - before
        if budget > 0:
            level = search(self.client, query, search_limit or seeds_for(quota, depth))
            seen_ids = {pid for pid, _ in level}
            seen_titles: set[str] = {t for _, t in level}
            for d in range(depth + 1):
                done_keys = self.ledger.keys(self.source, "done")
                links: dict[int, list[str]] = {}
                todo = []
                for pid, title in level:
                    if str(pid) in done_keys:
                        row = self.ledger.get(self.source, pid)
                        if row and row["data"]:  # walk on through it, from the ledger, without fetching it again
                            links[pid] = row["data"].get("links") or []
                    else:
                        todo.append((pid, title))
                new, failed = self.fetch(todo, query, budget)
                links.update(new)
                fetched += len(new)
                budget -= len(new)
                failures += failed
                if d == depth or budget <= 0:
                    break
                titles = []
                for pid, _ in level:
                    for t in links.get(pid, ()):
                        if t not in seen_titles:
                            seen_titles.add(t)
                            titles.append(t)
                level = [(pid, t) for pid, t in resolve_titles(self.client, titles) if pid not in seen_ids]
                seen_ids.update(pid for pid, _ in level)
                if not level:
                    break
        counts = self.ledger.counts(self.source, tag=query)
        return {"query": query, "quota": quota, "done": counts["done"], "fetched": fetched, "before": before,
                "failed": failures, "refreshed": {k: v for k, v in (refreshed or {}).items() if k != "failed"},
                "parts": sorted({r["part"] for r in self.ledger.items(self.source, "done", tag=query) if r["part"]})}

    def fetch_titles(self, titles: Iterable[str], tag: str = "fetch", chunk: int = 500, refresh_before: float | None = None) -> dict:
        """Fetch the pages named by `titles` (redirects followed), skipping those done; streams in chunks. With
        `refresh_before`, done pages of `tag` checked before it are refreshed first (see `refresh`)."""
        refreshed = self.refresh(tag, refresh_before) if refresh_before is not None else None
        fetched, failures, skipped = 0, list(refreshed["failed"]) if refreshed else [], 0
        batch: list[str] = []
        if refreshed:
            fetched += refreshed["refetched"]

        def run(ts: list[str]) -> None:
            nonlocal fetched, skipped
            done_keys = self.ledger.keys(self.source, "done")
            pages = resolve_titles(self.client, ts)
            todo = [(pid, t) for pid, t in pages if str(pid) not in done_keys]
            skipped += len(pages) - len(todo)
            new, failed = self.fetch(todo, tag)
            fetched += len(new)
            failures.extend(failed)

        for t in titles:
            batch.append(t)
            if len(batch) >= chunk:
                run(batch)
                batch = []
        if batch:
            run(batch)
        return {"fetched": fetched, "skipped_done": skipped, "failed": failures}


def fetch_pages(titles: Iterable[str], out: str | Path, *, api_url: str | None = None, concurrency: int = 4,
                rate_limit: float = 10.0, tag: str = "fetch", refresh_after_hours: float | None = None,
                remote: str | None = None) -> dict:
    """Fetch the Wikipedia pages named by `titles` into document parts under `out` (ledger-resumable, polite;
    pages whose part is gone are fetched again; with `refresh_after_hours`, pages fetched or checked longer ago
    are re-checked and fetched again if changed; `remote`: the folder's copy on the data store, kept in step).

    Returns {fetched, skipped_done, failed: [{pageid, title, error, transient}], out}. Raises SourceUnavailable
    for a dead host."""
    with Crawler(out, api_url=api_url, concurrency=concurrency, rate_limit=rate_limit, remote=remote) as c:
        summary = c.fetch_titles(titles, tag=tag, refresh_before=refresh_cutoff(refresh_after_hours))
    return {**summary, "out": str(Path(out))}


# --- arguments and the Prefect task ----------------------------------------------------------------


def default_out() -> Path:
    from tasks.core.settings import get_settings

    return get_settings().data_dir / "wikipedia"


def check_scrape_wikipedia_args(queries: list[str] | None = None, queries_file: str | None = None, extra_urls: bool = True,
                                max_pages: int = 500, depth: int = 1, out: str | None = None, concurrency: int = 4,
                                rate_limit: float = 10.0, refresh_after_hours: float | None = 20.0) -> list[str]:
    """Validate before anything runs; return the queries to crawl (given ones, then the file's, de-duplicated;
    the built-in list when neither is given)."""
    from tasks.core.settings import get_settings

    qs = gather_queries(queries, queries_file, DEFAULT_QUERIES)
    if max_pages < 1:
        raise CookError(f"--max-pages must be at least 1 (got {max_pages})")
    if depth < 0:
        raise CookError(f"--depth must be 0 or more (got {depth})")
    check_crawl_args(concurrency, rate_limit, out, ("COOK_WIKIPEDIA_API_URL", get_settings().wikipedia_api_url), refresh_after_hours)
    return qs


def crawl_query(query: str, quota: int, depth: int, out: str, api_url: str | None = None, concurrency: int = 4,
                rate_limit: float = 10.0, search_limit: int | None = None, refresh_after_hours: float | None = None,
                remote: str | None = None, **crawler_kw) -> dict:
    """Crawl one query into `out` (see Crawler.crawl; its pages fetched or checked more than `refresh_after_hours`
    ago are re-checked first) and record its manifest: complete only when no transient failure is left. With
    `remote`, `out` is kept copied to that place on the data store (tasks/core/mirror.py)."""
    with progress(f"wikipedia: {query}", total=max(quota, 1)) as bar:
        with Crawler(out, api_url=api_url, concurrency=concurrency, rate_limit=rate_limit,
                     on_page=lambda ok: bar.advance(1) if ok else None, remote=remote, **crawler_kw) as c:
            bar.update(c.ledger.counts(c.source, tag=query)["done"])
            summary = c.crawl(query, quota, depth, search_limit, refresh_before=refresh_cutoff(refresh_after_hours))
            summary["parts"] = sorted({r["part"] for r in c.ledger.items(c.source, "done", tag=query) if r["part"]})
    complete = not any(f.get("transient", True) for f in summary["failed"])
    write_manifest(out, query, {"quota": quota, "depth": depth}, summary, complete)
    return summary


@task(name="crawl-query", cache_policy=query_cache(("quota", "depth"), version="2"), **PERSISTED)
def crawl_query_task(query: str, quota: int, depth: int, max_pages: int, out: str, api_url: str,
                     concurrency: int = 4, rate_limit: float = 10.0, refresh_after_hours: float | None = 20.0,
                     remote: str | None = None) -> dict:
    """Prefect wrapper of `crawl_query`; cached on (query, quota, depth, max_pages, out, api_url, remote) while its
    manifest says the run left no transient failure, is younger than `refresh_after_hours` and its parts exist
    (here or on the data store)."""
    return crawl_query(query, quota, depth, out, api_url=api_url, concurrency=concurrency, rate_limit=rate_limit,
                       refresh_after_hours=refresh_after_hours, remote=remote)
