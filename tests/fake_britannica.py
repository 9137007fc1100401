"""A loopback stand-in for www.britannica.com: robots.txt, search result pages and article pages with
real-looking clutter, and faults.

- `/robots.txt`: disallows `/topic/secret-` and `/private/` for every agent.
- `/search?query=Q&page=N`: `per_page` hits a page for the query's articles (`FakeSite.queries`), inside the
  site's chrome (header nav, trending sidebar, ads, footer). Result links alternate between the old markup
  (`a.font-weight-bold.font-18`) and the new one (`a.md-crosslink`), relative and absolute; every page also
  lists a video and a quiz hit (not articles). Past the last page: a "No results found" page. The query
  `Changed` answers 200 with its hits in markup nobody knows (a structure change).
- `/topic/<slug>`: an article: h1 title, paragraphs and headings in `div.topic-content`, with clutter around
  and inside it — nav, ads ("Advertisement"), a "Britannica Quiz" box, the feedback form ("Our editors will
  review what you’ve submitted…"), related-topics asides, an Additional Reading section, footer. Every
  clutter element carries the marker `zqx` except the boilerplate sentences. The clean text is known (`FakeSite.body_text(slug)`).
  `/topic/empty-shell` answers 200 with no paragraphs at all (a structure change). Old paths
  (`FakeSite.redirects`) answer 301 to an article, to a path robots.txt disallows, or to another host.
- Faults, per path: `faults[path] = ["429", "503", "hang", ...]` answered in turn before the page itself
  (429 and 503 carry `Retry-After: retry_after`; a hang sleeps `hang_s`); `fail_always` paths answer 503.
- `robots`: the robots.txt text, or a status code (404, 403...) to answer it with.
- Articles carry `ETag` and `Last-Modified` (unless `validators=False`) and answer 304 to a matching
  If-None-Match / If-Modified-Since. `FakeSite.edit(slug)` rewrites an article's text (a new ETag and date).
- Counters: `requests[path]` (every request), `served[path]` (200 answers), `not_modified[path]` (304 answers),
  `arrivals` (monotonic times), `fault_times` ([(monotonic time a 429/503 was sent, path)]), `max_in_flight`
  (requests being answered at once; a hang leaves the count when it starts), `user_agents`.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote_plus, urlparse

MARK = "zqx"  # in every clutter element, never in body text
WORDS = ("river mountain theory energy quantum field protein gene island empire war treaty climate ocean ice "
         "probability network language city music art physics chemistry history culture naïve café Zürich "
         "東京 élan façade señor 1848 2.5 42 mean variance").split()
BOILERPLATE = ("Our editors will review what you’ve submitted and determine whether to revise the article.",
               "Britannica Quiz", "Advertisement")
ROBOTS = "User-agent: *\nDisallow: /topic/secret-\nDisallow: /private/\n\nUser-agent: BadBot\nDisallow: /\n"


@dataclass
class Article:
    slug: str
    title: str
    blocks: list[str] = field(default_factory=list)
    html: str = ""
    modified: float = 1_700_000_000.0  # Last-Modified, seconds since the epoch

    @property
    def etag(self) -> str:
        return '"' + hashlib.sha256(self.html.encode()).hexdigest()[:16] + '"'


class FakeSite:
    """The generated site: articles and which queries find which (overlapping), deterministic by seed."""

    def __init__(self, seed: int = 0):
        rng = random.Random(seed)
        slugs = [f"alpha-{i}" for i in range(8)] + [f"beta-{i}" for i in range(6)] + [f"gamma-{i}" for i in range(5)]
        self.articles = {s: Article(s, s.replace("-", " ").title() + " " + rng.choice(["river", "theory", "café"])) for s in slugs}
        self.articles["empty-shell"] = Article("empty-shell", "Empty shell")
        # old paths answered with a redirect: to an article, to one robots.txt disallows, to another host
        self.redirects = {"alpha-0-old": "/topic/alpha-0", "gamma-3-old": "/topic/gamma-3", "beta-5-old": "/topic/secret-beta",
                          "gone-away": "https://elsewhere.example/topic/x"}
        self.queries: dict[str, list[str]] = {
            "Alpha": [f"alpha-{i}" for i in range(8)] + ["beta-0", "beta-1", "gamma-3-old"],
            "Beta": [f"beta-{i}" for i in range(6)] + ["alpha-0", "alpha-3", "secret-files", "beta-5-old"],
            "Gamma": [f"gamma-{i}" for i in range(5)] + ["alpha-1", "empty-shell", "alpha-0-old", "gone-away"],
            "Changed": ["gamma-0", "gamma-1"],
        }
        for a in self.articles.values():
            if a.slug != "empty-shell":
                self._render(a, rng)
        self.articles["empty-shell"].html = self._page("Empty shell", '<div class="ng-app" data-v2="1"><span>Loading</span>'
                                                                      '<div class="x-body-block">zqxnew layout text</div></div>')

    @staticmethod
    def _page(title: str, content: str) -> str:
        return (
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} | Britannica</title>'
            '<script>window.dataLayer=[{"zqx":1}];</script><style>.zqx{color:red}</style></head><body>'
            '<header class="header"><nav class="main-nav" role="navigation"><a href="/">zqxHome</a> <a href="/browse">zqxBrowse</a>'
            '<ul><li><a href="/quiz/zqx">zqxQuizzes</a></li><li><a href="/topic/alpha-0">zqxFeatured</a></li></ul></nav>'
            '<form class="search-form" action="/search"><input name="query"><button>zqxSearch</button></form></header>'
            '<div class="ad-container ad-top"><div id="ad-slot-1" data-ad-slot="top">Advertisement</div></div>'
            f'<main>{content}</main>'
            '<footer class="footer"><p>zqx©2026 Encyclopædia Britannica, Inc.</p><ul><li><a href="/about">zqxAbout</a></li></ul></footer>'
            '<script>var zqx = "<p>not text</p>";</script></body></html>')

    def _render(self, a: Article, rng: random.Random) -> None:
        def sentence(n: int) -> str:
            return " ".join(rng.choice(WORDS) for _ in range(n))

        parts = ['<div class="topic-header"><h1 class="topic-title">' + html.escape(a.title) + "</h1>"
                 '<div class="topic-share share-bar">zqxPrint Cite Share Feedback</div>'
                 '<div class="breadcrumb">zqxHistory &gt; Topics</div></div>',
                 '<nav class="toc" aria-label="Table of Contents"><h2>zqxTable of Contents</h2><ul><li><a href="#ref1">zqxIntroduction</a></li></ul></nav>',
                 '<article><div class="topic-content">']
        lead = f"{a.title} is a topic of {sentence(6)}."
        parts.append(f'<section data-level="1" id="ref1"><p class="topic-paragraph"><strong>{html.escape(a.title)}</strong>'
                     f' is a topic of {html.escape(lead.split(" is a topic of ", 1)[1])}</p>')
        a.blocks.append(lead)
        # the boilerplate sentence as a bare paragraph inside the body, and the feedback dialog
        parts.append(f"<p>{html.escape(BOILERPLATE[0])}</p>")
        parts.append('<div class="feedback-modal" role="dialog"><h3>zqxFeedback</h3><p>' + html.escape(BOILERPLATE[0])
                     + '</p><form><textarea>zqx</textarea></form></div>')
        body = " ".join(sentence(rng.randint(6, 12)) + "." for _ in range(3))
        link = f'<a href="/topic/beta-2" class="md-crosslink">{html.escape(sentence(2))}</a>'
        words = body.split(" ")
        text_with_link = " ".join(words[:5]) + " " + link + " " + " ".join(words[5:])
        a.blocks.append(" ".join(words[:5]) + " " + _plain(link) + " " + " ".join(words[5:]))
        parts.append(f'<p class="topic-paragraph">{text_with_link}</p></section>')
        parts.append('<div class="ad-container ad-inline" data-ad="1"><span>Advertisement</span><p>zqxad copy</p></div>')
        for i, name in enumerate(["History", "Theory and practice", "Legacy"], start=2):
            parts.append(f'<section data-level="1" id="ref{i}"><h2 class="h1">{html.escape(name)}</h2>')
            a.blocks.append(name)
            if i == 2:
                parts.append('<div class="quiz-module marketing-quiz"><div class="quiz-title">Britannica Quiz</div>'
                             '<p>zqxTest your knowledge of everything.</p><a href="/quiz/zqx" class="md-crosslink">zqxTake the quiz</a></div>')
                parts.append('<figure class="md-assembly"><img src="/zqx.jpg" alt="zqx"><figcaption>zqxcaption of a picture</figcaption></figure>')
            for _ in range(2):
                t = " ".join(sentence(rng.randint(6, 14)) + "." for _ in range(rng.randint(2, 4)))
                parts.append(f'<p class="topic-paragraph">{html.escape(t)}</p>')
                a.blocks.append(t)
            if i == 3:
                parts.append(f'<h3 class="h2">{html.escape("Subtopic " + sentence(1))}</h3>')
                a.blocks.append(_plain(parts[-1]))
                t = sentence(9) + "."
                parts.append(f"<p>{html.escape(t)}</p>")
                a.blocks.append(t)
                parts.append('<aside class="related-topics" role="complementary"><h3>zqxRelated Topics</h3><p>zqxrelated</p></aside>')
            parts.append("</section>")
        parts.append('<p class="newsletter-promo">zqxGet our newsletter</p>')
        parts.append('<section data-level="1" id="ref9"><h2 class="h1">Additional Reading</h2><p>zqxSmith, J. <em>A history</em> (1848).</p>'
                     '<p>zqxDoe, A. <em>More on it</em> (2001).</p></section>')
        parts.append("</div></article>")
        parts.append('<aside class="sidebar"><div class="marketing-subscribe"><p>zqxSubscribe now</p></div></aside>')
        a.html = self._page(a.title, "".join(parts))

    def body_text(self, slug: str) -> str:
        return "\n\n".join(self.articles[slug].blocks)

    def edit(self, slug: str, seed: int = 1) -> None:
        """Rewrite an article's text (same title, new words): a new ETag and a later Last-Modified."""
        a = self.articles[slug]
        a.blocks = []
        self._render(a, random.Random(f"{slug}-{seed}"))
        a.modified += 3600 * seed

    def search_page(self, query: str, page: int, per_page: int, base: str) -> tuple[str, list[str]]:
        """The HTML of one search result page and the slugs it lists."""
        hits = self.queries.get(query, [])
        start = (page - 1) * per_page
        chunk = hits[start : start + per_page]
        side = ('<aside class="trending" role="complementary"><h2>zqxTrending</h2><a href="/topic/gamma-4">zqxGamma four</a>'
                '<a href="/topic/alpha-7" class="trending-link">zqxAlpha seven</a></aside>')
        if not chunk:
            return self._page(f"{query} - Search", f'{side}<div class="search-results"><h2>No results found for “{html.escape(query)}”</h2>'
                                                   f'<p>Try another search.</p></div>'), []
        items = []
        for k, slug in enumerate(chunk):
            title = html.escape(self.articles[slug].title if slug in self.articles else slug)
            href = f"/topic/{slug}" if k % 2 else f"{base}/topic/{slug}"
            if query == "Changed":
                items.append(f'<div class="rs-card"><a class="rs-title" href="{href}">{title}</a><p>zqx snippet</p></div>')
            elif (start + k) % 2:
                items.append(f'<li class="mb-45"><a href="{href}" class="md-crosslink">{title}</a><div class="fs-16">zqx snippet</div></li>')
            else:
                items.append(f'<li class="mb-45"><a href="{href}" class="font-weight-bold font-18">{title}</a><div>zqx snippet</div></li>')
        if query != "Changed":
            items.append('<li class="mb-45"><a href="/video/12345/zqx-clip" class="md-crosslink">zqx video</a></li>')
            items.append('<li class="mb-45"><a href="/quiz/zqx-quiz" class="font-weight-bold font-18">zqx quiz</a></li>')
            items.append('<li class="mb-45"><a href="https://kids.britannica.com/topic/zqx" class="md-crosslink">zqx kids</a></li>')
        nxt = f'<a class="pagination-next" href="/search?query={quote_plus(query)}&amp;page={page + 1}">zqxNext</a>'
        return self._page(f"{query} - Search", f'{side}<div class="search-results"><ul class="list-unstyled results">'
                                               f'{"".join(items)}</ul>{nxt}</div>'), chunk


