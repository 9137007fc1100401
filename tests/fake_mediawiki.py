"""A loopback stand-in for the MediaWiki Action API (`/w/api.php`), with real response shapes, real clutter and faults.

Serves a generated wiki of `n_pages` articles (formatversion=2 JSON):

- `action=query&list=search` (srsearch matched against titles, `srlimit` capped at `SEARCH_CAP` so the
  client must follow `continue.sroffset`), `action=query&titles=...&redirects=1` (normalized, redirects,
  missing), `action=query&meta=siteinfo`.
- `action=parse` by `pageid` or `page` (prop=text|links|revid): the HTML copies the shapes of real parser
  output (infobox, hatnote, `sup.reference`, math with MathML + TeX + fallback image, figures and thumbs,
  wikitables, navboxes, edit links, old `h2 > span.mw-headline` and new `div.mw-heading` headings, a
  reference list and the See also / Notes / References / External links sections). Every clutter element
  carries the marker `zqx`; the clean body text of each page is known (`FakeWiki.body_text(pageid)`).
- Links: main-namespace articles, redirects, red links and other namespaces (File:, Talk:, Category:, Special:).
- Faults (`faults` counts per kind, drawn with probability `fault_rate` per request, at most `per_key_cap`
  per request target so retries win): 429 and maxlag with Retry-After, 503, truncated bodies (cut short
  with the full Content-Length, or a clean cut of the JSON) and hangs (sleep `hang_s`, past the client's
  timeout). `fail_always` holds page ids answered 503 every time (with `Retry-After: fail_retry_after` if set). `latency_s` delays every answer.
- `action=query&prop=info&pageids=A|B` (up to 50): `lastrevid` per page, `missing` for a deleted one.
  `FakeWiki.edit(pageid, add_links=...)` changes a page between runs (new revid, new text, new links);
  `FakeWiki.add_page(title)` adds one.
- Counters: `parse_counts[pageid]` (complete parse answers sent), `parse_requests[pageid]` (faults included),
  `info_requests` (`prop=info` requests), `arrivals` (monotonic times), `fault_times` ([(monotonic time a
  429/maxlag answer with Retry-After was sent, kind)]), `max_in_flight` (requests being answered at
  once; a hung request leaves the count when it starts hanging, as the client has given up on it).
"""

from __future__ import annotations

import html
import json
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlparse

SEARCH_CAP = 4  # results per search answer: forces `continue`
WORDS = ("river mountain theory energy quantum field protein gene island empire war treaty climate ocean ice "
         "probability loss function neural network language city music art physics chemistry history culture "
         "naïve café Ångström Zürich 東京 données élan façade señor 1848 2.5 42 mean variance").split()
TOPICS = ("Alpha", "Beta", "Gamma", "Delta", "Epsilon")
MARK = "zqx"  # in every clutter element, never in body text


@dataclass
class Page:
    pageid: int
    title: str
    revid: int
    links: list[int]  # pageids linked from the body (ns 0)
    blocks: list[str] = field(default_factory=list)  # the clean text, block by block
    html: str = ""
    redirect: str | None = None  # a redirect title pointing here


def _sentence(rng: random.Random, n: int) -> list[str]:
    """n random words, with stop words around every third as in prose (merge's Gopher quality rules want them)."""
    out: list[str] = []
    for i in range(n):
        w = rng.choice(WORDS)
        out += ["the", w, "of"] if i % 3 == 0 else [w]
    return out


