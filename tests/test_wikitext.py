"""Wikitext -> plain text: exact unit cases, and token-level F1 over generated pages with known text."""

from __future__ import annotations

import collections

import pytest

from tasks.sources.wikitext import clean_wikitext
from tests.dumpgen import CLUTTER, make_pages

CASES = [
    ("'''Paris''' is the [[capital city|capital]] of [[France]].", "Paris is the capital of France."),
    ("A {{nested|x={{inner|{{deep}}}}}} b", "A b"),
    ("A {{Infobox\n| name = X\n| img = {{Img|y}}\n}}\nB", "A\nB"),
    ("Fact.<ref name=\"a\">{{cite web|url=http://x.org}}</ref> Next.<ref name=\"a\" /> End.<ref>plain</ref>", "Fact. Next. End."),
    ("x<ref group=\"n\" name=\"a/b\">note</ref> y", "x y"),
    ("Before\n{| class=\"wikitable\"\n|-\n| a || b\n|-\n|\n{|\n| inner\n|}\n|}\nAfter", "Before\n\nAfter"),
    ("[[File:X.jpg|thumb|A [[cat]] on [[mat|a mat]]]]Text", "Text"),
    ("[[Image:Y.png|left|200px]] T [[Category:Things]] [[fr:Paris]] [[zh-min-nan:Pa-lê]]", "T"),
    ("See [[:Category:Things]] and [[:fr:Paris|Paris (fr)]].", "See Category:Things and Paris (fr)."),
    ("Go [http://example.org the site] or http://example.org/x now.", "Go or now."),
    ("a <!-- hidden [[x]] --> b __NOTOC__ c __TOC__", "a b c"),
    ("Euler: <math>e^{i\\pi}+1=0</math> holds.", "Euler: holds."),
    ("''Italic'' and '''bold''' and '''''both'''''.", "Italic and bold and both."),
    ("== History ==\nText.\n=== Early ===\nMore.", "History\nText.\nEarly\nMore."),
    ("* one\n** two\n# three\n: four\n; five", "one\ntwo\nthree\nfour\nfive"),
    ("A&nbsp;B &amp; C &mdash; D &lt;ref&gt;", "A\xa0B & C — D <ref>"),
    ("<b>bold</b> <span style=\"x\">span</span> H<sub>2</sub>O<br/>x", "bold span H2O x"),
    ("<gallery>\nA.jpg|cap\n</gallery>Kept", "Kept"),
    ("東京 שלום مرحبا 🙂 e\u0301 [[Zürich|Zürich]]", "東京 שלום مرحبا 🙂 e\u0301 Zürich"),
    ("[[Link]]s and [[Paris (France)|]]", "Links and Paris"),
    ("Body\n== See also ==\n* [[X]]\n=== Sub ===\nz\n== Later ==\nkept", "Body\nLater\nkept"),
    ("Body\n== References ==\n{{Reflist}}\n== External links ==\n* [http://x.org x]\n[[Category:C]]", "Body"),
    ("Body\n== Notes ==\nn\n== Further reading ==\nf", "Body"),
    ("Unclosed {{ brace keeps text", "Unclosed brace keeps text"),
    ("", ""),
]


@pytest.mark.parametrize("wikitext,expected", CASES)
def test_clean_wikitext_exact(wikitext, expected):
    assert clean_wikitext(wikitext) == expected


def _tokens(s: str) -> collections.Counter:
    return collections.Counter(s.split())


def test_generated_pages_f1_and_no_clutter():
    pages = [p for p in make_pages(400, seed=7) if p.kept]
    tp = fp = fn = 0
    for p in pages:
        out = clean_wikitext(p.text)
        assert CLUTTER not in out, (p.title, out[max(0, out.find(CLUTTER) - 200):][:400])
        for marker in ("{{", "}}", "[[", "]]", "<ref", "{|", "|}", "__TOC__", "<math", "http://", "https://"):
            assert marker not in out, (p.title, marker)
        a, b = _tokens(out), _tokens(p.expected)
        tp += sum((a & b).values())
        fp += sum((a - b).values())
        fn += sum((b - a).values())
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.97, f1
