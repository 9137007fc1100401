"""A mixed corpus for filter tests: real text (Python's help topics and docstrings) and generated text of the
shapes cook gathers (Wikipedia pages through `clean_wikitext`, Cosmopedia-style markdown with `### Step N`
headings, dialogue, speech transcripts), plus deliberately bad documents (spam, word lists, symbol soup,
bullet-only pages, ...). Deterministic for a seed; nothing is downloaded.

    docs = mixed_corpus(seed=0)   # [{"id", "source", "kind", "text"}, ...], texts normalized

`kind` names the generator, so a test can report per kind; `source` is what merge would see (it decides the
per-source exceptions: "youtube" transcripts, "pydoc" code documentation).
"""

from __future__ import annotations

import inspect
import random
import string
from typing import Callable

from tasks.corpus.filters import normalize

NOUNS = ("river valley castle harbour library garden village bridge mountain forest market station church island "
         "museum railway factory school kingdom province temple festival treaty battle army merchant farmer "
         "painter poet scientist engine ship road canal tower monastery university council charter coast desert "
         "lake mill orchard theatre record album league season tournament species plant bird insect mineral "
         "fortress chapel quarry meadow valley cathedral vineyard estate manor abbey colony republic dynasty "
         "composer novelist architect engineer sculptor physician bishop king queen prince duke emperor soldier "
         "harvest famine flood storm winter summer glacier volcano plateau peninsula delta marsh reef cave "
         "newspaper journal letter diary map painting statue fountain garden square avenue tunnel railway "
         "locomotive bicycle carriage wagon lantern bell clock organ violin piano choir orchestra opera ballet "
         "recipe bread cheese wine honey salt wool cotton silk timber copper iron silver coal glass paper").split()
ADJS = ("small large ancient modern northern southern eastern western famous quiet busy narrow wide important "
        "early late local national royal public private rural urban coastal rare common wooden stone golden "
        "beautiful ruined restored remote popular powerful wealthy poor elegant simple complex fragile sturdy "
        "colourful dark bright ornate plain medieval baroque industrial agricultural religious military").split()
VERBS_PAST = ("built founded destroyed described visited discovered rebuilt expanded crossed defended named "
              "replaced studied painted recorded opened closed moved joined won lost wrote published inherited "
              "designed restored abandoned celebrated criticised praised financed commissioned surveyed mapped "
              "captured besieged governed taxed traded exported imported planted harvested carved decorated").split()
VERBS = ("build describe visit discover expand cross defend replace study paint record open move join measure "
         "prepare check mix cut fold attach clean choose test").split()
ADVERBS = "slowly quickly carefully suddenly finally gradually eventually rarely often always never later".split()
PREPS = "near beside behind across along beyond under above within around".split()
PLACES = ("Norway Wales Bavaria Tuscany Kyoto Quebec Patagonia Anatolia Bengal Castile Flanders Galicia "
          "Moravia Silesia Cornwall Brittany Lombardy Saxony Provence Zealand").split()
NAMES = ("Anna Müller|John Carter|Maria Rossi|Kenji Sato|Olga Ivanova|Pierre Dubois|Sofia Lind|Ahmed Khan|"
         "Lucía Gómez|Tom Becker|Ingrid Berg|Marek Nowak").split("|")


def _np(rng: random.Random) -> str:
    """A noun phrase: determiner, maybe an adjective, a noun, maybe a prepositional phrase."""
    det = rng.choice(["the", "the", "a", "its", "their", "this", "every", "one"])
    adj = rng.choice(ADJS) + " " if rng.random() < 0.5 else ""
    noun = rng.choice(NOUNS) + ("s" if det in ("their",) and rng.random() < 0.5 else "")
    if det == "a" and adj[:1] in "aeiou" and adj:
        det = "an"
    elif det == "a" and not adj and noun[:1] in "aeiou":
        det = "an"
    tail = ""
    r = rng.random()
    if r < 0.25:
        tail = f" of {rng.choice(['the', 'a', 'their'])} {rng.choice(NOUNS)}"
    elif r < 0.35:
        tail = f" {rng.choice(PREPS)} {rng.choice(PLACES)}"
    return f"{det} {adj}{noun}{tail}".replace(" a a", " an a")