class FakeWiki:
    """The generated wiki: pages, their HTML, link graph and clean text (deterministic by seed)."""

    def __init__(self, n_pages: int = 40, seed: int = 0, links_per_page: int = 3, missing: int = 1):
        rng = random.Random(seed)
        self.pages: dict[int, Page] = {}
        self.by_title: dict[str, int] = {}
        self.redirects: dict[str, str] = {}  # redirect title -> target title
        ids = [1000 + 7 * i for i in range(n_pages)]
        for k, pid in enumerate(ids):
            title = f"{TOPICS[k % len(TOPICS)]} {rng.choice(['river', 'theory', 'café', 'Ångström', 'war (1848)', 'field'])} {k}"
            self.pages[pid] = Page(pid, title, 50_000 + pid * 3, [])
            self.by_title[title] = pid
        for k, pid in enumerate(ids):  # mostly forward links, so depth matters
            later = ids[k + 1 : k + 1 + 3 * links_per_page] or ids[:1]
            self.pages[pid].links = rng.sample(later, min(links_per_page, len(later)))
            if k % 5 == 2:
                r = f"{self.pages[pid].title} (redirect)"
                self.pages[pid].redirect = r
                self.redirects[r] = self.pages[pid].title
        # pages the search index still lists but which were deleted: parse answers nosuchpageid
        self.deleted = {9_000_000 + i: f"{TOPICS[i % len(TOPICS)]} deleted {i}" for i in range(missing)}
        for pid in ids:
            self._render(self.pages[pid], rng, new_headings=pid % 2 == 0)

    # --- content -----------------------------------------------------------------------------------

    def _a(self, title: str, label: str | None = None, red: bool = False) -> str:
        href = "/wiki/" + quote(title.replace(" ", "_"), safe=";@$!*(),/~:")
        if red:
            return f'<a href="/w/index.php?title={quote(title)}&amp;action=edit&amp;redlink=1" class="new" title="{html.escape(title)} (page does not exist)">{html.escape(label or title)}</a>'
        return f'<a href="{href}" title="{html.escape(title)}">{html.escape(label or title)}</a>'

    def _heading(self, text: str, level: int, new: bool, sec: int, title: str) -> str:
        edit = (f'<span class="mw-editsection"><span class="mw-editsection-bracket">[</span><a href="/w/index.php?title='
                f'{quote(title)}&amp;action=edit&amp;section={sec}" title="Edit section: {html.escape(text)}"><span>edit</span>'
                f'</a><span class="mw-editsection-bracket">]</span></span>')
        anchor = text.replace(" ", "_")
        if new:
            return f'<div class="mw-heading mw-heading{level}"><h{level} id="{anchor}">{html.escape(text)}</h{level}>{edit}</div>\n'
        return f'<h{level}><span class="mw-headline" id="{anchor}">{html.escape(text)}</span>{edit}</h{level}>\n'

    @staticmethod
    def _math(display: bool) -> str:
        tex = r"{\displaystyle zqxtex=mc^{2}}"
        kind = "display" if display else "inline"
        return (f'<span class="mwe-math-element"><span class="mwe-math-mathml-{kind} mwe-math-mathml-a11y" style="display: none;">'
                f'<math xmlns="http://www.w3.org/1998/Math/MathML" alttext="{tex}"><semantics><mrow class="MJX-TeXAtom-ORD">'
                f'<mstyle displaystyle="true" scriptlevel="0"><mi>zqxmi</mi><mo>=</mo><mi>m</mi><msup><mi>c</mi><mrow class="MJX-TeXAtom-ORD">'
                f'<mn>2</mn></mrow></msup></mstyle></mrow><annotation encoding="application/x-tex">{tex}</annotation></semantics></math></span>'
                f'<img src="https://wikimedia.org/api/rest_v1/media/math/render/svg/6b9ed1c8" class="mwe-math-fallback-image-{kind} mw-invert skin-invert" '
                f'aria-hidden="true" style="vertical-align: -0.338ex; width:9.025ex; height:2.676ex;" alt="zqxalt E=mc^2"></span>')

    def _render(self, page: Page, rng: random.Random, new_headings: bool) -> None:
        t = page.title
        out: list[str] = ['<div class="mw-content-ltr mw-parser-output" lang="en" dir="ltr">']
        out.append(f'<div class="shortdescription nomobile noexcerpt noprint searchaux" style="display:none">zqxshort {html.escape(t)}</div>\n')
        out.append(f'<div role="note" class="hatnote navigation-not-searchable">"zqxhatnote {html.escape(t)}" redirects here. For other uses, see '
                   f'{self._a(t + " (disambiguation)")}.</div>\n')
        out.append('<style data-mw-deduplicate="TemplateStyles:r1129693374">.mw-parser-output .infobox-subbox{padding:0;border:none;margin:-3px;width:auto;min-width:100%;font-size:100%;clear:none;float:none;background-color:transparent}/* zqxstyle */</style>')
        out.append(f'<table class="infobox vcard"><tbody><tr><th colspan="2" class="infobox-above fn">zqxinfobox {html.escape(t)}</th></tr>'
                   f'<tr><th scope="row" class="infobox-label">Founded</th><td class="infobox-data">zqxinfobox 1848<sup id="cite_ref-2" class="reference"><a href="#cite_note-2">&#91;2&#93;</a></sup></td></tr></tbody></table>\n')
        out.append('<p class="mw-empty-elt">\n</p>\n')
        links = [self.pages[i] for i in page.links]
        ref = 0

        def para(n_sent: int, with_links: bool = False, with_math: bool = False) -> None:
            nonlocal ref
            html_parts, text_parts = [], []
            for s in range(n_sent):
                words = _sentence(rng, rng.randint(6, 14))
                h = html.escape(" ".join(words))
                tx = " ".join(words)
                if with_links and s < len(links):
                    target = links[s]
                    use_redirect = target.redirect is not None and s % 2 == 0
                    label = " ".join(_sentence(rng, 2))
                    h += " " + self._a(target.redirect if use_redirect else target.title, label)
                    tx += " " + label
                if with_math and s == 0:
                    h += " where " + self._math(False) + " holds"
                    tx += " where holds"
                ref += 1
                h += f'.<sup id="cite_ref-{ref}" class="reference"><a href="#cite_note-{ref}"><span class="cite-bracket">&#91;</span>{ref}<span class="cite-bracket">&#93;</span></a></sup>'
                tx += "."
                html_parts.append(h)
                text_parts.append(tx)
            out.append("<p>" + " ".join(html_parts) + "\n</p>\n")
            page.blocks.append(" ".join(text_parts))

        lead = f"<b>{html.escape(t)}</b> is"
        out.append(f"<p>{lead} a topic.</p>\n")
        page.blocks.append(f"{t} is a topic.")
        para(3, with_links=True, with_math=True)
        out.append('<meta property="mw:PageProp/toc" />\n')
        for sec, name in enumerate(["History", "Theory and practice", "Legacy"], start=1):
            out.append(self._heading(name, 2, new_headings, sec, t))
            page.blocks.append(name)
            if sec == 1:
                out.append(f'<figure class="mw-default-size" typeof="mw:File/Thumb"><a href="/wiki/File:Map_{page.pageid}.png" class="mw-file-description">'
                           f'<img src="//upload.wikimedia.org/map.png" decoding="async" width="250" height="180" class="mw-file-element" /></a>'
                           f'<figcaption>zqxfigcaption of {html.escape(t)}</figcaption></figure>\n')
            if sec == 2:
                out.append('<div class="thumb tright"><div class="thumbinner" style="width:222px;"><a href="/wiki/File:X.jpg" class="image">'
                           '<img alt="" src="//upload.wikimedia.org/x.jpg" width="220" height="165" class="thumbimage" /></a>'
                           '<div class="thumbcaption"><div class="magnify"><a href="/wiki/File:X.jpg" class="internal" title="Enlarge"></a></div>zqxthumbcaption words</div></div></div>\n')
                out.append('<dl><dd>' + self._math(True) + '</dd></dl>\n')
            para(2, with_links=sec == 3)
            if sec == 2:
                sub = "Subtopic"
                out.append(self._heading(sub, 3, new_headings, 9, t))
                page.blocks.append(sub)
                items = [" ".join(_sentence(rng, 4)) for _ in range(3)]
                nested = " ".join(_sentence(rng, 3))
                out.append("<ul><li>" + html.escape(items[0]) + "</li><li>" + html.escape(items[1])
                           + "\n<ul><li>" + html.escape(nested) + "</li></ul></li><li>" + html.escape(items[2])
                           + '<sup id="cite_ref-x" class="reference"><a href="#cite_note-x">&#91;a&#93;</a></sup></li></ul>\n')
                page.blocks += [items[0], items[1], nested, items[2]]
                out.append('<table class="wikitable sortable"><tbody><tr><th>zqxtable head</th><th>Value</th></tr><tr><td>zqxtable cell</td><td>42</td></tr></tbody></table>\n')
                para(1)
        # the trailing sections, all dropped
        out.append(self._heading("See also", 2, new_headings, 10, t))
        out.append('<div class="div-col" style="column-width: 22em;"><ul><li>' + self._a("Alpha river 0", "zqxseealso") + "</li><li>"
                   + self._a(t + " in culture", "zqxseealso culture", red=True) + "</li></ul></div>\n")
        out.append(self._heading("Notes", 2, new_headings, 11, t))
        out.append('<div class="reflist reflist-lower-alpha"><div class="mw-references-wrap"><ol class="references"><li id="cite_note-x">'
                   '<span class="mw-cite-backlink"><b><a href="#cite_ref-x">^</a></b></span> <span class="reference-text">zqxnote text</span></li></ol></div></div>\n')
        out.append(self._heading("References", 2, new_headings, 12, t))
        refs = "".join(f'<li id="cite_note-{i}"><span class="mw-cite-backlink"><b><a href="#cite_ref-{i}">^</a></b></span> '
                       f'<span class="reference-text"><cite class="citation book cs1">zqxcite {i}. <i>Book</i>.</cite></span></li>' for i in range(1, ref + 1))
        out.append(f'<div class="reflist"><div class="mw-references-wrap mw-references-columns"><ol class="references">{refs}</ol></div></div>\n')
        out.append("<p>zqxafterrefs paragraph in the references section</p>\n")
        out.append(self._heading("External links", 2, new_headings, 13, t))
        out.append('<ul><li><a rel="nofollow" class="external text" href="https://example.org">zqxexternal site</a></li></ul>\n')
        out.append('<div role="navigation" class="navbox" aria-labelledby="Nav" style="padding:3px"><table class="nowraplinks hlist navbox-inner">'
                   '<tbody><tr><th scope="col" class="navbox-title" colspan="2"><div id="Nav">zqxnavbox title</div></th></tr>'
                   '<tr><td class="navbox-list"><ul><li>zqxnavbox item</li></ul></td></tr></tbody></table></div>\n')
        out.append("<!-- \nNewPP limit report\nParsed by mw-api-ext\nCPU time usage: 0.5 seconds zqxcomment\n-->\n</div>")
        page.html = "".join(out)

    def body_text(self, pageid: int) -> str:
        return "\n\n".join(self.pages[pageid].blocks)

    def edit(self, pageid: int, add_links: list[int] = ()) -> None:
        """An edit: a new revision id and new text (deterministic), plus links to `add_links`."""
        page = self.pages[pageid]
        page.revid += 1
        page.links = page.links + [i for i in add_links if i not in page.links]
        page.blocks = []
        self._render(page, random.Random(page.revid), new_headings=pageid % 2 == 0)

    def add_page(self, title: str, links: list[int] = ()) -> int:
        """A new article (found by search for words of its title); returns its page id."""
        pid = max(self.pages) + 7
        page = Page(pid, title, 50_000 + pid * 3, list(links))
        self.pages[pid] = page
        self.by_title[title] = pid
        self._render(page, random.Random(pid), new_headings=pid % 2 == 0)
        return pid

    def links_of(self, page: Page) -> list[dict]:
        """The parse API's `links` list: ns 0 targets (some by redirect title), red links, other namespaces."""
        links = []
        for i in page.links:
            target = self.pages[i]
            links.append({"ns": 0, "title": target.redirect or target.title, "exists": True})
            links.append({"ns": 0, "title": target.title, "exists": True})
        links += [{"ns": 0, "title": page.title + " in culture", "exists": False},
                  {"ns": 0, "title": "Alpha river 0", "exists": False},
                  {"ns": 6, "title": f"File:Map {page.pageid}.png", "exists": True},
                  {"ns": 1, "title": "Talk:" + page.title, "exists": True},
                  {"ns": 14, "title": "Category:Things", "exists": True},
                  {"ns": -1, "title": "Special:BookSources", "exists": True},
                  {"ns": 4, "title": "Wikipedia:Citation needed", "exists": True}]
        return links

    def search(self, query: str) -> list[tuple[int, str]]:
        q = query.lower()
        hits = [(p.pageid, p.title) for p in self.pages.values() if q in p.title.lower()]
        hits += [(pid, t) for pid, t in self.deleted.items() if q in t.lower()]
        return sorted(hits)

    def expected_crawl(self, queries: list[str], depth: int, search_limit: int, dead: frozenset[int] = frozenset()) -> set[int]:
        """Page ids a complete crawl collects: search hits (up to `search_limit` each) and ns-0 links to `depth`;
        pages in `dead` (failing) are neither collected nor followed."""
        found: set[int] = set()
        for q in queries:
            level = [pid for pid, _ in self.search(q)[:search_limit] if pid in self.pages]
            seen = set(level)
            for d in range(depth + 1):
                level = [pid for pid in level if pid not in dead]
                found.update(level)
                if d == depth:
                    break
                nxt = []
                for pid in level:
                    for j in self.pages[pid].links:
                        if j not in seen:
                            seen.add(j)
                            nxt.append(j)
                level = nxt
        return found


