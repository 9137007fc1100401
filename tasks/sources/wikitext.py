"""Wikitext -> plain text, fast and in linear time: compiled regexes and bracket matching with explicit
stacks (no recursion, no parser), so no page can blow the stack or take quadratic time.

Removed: templates `{{...}}` (nested) except the inline ones in `TEMPLATES`, rendered as their text (convert,
lang, nowrap, as of, ill, abbr, frac, val, circa, birth/death dates, IPA, ...); `<ref>`s; tables `{|...|}`
(nested); files and images with their captions (links inside captions too); categories, interlanguage links,
bare external links `[http://...]` and bare URLs; comments; magic words `__TOC__`; `<math>` and other non-prose
extension tags (gallery, timeline, score, syntaxhighlight, ...); and the See also / Notes / References /
Further reading / External links sections (up to the next heading of the same or a higher level).
Kept: link labels, external-link labels (`[https://x.org the site]` -> "the site"), bold and italic text,
headings, list items (markers stripped), `<code>` and the inner text of other HTML tags, `<nowiki>` content
as literal text. HTML entities are decoded last, so `&lt;ref&gt;` written in the wikitext stays literal text.

Spacing: removed pieces leave a MARK until the end; a run of them (with the spaces around it) leaves nothing
before `,` `.` `;` `:` `)` or a line end, one space if it held a space, else nothing. So a removed reference
never leaves a space before a comma, and the space written before `?` and `!` (French) stays. An unclosed
`{{`, `[[`, `{|` or extension tag loses only its marker, so one stray opener never swallows the rest of a page.

    clean_wikitext("'''Paris''' is the [[capital city|capital]] of [[France]].{{citation needed}}")
    -> "Paris is the capital of France."
"""

from __future__ import annotations

import html
import math
import re
import time
from typing import Callable

__all__ = ["clean_wikitext", "DROPPED_SECTIONS", "TEMPLATES", "UNITS", "PageTimeout", "template_renderer"]

DROPPED_SECTIONS = frozenset(
    {
        "see also", "notes", "references", "further reading", "external links",
        "footnotes", "citations", "notes and references", "references and notes", "sources",
    }
)
# Extension tags dropped with their content.
_DROP_TAGS = (
    "ref|references|math|chem|ce|gallery|timeline|score|syntaxhighlight|source|graph|mapframe|maplink|"
    "imagemap|templatedata|inputbox|categorytree|includeonly|hiero|phonos|section"
)
# Link prefixes that are not prose: files, categories (localized names of the common wikis too).
_DROP_NS = frozenset(
    "file image media category datei bild kategorie fichier catégorie archivo imagen categoría "
    "immagine categoria arquivo ficheiro файл категория ファイル 画像 カテゴリ 文件 图像 分类".split()
)

# What a removed piece leaves behind until the spacing pass: never in text (NUL is stripped on the way in).
MARK = "\x00"
MAX_RENDER_DEPTH = 64  # rendered templates / links nested deeper are dropped whole
CHECK_EVERY = 4096  # bracket tokens between two looks at the clock (only when a deadline is given)


class PageTimeout(Exception):
    """A page ran past its time budget (`clean_wikitext(..., deadline=...)`)."""


_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_XTAG = re.compile(rf"<(/?)({_DROP_TAGS}|nowiki)\b([^<>]*)>", re.I)
# `|}` before an even run of `}`: a table (or a `{{{x|}}}`) closing inside a template, then the template
_BRACE_TOK = re.compile(r"\{\{|\|\}(?=(?:\}\}){1,3}(?!\}))\}\}|\}\}")
_TABLE_TOK = re.compile(r"^[ \t:]*\{\||^[ \t]*\|\}", re.M)
# an odd run of `]`: an external link closing inside a file caption, then the link (`... [http://x y]]]`)
_LINK_TOK = re.compile(r"\[\[|\](?=(?:\]\]){1,3}(?!\]))\]\]|\]\]")
_TNAME = re.compile(r"\s*([^{}|\[\]<>\n]{1,80})")
_LPREFIX = re.compile(r"[ \t]*(:?)[ \t]*([^|\[\]:\n]{1,40}):")
_INTERLANG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*$")
_EXTLINK = re.compile(r"\[((?:https?:|ftp:|mailto:|//)[^\]\[\n]*)\]", re.I)
_BARE_URL = re.compile(r"(?:https?|ftp)://[^\s<>\[\]{}|\x00]+")
_MAGIC = re.compile(r"__[A-Z]+__")
_BOLD_ITALIC = re.compile(r"''+")
# line-start patterns look for a newline (a literal: fast); the text gets one in front while it is cleaned
_HEADING = re.compile(r"\n(={1,6})(.+)\1[ \t]*(?=\n|\Z)")
_LIST = re.compile(r"\n[*#:;]+[ \t]*")
_BR = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
_SPACES = re.compile(r"[ \t]{2,}|\t")
_EMPTY_PARENS = re.compile(r"\([ \x00,;]*\)")
_PAREN_LEAD = re.compile(r"\(([ \x00]*+)[,;] *")
# A run of removed pieces (spaces moved behind them first) before punctuation or a line end leaves nothing;
# one holding a space leaves one space (so the space written before `?`/`!` stays); any other leaves nothing.
# (each starts only at a run's first marker, `(?<!...)`, so a long run is scanned once, not once per marker)
_MARKS_GONE = re.compile(r"\x00(?<![\x00 ]\x00)[\x00 ]*+(?=[,.;:)\n]|\Z)")
_MARKS_SPACE = re.compile(r"\x00(?<![\x00 ]\x00)\x00*+ [\x00 ]*+")
_XTAG_SIMPLE = re.compile(rf"<({_DROP_TAGS})\b[^<>]*(?:/>|>[^<]*</\1\s*>)", re.I)  # the common case, in C
_TPL_INNER = re.compile(r"\{\{([^{}]*)\}\}")  # an innermost template, the common case
_LINK_INNER = re.compile(r"\[\[([^\[\]]*)\]\](?!\])")  # an innermost link
_NOWIKI_ESC = str.maketrans({c: f"&#{ord(c)};" for c in "{}[]|'<>_=*#:;~"})


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise PageTimeout("the page ran past its time budget")