def _sentence(rng: random.Random) -> str:
    subj = _np(rng) if rng.random() < 0.8 else rng.choice(NAMES)
    verb = rng.choice(VERBS_PAST)
    adv = rng.choice(ADVERBS) + " " if rng.random() < 0.2 else ""
    s = f"{subj} {adv}{verb} {_np(rng)}"
    r = rng.random()
    if r < 0.2:
        s += f" and {rng.choice(VERBS_PAST)} {_np(rng)}"
    elif r < 0.35:
        s += f", which {rng.choice(['had', 'was', 'has'])} {rng.choice(['been', 'also'])} {rng.choice(VERBS_PAST)} by {_np(rng)}"
    elif r < 0.45:
        s += f" in {rng.randint(1100, 2020)}"
    elif r < 0.55:
        s += f" because {_np(rng)} {rng.choice(VERBS_PAST)} {_np(rng)}"
    elif r < 0.62:
        s += f" with {_np(rng)} that {rng.choice(['was', 'had been', 'seemed'])} {rng.choice(ADJS)}"
    if rng.random() < 0.15:
        s = rng.choice(["However, ", "Later, ", "In the end, ", "At first, ", "Meanwhile, ", "Still, "]) + s
    end = "?" if rng.random() < 0.03 else "."
    s = s[0].upper() + s[1:] + end
    if rng.random() < 0.05:
        s = f'"{s}" {rng.choice(["said", "wrote", "recalled"])} {rng.choice(NAMES)}.'
    return s


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(_sentence(rng) for _ in range(sentences))


def wiki_page(rng: random.Random, title: str) -> str:
    """Plain text of a generated Wikipedia article, cleaned by the project's own wikitext cleaner."""
    from tasks.sources.wikitext import clean_wikitext

    def para() -> str:
        s = prose(rng, rng.randint(3, 7))
        extras = [f" It lies at {{{{convert|{rng.randint(10, 3000)}|m|ft}}}} above the sea.",
                  f" [[{rng.choice(PLACES)}|The region]] is known for its [[{rng.choice(NOUNS)}]]s.<ref>{{{{cite web|url=http://x.org|title=T}}}}</ref>",
                  f" See [https://example.org/{rng.randrange(99)} the official site] for details.",
                  f" The name comes from {{{{lang|fr|le {rng.choice(NOUNS)}}}}} ({{{{circa|{rng.randint(1100, 1900)}}}}})."]
        return s + "".join(rng.sample(extras, rng.randint(0, 2)))

    parts = [f"'''{title}''' is a {rng.choice(ADJS)} {rng.choice(NOUNS)} in [[{rng.choice(PLACES)}]]. " + para()]
    for h in rng.sample(["History", "Geography", "Economy", "Culture", "Architecture", "Legacy"], rng.randint(1, 4)):
        parts.append(f"== {h} ==")
        for _ in range(rng.randint(1, 3)):
            parts.append(para())
        if rng.random() < 0.3:
            parts.append("\n".join(f"* {prose(rng, 1)}" for _ in range(rng.randint(2, 4))))
    parts.append("== References ==\n{{Reflist}}")
    return clean_wikitext("\n\n".join(parts))