MOVED_PATH = "/old/api.php"  # an address the API moved away from: every request there is redirected to /w/api.php


class FakeMediaWiki:
    """`with FakeMediaWiki(wiki) as api: api.url` — the API endpoint URL (`http://127.0.0.1:PORT/w/api.php`)."""

    def __init__(self, wiki: FakeWiki | None = None, *, latency_s: float = 0.0, faults: dict[str, int] | None = None,
                 fault_rate: float = 0.2, per_key_cap: int = 2, retry_after: str = "1", hang_s: float = 3.0, seed: int = 0):
        self.wiki = wiki or FakeWiki()
        self.latency_s = latency_s
        self.faults = Counter(faults or {})
        self.fault_rate = fault_rate
        self.per_key_cap = per_key_cap
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.fail_always: set[int] = set()
        self.fail_retry_after: str | None = None  # a Retry-After on the fail_always 503s (None: none)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.parse_counts: Counter[int] = Counter()  # successful parse answers per pageid
        self.parse_requests: Counter[int] = Counter()  # parse requests per pageid, faults included
        self.faults_sent: Counter[str] = Counter()
        self.fault_times: list[tuple[float, str]] = []
        self.info_requests = 0
        self.redirects = 0  # requests to MOVED_PATH, answered 301
        self._faults_per_key: Counter[str] = Counter()
        self.arrivals: deque[float] = deque()
        self.user_agents: set[str] = set()
        self.missing_maxlag = 0  # requests without maxlag=5
        self.in_flight = 0
        self.max_in_flight = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with api._lock:
                    api.arrivals.append(time.monotonic())
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                counted = True
                try:
                    counted = api._handle(self)
                finally:
                    if counted:
                        with api._lock:
                            api.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/w/api.php"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-mediawiki", daemon=True)

    # --- plumbing ----------------------------------------------------------------------------------

    def __enter__(self) -> "FakeMediaWiki":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def max_in_window(self, window_s: float) -> int:
        """The most requests that arrived within any window of `window_s` seconds."""
        ts = sorted(self.arrivals)
        best, j = 0, 0
        for i, t in enumerate(ts):
            while ts[j] <= t - window_s:
                j += 1
            best = max(best, i - j + 1)
        return best

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, ctype: str = "application/json; charset=utf-8",
              headers: dict | None = None, length: int | None = None) -> None:
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def _json(self, h, obj: dict) -> None:
        self._send(h, 200, json.dumps(obj, ensure_ascii=False).encode())

    def _fault(self, key: str) -> str | None:
        with self._lock:
            kinds = [k for k, n in self.faults.items() if n > 0]
            if not kinds or self._faults_per_key[key] >= self.per_key_cap or self._rng.random() >= self.fault_rate:
                return None
            kind = self._rng.choice(kinds)
            self.faults[kind] -= 1
            self.faults_sent[kind] += 1
            self._faults_per_key[key] += 1
            return kind

    # --- the API -----------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> bool:
        """Answer one request; return False when the request left the in-flight count early (a hang)."""
        url = urlparse(h.path)
        if url.path == MOVED_PATH:  # the API's old address: a permanent redirect to the new one, query kept
            with self._lock:
                self.redirects += 1
            self._send(h, 301, b"", "text/plain", {"Location": "/w/api.php" + (f"?{url.query}" if url.query else "")})
            return True
        if url.path != "/w/api.php":
            self._send(h, 404, b"not found", "text/plain")
            return True
        q = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        with self._lock:
            self.user_agents.add(h.headers.get("User-Agent", ""))
            self.missing_maxlag += q.get("maxlag") != "5"
        if self.latency_s:
            time.sleep(self.latency_s)
        action = q.get("action")
        pid = int(q["pageid"]) if action == "parse" and q.get("pageid", "").isdigit() else None
        if pid is not None:
            with self._lock:
                self.parse_requests[pid] += 1
        key = f"{action}:{q.get('pageid') or q.get('page') or q.get('srsearch') or q.get('titles') or q.get('sroffset')}"
        if pid is not None and pid in self.fail_always:
            extra = {"Retry-After": self.fail_retry_after} if self.fail_retry_after is not None else None
            self._send(h, 503, b"<html><body>Our servers are currently under maintenance</body></html>", "text/html", extra)
            return True
        kind = self._fault(key)
        if kind == "hang":
            with self._lock:
                self.in_flight -= 1
            time.sleep(self.hang_s)
            h.close_connection = True
            return False
        if kind == "429":
            self._send(h, 429, b"<html><body><h1>Too many requests</h1></body></html>", "text/html", {"Retry-After": self.retry_after})
            with self._lock:
                self.fault_times.append((time.monotonic(), kind))
            return True
        if kind == "503":
            self._send(h, 503, b"<html><body>upstream connect error or disconnect/reset before headers</body></html>", "text/html")
            return True
        if kind == "maxlag":
            h.close_connection = False
            self._send(h, 200, json.dumps({"error": {"code": "maxlag", "info": "Waiting for 10.64.48.35: 6 seconds lagged.",
                                                     "host": "10.64.48.35", "lag": 6, "type": "db",
                                                     "docref": "See https://en.wikipedia.org/w/api.php for API usage."},
                                           "servedby": "mw-api-ext.eqiad.main"}).encode(),
                       headers={"Retry-After": self.retry_after, "X-Database-Lag": "6"})
            with self._lock:
                self.fault_times.append((time.monotonic(), kind))
            return True
        answer = self._answer(q, pid)
        body = json.dumps(answer, ensure_ascii=False).encode()
        if kind == "truncate":
            with self._lock:
                short = self._rng.random() < 0.5
            if short:  # full Content-Length, then the connection drops: an incomplete read
                h.close_connection = True
                self._send(h, 200, body[: len(body) // 2], length=len(body))
            else:  # a clean cut: the body ends mid-JSON
                self._send(h, 200, body[: len(body) // 2])
            return True
        self._send(h, 200, body)
        if "parse" in answer:
            with self._lock:
                self.parse_counts[answer["parse"]["pageid"]] += 1
        return True

    def _answer(self, q: dict, pid: int | None) -> dict:
        wiki = self.wiki
        action = q.get("action")
        if action == "query" and q.get("list") == "search":
            hits = wiki.search(q.get("srsearch", ""))
            offset = int(q.get("sroffset", 0))
            limit = min(int(q.get("srlimit", 10)), SEARCH_CAP)
            page = hits[offset : offset + limit]
            res = {"batchcomplete": True, "query": {"searchinfo": {"totalhits": len(hits)}, "search": [
                {"ns": 0, "title": t, "pageid": p, "size": 4000 + p, "wordcount": 600,
                 "snippet": f'<span class="searchmatch">{html.escape(t)}</span> is', "timestamp": "2024-05-01T12:00:00Z"} for p, t in page]}}
            if offset + limit < len(hits):
                res["continue"] = {"sroffset": offset + limit, "continue": "-||"}
            return res
        if action == "query" and q.get("meta") == "siteinfo":
            host = self.url.rsplit("/w/", 1)[0]
            return {"batchcomplete": True, "query": {"general": {"mainpage": "Main Page", "base": host + "/wiki/Main_Page",
                    "sitename": "Wikipedia", "lang": "en", "articlepath": "/wiki/$1", "scriptpath": "/w", "server": host,
                    "servername": "127.0.0.1", "wikiid": "enwiki", "generator": "MediaWiki 1.43.0-wmf.1"}}}
        if action == "query" and q.get("prop") == "info" and "pageids" in q:
            with self._lock:
                self.info_requests += 1
            ids = [int(i) for i in q["pageids"].split("|") if i.isdigit()]
            if len(ids) > 50:
                return {"error": {"code": "toomanyvalues", "info": "Too many values supplied for parameter \"pageids\". The limit is 50."}}
            return {"batchcomplete": True, "query": {"pages": [
                {"pageid": i, "ns": 0, "title": wiki.pages[i].title, "contentmodel": "wikitext", "pagelanguage": "en",
                 "touched": "2024-05-01T12:00:00Z", "lastrevid": wiki.pages[i].revid, "length": len(wiki.pages[i].html)}
                if i in wiki.pages else {"pageid": i, "missing": True} for i in ids]}}
        if action == "query" and "titles" in q:
            titles = [t for t in q["titles"].split("|") if t]
            normalized, redirects, pages = [], [], []
            for t in titles:
                n = t.replace("_", " ")
                n = n[:1].upper() + n[1:]
                if n != t:
                    normalized.append({"fromencoded": False, "from": t, "to": n})
                if n in wiki.redirects:
                    redirects.append({"from": n, "to": wiki.redirects[n]})
                    n = wiki.redirects[n]
                if n in wiki.by_title:
                    pages.append({"pageid": wiki.by_title[n], "ns": 0, "title": n})
                else:
                    pages.append({"ns": 0, "title": n, "missing": True})
            query: dict = {}
            if normalized:
                query["normalized"] = normalized
            if redirects:
                query["redirects"] = redirects
            query["pages"] = pages
            return {"batchcomplete": True, "query": query}
        if action == "parse":
            if pid is None:
                title = wiki.redirects.get(q.get("page", ""), q.get("page", "")) if q.get("redirects") else q.get("page", "")
                pid = wiki.by_title.get(title)
                if pid is None:
                    return {"error": {"code": "missingtitle", "info": "The page you specified doesn't exist.",
                                      "docref": "See https://en.wikipedia.org/w/api.php for API usage."}, "servedby": "mw-api-ext"}
            page = wiki.pages.get(pid)
            if page is None:
                return {"error": {"code": "nosuchpageid", "info": f"There is no page with ID {pid}.",
                                  "docref": "See https://en.wikipedia.org/w/api.php for API usage."}, "servedby": "mw-api-ext"}
            return {"parse": {"title": page.title, "pageid": page.pageid, "revid": page.revid, "text": page.html,
                              "links": wiki.links_of(page)}}
        return {"error": {"code": "badvalue", "info": f"Unrecognized value for parameter \"action\": {action}."}}