# --- extension tags ------------------------------------------------------------------------------


def _drop_tags(text: str) -> str:
    """Drop `<ref>...</ref>` and the other non-prose extension tags with their content, in one pass.

    Extension tags do not nest: an opener ends at the next closer of its name (found with one forward-only
    pointer per name, so 50,000 unclosed `<ref>` cost one scan); an unclosed opener loses only itself.
    Positions are kept as plain ints, not match objects, so a huge page gives the garbage collector nothing
    to walk."""
    cstarts: dict[str, list[int]] = {}
    cends: dict[str, list[int]] = {}
    seen = False
    for m in _XTAG.finditer(text):
        seen = True
        if m.group(1):
            name = m.group(2).lower()
            cstarts.setdefault(name, []).append(m.start())
            cends.setdefault(name, []).append(m.end())
    if not seen:
        return text
    ptr = dict.fromkeys(cstarts, 0)
    out: list[str] = []
    pos = 0
    for m in _XTAG.finditer(text):
        s = m.start()
        if s < pos:
            continue
        out.append(text[pos:s])
        pos = m.end()
        if m.group(1) or m.group(3).endswith("/"):  # a stray closer, or `<ref name="x" />`
            out.append(MARK)
            continue
        name = m.group(2).lower()
        lst = cstarts.get(name)
        i = -1
        if lst:
            i = ptr[name]
            while i < len(lst) and lst[i] < pos:
                i += 1
            ptr[name] = i
        if i < 0 or i >= len(lst):
            out.append(MARK)
        else:
            out.append(text[pos:lst[i]].translate(_NOWIKI_ESC) if name == "nowiki" else MARK)
            pos = cends[name][i]
    out.append(text[pos:])
    return "".join(out)


# --- bracket matching ----------------------------------------------------------------------------


def _pairs(opens: list[bool]) -> list[int]:
    """For each token, the index of its partner (-1: unmatched), matched innermost first with a stack."""
    partner = [-1] * len(opens)
    stack: list[int] = []
    for i, is_open in enumerate(opens):
        if is_open:
            stack.append(i)
        elif stack:
            j = stack.pop()
            partner[i], partner[j] = j, i
    return partner


def _resolve(text: str, pattern: re.Pattern, is_open: Callable[[str], bool],
             opener: Callable[[str, int], Callable[[str], str] | None], deadline: float | None) -> str:
    """Replace every matched bracket pair, innermost first, without recursion.

    `opener(text, end_of_open_token)` says what a pair becomes: None drops it whole (nothing inside is
    looked at again), else a function of its inner text (inner pairs already replaced) giving the text to
    keep. An unmatched opener or closer loses only its marker. Linear in the page: rendered inner text is
    copied once per enclosing rendered pair, and at most MAX_RENDER_DEPTH of those nest. Token positions are
    plain ints (no match objects kept alive: nothing for the garbage collector to walk on a huge page)."""
    starts: list[int] = []
    ends: list[int] = []
    opens: list[bool] = []
    for m in pattern.finditer(text):
        starts.append(m.start())
        ends.append(m.end())
        opens.append(is_open(m.group()))
    if not starts:
        return text
    partner = _pairs(opens)
    out: list[str] = []
    frames: list[tuple[list[str], Callable[[str], str]]] = []
    pos = skip = 0
    for i, s in enumerate(starts):
        if s < skip:
            continue
        if deadline is not None and not i % CHECK_EVERY:
            _check(deadline)
        j = partner[i]
        out.append(text[pos:s])
        pos = ends[i]
        if j < 0:  # unmatched: the marker goes, the text stays
            out.append(MARK)
        elif j > i:  # an opener (nested deeper than MAX_RENDER_DEPTH rendered ones: dropped, to stay linear)
            render = opener(text, pos) if len(frames) < MAX_RENDER_DEPTH else None
            if render is None:
                out.append(MARK)
                pos = skip = ends[j]
            else:
                frames.append((out, render))
                out = []
        else:  # the closer of the innermost open frame
            parent, render = frames.pop()
            try:
                kept = render("".join(out))
            except Exception:  # a template we could not render is dropped, not the page
                kept = ""
            parent.append(kept or MARK)
            out = parent
    out.append(text[pos:])
    return "".join(out)


