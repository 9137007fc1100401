"""Document cleaning: a normalizer and small composable filters, each `(doc) -> rejection reason | None`.

Modelled on datatrove's filters: every filter looks at one document (a dict of the document format,
its `text` already normalized) and returns a short reason string when it rejects it, None when it
keeps it. `default_filters(...)` builds the standard chain; `first_rejection(doc, filters)` runs it.

Thresholds are Gopher's (Rae et al. 2021, table A1), which clean prose and code documentation pass
(tests run them over Python's own docs). Punctuation rules never apply to transcripts (source
"youtube"): auto-captions have no punctuation at all.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Sequence

import numpy as np

from model.errors import CookError

Filter = Callable[[dict], "str | None"]
TRANSCRIPT_SOURCES = ("youtube",)

# C0 and C1 control characters and DEL, except \t and \n (\r is turned into \n first)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ALNUM = re.compile(r"[^\W_]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINE = re.compile(r"^[^\S\n]*\S", re.M)  # non-blank lines
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)[^\S\n]*$", re.M)
_BULLET_LINE = re.compile(r"^[^\S\n]*[•\-*·‣◦–]", re.M)


def normalize(text: str) -> str:
    """Unicode NFC, \\r\\n and lone \\r -> \\n, control characters removed (tabs and newlines kept)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def is_transcript(doc: dict) -> bool:
    """Speech transcripts (auto-captions) have no punctuation: punctuation rules must skip them."""
    return str(doc.get("source") or "").lower().startswith(TRANSCRIPT_SOURCES)


class DocFilter:
    """A filter: `f(doc)` gives a rejection reason or None; `f.batch(docs)` does many (override to vectorize)."""

    def __call__(self, doc: dict) -> str | None:
        raise NotImplementedError

    def batch(self, docs: Sequence[dict]) -> list[str | None]:
        return [self(d) for d in docs]


class LengthFilter(DocFilter):
    """Reject documents shorter than `min_chars` or longer than `max_chars` characters."""

    def __init__(self, min_chars: int = 100, max_chars: int = 5_000_000):
        self.min_chars, self.max_chars = min_chars, max_chars

    def __call__(self, doc: dict) -> str | None:
        n = len(doc["text"])
        if n < self.min_chars:
            return "too-short"
        if n > self.max_chars:
            return "too-long"
        return None


