"""A second, differently shaped dump generator for benchmarks: closer to a real enwiki pages-articles file.

tests/dumpgen.py builds mid-sized articles (2-6 KB) from a 40-word vocabulary, ~8% redirects and ~8% other
namespaces, and repeats 400 pages for bulk dumps (so bz2 compresses it ~15x). This one differs on purpose:

- article lengths are log-normal: many stubs of a few lines beside long articles (up to ~150 KB) dense with
  `<ref>{{cite web|...}}</ref>`, infoboxes, tables, nested and inline templates (convert, lang, nowrap...),
  galleries, math and navboxes;
- ~40% redirects (some with `{{R from ...}}` templates) and ~12% other-namespace pages (templates with
  parser functions, categories, files, Module Lua code, Wikipedia: pages), as in the real file;
- a 30,000-word Zipf vocabulary and every page generated afresh (nothing repeated), so bz2 compresses it
  about 4x like a real dump, and the XML is escaped the way MediaWiki exports it (`&lt;ref&gt;`, `&quot;`);
- export-0.11 fields a reader must skip: `<comment>`, `<minor/>`, `<origin>`, `<contributor><ip>`.

    python benchmarks/dumpgen_alt.py OUT.xml[.bz2] --mb 50 [--seed 0]

`write_alt_dump(path, mb, seed)` writes plain XML (`.xml`) or one bz2 stream (`.xml.bz2`) and returns
`(path, pages, articles)`, articles = namespace-0 non-redirect pages.
"""

from __future__ import annotations

import argparse
import bz2
import itertools
import math
import random
import sys
from pathlib import Path

HEADER = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.mediawiki.org/xml/export-0.11/ http://www.mediawiki.org/xml/export-0.11.xsd" version="0.11" xml:lang="en">
  <siteinfo>
    <sitename>Wikipedia</sitename>
    <dbname>enwiki</dbname>
    <base>https://en.wikipedia.org/wiki/Main_Page</base>
    <generator>MediaWiki 1.43.0-wmf.3</generator>
    <case>first-letter</case>
    <namespaces>
      <namespace key="-2" case="first-letter">Media</namespace>
      <namespace key="-1" case="first-letter">Special</namespace>
      <namespace key="0" case="first-letter" />
      <namespace key="1" case="first-letter">Talk</namespace>
      <namespace key="2" case="first-letter">User</namespace>
      <namespace key="4" case="first-letter">Wikipedia</namespace>
      <namespace key="6" case="first-letter">File</namespace>
      <namespace key="10" case="first-letter">Template</namespace>
      <namespace key="14" case="first-letter">Category</namespace>
      <namespace key="100" case="first-letter">Portal</namespace>
      <namespace key="118" case="first-letter">Draft</namespace>
      <namespace key="828" case="case-sensitive">Module</namespace>
    </namespaces>
  </siteinfo>