# --- templates -----------------------------------------------------------------------------------


def _template_opener(text: str, at: int) -> Callable[[str], str] | None:
    m = _TNAME.match(text, at)
    if not m or len(m.group(1)) >= 80:
        return None
    fn = template_renderer(m.group(1).partition("|")[0])
    if fn is None:
        return None
    return lambda inner: render_args(fn, inner)


def _table_opener(text: str, at: int) -> None:
    return None


def _link_opener(text: str, at: int) -> Callable[[str], str] | None:
    m = _LPREFIX.match(text, at)
    if m and not m.group(1):
        p = m.group(2).strip().lower()
        if p in _DROP_NS or _INTERLANG.match(p):
            return None  # files with their captions (links inside too), categories, interlanguage links
    return _link


def _link(inner: str) -> str:
    target, bar, label = inner.partition("|")
    t = target.strip()
    colon = t.startswith(":")  # [[:Category:X]] and [[:fr:X]] are ordinary inline links
    t = t.lstrip(":")
    prefix, sep, rest = t.partition(":")
    if bar:
        if label:
            return label.rsplit("|", 1)[-1] if not colon and prefix.strip().lower() in _DROP_NS else label
        t = rest if sep else t  # the pipe trick: [[Foo (bar)|]] -> Foo, [[Help:Foo|]] -> Foo
        if t.endswith(")") and " (" in t:
            t = t[: t.rfind(" (")]
        return t
    return t


def _ext_link(m: re.Match) -> str:
    url, _, label = m.group(1).partition(" ")
    return label.strip() or MARK


# --- sections ------------------------------------------------------------------------------------


def _drop_sections(text: str) -> str:
    """Headings become their text, and the dropped sections go: from such a heading to the next heading of
    the same or a higher level."""
    heads = list(_HEADING.finditer(text))
    if not heads:
        return text
    out, pos, skip_level = [], 0, 0
    for h in heads:
        level = len(h.group(1))
        if skip_level:
            if level > skip_level:
                continue
            pos, skip_level = h.start(), 0
        out.append(text[pos:h.start()])
        pos = h.end()
        name = h.group(2)
        if name.replace(MARK, "").strip().strip("'").strip().lower() in DROPPED_SECTIONS:
            skip_level = level
        else:
            out.append("\n")
            out.append(name)
    if not skip_level:
        out.append(text[pos:])
    return "".join(out)


# --- spacing -------------------------------------------------------------------------------------


def _empty_parens(m: re.Match) -> str:
    return MARK if MARK in m.group() else m.group()


def _paren_lead(m: re.Match) -> str:
    return "(" if MARK in m.group(1) else m.group()


def _inner_template(m: re.Match) -> str:
    s, e = m.span()
    text = m.string
    if (s and text[s - 1] == "{") or text[e: e + 1] == "}":  # `{{{x}}}`, `{{a|{|..|}}}`: the stack pass decides
        return m.group()
    inner = m.group(1)
    fn = template_renderer(inner.partition("|")[0])
    if fn is None:
        return MARK
    try:
        return render_args(fn, inner) or MARK
    except Exception:  # a template we could not render is dropped, not the page
        return MARK


def _inner_link(m: re.Match) -> str:
    inner = m.group(1)
    p = _LPREFIX.match(inner)
    if p and not p.group(1):
        ns = p.group(2).strip().lower()
        if ns in _DROP_NS or _INTERLANG.match(ns):
            return MARK
    return _link(inner) or MARK


def clean_wikitext(text: str, deadline: float | None = None) -> str:
    """Plain text of one page's wikitext (see the module docstring for what goes and what stays).

    `deadline` (a `time.monotonic()` value): raise PageTimeout once it has passed (looked at between stages
    and every CHECK_EVERY bracket tokens, never per regex)."""
    if MARK in text:
        text = text.replace(MARK, "")
    text = "\n" + text
    if "<" in text:
        text = _COMMENT.sub(MARK, text)
        text = _XTAG_SIMPLE.sub(MARK, text)
        text = _drop_tags(text)
    if "{{" in text:
        text = _TPL_INNER.sub(_inner_template, text)  # most templates; nested ones, in linear time, below
    if "{{" in text or "}}" in text:
        text = _resolve(text, _BRACE_TOK, lambda s: s == "{{", _template_opener, deadline)
    if "{|" in text or "|}" in text:
        _check(deadline)
        text = _resolve(text, _TABLE_TOK, lambda s: s.endswith("{|"), _table_opener, deadline)
    _check(deadline)
    text = _drop_sections(text)
    if "[[" in text:
        text = _LINK_INNER.sub(_inner_link, text)
    if "[[" in text or "]]" in text:
        text = _resolve(text, _LINK_TOK, lambda s: s == "[[", _link_opener, deadline)
    _check(deadline)
    if "[" in text:
        text = _EXTLINK.sub(_ext_link, text)
    if "://" in text:
        text = _BARE_URL.sub(MARK, text)
    if "__" in text:
        text = _MAGIC.sub(MARK, text)
    if "''" in text:
        text = _BOLD_ITALIC.sub("", text)
    text = _LIST.sub("\n", text)
    if "<" in text:
        text = _BR.sub(" ", text)
        text = _TAG.sub(MARK, text)
    if "&" in text:
        text = html.unescape(text)
    if "  " in text or "\t" in text:
        text = _SPACES.sub(" ", text)
    if MARK in text:
        if "(" in text:
            text = _EMPTY_PARENS.sub(_empty_parens, text)
            text = _PAREN_LEAD.sub(_paren_lead, text)
        text = text.replace(" \x00", "\x00 ")
        text = _MARKS_GONE.sub("", text)
        text = _MARKS_SPACE.sub(" ", text)
        text = text.replace(MARK, "")
    text = text.replace(" \n", "\n").replace("\n ", "\n")  # spaces are single by now
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