def _plain(fragment: str) -> str:
    from selectolax.lexbor import LexborHTMLParser

    return " ".join(LexborHTMLParser(fragment).body.text().split())


class FakeBritannica:
    """`with FakeBritannica(site) as b: b.url` — the site's base URL (`http://127.0.0.1:PORT`)."""

    def __init__(self, site: FakeSite | None = None, *, per_page: int = 3, latency_s: float = 0.0,
                 retry_after: str = "1", hang_s: float = 2.0, robots: str | int = ROBOTS, validators: bool = True):
        self.site = site or FakeSite()
        self.robots = robots  # the robots.txt text, or a status code to answer it with
        self.per_page = per_page
        self.latency_s = latency_s
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.faults: dict[str, list[str]] = {}
        self.fail_always: set[str] = set()
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.fault_times: list[tuple[float, str]] = []
        self.validators = validators
        self.faults_sent: Counter[str] = Counter()
        self.user_agents: set[str] = set()
        self.arrivals: list[float] = []
        self.in_flight = 0
        self.max_in_flight = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with fake._lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                counted = True
                try:
                    counted = fake._handle(self)
                finally:
                    if counted:
                        with fake._lock:
                            fake.in_flight -= 1

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-britannica", daemon=True)

    def __enter__(self) -> "FakeBritannica":
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

    def article_requests(self) -> Counter[str]:
        """Requests per article slug (`/topic/<slug>` paths only)."""
        return Counter({p.split("/topic/", 1)[1]: n for p, n in self.requests.items() if p.startswith("/topic/")})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: str, ctype: str = "text/html; charset=utf-8",
              headers: dict | None = None) -> None:
        data = body.encode()
        h.send_response(code)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()

    def _handle(self, h: BaseHTTPRequestHandler) -> bool:
        """Answer one request; False when it hung (it left the in-flight count already)."""
        u = urlparse(h.path)
        qs = parse_qs(u.query)
        key = u.path if u.path != "/search" else f"/search?query={qs.get('query', [''])[0]}&page={qs.get('page', ['1'])[0]}"
        with self._lock:
            self.requests[key] += 1
            self.arrivals.append(time.monotonic())
            self.user_agents.add(h.headers.get("User-Agent", ""))
            queue = self.faults.get(key)
            fault = queue.pop(0) if queue else None
            if key in self.fail_always:
                fault = "503"
            if fault:
                self.faults_sent[fault] += 1
        if self.latency_s:
            time.sleep(self.latency_s)
        if fault == "hang":
            with self._lock:
                self.in_flight -= 1
            time.sleep(self.hang_s)
            return False
        if fault in ("429", "503"):
            self._send(h, int(fault), f"<html><body>zqx{fault}</body></html>", headers={"Retry-After": self.retry_after})
            with self._lock:
                self.fault_times.append((time.monotonic(), key))
            return True
        if u.path == "/robots.txt" and isinstance(self.robots, int):
            self._send(h, self.robots, "zqx", "text/plain; charset=utf-8")
            return True
        if u.path == "/robots.txt":
            self._send(h, 200, self.robots, "text/plain; charset=utf-8")
        elif u.path == "/search":
            page = int(qs.get("page", ["1"])[0])
            body, _ = self.site.search_page(qs.get("query", [""])[0], page, self.per_page, self.url)
            self._send(h, 200, body)
        elif u.path.startswith("/topic/") and u.path[len("/topic/"):] in self.site.redirects:
            self._send(h, 301, "", headers={"Location": self.site.redirects[u.path[len("/topic/"):]]})
        elif u.path.startswith("/topic/") and u.path[len("/topic/"):] in self.site.articles:
            a = self.site.articles[u.path[len("/topic/"):]]
            if not self.validators:
                self._send(h, 200, a.html)
            else:
                stamp = email.utils.formatdate(a.modified, usegmt=True)
                since = email.utils.parsedate_to_datetime(h.headers["If-Modified-Since"]).timestamp() if h.headers.get("If-Modified-Since") else None
                match = h.headers.get("If-None-Match")
                if (match is not None and match == a.etag) or (match is None and since is not None and since >= a.modified):
                    self._send(h, 304, "", headers={"ETag": a.etag, "Last-Modified": stamp})
                    with self._lock:
                        self.not_modified[key] += 1
                    return True
                self._send(h, 200, a.html, headers={"ETag": a.etag, "Last-Modified": stamp})
        else:
            self._send(h, 404, "<html><body>zqx not found</body></html>")
            return True
        with self._lock:
            self.served[key] += 1
        return True