def how_to(rng: random.Random) -> str:
    """Cosmopedia-style markdown: a title, an introduction, `### Step N:` sections, tips and lists."""
    thing = f"{rng.choice(ADJS)} {rng.choice(NOUNS)}"
    out = [f"# How to {rng.choice(VERBS)} a {thing}", "",
           f"Learning how to {rng.choice(VERBS)} a {thing} takes patience, and this guide walks you through it. " + prose(rng, 2)]
    for i in range(1, rng.randint(4, 9)):
        out += ["", f"### Step {i}: {rng.choice(VERBS).capitalize()} the {rng.choice(NOUNS)}", ""]
        out.append(f"First, {rng.choice(VERBS)} the {rng.choice(NOUNS)} and make sure that it is {rng.choice(ADJS)}. " + prose(rng, rng.randint(2, 6)))
        r = rng.random()
        if r < 0.3:
            out += [""] + [f"- {rng.choice(VERBS).capitalize()} the {rng.choice(ADJS)} {rng.choice(NOUNS)}" for _ in range(rng.randint(2, 4))]
        elif r < 0.5:
            out += ["", f"**Tip:** keep the {rng.choice(NOUNS)} away from the {rng.choice(NOUNS)} to avoid damage."]
        elif r < 0.6:
            out += ["", "#### Why this matters", "", prose(rng, 2)]
    out += ["", "## Conclusion", "", f"With these steps you can {rng.choice(VERBS)} any {thing}. " + prose(rng, 1)]
    return "\n".join(out)


def how_to_short_sections(rng: random.Random) -> str:
    """Markdown with many `####` headings over short sections: heading marks reach 10% of the words."""
    out = [f"# A {rng.choice(ADJS)} guide to the {rng.choice(NOUNS)}", "", prose(rng, 2)]
    for _ in range(rng.randint(8, 14)):
        out += ["", f"#### {rng.choice(VERBS).capitalize()} the {rng.choice(NOUNS)}", "", prose(rng, 2)]
    return "\n".join(out)


def dialogue(rng: random.Random) -> str:
    """A story told in dialogue lines that open with an en dash (European typography); every other story is
    dialogue only, after one line of narration."""
    pure = rng.random() < 0.5
    out = [prose(rng, 3) if not pure else _sentence(rng)] + ([] if pure else [""])
    for _ in range(rng.randint(12, 20) if pure else rng.randint(6, 14)):
        who = rng.choice(NAMES).split()[0]
        line = _sentence(rng) + " " + _sentence(rng)[:-1]
        out.append(f"– {line}, {rng.choice(['said', 'asked', 'whispered', 'answered', 'replied'])} {who}.")
    if not pure:
        out += ["", prose(rng, 2)]
    return "\n".join(out)


FILLERS = "so um you know like i mean well okay right".split()


def transcript(rng: random.Random, pauses: bool = False) -> str:
    """An auto-caption: lowercase, no punctuation, one line; `pauses` adds the ellipses manual captions use."""
    words = []
    for _ in range(rng.randint(10, 30)):
        s = _sentence(rng).lower()
        s = "".join(ch for ch in s if ch.isalnum() or ch == " ")
        words += s.split()
        if rng.random() < 0.4:
            words += rng.sample(FILLERS, 2)
        if pauses:
            words[-1] += "..."
    return " ".join(words)


# --- bad documents ---------------------------------------------------------------------------------------


def spam_lines(rng: random.Random) -> str:
    line = f"Click here to win a free {rng.choice(NOUNS)} today!"
    return "\n".join([line] * rng.randint(5, 12) + [prose(rng, 2)])


def spam_phrase(rng: random.Random) -> str:
    phrase = f"buy cheap {rng.choice(NOUNS)}s online"
    return prose(rng, 3) + " " + " ".join([phrase] * rng.randint(15, 40)) + " " + prose(rng, 2)


def spam_copy(rng: random.Random) -> str:
    body = prose(rng, rng.randint(6, 10))
    return body + " " + prose(rng, 1) + " " + body


def spam_paragraphs(rng: random.Random) -> str:
    para = prose(rng, 2)
    return "\n\n".join([para] * rng.randint(3, 6) + [prose(rng, 3)])