# --- inline templates rendered as text -----------------------------------------------------------
#
# TEMPLATES maps a normalized template name (lowercase, `_` -> space, single spaces) to a function of
# (positional arguments, named arguments) returning the text the template shows. Add a line to extend it.
# A template not in the table is dropped.

MONTHS = ("January February March April May June July August September October November December").split()
LANG_NAMES = {
    "ar": "Arabic", "de": "German", "el": "Greek", "grc": "Ancient Greek", "es": "Spanish", "fa": "Persian",
    "fr": "French", "he": "Hebrew", "hi": "Hindi", "it": "Italian", "ja": "Japanese", "ko": "Korean",
    "la": "Latin", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ru": "Russian", "sv": "Swedish",
    "tr": "Turkish", "uk": "Ukrainian", "zh": "Chinese", "ga": "Irish", "cy": "Welsh", "sa": "Sanskrit",
}


def _clean(s: str) -> str:
    return s.replace(MARK, "").strip()


def _split_args(inner: str) -> list[str]:
    """Split a template's inner text on the `|` that are not inside a `[[link|label]]`."""
    if "[[" not in inner:
        return inner.split("|")
    parts, depth, start = [], 0, 0
    for m in re.finditer(r"\[\[|\]\]|\|", inner):
        g = m.group()
        if g == "[[":
            depth += 1
        elif g == "]]":
            depth = max(0, depth - 1)
        elif not depth:
            parts.append(inner[start:m.start()])
            start = m.end()
    parts.append(inner[start:])
    return parts


def render_args(fn: Callable[[list[str], dict[str, str]], str], inner: str) -> str:
    """Call a renderer with the positional and named arguments of a template's inner text (name first)."""
    parts = _split_args(inner)
    if "=" not in inner:
        return fn([a.strip() for a in parts[1:]], {})
    positional: list[str] = []
    numbered: dict[int, str] = {}
    named: dict[str, str] = {}
    for a in parts[1:]:
        k, eq, v = a.partition("=")
        key = k.strip()
        if eq and key and not any(c in key for c in "<>[]{}\"'"):
            if key.isdigit():
                numbered[int(key)] = v.strip()
            else:
                named[key.lower()] = v.strip()
        else:
            positional.append(a.strip())
    for n, v in sorted(numbered.items()):
        while len(positional) < n - 1:
            positional.append("")
        if len(positional) >= n:
            positional[n - 1] = v
        else:
            positional.append(v)
    return fn(positional, named)


def _first(p: list[str], n: dict[str, str]) -> str:
    return p[0] if p else ""


def _last(p: list[str], n: dict[str, str]) -> str:
    return p[-1] if p else ""


def _joined(p: list[str], n: dict[str, str]) -> str:
    return "".join(p)


def _second(p: list[str], n: dict[str, str]) -> str:
    return p[1] if len(p) > 1 else (n.get("text") or "")


def _const(s: str) -> Callable[[list[str], dict[str, str]], str]:
    return lambda p, n: s


def _quote(p: list[str], n: dict[str, str]) -> str:
    return n.get("text") or n.get("quote") or (p[0] if p else "")


def _lang_x(code: str | None) -> Callable[[list[str], dict[str, str]], str]:
    """`{{lang-fr|bonjour}}` / `{{langx|fr|bonjour}}` -> "French: bonjour" (as Wikipedia shows it)."""

    def render(p: list[str], n: dict[str, str]) -> str:
        c, rest = (code, p) if code else ((p[0] if p else ""), p[1:])
        text = rest[0] if rest else n.get("text", "")
        name = LANG_NAMES.get(c.lower())
        if not text or not name or n.get("label", "").lower() == "none":
            return text
        return f"{n.get('label') or name}: {text}"

    return render


def _yes(v: str | None) -> bool:
    return (v or "").strip().lower() in ("y", "yes", "on", "true", "1")


def _int(s: str) -> int | None:
    s = _clean(s)
    return int(s) if s.isdigit() or (s[:1] == "-" and s[1:].isdigit()) else None