"""
FOOTER = "</mediawiki>\n"

_SYL = ("ka ri to na mi so lu ve an or el in ar us is on ta de la ber gen sch str ph th ou ea ck ng qu ly "
        "ti mo pa ra ne co ex pro tion ment ness ity al ic ous ive ed er est ing").split()


class _Gen:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        r = self.rng
        words = set()
        while len(words) < 30_000:
            words.add("".join(r.choice(_SYL) for _ in range(r.choice((1, 2, 2, 2, 3, 3, 4)))))
        common = "the of and in to a was is for on as by with from that at his which an were are it also".split()
        rest = sorted(words)
        r.shuffle(rest)
        self.words = common + rest
        weights = [1.0 / (i + 2) ** 1.07 for i in range(len(self.words))]
        self.cum = list(itertools.accumulate(weights))
        self.ids = itertools.count(1000)

    def words_(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=n)

    def name(self, n: int = 2) -> str:
        return " ".join(w.capitalize() for w in self.rng.choices(self.words[40:3000], k=n))

    def sentence(self) -> str:
        r = self.rng
        ws = self.words_(r.randint(6, 28))
        ws[0] = ws[0].capitalize()
        out = []
        for w in ws:
            x = r.random()
            if x < 0.06:
                out.append(f"[[{w.capitalize()} {self.name(1)}|{w}]]")
            elif x < 0.10:
                out.append(f"[[{w}]]")
            elif x < 0.105:
                out.append(f"{{{{convert|{r.randint(1, 9000)}|{r.choice(['km', 'm', 'ft', 'mi', 'kg'])}}}}}")
            elif x < 0.11:
                out.append(f"{{{{lang|{r.choice(['fr', 'de', 'la', 'es'])}|{w}}}}}")
            elif x < 0.113:
                out.append(f"{{{{nowrap|{w} {r.randint(1, 99)}}}}}")
            elif x < 0.12:
                out.append(f"''{w}''")
            elif x < 0.125:
                out.append(f"'''{w}'''")
            elif x < 0.13:
                out.append(f"{w}<sup>{r.randint(1, 9)}</sup>")
            else:
                out.append(w)
        s = " ".join(out) + r.choice(".....!?;")
        if r.random() < 0.35:
            s += self.ref()
        if r.random() < 0.03:
            s += "{{citation needed|date=March 2021}}"
        return s

    def ref(self) -> str:
        r = self.rng
        if r.random() < 0.25:
            return f'<ref name="{self.words_(1)[0]}{r.randint(1, 40)}" />'
        kind = r.choice(["web", "book", "news", "journal"])
        t = " ".join(self.words_(r.randint(3, 9)))
        parts = [f"cite {kind}", f"url=https://www.{self.words_(1)[0]}.org/{'/'.join(self.words_(2))}.html",
                 f"title={t.capitalize()}", f"last={self.name(1)}", f"first={self.name(1)}",
                 f"date={r.randint(1, 28)} {r.choice(['January', 'March', 'July', 'October'])} {r.randint(1950, 2023)}",
                 f"access-date={r.randint(2005, 2024)}-0{r.randint(1, 9)}-1{r.randint(0, 9)}"]
        if kind != "web":
            parts.append(f"publisher={self.name(2)}")
        if kind == "journal":
            parts += [f"volume={r.randint(1, 80)}", f"issue={r.randint(1, 12)}", f"pages={r.randint(1, 300)}–{r.randint(301, 600)}",
                      f"doi=10.{r.randint(1000, 9999)}/{r.randint(10**6, 10**7)}"]
        name = f' name="{self.words_(1)[0]}{r.randint(1, 40)}"' if r.random() < 0.4 else ""
        return f"<ref{name}>{{{{{' |'.join(parts)}}}}}</ref>"

    def paragraph(self, n: int) -> str:
        return " ".join(self.sentence() for _ in range(n))

    def infobox(self) -> str:
        r = self.rng
        kind = r.choice(["settlement", "person", "company", "album", "river", "football biography", "officeholder"])
        rows = [f"| {w} = {' '.join(self.words_(r.randint(1, 5)))}" for w in self.words_(r.randint(6, 30))]
        rows.insert(0, f"| name = {self.name(2)}")
        rows.insert(1, f"| image = {self.name(1)}.jpg")
        rows.append(f"| birth_date = {{{{birth date and age|{r.randint(1900, 2000)}|{r.randint(1, 12)}|{r.randint(1, 28)}}}}}")
        rows.append(f"| area_km2 = {{{{convert|{r.randint(1, 999)}|km2|sqmi|abbr=on}}}}")
        return "{{Infobox " + kind + "\n" + "\n".join(rows) + "\n}}"

    def table(self) -> str:
        r = self.rng
        cols = r.randint(2, 7)
        head = "! " + " !! ".join(w.capitalize() for w in self.words_(cols))
        rows = ["| " + " || ".join(f"[[{w}]]" if r.random() < 0.3 else w for w in self.words_(cols)) for _ in range(r.randint(2, 40))]
        return '{| class="wikitable sortable"\n|+ ' + " ".join(self.words_(3)) + "\n|-\n" + head + "\n|-\n" + "\n|-\n".join(rows) + "\n|}"

    def article(self) -> str:
        r = self.rng
        size = min(math.exp(r.gauss(7.6, 1.25)), 150_000)  # target wikitext bytes: median ~2 KB, long tail
        out = [f"{{{{Short description|{' '.join(self.words_(4))}}}}}"]
        if r.random() < 0.3:
            out.append("{{Use dmy dates|date=May 2022}}")
        if r.random() < 0.5:
            out.append(self.infobox())
        out.append(f"'''{self.name(2)}''' " + self.paragraph(r.randint(1, 4)))
        n = sum(map(len, out))
        while n < size:
            h = " ".join(self.words_(r.randint(1, 3))).capitalize()
            sec = [f"{'=' * r.choice((2, 2, 3))} {h} {'=' * 2}"]
            x = r.random()
            if x < 0.15:
                sec.append(self.table())
            elif x < 0.22:
                sec.append("[[File:" + self.name(2) + ".jpg|thumb|" + self.sentence() + "]]")
            elif x < 0.25:
                sec.append("<gallery>\n" + "\n".join(f"{self.name(1)}.jpg|{' '.join(self.words_(4))}" for _ in range(4)) + "\n</gallery>")
            elif x < 0.27:
                sec.append(f"<math>\\sum_{{i=1}}^n x_i^{r.randint(2, 5)}</math>")
            if r.random() < 0.2:
                sec.append("\n".join("* " + self.sentence() for _ in range(r.randint(2, 12))))
            for _ in range(r.randint(1, 5)):
                sec.append(self.paragraph(r.randint(2, 8)))
            s = "\n\n".join(sec)
            out.append(s)
            n += len(s)
        if r.random() < 0.4:
            out.append("{{" + r.choice(["Geo", "Bio", "Music", "Sport"]) + "-stub}}")
        out.append("== References ==\n{{Reflist}}")
        if r.random() < 0.5:
            out.append("== External links ==\n* {{Official website|https://example.org}}\n* [https://example.com/" + self.words_(1)[0] + " " + " ".join(self.words_(3)) + "]")
        out.append("{{Navbox|name=" + self.name(2) + "|list1=" + " • ".join(f"[[{w}]]" for w in self.words_(12)) + "}}")
        out.append("{{Authority control}}")
        out.append("\n".join(f"[[Category:{self.name(2)}]]" for _ in range(r.randint(1, 8))))
        return "\n\n".join(out)

    def other(self) -> tuple[str, int, str]:
        r = self.rng
        ns, prefix = r.choice([(10, "Template"), (14, "Category"), (6, "File"), (4, "Wikipedia"), (828, "Module"), (100, "Portal"), (118, "Draft")])
        if ns == 10:
            text = "{{#if:{{{1|}}}|{{{1}}}|{{#switch:{{{type|}}}|a=" + " ".join(self.words_(8)) + "|#default=x}}}}<noinclude>{{Documentation}}</noinclude>"
        elif ns == 828:
            text = "local p = {}\nfunction p.main(frame)\n  local args = frame.args\n  return args[1] or '" + " ".join(self.words_(5)) + "'\nend\nreturn p\n"
        elif ns == 118:
            text = self.paragraph(r.randint(2, 10))
        else:
            text = self.paragraph(r.randint(1, 3)) + f"\n[[Category:{self.name(2)}]]"
        return f"{prefix}:{self.name(2)}", ns, text


def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _page(g: _Gen) -> tuple[str, bool]:
    r = g.rng
    pid = next(g.ids)
    x = r.random()
    redirect = ""
    article = False
    if x < 0.40:
        title, ns = g.name(r.choice((1, 2, 3))), 0
        target = g.name(2) + (f"#{g.name(1)}" if r.random() < 0.15 else "")
        redirect = f'    <redirect title="{_esc(target)}" />\n'
        text = f"#REDIRECT [[{target}]]" + ("\n\n{{Redirect category shell|\n{{R from alternative name}}\n}}" if r.random() < 0.5 else "")
    elif x < 0.52:
        title, ns, text = g.other()
    else:
        title, ns, text = g.name(r.choice((1, 2, 3))), 0, g.article()
        article = True
    contributor = (f"<ip>{r.randint(1, 223)}.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}</ip>" if r.random() < 0.2
                   else f"<username>{g.name(1)}</username>\n        <id>{r.randint(1, 10**7)}</id>")
    minor = "      <minor />\n" if r.random() < 0.3 else ""
    comment = f"      <comment>{_esc(' '.join(g.words_(r.randint(1, 8))))}</comment>\n" if r.random() < 0.7 else ""
    rev = pid * 7 + 3
    model = "Scribunto" if ns == 828 else "wikitext"
    fmt = "text/plain" if ns == 828 else "text/x-wiki"
    raw = text.encode()
    xml = (f"  <page>\n    <title>{_esc(title)}</title>\n    <ns>{ns}</ns>\n    <id>{pid}</id>\n{redirect}"
           f"    <revision>\n      <id>{rev}</id>\n      <parentid>{rev - 5}</parentid>\n"
           f"      <timestamp>20{r.randint(10, 24)}-0{r.randint(1, 9)}-1{r.randint(0, 9)}T0{r.randint(0, 9)}:1{r.randint(0, 9)}:2{r.randint(0, 9)}Z</timestamp>\n"
           f"      <contributor>\n        {contributor}\n      </contributor>\n{minor}{comment}"
           f"      <origin>{rev}</origin>\n      <model>{model}</model>\n      <format>{fmt}</format>\n"
           f"      <text bytes=\"{len(raw)}\" sha1=\"{pid:031x}\" xml:space=\"preserve\">{_esc(text)}</text>\n"
           f"      <sha1>{pid:031x}</sha1>\n    </revision>\n  </page>\n")
    return xml, article


def write_alt_dump(path: str | Path, mb: float, seed: int = 0) -> tuple[Path, int, int]:
    """Write at least `mb` MB of XML to `path` (`.xml` plain, `.xml.bz2` one bz2 stream); (path, pages, articles)."""
    path = Path(path)
    g = _Gen(seed)
    target = int(mb * 1e6)
    pages = articles = 0
    written = 0
    f = bz2.open(path, "wb", compresslevel=9) if path.name.endswith(".bz2") else open(path, "wb")
    with f:
        f.write(HEADER.encode())
        while written < target:
            xml, art = _page(g)
            b = xml.encode()
            f.write(b)
            written += len(b)
            pages += 1
            articles += art
        f.write(FOOTER.encode())
    return path, pages, articles


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--mb", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    p, pages, articles = write_alt_dump(a.out, a.mb, a.seed)
    print(f"{p}: {p.stat().st_size / 1e6:.1f} MB, {pages} pages, {articles} articles", file=sys.stderr)


if __name__ == "__main__":
    main()