def borderline_copy(rng: random.Random) -> str:
    """Prose followed by a copy of its first words: the duplicated n-grams span the thresholds (10% to 15%)."""
    words = prose(rng, rng.randint(10, 16)).split()
    k = rng.randint(len(words) // 10, len(words) // 4)
    return " ".join(words) + "\n\n" + " ".join(words[:k])


def borderline_phrase(rng: random.Random) -> str:
    """Prose with one 2-word phrase sprinkled in: its share spans the top 2-gram threshold (20%)."""
    words = prose(rng, rng.randint(8, 14)).split()
    phrase = f"{rng.choice(ADJS)} {rng.choice(NOUNS)}s"
    for _ in range(rng.randint(len(words) // 12, len(words) // 5)):
        words.insert(rng.randrange(len(words)), phrase)
    return " ".join(words)


def word_list(rng: random.Random) -> str:
    return "\n".join(rng.sample(NOUNS + ADJS + VERBS, rng.randint(60, 90)))


def symbol_soup(rng: random.Random) -> str:
    syms = "!@#$%^&*()[]{}<>|\\/~=+-_;:"
    toks = ["".join(rng.choice(syms) for _ in range(rng.randint(1, 5))) if rng.random() < 0.6 else rng.choice(NOUNS)
            for _ in range(rng.randint(150, 300))]
    return " ".join(toks) + " the and of"


def bullet_page(rng: random.Random, glyph: str) -> str:
    return "\n".join(f"{glyph} the {rng.choice(ADJS)} {rng.choice(NOUNS)} of {rng.choice(PLACES)} and its {rng.choice(NOUNS)}"
                     for _ in range(rng.randint(12, 25)))


def hashtags(rng: random.Random) -> str:
    return " ".join(f"#{rng.choice(NOUNS)}{rng.randint(0, 99)} the {rng.choice(NOUNS)}" for _ in range(rng.randint(30, 60)))


def ellipsis_lines(rng: random.Random) -> str:
    return "\n".join(f"and then the {rng.choice(NOUNS)} of {rng.choice(PLACES)} was {rng.choice(VERBS_PAST)}..."
                     for _ in range(rng.randint(8, 15))) + "\n" + prose(rng, 2)


def long_words(rng: random.Random) -> str:
    blob = lambda: "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(rng.randint(20, 60)))
    return " ".join(blob() for _ in range(rng.randint(60, 120))) + " the and of that"


def short_words(rng: random.Random) -> str:
    return " ".join(rng.choice(["a", "b", "to", "of", "the", "x", "y", "is", "it", "an", "on"]) for _ in range(rng.randint(80, 150)))


def too_few_words(rng: random.Random) -> str:
    return " ".join(prose(rng, 4).split()[: rng.randint(20, 40)]) + "."


def numbers_table(rng: random.Random) -> str:
    return "\n".join(" ".join(str(rng.randint(0, 9999)) for _ in range(8)) for _ in range(rng.randint(15, 30))) + "\nthe and of"


def no_stop_words(rng: random.Random) -> str:
    return " ".join(f"{rng.choice(ADJS).capitalize()} {rng.choice(NOUNS)}s {rng.choice(VERBS_PAST)} {rng.choice(PLACES)}."
                    for _ in range(rng.randint(20, 40)))


def docstrings() -> list[str]:
    """Real English from the standard library: the docstrings of modules and their public functions/classes."""
    import collections, csv, datetime, email, fractions, functools, heapq, inspect as ins, json, logging, pathlib, \
        random as rnd, shutil, statistics, string as st, textwrap, threading, unittest, urllib.parse, zipfile  # noqa: E401
    out = []
    for mod in (collections, csv, datetime, email, fractions, functools, heapq, ins, json, logging, pathlib, rnd,
                shutil, statistics, st, textwrap, threading, unittest, urllib.parse, zipfile):
        parts = [inspect.getdoc(mod) or ""]
        for name, obj in sorted(vars(mod).items()):
            if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)) and inspect.getdoc(obj):
                parts.append(f"{name}\n\n{inspect.getdoc(obj)}")
        # documents of ~2-6 KB: consecutive docstrings
        doc: list[str] = []
        for p in parts:
            doc.append(p)
            if sum(map(len, doc)) > 3000:
                out.append("\n\n".join(doc))
                doc = []
        if doc:
            out.append("\n\n".join(doc))
    return out


def pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    from tasks.sources.pydoc_corpus import tidy

    return [tidy(topics[k]) for k in sorted(topics) if len(tidy(topics[k])) >= 100]


GOOD: dict[str, tuple[int, str, Callable[[random.Random], str]]] = {
    "prose": (150, "web", lambda r: prose(r, r.randint(6, 40))),
    "prose-paragraphs": (100, "web", lambda r: "\n\n".join(prose(r, r.randint(2, 6)) for _ in range(r.randint(2, 6)))),
    "wikipedia": (200, "wikipedia", lambda r: wiki_page(r, f"{r.choice(ADJS).title()} {r.choice(NOUNS).title()}")),
    "how-to": (200, "cosmopedia", lambda r: how_to(r)),
    "how-to-short-sections": (10, "cosmopedia", how_to_short_sections),
    "dialogue": (40, "web", dialogue),
    "transcript": (80, "youtube", lambda r: transcript(r)),
    "transcript-pauses": (4, "youtube", lambda r: transcript(r, pauses=True)),
}
# documents on either side of the repetition thresholds: they test the denominators (either decision is right)
BORDER: dict[str, tuple[int, str, Callable[[random.Random], str]]] = {
    "borderline-copy": (40, "web", borderline_copy),
    "borderline-phrase": (40, "web", borderline_phrase),
}
BAD: dict[str, tuple[int, str, Callable[[random.Random], str]]] = {
    "spam-lines": (20, "web", spam_lines),
    "spam-phrase": (20, "web", spam_phrase),
    "spam-copy": (20, "web", spam_copy),
    "spam-paragraphs": (15, "web", spam_paragraphs),
    "word-list": (15, "web", word_list),
    "symbol-soup": (15, "web", symbol_soup),
    "bullets-dash": (10, "web", lambda r: bullet_page(r, "-")),
    "bullets-dot": (10, "web", lambda r: bullet_page(r, "•")),
    "bullets-star": (4, "web", lambda r: bullet_page(r, "*")),
    "hashtags": (15, "web", hashtags),
    "ellipsis-lines": (15, "web", ellipsis_lines),
    "long-words": (10, "web", long_words),
    "short-words": (10, "web", short_words),
    "too-few-words": (15, "web", too_few_words),
    "numbers": (10, "web", numbers_table),
    "no-stop-words": (15, "web", no_stop_words),
}


# kinds built to exercise one of cook's exceptions to datatrove's rules (tasks/corpus/filters.py docstring)
EXCEPTION_KINDS = {"pydoc": "code-doc-alpha", "transcript-pauses": "transcript-punctuation", "bullets-star": "extra-bullets",
                   "how-to-short-sections": "heading-marks"}


def mixed_corpus(seed: int = 0) -> list[dict]:
    """Every document of the mixed corpus, in a fixed order (about 1,300 documents, 2.5 MB)."""
    rng = random.Random(seed)
    docs: list[dict] = []

    def add(kind: str, source: str, text: str) -> None:
        docs.append({"id": f"{kind}-{len(docs)}", "source": source, "kind": kind, "text": normalize(text)})

    for t in pydoc_topics():
        add("pydoc", "pydoc", t)
    for t in docstrings():
        add("docstrings", "web", t)
    for table in (GOOD, BORDER, BAD):
        for kind, (count, source, make) in table.items():
            for _ in range(count):
                add(kind, source, make(rng))
    return docs