def _fmt_date(y: int | None, m: int | None, d: int | None, dmy: bool) -> str:
    if y is None:
        return ""
    if not m or not 1 <= m <= 12:
        return str(y)
    if not d:
        return f"{MONTHS[m - 1]} {y}"
    return f"{d} {MONTHS[m - 1]} {y}" if dmy else f"{MONTHS[m - 1]} {d}, {y}"


def _ymd(p: list[str], at: int = 0) -> tuple[int | None, int | None, int | None]:
    vals = [_int(x) for x in p[at: at + 3]] + [None, None, None]
    if vals[0] is None and p[at:at + 1]:  # `{{birth date|1950-05-17}}`
        m = re.fullmatch(r"(\d{1,4})-(\d{1,2})-(\d{1,2})", _clean(p[at]))
        if m:
            return int(m.group(1)), int(m.group(2)), int(m.group(3))
    return vals[0], vals[1], vals[2]


def _dmy(n: dict[str, str]) -> bool:
    return _yes(n.get("df")) and not _yes(n.get("mf"))


def _date(p: list[str], n: dict[str, str]) -> str:
    """birth date, death date, start date...: the date only. `{{birth date and age}}` also shows the age
    today, which changes over time: cook renders its date only, so a page's text does not depend on the day
    it was read."""
    return _fmt_date(*_ymd(p), _dmy(n))


def _age(y: int, m: int | None, d: int | None, by: int, bm: int | None, bd: int | None) -> int:
    return y - by - (1 if (m or 0, d or 0) < (bm or 0, bd or 0) else 0)


def _death_date_and_age(p: list[str], n: dict[str, str]) -> str:
    y, m, d = _ymd(p)
    by, bm, bd = _ymd(p, 3)
    date = _fmt_date(y, m, d, _dmy(n))
    if y is None or by is None:
        return date
    if m and d and bm and bd:
        return f"{date} (aged {_age(y, m, d, by, bm, bd)})"
    return f"{date} (aged {y - by - 1}–{y - by})"


def _death_year_and_age(p: list[str], n: dict[str, str]) -> str:
    y, by = (_int(p[0]) if p else None), (_int(p[1]) if len(p) > 1 else None)
    if y is None:
        return ""
    return f"{y} (aged {y - by - 1}–{y - by})" if by is not None else str(y)


def _year(p: list[str], n: dict[str, str]) -> str:
    return _clean(p[0]) if p else ""


def _as_of(p: list[str], n: dict[str, str]) -> str:
    if n.get("alt"):
        return n["alt"]
    y, m, d = _ymd(p)
    date = _fmt_date(y, m, d, not (n.get("df", "").lower() == "us"))
    if not date:
        return ""
    word = "Since" if _yes(n.get("since")) else "As of"
    if _yes(n.get("lc")):
        word = word.lower()
    return f"{word} {date}"


def _circa(p: list[str], n: dict[str, str]) -> str:
    if not p:
        return "c."
    return f"c. {p[0]}" + (f" – c. {p[1]}" if len(p) > 1 and p[1] else "")


def _frac(p: list[str], n: dict[str, str]) -> str:
    p = [_clean(x) for x in p if _clean(x)]
    if len(p) == 1:
        return f"1/{p[0]}"
    if len(p) == 2:
        return f"{p[0]}/{p[1]}"
    if len(p) >= 3:
        return f"{p[0]} {p[1]}/{p[2]}"
    return ""


def _val(p: list[str], n: dict[str, str]) -> str:
    if not p:
        return ""
    s = _clean(p[0])
    if n.get("fmt", "").lower() == "commas":
        s = _group(s)
    if len(p) > 2 and p[1] and p[2]:  # asymmetric uncertainty
        s += f"+{_clean(p[1]).lstrip('+')}−{_clean(p[2]).lstrip('-−')}"
    elif len(p) > 1 and p[1]:
        u = _clean(p[1])
        s += u if u.startswith("(") else f"±{u}"
    if n.get("e"):
        s += f"×10^{n['e']}"
    unit = n.get("u") or n.get("ul") or ""
    per = n.get("up") or n.get("upl") or ""
    if unit:
        s += f" {unit}"
    if per:
        s += f"/{per}"
    return f"{n.get('p', '')}{s}{n.get('s', '')}"


def _ill(p: list[str], n: dict[str, str]) -> str:
    return n.get("lt") or (p[0] if p else "")


def _ipa(p: list[str], n: dict[str, str]) -> str:
    if len(p) > 1 and _INTERLANG.match(p[0].strip().lower()) and p[1]:  # `{{IPA|fr|paʁi}}`
        return p[1]
    return p[0] if p else ""


def _ipa_x(p: list[str], n: dict[str, str]) -> str:
    """`{{IPA-fr|paʁi}}` -> "[paʁi]"."""
    s = p[0].strip() if p else ""
    return s if not s or s[0] in "/[" else f"[{s}]"


_IPAC_LABELS = frozenset("lang local pron uk us also ipa audio".split())


def _ipac(p: list[str], n: dict[str, str]) -> str:
    """`{{IPAc-en|ˈ|p|ær|ɪ|s}}` -> "/ˈpærɪs/"."""
    parts = [x.strip() for x in p if x.strip() and x.strip().lower() not in _IPAC_LABELS]
    return f"/{''.join(parts)}/" if parts else ""


