"""Cleaning filters: clean prose passes, spam is rejected with the right reason, transcripts skip punctuation rules."""

from __future__ import annotations

import sys
import unicodedata
from collections import Counter

import pytest

from model.errors import CookError
from tasks.corpus.filters import (
    GopherRepetitionFilter,
    LengthFilter,
    PunctuationFilter,
    check_languages,
    default_filters,
    first_rejection,
    normalize,
)

pytestmark = pytest.mark.timeout(120)

PROSE = [
    """The lighthouse stood at the end of a narrow spit of land, and for most of the year it was the only building anyone could see from the water. Its keeper, a patient woman who had grown up in the village behind the dunes, climbed the spiral stairs twice a day to trim the wick and polish the great lens.

In winter the storms came in from the north-west, and the sea threw spray high enough to rattle the windows of the lamp room. She kept a logbook of every ship that passed, noting the weather, the direction of the wind and anything unusual she saw on the horizon.""",
    """Bread is one of the oldest prepared foods. Archaeologists have found traces of flatbreads made from wild grains that are more than fourteen thousand years old, long before people began to farm. Leavened bread came later, when bakers learnt that a little dough kept from one batch would make the next one rise.

Today a basic loaf still needs only four ingredients: flour, water, salt and yeast. The baker mixes them, lets the dough rest so that the gluten can develop, shapes it, and bakes it in a hot oven until the crust is brown and the inside sounds hollow when tapped.""",
    """A good way to learn a new programming language is to write a small program you actually need. It might be a script that renames your photographs by date, or a tool that checks which of your bookmarks no longer work. Real problems force you to read the documentation, to handle errors, and to think about the shape of your data.

Once the program works, read it again a week later. You will almost certainly find a clearer way to express some part of it, and rewriting it teaches you more than starting yet another tutorial.""",
    """Honeybees communicate the location of food through a movement known as the waggle dance. A returning forager runs in a straight line while vibrating her body, then circles back and repeats the run. The angle of the run relative to vertical tells the other bees the direction of the flowers relative to the sun, and its duration tells them how far away the flowers are.""",
]


def doc(text: str, source: str = "web") -> dict:
    return {"id": "x", "source": source, "url": "", "title": "", "text": text}


def test_normalize():
    decomposed = "cafe\u0301 \r\nline\rnext\x00\x07\x1b[0m\ttab\u0085end"
    out = normalize(decomposed)
    assert out == "caf\u00e9 \nline\nnext[0m\ttabend"
    assert unicodedata.is_normalized("NFC", out)
    assert normalize("plain ascii\n\ttext") == "plain ascii\n\ttext"


def test_clean_prose_passes():
    filters = default_filters()
    for text in PROSE:
        assert first_rejection(doc(normalize(text)), filters) is None, text[:60]


def test_python_docs_pass():
    """Python's own help topics: real English and code. Nearly all pass; the few rejected are repetitive reference lists."""
    from pydoc_data.topics import topics

    filters = default_filters(min_chars=100)
    reasons = Counter(first_rejection(doc(normalize(t), "pydoc"), filters) for t in topics.values() if len(t) >= 100)
    passed = reasons.pop(None, 0)
    assert passed >= 0.9 * (passed + sum(reasons.values())), reasons
    assert all(r.startswith("repetition:") for r in reasons), reasons  # never length or punctuation


def test_repeated_lines_rejected():
    spam = "\n".join(["Click here to win a free prize!"] * 8 + ["Visit our store today.", "Best deals in town."])
    assert GopherRepetitionFilter()(doc(spam)) == "repetition:dup-line-frac"
    paras = "\n\n".join(["Buy cheap watches online now, best prices guaranteed."] * 5 + [PROSE[3]])
    assert GopherRepetitionFilter()(doc(paras)) == "repetition:dup-para-frac"


def test_repeated_ngrams_rejected():
    # one long line (no duplicate lines): a phrase repeated inside ordinary text
    words = PROSE[2].split()
    spam = " ".join(words[:60] + "cheap shoes".split() * 30 + words[60:])
    assert GopherRepetitionFilter()(doc(spam)) == "repetition:top-2-gram"
    phrase = " ".join(words[:60] + "buy the best cheap shoes online".split() * 12 + words[60:])
    assert GopherRepetitionFilter()(doc(phrase)) == "repetition:top-3-gram"
    # a long passage copied twice inside one document: duplicated n-grams, no common top n-gram
    body = " ".join(PROSE[1].split())
    assert GopherRepetitionFilter()(doc(body + " and again, " + body)) == "repetition:dup-5-gram"
    # the filters chain reports the same reason
    assert first_rejection(doc(spam), default_filters()) == "repetition:top-2-gram"


def test_batch_agrees_with_one_at_a_time():
    """The vectorized batch gives each document the reason it gets alone (documents never mix)."""
    from pydoc_data.topics import topics

    f = GopherRepetitionFilter()
    docs = [doc(normalize(t)) for t in topics.values()] + [doc(" ".join(["same words here"] * 30)), doc(""), doc("one")]
    assert f.batch(docs) == [f(d) for d in docs]
    assert f.batch(docs)[-3:] == ["repetition:top-2-gram", None, None]


def test_length():
    f = LengthFilter(10, 20)
    assert f(doc("short")) == "too-short"
    assert f(doc("x" * 21)) == "too-long"
    assert f(doc("just right")) is None


def test_punctuation_rules_skip_transcripts():
    lines = [f"and then we went to the {w} and it was..." for w in ("park", "shop", "beach", "river", "school", "station")]
    ellipses = "\n".join(lines + ["the end of the story, told as it happened."])
    assert PunctuationFilter()(doc(ellipses)) == "punctuation:ellipsis-lines"
    assert PunctuationFilter()(doc(ellipses, "youtube")) is None
    hashtags = " ".join(f"#tag{i} word" for i in range(60))
    assert PunctuationFilter()(doc(hashtags)) == "punctuation:symbol-word-ratio"
    bullets = "\n".join(f"- item number {i} of the list" for i in range(12))
    assert PunctuationFilter()(doc(bullets)) == "punctuation:bullet-lines"
    # an auto-caption transcript: no punctuation, no capitals, one long line — it passes the whole chain
    caption = " ".join(" ".join(p.split()) for p in PROSE).lower().replace(".", "").replace(",", "").replace(":", "")
    assert first_rejection(doc(caption, "youtube"), default_filters()) is None


def test_language_filter():
    pytest.importorskip("langdetect")
    from tasks.corpus.filters import LanguageFilter

    f = LanguageFilter(["en"])
    assert f(doc(PROSE[0])) is None
    french = ("Le phare se dressait au bout d'une étroite langue de terre, et pendant la plus grande partie de l'année "
              "c'était le seul bâtiment que l'on pouvait voir depuis la mer. Sa gardienne montait l'escalier deux fois par jour.")
    assert [f(doc(french)) for _ in range(3)] == ["language"] * 3  # deterministic
    assert LanguageFilter(["en", "fr"])(doc(french)) is None
    with pytest.raises(CookError, match="unknown language"):
        check_languages(["xx-nope"])


def test_language_filter_without_langdetect(monkeypatch):
    monkeypatch.setitem(sys.modules, "langdetect", None)  # as if not installed
    with pytest.raises(CookError, match="pip install") as e:
        check_languages(["en"])
    assert "langdetect" in str(e.value) and "\n" not in str(e.value)
    assert check_languages(None) is None
