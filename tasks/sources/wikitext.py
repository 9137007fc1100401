"""Wikitext -> plain text, fast: a few compiled regexes and balanced-bracket scans, no parser.

Removed: templates `{{...}}` (nested), `<ref>`s, tables `{|...|}` (nested), files and images, categories,
interlanguage links, external links `[http://... label]` and bare URLs, comments, magic words `__TOC__`,
`<math>` and other non-prose extension tags (gallery, timeline, score, syntaxhighlight, ...), and the
See also / Notes / References / Further reading / External links sections (up to the next heading of the
same or a higher level). Kept: link labels, bold and italic text, headings, list items (markers
stripped), the inner text of other HTML tags. HTML entities are decoded last, so `&lt;ref&gt;` written
in the wikitext stays literal text.

    clean_wikitext("'''Paris''' is the [[capital city|capital]] of [[France]].{{citation needed}}")
    -> "Paris is the capital of France."
"""

from __future__ import annotations

import html
import re

__all__ = ["clean_wikitext", "DROPPED_SECTIONS"]

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

_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.S)
_DROP_TAG = re.compile(rf"<({_DROP_TAGS})\b[^>]*?(?:/>|>.*?</\1\s*>)", re.S | re.I)
_BRACES = re.compile(r"\{\{|\}\}")
_TABLE = re.compile(r"^[ \t:]*\{\||^[ \t]*\|\}", re.M)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_INTERLANG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*$")
_EXTLINK = re.compile(r"\[(?:https?:|ftp:|mailto:|//)[^\]\n]*\]", re.I)
_BARE_URL = re.compile(r"(?:https?|ftp)://[^\s<>\[\]{}|]+")
_MAGIC = re.compile(r"__[A-Z]+__")
_BOLD_ITALIC = re.compile(r"''+")
_HEADING = re.compile(r"^(={1,6})[ \t]*(.+?)[ \t]*\1[ \t]*$", re.M)
_LIST = re.compile(r"^[*#:;]+[ \t]*", re.M)
_BR = re.compile(r"<br\s*/?>", re.I)
_TAG = re.compile(r"</?[A-Za-z][\w-]*(?:\s[^<>]*)?/?>")
_SPACES = re.compile(r" [ \t]+|\t[ \t]*")
_BLANKS = re.compile(r"\n{3,}")
_EMPTY_PARENS = re.compile(r"\([\s,;]*\)")
_SPACE_PUNCT = re.compile(r" (?=[,.;:!?])")


def _drop_balanced(text: str, pattern: re.Pattern, is_open) -> str:
    """Drop every outermost balanced span of `pattern`'s open/close markers (nesting counted).

    An unclosed opener loses only its marker, so one stray `{{` never swallows the rest of a page.
    """
    out: list[str] = []
    depth, start, opened = 0, 0, 0
    for m in pattern.finditer(text):
        if is_open(m.group()):
            if depth == 0:
                out.append(text[start:m.start()])
                opened = m.end()
            depth += 1
        elif depth:
            depth -= 1
            if depth == 0:
                start = m.end()
    if depth:
        out.append(_drop_balanced(text[opened:], pattern, is_open))
    else:
        out.append(text[start:])
    return "".join(out)


def _link(m: re.Match) -> str:
    inner = m.group(1)
    target, bar, label = inner.partition("|")
    t = target.strip()
    colon = t.startswith(":")  # [[:Category:X]] and [[:fr:X]] are ordinary inline links
    t = t.lstrip(":")
    prefix, sep, rest = t.partition(":")
    if sep and not colon:
        p = prefix.strip().lower()
        if p in _DROP_NS or _INTERLANG.match(p):
            return ""
    if bar:
        if label:
            return label.rsplit("|", 1)[-1] if prefix.strip().lower() in _DROP_NS else label
        return re.sub(r"\s*\(.*?\)$", "", rest if sep else t)  # the pipe trick: [[Foo (bar)|]] -> Foo
    return t


def _drop_sections(text: str) -> str:
    """Remove the dropped sections: from such a heading to the next heading of the same or higher level."""
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
        name = h.group(2).strip().strip("'").strip().lower()
        if name in DROPPED_SECTIONS:
            out.append(text[pos:h.start()])
            skip_level = level
    if not skip_level:
        out.append(text[pos:])
    return "".join(out)


def _drop_links(text: str) -> str:
    """Resolve `[[...]]` innermost first, so captions holding links are dropped whole with their file."""
    while "[[" in text:
        new = _LINK.sub(_link, text)
        if new == text:
            break
        text = new
    return text


def clean_wikitext(text: str) -> str:
    """Plain text of one page's wikitext (see the module docstring for what goes and what stays)."""
    if "<" in text:
        text = _COMMENT.sub("", text)
        text = _DROP_TAG.sub("", text)
    if "{{" in text:
        text = _drop_balanced(text, _BRACES, lambda s: s[0] == "{")
    if "{|" in text:
        text = _drop_balanced(text, _TABLE, lambda s: s.rstrip().endswith("{|"))
    text = _drop_sections(text)
    if "[[" in text:
        text = _drop_links(text)
    if "[" in text:
        text = _EXTLINK.sub("", text)
    if "://" in text:
        text = _BARE_URL.sub("", text)
    if "__" in text:
        text = _MAGIC.sub("", text)
    if "''" in text:
        text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _LIST.sub("", text)
    if "<" in text:
        text = _BR.sub(" ", text)
        text = _TAG.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    if "(" in text:
        text = _EMPTY_PARENS.sub("", text)
    text = _SPACES.sub(" ", text)
    text = _SPACE_PUNCT.sub("", text)
    text = "\n".join([line.strip(" \t") for line in text.split("\n")])
    text = _BLANKS.sub("\n\n", text)
    return text.strip()