# --- convert -------------------------------------------------------------------------------------

# aliases, kind, factor to the kind's base unit, offset (temperatures), name, plural, symbol, default output
_UNIT_SPEC = [
    ("m metre meter metres meters", "length", 1, 0, "metre", "metres", "m", "ft"),
    ("km kilometre kilometer kilometres kilometers", "length", 1000, 0, "kilometre", "kilometres", "km", "mi"),
    ("cm centimetre centimeter", "length", 0.01, 0, "centimetre", "centimetres", "cm", "in"),
    ("mm millimetre millimeter", "length", 0.001, 0, "millimetre", "millimetres", "mm", "in"),
    ("ft foot feet", "length", 0.3048, 0, "foot", "feet", "ft", "m"),
    ("in inch inches", "length", 0.0254, 0, "inch", "inches", "in", "mm"),
    ("yd yard yards", "length", 0.9144, 0, "yard", "yards", "yd", "m"),
    ("mi mile miles", "length", 1609.344, 0, "mile", "miles", "mi", "km"),
    ("nmi", "length", 1852, 0, "nautical mile", "nautical miles", "nmi", "km"),
    ("m2 sqm", "area", 1, 0, "square metre", "square metres", "m²", "sqft"),
    ("km2 sqkm", "area", 1e6, 0, "square kilometre", "square kilometres", "km²", "sqmi"),
    ("ha hectare hectares", "area", 1e4, 0, "hectare", "hectares", "ha", "acre"),
    ("sqft ft2", "area", 0.09290304, 0, "square foot", "square feet", "sq ft", "m2"),
    ("sqmi mi2", "area", 2589988.110336, 0, "square mile", "square miles", "sq mi", "km2"),
    ("acre acres", "area", 4046.8564224, 0, "acre", "acres", "acres", "ha"),
    ("kg kilogram kilograms", "mass", 1, 0, "kilogram", "kilograms", "kg", "lb"),
    ("g gram grams", "mass", 0.001, 0, "gram", "grams", "g", "oz"),
    ("t tonne tonnes", "mass", 1000, 0, "tonne", "tonnes", "t", "ST"),
    ("lb pound pounds", "mass", 0.45359237, 0, "pound", "pounds", "lb", "kg"),
    ("oz ounce ounces", "mass", 0.028349523125, 0, "ounce", "ounces", "oz", "g"),
    ("ST shortton", "mass", 907.18474, 0, "short ton", "short tons", "short tons", "t"),
    ("LT longton", "mass", 1016.0469088, 0, "long ton", "long tons", "long tons", "t"),
    ("C °C degC", "temperature", 1, 273.15, "degree Celsius", "degrees Celsius", "°C", "F"),
    ("F °F degF", "temperature", 5 / 9, 459.67, "degree Fahrenheit", "degrees Fahrenheit", "°F", "C"),
    ("K kelvin", "temperature", 1, 0, "kelvin", "kelvins", "K", "C"),
    ("km/h kph", "speed", 1 / 3.6, 0, "kilometre per hour", "kilometres per hour", "km/h", "mph"),
    ("mph mi/h", "speed", 0.44704, 0, "mile per hour", "miles per hour", "mph", "km/h"),
    ("m/s", "speed", 1, 0, "metre per second", "metres per second", "m/s", "ft/s"),
    ("ft/s", "speed", 0.3048, 0, "foot per second", "feet per second", "ft/s", "m/s"),
    ("kn knot knots", "speed", 0.514444, 0, "knot", "knots", "kn", "km/h"),
    ("L l litre liter litres liters", "volume", 0.001, 0, "litre", "litres", "L", "USgal"),
    ("USgal", "volume", 0.003785411784, 0, "US gallon", "US gallons", "US gal", "L"),
    ("impgal", "volume", 0.00454609, 0, "imperial gallon", "imperial gallons", "imp gal", "L"),
    ("m3", "volume", 1, 0, "cubic metre", "cubic metres", "m³", "cuft"),
    ("cuft ft3", "volume", 0.028316846592, 0, "cubic foot", "cubic feet", "cu ft", "m3"),
    ("kW kilowatt", "power", 1000, 0, "kilowatt", "kilowatts", "kW", "hp"),
    ("hp horsepower", "power", 745.69987158227022, 0, "horsepower", "horsepower", "hp", "kW"),
]
UNITS: dict[str, tuple] = {}
for _spec in _UNIT_SPEC:
    for _alias in _spec[0].split():
        UNITS.setdefault(_alias, _spec[1:])
_RANGE = {"to": " to ", "-": "–", "–": "–", "and": " and ", "or": " or ", "to(-)": " to ", "and(-)": " and "}


def _parse_num(s: str) -> float | None:
    s = _clean(s).replace("−", "-").replace(",", "")
    try:
        return float(s)
    except ValueError:
        return None