def _dup_count_chars(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


_P = np.uint64(0x100000001B3)  # odd multiplier of the byte-level word hash (FNV prime)
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier combining word hashes into n-gram hashes
BATCH_BYTES = 4 << 20  # text per vectorized batch: temp arrays stay ~40x this


def word_spans(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) byte offsets of the whitespace-separated words of UTF-8 bytes `data`."""
    space = (data == 32) | ((data >= 9) & (data <= 13))
    edges = np.diff(np.concatenate([[True], space, [True]]).view(np.int8))
    return np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)


_POWERS: list[np.ndarray] = [np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)]  # P^i and P^-i, grown on demand


def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i (mod 2^64) for i < n; cached, doubling, so batches don't recompute them."""
    if _POWERS[0].size < n:
        size = max(n, 2 * _POWERS[0].size)
        inv = np.uint64(pow(int(_P), -1, 1 << 64))  # P is odd, so invertible modulo 2^64
        one = np.ones(1, dtype=np.uint64)
        _POWERS[0] = np.concatenate([one, np.cumprod(np.full(size - 1, _P, dtype=np.uint64))])
        _POWERS[1] = np.concatenate([one, np.cumprod(np.full(size - 1, inv, dtype=np.uint64))])
    return _POWERS[0][:n], _POWERS[1][:n]


def span_hashes(data: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each byte span (same bytes, same hash, wherever they are)."""
    n = data.size
    if n == 0 or starts.size == 0:
        return np.zeros(starts.size, dtype=np.uint64)
    powers, inv_powers = _powers(n)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64, out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * inv_powers[starts]


class GopherRepetitionFilter(DocFilter):
    """Gopher's repetition rules: duplicate lines and paragraphs, the top n-gram, duplicated n-grams.

    Words are whitespace-separated, lowercased, and hold a letter or digit (any non-ASCII byte counts
    as one), so table rules and lone symbols are layout, not words. N-gram fractions are of the
    words' UTF-8 bytes; a byte counts once however many duplicated n-grams cover it; only n-grams
    that occur at least twice count, and the top n-gram is the repeated one covering most bytes.
    `batch(docs)` is vectorized over many documents at once (64-bit
    n-gram hashes, one sort per n, over fewer positions as n grows); calling the filter on one
    document gives the same answer.
    """

    def __init__(
        self,
        dup_line_frac: float = 0.30,
        dup_para_frac: float = 0.30,
        dup_line_char_frac: float = 0.20,
        dup_para_char_frac: float = 0.20,
        top_n_grams: Sequence[tuple[int, float]] = ((2, 0.20), (3, 0.18), (4, 0.16)),
        dup_n_grams: Sequence[tuple[int, float]] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
    ):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        checks = [(n, f, "top") for n, f in top_n_grams] + [(n, f, "dup") for n, f in dup_n_grams]
        self.checks = sorted(checks)
        if self.checks and self.checks[0][0] < 2:
            raise ValueError("n-gram sizes start at 2")

    def __call__(self, doc: dict) -> str | None:
        return self.batch([doc])[0]

    def batch(self, docs: Sequence[dict]) -> list[str | None]:
        reasons = [self._lines(d["text"]) for d in docs]
        todo = [i for i, r in enumerate(reasons) if r is None and docs[i]["text"]]
        chunk: list[int] = []
        size = 0
        for i in todo + [None]:
            if i is None or (chunk and size + len(docs[i]["text"]) > BATCH_BYTES):
                for j, r in zip(chunk, self._ngrams([docs[j]["text"] for j in chunk])):
                    reasons[j] = r
                chunk, size = [], 0
            if i is not None:
                chunk.append(i)
                size += len(docs[i]["text"])
        return reasons

    def _lines(self, text: str) -> str | None:
        if not text:
            return None
        paras = [p for p in _PARAGRAPHS.split(text.strip()) if p]
        if paras:
            n, chars = _dup_count_chars(paras)
            if n / len(paras) > self.dup_para_frac:
                return "repetition:dup-para-frac"
            if chars / len(text) > self.dup_para_char_frac:
                return "repetition:dup-para-char-frac"
        # lines with no letter or digit (table rules, underlines) are layout, not repeated content
        lines = [l for l in text.splitlines() if _ALNUM.search(l)]
        if lines:
            n, chars = _dup_count_chars(lines)
            if n / len(lines) > self.dup_line_frac:
                return "repetition:dup-line-frac"
            if chars / len(text) > self.dup_line_char_frac:
                return "repetition:dup-line-char-frac"
        return None

    def _ngrams(self, texts: list[str]) -> list[str | None]:
        """The n-gram rules for many documents at once, over the words of their concatenation."""
        reasons: list[str | None] = [None] * len(texts)
        if not texts:
            return reasons
        parts = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
        offsets = np.cumsum([0] + [len(p) + 1 for p in parts[:-1]])
        data = np.frombuffer(b"\n".join(parts), dtype=np.uint8)
        starts, ends = word_spans(data)
        if starts.size == 0:
            return reasons
        alnum = ((data >= 48) & (data <= 57)) | ((data >= 97) & (data <= 122)) | ((data >= 65) & (data <= 90)) | (data >= 128)
        keep = np.add.reduceat(alnum.view(np.uint8).astype(np.int32), starts) > 0  # the span to the next word start
        starts, ends = starts[keep], ends[keep]
        words = span_hashes(data, starts, ends)
        nw = words.size
        doc = (np.searchsorted(offsets, starts, side="right") - 1).astype(np.int64)
        lens = (ends - starts).astype(np.int64)
        csum = np.concatenate([[0], np.cumsum(lens)])
        total = np.bincount(doc, weights=lens, minlength=len(texts))
        h = words  # hash of the n-gram starting at each position, for n = cur
        cur = 1
        cand = np.arange(nw)  # positions whose (n-1)-gram repeats: only they can start a repeated n-gram
        bad = np.zeros(len(texts), dtype=bool)
        for n, frac, kind in self.checks:
            while cur < n:
                h = h[:-1] * _MULT + words[cur:]
                cur += 1
            cand = cand[cand < nw - n + 1]
            cand = cand[doc[cand] == doc[cand + n - 1]]  # n-grams within one document
            if cand.size < 2:
                break
            keys = h[cand] * _MULT + doc[cand].astype(np.uint64)  # the same n-gram in another document is another key
            order = np.argsort(keys, kind="stable")
            sk, sp = keys[order], cand[order]  # stable: the first of each group is its earliest occurrence
            new = np.concatenate([[True], sk[1:] != sk[:-1]])
            group = np.cumsum(new) - 1
            counts = np.bincount(group)
            repeated = counts[group] >= 2
            if kind == "top":
                firsts = sp[new]
                rep = counts >= 2
                p = firsts[rep]
                value = (csum[p + n] - csum[p]) * counts[rep]
                top = np.zeros(len(texts), dtype=np.int64)
                np.maximum.at(top, doc[p], value)
                hit = top > frac * total
            else:
                later = sp[~new]  # repeats of an earlier occurrence
                cover = np.bincount(later, minlength=nw + 1) - np.bincount(later + n, minlength=nw + 1)
                covered = np.cumsum(cover[:nw]) > 0
                dup_chars = np.bincount(doc[covered], weights=lens[covered], minlength=len(texts))
                hit = dup_chars > frac * total
            for i in np.flatnonzero(hit & ~bad):
                reasons[i] = f"repetition:{kind}-{n}-gram"
            bad |= hit
            cand = np.sort(sp[repeated & ~bad[doc[sp]]])
        return reasons


class PunctuationFilter(DocFilter):
    """Gopher quality rules that rely on punctuation and layout; never applied to transcripts.

    Rejects when too many lines end with an ellipsis, when '#' and ellipses outnumber words by
    `max_symbol_word_ratio` (documents of `min_words` or more), or when nearly every line is a bullet point.
    """

    def __init__(
        self, max_ellipsis_lines: float = 0.30, max_symbol_word_ratio: float = 0.10, max_bullet_lines: float = 0.90, min_words: int = 50
    ):
        self.max_ellipsis_lines = max_ellipsis_lines
        self.min_words = min_words  # the symbol ratio of a few words is noise
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines = max_bullet_lines

    def __call__(self, doc: dict) -> str | None:
        if is_transcript(doc):
            return None
        text = doc["text"]
        n_lines = None  # counted only when a rule could fire: most documents skip every regex here
        if "..." in text or "…" in text:
            n_lines = len(_LINE.findall(text))
            if n_lines and len(_ELLIPSIS_LINE.findall(text)) / n_lines > self.max_ellipsis_lines:
                return "punctuation:ellipsis-lines"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols > self.max_symbol_word_ratio * self.min_words:
            n_words = len(text.split())
            if n_words >= self.min_words and symbols / n_words > self.max_symbol_word_ratio:
                return "punctuation:symbol-word-ratio"
        bullets = len(_BULLET_LINE.findall(text))
        if bullets:
            n_lines = len(_LINE.findall(text)) if n_lines is None else n_lines
            if bullets / n_lines > self.max_bullet_lines:
                return "punctuation:bullet-lines"
        return None


def langdetect_available() -> bool:
    try:
        import langdetect  # noqa: F401
    except ImportError:
        return False
    return True


def known_languages() -> list[str]:
    """Language codes langdetect ships profiles for."""
    import os

    from langdetect.detector_factory import PROFILES_DIRECTORY

    return sorted(f for f in os.listdir(PROFILES_DIRECTORY) if not f.startswith("."))


def check_languages(languages: Iterable[str] | None) -> list[str] | None:
    """Validate requested language codes; CookError (one line) if langdetect is missing or a code is unknown."""
    if not languages:
        return None
    langs = [l.strip().lower() for l in languages]
    if not langdetect_available():
        raise CookError("the language filter needs langdetect: pip install 'langdetect>=1.0.9' (or cook[lang])")
    known = set(known_languages())
    bad = [l for l in langs if l not in known]
    if bad:
        raise CookError(f"unknown language code(s) {', '.join(bad)} (langdetect knows: {', '.join(sorted(known))})")
    return langs


class LanguageFilter(DocFilter):
    """Keep documents whose most likely language (langdetect, seeded) is one of `langs` with p >= min_score.

    langdetect ships its own profiles, so nothing is downloaded. The first `sample_chars` characters decide.
    """

    def __init__(self, langs: Sequence[str], min_score: float = 0.65, sample_chars: int = 2000):
        self.langs = frozenset(check_languages(langs) or ())
        self.min_score, self.sample_chars = min_score, sample_chars
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        self._factory = DetectorFactory()
        self._factory.load_profile(PROFILES_DIRECTORY)
        self._factory.seed = 0  # deterministic sampling

    def __call__(self, doc: dict) -> str | None:
        from langdetect.lang_detect_exception import LangDetectException

        det = self._factory.create()
        det.append(doc["text"][: self.sample_chars])
        try:
            probs = det.get_probabilities()
        except LangDetectException:  # no letters at all
            return "language"
        if not probs or probs[0].lang not in self.langs or probs[0].prob < self.min_score:
            return "language"
        return None


def default_filters(min_chars: int = 100, max_chars: int = 5_000_000, languages: Sequence[str] | None = None) -> list[Filter]:
    """The standard chain, cheapest first: length, repetition, punctuation (not transcripts), language."""
    chain: list[Filter] = [LengthFilter(min_chars, max_chars), GopherRepetitionFilter(), PunctuationFilter()]
    if languages:
        chain.append(LanguageFilter(languages))
    return chain


def first_rejection(doc: dict, filters: Iterable[Filter]) -> str | None:
    """The reason of the first filter that rejects `doc`, or None if all keep it."""
    return first_rejections([doc], filters)[0]


def first_rejections(docs: Sequence[dict], filters: Iterable[Filter]) -> list[str | None]:
    """`first_rejection` of many documents; filters with a `batch` method see them all at once."""
    reasons: list[str | None] = [None] * len(docs)
    for f in filters:
        todo = [i for i, r in enumerate(reasons) if r is None]
        if not todo:
            break
        some = [docs[i] for i in todo]
        for i, r in zip(todo, f.batch(some) if hasattr(f, "batch") else [f(d) for d in some]):
            reasons[i] = r or None
    return reasons
