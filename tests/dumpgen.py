"""Generated Wikipedia dumps (plain XML, bz2, multistream bz2 + index) whose plain text is known.

Every article is built from pieces of tricky wikitext, each with the plain text it must become. Every
piece that must vanish holds the word CLUTTER, so a test can check that none survives. Besides articles,
a dump holds redirects and pages of other namespaces, which a reader must skip.

    pages = make_pages(200, seed=0)
    write_dump(tmp / "enwiki-test-pages-articles.xml", pages)
    write_dump(tmp / "enwiki-test-pages-articles-multistream.xml.bz2", pages, multistream=True)
"""

from __future__ import annotations

import bz2
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator
from xml.sax.saxutils import escape, quoteattr

CLUTTER = "CLUTTER"
HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.42</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="2" case="first-letter">User</namespace>
      <namespace key="4" case="first-letter">Wikipedia</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
      <namespace key="828" case="first-letter">Module</namespace>
    </namespaces>
  </siteinfo>
"""
FOOTER = "</mediawiki>\n"

WORDS = (
    "river mountain city history people language science music war empire king queen island north south "
    "ancient modern century government population culture economy village school church bridge station "
    "theory energy light water animal forest desert ocean planet star galaxy number system family"
).split()
UNICODE_WORDS = ["東京", "北京大学", "שלום", "مرحبا", "🙂", "🇫🇷", "café", "Ångström", "naïve", "é", "Zürich", "Ελλάδα", "Москва"]


@dataclass
class Page:
    title: str
    ns: int
    id: int
    revid: int
    text: str  # wikitext
    expected: str  # plain text a reader must give ("" when the page must be skipped)
    redirect: str | None = None
    timestamp: str = "2024-01-02T03:04:05Z"

    @property
    def kept(self) -> bool:
        return self.ns == 0 and self.redirect is None and bool(self.expected)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) if rng.random() > 0.1 else rng.choice(UNICODE_WORDS) for _ in range(n))


def _kept_piece(rng: random.Random) -> tuple[str, str]:
    """A bit of prose markup and the text it shows."""
    w = _words(rng, rng.randint(1, 3))
    kind = rng.randrange(15)
    if kind == 0:
        return f"'''{w}'''", w
    if kind == 1:
        return f"''{w}''", w
    if kind == 2:
        return f"[[{w.title()} (topic)|{w}]]", w
    if kind == 3:
        return f"[[{w}]]", w
    if kind == 4:
        return f"'''''[[{w}]]'''''", w
    if kind == 5:
        return f"{w}&nbsp;{w}", f"{w}\xa0{w}"
    if kind == 6:
        return f"{w} &amp; {w} &mdash; x", f"{w} & {w} — x"
    if kind == 7:
        return f"<b>{w}</b> <span class=\"x\">{w}</span>", f"{w} {w}"
    if kind == 9:  # an external link's label is kept, its URL is not
        return f"[https://example.org/{rng.randrange(99)} {w}]", w
    if kind == 10:  # inline templates rendered as their text
        return f"{{{{lang|fr|{w}}}}}", w
    if kind == 11:
        return f"{{{{nowrap|{w}}}}}", w
    if kind == 12:
        km = rng.choice([(12, "12 kilometres (7.5 mi)"), (1000, "1,000 kilometres (620 mi)"), (3, "3 kilometres (1.9 mi)")])
        return f"{w} {{{{convert|{km[0]}|km|mi}}}}", f"{w} {km[1]}"
    if kind == 13:
        return f"<code>{w}()</code>", f"{w}()"
    if kind == 14:
        return f"{w} {{{{circa|1850}}}}", f"{w} c. 1850"
    return f"{w}<sup>2</sup>", f"{w}2"


def _clutter_piece(rng: random.Random) -> str:
    """Inline wikitext that must vanish entirely."""
    c = CLUTTER
    return rng.choice(
        [
            f"{{{{cite web |url=http://{c}.example.org |title={c} {{{{nested|{c}|{{{{deeper|{c}}}}}}}}} }}}}",
            f"<ref name=\"r{rng.randrange(99)}\">{{{{cite book|title={c}|year=1999}}}} {c} text</ref>",
            f"<ref name=\"r{rng.randrange(99)}\" />",
            f"<ref>{c} [http://{c}.example.org {c}]</ref>",
            f"<ref group=\"n\" name=\"a/b\">{c}</ref>",
            f"<!-- {c} comment [[{c}]] -->",
            f"[http://www.{c}.example.com/page?q=1]",
            f"{{{{sfn|{c}|2001|p=5}}}}",
            f"<math>{c} \\frac{{a}}{{b}} < x</math>",
            f"{{{{citation needed|date=May 2020|reason={c}}}}}",
            f"[[File:{c} photo.jpg|thumb|left|{c} caption with [[{c} link]] and [[{c}|{c} label]]]]",
            f"{{{{Infobox|x=\n{{|\n| {c}\n|}}}}}}",
            "__NOTOC__",
        ]
    )


def _paragraph(rng: random.Random) -> tuple[str, str]:
    wiki, plain = [], []
    for _ in range(rng.randint(4, 10)):
        w = _words(rng, rng.randint(3, 9))
        wiki.append(w)
        plain.append(w)
        r = rng.random()
        if r < 0.45:
            kw, kp = _kept_piece(rng)
            wiki.append(kw)
            plain.append(kp)
        elif r < 0.8:
            wiki[-1] += _clutter_piece(rng)
        wiki[-1] += "."
        plain[-1] += "."
    return " ".join(wiki), " ".join(plain)


def _block_clutter(rng: random.Random) -> str:
    """Whole-line wikitext that must vanish: infoboxes, tables, files, galleries."""
    c = CLUTTER
    return rng.choice(
        [
            "{{Infobox settlement\n| name = " + c + "\n| image = {{Image|" + c + ".png}}\n| population = 1<ref>" + c + "</ref>\n}}",
            "{| class=\"wikitable\"\n|+ " + c + " caption\n|-\n! " + c + " !! head\n|-\n| " + c + " || [[" + c + "]]\n|-\n|\n{| class=\"inner\"\n| " + c + " nested\n|}\n|}",
            "[[Image:" + c + ".svg|thumb|upright=1.2|The " + c + " of [[" + c + " place|" + c + "]] in 1900]]",
            "<gallery>\n" + c + ".jpg|" + c + "\n</gallery>",
            "{{Main|" + c + "}}",
            "<!--\n" + c + " multi-line\ncomment\n-->",
        ]
    )


def make_article(rng: random.Random, title: str, pid: int) -> Page:
    c = CLUTTER
    wiki: list[str] = ["{{Short description|" + c + "}}", _block_clutter(rng)]
    plain: list[str] = []
    lead_w, lead_p = _paragraph(rng)
    wiki.append(f"'''{title}''' is {lead_w}")
    plain.append(f"{title} is {lead_p}")
    for _ in range(rng.randint(1, 4)):
        h = _words(rng, rng.randint(1, 3)).capitalize()
        wiki.append(f"== {h} ==")
        plain.append(h)
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.3:
                wiki.append(_block_clutter(rng))
            if rng.random() < 0.25:
                items = [_words(rng, rng.randint(2, 5)) for _ in range(rng.randint(2, 4))]
                marker = rng.choice(["*", "#", "**", ":"])
                wiki.append("\n".join(f"{marker} {it}{_clutter_piece(rng) if rng.random() < 0.3 else ''}" for it in items))
                plain.append("\n".join(items))
            pw, pp = _paragraph(rng)
            wiki.append(pw)
            plain.append(pp)
        if rng.random() < 0.3:
            sub = _words(rng, 2).capitalize()
            pw, pp = _paragraph(rng)
            wiki.append(f"=== {sub} ===\n{pw}")
            plain.append(f"{sub}\n{pp}")
    if rng.random() < 0.3:  # a dropped section in the middle, followed by a kept one of the same level
        wiki.append(f"== Notes ==\n{{{{notelist}}}}\n{c} note text\n=== {c} sub ===\n{c} more")
        h = _words(rng, 2).capitalize()
        pw, pp = _paragraph(rng)
        wiki.append(f"== {h} ==\n{pw}")
        plain.append(f"{h}\n{pp}")
    wiki.append(f"== See also ==\n* [[{c} one]]\n* [[{c} two|{c}]]")
    wiki.append(f"== References ==\n{{{{Reflist}}}}\n<references />\n{c} sources")
    wiki.append(f"=== Further reading ===\n* {c} book")
    wiki.append(f"== External links ==\n* [https://{c}.example.org {c} site]\n* {{{{Official website|{c}}}}}")
    wiki.append(f"{{{{Authority control}}}}\n[[Category:{c} things]]\n[[Category:{c}|sort]]\n[[fr:{c}]]\n[[zh-min-nan:{c}]]\n__TOC__")
    return Page(title=title, ns=0, id=pid, revid=pid * 10 + 7, text="\n\n".join(wiki), expected="\n\n".join(plain))


def make_pages(n: int, seed: int = 0, start_id: int = 10) -> list[Page]:
    """`n` pages: ~80% articles, the rest redirects and pages of other namespaces (which readers skip)."""
    rng = random.Random(seed)
    pages: list[Page] = []
    for i in range(n):
        pid = start_id + i
        title = f"{_words(rng, 2).title()} {pid}"
        r = rng.random()
        if r < 0.08:
            pages.append(Page(title, 0, pid, pid * 10, f"#REDIRECT [[{title} target]]", "", redirect=f"{title} target"))
        elif r < 0.16:
            ns, prefix = rng.choice([(1, "Talk"), (2, "User"), (10, "Template"), (4, "Wikipedia"), (14, "Category")])
            pages.append(Page(f"{prefix}:{title}", ns, pid, pid * 10, f"{CLUTTER} {{{{tpl}}}} talk text [[x]]", ""))
        else:
            pages.append(make_article(rng, title, pid))
    return pages


def page_xml(p: Page) -> str:
    redirect = f"    <redirect title={quoteattr(p.redirect)} />\n" if p.redirect is not None else ""
    return (
        f"  <page>\n    <title>{escape(p.title)}</title>\n    <ns>{p.ns}</ns>\n    <id>{p.id}</id>\n{redirect}"
        f"    <revision>\n      <id>{p.revid}</id>\n      <parentid>{p.revid - 1}</parentid>\n"
        f"      <timestamp>{p.timestamp}</timestamp>\n      <contributor><username>Someone</username><id>1</id></contributor>\n"
        f"      <model>wikitext</model>\n      <format>text/x-wiki</format>\n"
        f"      <text bytes=\"{len(p.text.encode())}\" xml:space=\"preserve\">{escape(p.text)}</text>\n"
        f"      <sha1>abc</sha1>\n    </revision>\n  </page>\n"
    )


def _compress(data: bytes) -> bytes:
    return bz2.compress(data, 9)


def write_dump(path: str | Path, pages: Iterable[Page], multistream: bool = False, pages_per_stream: int = 100,
               processes: int = 1) -> Path:
    """Write `pages` as a dump at `path`: `.xml` plain, `.xml.bz2` one bz2 stream, or (multistream=True)
    concatenated bz2 streams of `pages_per_stream` pages plus `<stem>-index.txt.bz2`."""
    path = Path(path)
    if path.name.endswith(".xml"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(HEADER)
            for p in pages:
                f.write(page_xml(p))
            f.write(FOOTER)
        return path
    if not multistream:
        with bz2.open(path, "wt", encoding="utf-8", compresslevel=9) as f:
            f.write(HEADER)
            for p in pages:
                f.write(page_xml(p))
            f.write(FOOTER)
        return path
    groups: list[list[Page]] = []
    for p in pages:
        if not groups or len(groups[-1]) >= pages_per_stream:
            groups.append([])
        groups[-1].append(p)
    raw = [HEADER.encode()] + ["".join(page_xml(p) for p in g).encode() for g in groups] + [FOOTER.encode()]
    if processes > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(processes) as pool:
            streams = list(pool.map(_compress, raw, chunksize=8))
    else:
        streams = [_compress(r) for r in raw]
    index_lines = []
    offset = len(streams[0])
    with open(path, "wb") as f:
        for s in streams:
            f.write(s)
    for g, s in zip(groups, streams[1:]):
        index_lines += [f"{offset}:{p.id}:{p.title}\n" for p in g]
        offset += len(s)
    index = path.parent / (path.name[: -len(".xml.bz2")] + "-index.txt.bz2")
    index.write_bytes(bz2.compress("".join(index_lines).encode()))
    return path


def repeat_pages(pages: list[Page], total: int, start_id: int = 1_000_000) -> Iterator[Page]:
    """`total` pages cycling through `pages` with fresh ids and titles (fast bulk dumps for benchmarks)."""
    for i in range(total):
        p = pages[i % len(pages)]
        pid = start_id + i
        yield Page(f"{p.title} r{i}", p.ns, pid, pid * 10 + 1, p.text, p.expected, p.redirect, p.timestamp)


def bomb_xml() -> str:
    """A billion-laughs entity bomb shaped like a dump."""
    ents = ['<!ENTITY lol "lol">'] + [f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10)]
    return ('<?xml version="1.0"?>\n<!DOCTYPE mediawiki [\n' + "\n".join(ents) + "\n]>\n" + HEADER
            + "  <page>\n    <title>Bomb</title>\n    <ns>0</ns>\n    <id>1</id>\n    <revision><id>2</id>"
              "<text xml:space=\"preserve\">&lol9;</text></revision>\n  </page>\n" + FOOTER)


def external_entity_xml() -> str:
    """A dump that pulls a local file in through an external entity."""
    return ('<?xml version="1.0"?>\n<!DOCTYPE mediawiki [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n' + HEADER
            + "  <page>\n    <title>X</title>\n    <ns>0</ns>\n    <id>1</id>\n    <revision><id>2</id>"
              "<text xml:space=\"preserve\">&xxe;</text></revision>\n  </page>\n" + FOOTER)