def _group(s: str) -> str:
    """`1000` -> `1,000` (digits of the integer part grouped by threes), `-5` -> `−5`."""
    s = _clean(s).replace(",", "")
    sign = "−" if s[:1] in "-−" else ""
    s = s.lstrip("+-−")
    i, dot, d = s.partition(".")
    if i.isdigit():
        i = f"{int(i):,}" if len(i) > 3 else i
    return f"{sign}{i}{dot}{d}"


def _round_str(v: float, prec: int) -> str:
    scaled = math.floor(abs(v) * 10.0 ** prec + 0.5) / 10.0 ** prec
    s = f"{scaled:,.{prec}f}" if prec > 0 else f"{int(scaled):,}"
    return ("−" + s) if v < 0 and scaled else s


def _input_prec(s: str) -> int:
    s = _clean(s).replace(",", "").lstrip("+-−")
    i, dot, d = s.partition(".")
    if dot:
        return len(d)
    return -(len(i) - len(i.rstrip("0"))) if i.strip("0") else 0


def _convert_one(v: float, u_in: tuple, u_out: tuple) -> float:
    base = (v + u_in[2]) * u_in[1]
    return base / u_out[1] - u_out[2]


def _default_prec(instr: str, v: float, out: float, u_in: tuple, u_out: tuple) -> int:
    """Template:Convert's default rounding: the input's precision, one digit less per factor of ten the
    conversion multiplies by (factor 2..20: one less, 0.2..2: the same, 0.02..0.2: one more), or two
    significant digits (temperatures: three in kelvin), whichever is more precise."""
    prec = _input_prec(instr)
    ratio = u_in[1] / u_out[1]
    prec += -math.floor(math.log10(ratio / 2)) - 1
    if u_in[0] == "temperature":
        kelvin = abs((v + u_in[2]) * u_in[1])
        minprec = 2 - math.floor(math.log10(kelvin) + 1e-14) if kelvin > 1e-8 else 2
    elif out == 0:
        return max(prec, 0)
    else:
        minprec = 1 - math.floor(math.log10(abs(out)) + 1e-14)
    return max(prec, minprec)


def _sigfig(v: float, n: int) -> int:
    return n - 1 - math.floor(math.log10(abs(v))) if v else 0


def _unit_text(u: tuple, plural: bool, abbr: bool, us: bool) -> str:
    if abbr:
        return u[5]
    name = u[4] if plural else u[3]
    return name.replace("metre", "meter").replace("litre", "liter") if us else name


def _convert(p: list[str], n: dict[str, str], abbr_default: str = "out") -> str:
    """`{{convert|1000|m|ft}}` -> "1,000 metres (3,300 ft)", as Template:Convert shows it (its default
    rounding: see `_default_prec`). Ranges (`|10|to|20|km|`), `abbr=on/off/in/out`, `sp=us`, `adj=on`,
    `disp=or/flip/out`, a precision as the 4th argument and `sigfig=` are followed; other named arguments
    are ignored. An unknown unit shows the value and unit as written."""
    p = [_clean(x) for x in p]
    if not p:
        return ""
    values, seps, i = [p[0]], [], 1
    while i + 1 < len(p) and p[i] in _RANGE:
        seps.append(_RANGE[p[i]])
        values.append(p[i + 1])
        i += 2
    unit = p[i] if i < len(p) else ""
    nums = [_parse_num(x) for x in values]
    u_in = UNITS.get(unit)
    sub = None  # `{{convert|6|ft|2|in|m}}`
    if u_in and unit in ("ft", "foot", "feet") and len(values) == 1 and i + 2 < len(p) and p[i + 2] in ("in", "inch", "inches") \
            and _parse_num(p[i + 1]) is not None:
        sub = (p[i + 1], _parse_num(p[i + 1]))
        i += 2
    out_codes = (p[i + 1] if i + 1 < len(p) and p[i + 1] else "").split()
    explicit = _int(p[i + 2]) if i + 2 < len(p) and p[i + 2] else None
    abbr = (n.get("abbr") or abbr_default).lower()
    us = n.get("sp", "").lower() == "us"
    adj = _yes(n.get("adj"))
    if None in nums or u_in is None:
        shown = values[0] + "".join(f"{s}{v}" for s, v in zip(seps, values[1:]))
        return f"{shown} {unit}".strip()
    if not out_codes:
        out_codes = [u_in[6]]
    in_abbr = abbr in ("on", "in", "unit", "values") or (u_in[0] == "temperature" and abbr != "off")
    out_abbr = abbr not in ("off", "in")
    plural = not (len(values) == 1 and nums[0] == 1 and sub is None)
    in_num = "".join([_group(values[0])] + [f"{s}{_group(v)}" for s, v in zip(seps, values[1:])])
    if sub is not None:
        in_text = (f"{in_num} {_unit_text(u_in, nums[0] != 1, in_abbr, us)} {_group(sub[0])} "
                   f"{_unit_text(UNITS['in'], sub[1] != 1, in_abbr, us)}")
        nums = [nums[0] + sub[1] / 12]
    elif adj and not in_abbr:
        in_text = f"{in_num}-{_unit_text(u_in, False, False, us)}"
    else:
        in_text = f"{in_num} {_unit_text(u_in, plural, in_abbr, us)}"
    outs = []
    for code in out_codes:
        if code == "ftin" and u_in[0] == "length":
            inches = [math.floor(_convert_one(v, u_in, UNITS["in"]) + 0.5) for v in nums]
            feet = [f"{x // 12} {'ft' if out_abbr else 'feet'} {x % 12} {'in' if out_abbr else 'inches'}" for x in inches]
            outs.append("".join([feet[0]] + [f"{s}{f}" for s, f in zip(seps, feet[1:])]))
            continue
        u_out = UNITS.get(code)
        if u_out is None or u_out[0] != u_in[0]:
            continue
        conv = [_convert_one(v, u_in, u_out) for v in nums]
        if explicit is not None:
            prec = explicit
        elif n.get("sigfig", "").isdigit():
            prec = max(_sigfig(c, int(n["sigfig"])) for c in conv)
        elif sub is not None:
            prec = 2 if u_out[1] >= 1 else 0
        else:
            prec = max(_default_prec(s, v, c, u_in, u_out) for s, v, c in zip(values, nums, conv))
        text = "".join([_round_str(conv[0], prec)] + [f"{s}{_round_str(c, prec)}" for s, c in zip(seps, conv[1:])])
        outs.append(f"{text} {_unit_text(u_out, True, out_abbr, us)}")
    if not outs:
        return in_text
    disp = n.get("disp", "").lower()
    if disp in ("out", "output only"):
        return outs[0]
    if disp == "or":
        return f"{in_text} or {'; '.join(outs)}"
    if disp == "flip" or n.get("order", "").lower() == "flip":
        return f"{outs[0]} ({in_text})"
    return f"{in_text} ({'; '.join(outs)})"


def _cvt(p: list[str], n: dict[str, str]) -> str:
    return _convert(p, n, abbr_default="on")


def _money(symbol: str) -> Callable[[list[str], dict[str, str]], str]:
    return lambda p, n: f"{symbol}{_clean(p[0])}" if p else symbol


TEMPLATES: dict[str, Callable[[list[str], dict[str, str]], str]] = {
    "convert": _convert, "cvt": _cvt,
    "lang": _second, "transl": _second, "transliteration": _second, "langx": _lang_x(None),
    "nowrap": _first, "nobr": _first, "nobreak": _first, "no wrap": _first, "nowr": _first,
    "as of": _as_of, "asof": _as_of,
    "ill": _ill, "interlanguage link": _ill, "interlanguage link multi": _ill, "ill2": _ill,
    "abbr": _first, "abbreviation": _first, "tooltip": _first,
    "frac": _frac, "fraction": _frac, "sfrac": _frac,
    "val": _val,
    "circa": _circa, "c.": _circa, "ca.": _circa, "ca": _circa,
    "birth date": _date, "dob": _date, "birth-date": _date, "birthdate": _date,
    "birth date and age": _date, "bda": _date, "birth date and age2": _date,
    "death date": _date, "dod": _date, "death-date": _date,
    "death date and age": _death_date_and_age, "dda": _death_date_and_age,
    "start date": _date, "end date": _date, "start date and age": _date, "end date and age": _date,
    "birth year and age": _year, "death year and age": _death_year_and_age,
    "ipa": _ipa, "ipac-en": _ipac, "ipa-all": _ipa_x,
    "quote": _quote, "blockquote": _quote, "cquote": _quote, "quotation": _quote,
    "sic": _joined, "small": _first, "smaller": _first, "big": _first, "larger": _first, "resize": _last,
    "em": _first, "strong": _first, "var": _first, "mvar": _first, "math": _first, "vanchor": _first,
    "visible anchor": _first, "nobold": _first, "noitalic": _first,
    "ndash": _const("–"), "mdash": _const("—"), "snd": _const(" – "), "spaced ndash": _const(" – "),
    "spaced en dash": _const(" – "), "nbsp": _const("\xa0"),
    "us$": _money("US$"), "usd": _money("US$"),
}


_RENDERERS: dict[str, Callable | None] = {}  # template name as written -> renderer (a cache)


def template_renderer(raw_name: str) -> Callable[[list[str], dict[str, str]], str] | None:
    """The TEMPLATES entry for a template name as written (`Template:Lang-fr`, `Birth_date`, ...), or None."""
    try:
        return _RENDERERS[raw_name]
    except KeyError:
        pass
    if len(raw_name) > 80:
        return None
    if len(_RENDERERS) > 50_000:
        _RENDERERS.clear()
    fn = _RENDERERS[raw_name] = _renderer(raw_name)
    return fn


def _renderer(raw_name: str) -> Callable[[list[str], dict[str, str]], str] | None:
    name = " ".join(raw_name.replace("_", " ").split()).lower()
    if not name or name[0] == "#":
        return None
    if name.startswith("template:"):
        name = name[9:].lstrip()
    fn = TEMPLATES.get(name)
    if fn is None and name.startswith("lang-"):  # `{{lang-fr|bonjour}}` -> "French: bonjour"
        return _lang_x(name[5:])
    if fn is None and name.startswith("ipa-"):
        return _ipa_x
    return fn
