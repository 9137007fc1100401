"""Document cleaning: a normalizer and small composable filters, each `(doc) -> rejection reason | None`.

Modelled on datatrove's filters: every filter looks at one document (a dict of the document format,
its `text` already normalized) and returns a short reason string when it rejects it, None when it
keeps it. `default_filters(...)` builds the standard chain; `first_rejection(doc, filters)` runs it.

The Gopher rules (Rae et al. 2021, table A1) are datatrove's: the same words (spaCy's English
tokenizer, approximated here with array operations), the same denominators (the whole text's
characters for repetition, all words for the symbol ratios, all lines for the line rules) and the
same thresholds. tests/test_filter_parity.py runs datatrove's own filters beside these on a mixed
corpus. Where cook departs from datatrove it does so on purpose, per source:

- transcripts (source "youtube"): the punctuation rules (`#` and ellipsis ratios, bullet and
  ellipsis lines) never apply: auto-captions have no punctuation, so they say nothing about quality.
- code documentation (source "pydoc"): the alphabetic-word fraction is taken over the non-symbol
  words, because spaCy makes every `(`, `)`, `=`, `:` of a code sample a word of its own (datatrove
  rejects 65 of Python's 79 help topics for it); and the duplicated 5- to 10-gram rules do not
  apply, because references describe parallel APIs in parallel sentences ("Return a copy of the
  string with ..."). The duplicate line, paragraph and top n-gram rules still apply.
- markdown headings: the `#` marks opening a heading line (`### Step 1`) are layout, not symbols,
  so they do not count in the `#`-to-word ratio (datatrove counts every `#`).
- bullets: a line starting with `•`, `-` (datatrove's two) or `*`, `·`, `‣`, `◦` (markdown and
  typographic bullets) is a bullet line. The en dash is not a bullet: it opens dialogue lines.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Iterable, Sequence

import numpy as np

from model.errors import CookError

Filter = Callable[[dict], "str | None"]
TRANSCRIPT_SOURCES = ("youtube",)
CODE_DOC_SOURCES = ("pydoc",)
# cook's deliberate departures from datatrove (module docstring); a filter built with fewer applies datatrove's rule
EXCEPTIONS = frozenset({"transcript-punctuation", "code-doc-alpha", "code-doc-ngrams", "heading-marks", "extra-bullets"})

# C0 and C1 control characters and DEL, except \t and \n (\r is turned into \n first)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_PARAGRAPHS = re.compile(r"\n{2,}")
_LINES = re.compile(r"\n+")
BULLETS = "•-*·‣◦"  # line-opening bullet glyphs; datatrove counts only • and -
_BULLET_LINE = re.compile(r"^[^\S\n\u2028\u2029]*[" + re.escape(BULLETS) + "]", re.M)
_DT_BULLET_LINE = re.compile(r"^[^\S\n\u2028\u2029]*[•\-]", re.M)
_ELLIPSIS_LINE = re.compile(r"(?:\.\.\.|…)[^\S\n\u2028\u2029]*$", re.M)
_HEADING_MARKS = re.compile(r"^[ \t]{0,3}(#{1,6})(?=[ \t]|$)", re.M)  # markdown ATX headings
_LINE_BREAK = re.compile(r"\r\n|[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")  # what str.splitlines splits on


def normalize(text: str) -> str:
    """Unicode NFC, \\r\\n and lone \\r -> \\n, control characters removed (tabs and newlines kept)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    if not text.isascii() and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    return text


def _source(doc: dict) -> str:
    return str(doc.get("source") or "").lower()


def is_transcript(doc: dict) -> bool:
    """Speech transcripts (auto-captions) have no punctuation: punctuation rules must skip them."""
    return _source(doc).startswith(TRANSCRIPT_SOURCES)


def is_code_doc(doc: dict) -> bool:
    """Code documentation (Python's help topics): code samples are words of symbols, APIs are described in parallel."""
    return _source(doc).startswith(CODE_DOC_SOURCES)


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
    """How many items repeat an earlier one, and their characters (datatrove's find_duplicates)."""
    seen: set[str] = set()
    n = chars = 0
    for x in items:
        if x in seen:
            n += 1
            chars += len(x)
        else:
            seen.add(x)
    return n, chars


_P = np.uint64(0x100000001B3)  # odd multiplier of the word hash (FNV prime)
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
    """A 64-bit polynomial hash of each span of `data` (bytes or code points; same content, same hash)."""
    n = data.size
    if n == 0 or starts.size == 0:
        return np.zeros(starts.size, dtype=np.uint64)
    powers, inv_powers = _powers(n)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64, out=prefix[1:])
    return (prefix[ends] - prefix[starts]) * inv_powers[starts]


def _chunks(docs: Sequence[dict], todo: list[int]) -> Iterable[list[int]]:
    """`todo` in runs of about BATCH_BYTES characters of text."""
    chunk: list[int] = []
    size = 0
    for i in todo:
        if chunk and size + len(docs[i]["text"]) > BATCH_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(i)
        size += len(docs[i]["text"])
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------------------------
# Words as datatrove counts them. datatrove's Gopher filters split English with spaCy's blank tokenizer: whitespace,
# then prefixes, suffixes and infixes (punctuation becomes words of its own: "end." is "end" "."), and special cases
# ("don't" is "do" "n't", "cannot" is "can" "not", "Mr." stays whole). `_split_words` reproduces it with array
# operations over code points (no per-word Python): leading and trailing runs of detachable characters, the infix
# rules of spaCy's English, contractions and tables of special cases. On tests/corpusgen.py's corpus 0.03% of words
# differ from spaCy's; tests/test_filter_parity.py checks the decisions against datatrove.

# character classes (bit flags of a lookup table over the Basic Multilingual Plane)
(_SP, _AL, _LO, _UP, _DG, _PU, _PRE, _SUF, _QU, _HY, _ICON, _CUR, _INF, _SPUNCT, _DOT, _APOS, _PLUS, _PCT, _DOTPREV,
 _OPS, _ELL) = (1 << i for i in range(21))
# the characters the word splitter looks at (letters, digits and whitespace are handled without them)
_SPECIAL = _PRE | _SUF | _QU | _HY | _ICON | _CUR | _INF | _SPUNCT | _DOT | _APOS | _PLUS | _PCT | _OPS | _ELL
_SPACY_PUNCT = "…,:;!?¿؟¡()[]{}<>_#*&。？！，、；：～·।،۔؛٪"  # spaCy char_classes._punct
_SPACY_QUOTES = "'\"”“`‘´’‚,„»«「」『』（）〔〕【】《》〈〉〈〉⟦⟧"  # spaCy char_classes._quotes
_SPACY_CURRENCY = "$£€¥฿₽﷼₴₠₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₵₶₷₸₹₺₻₼₾₿"
_HYPHENS_CHARS = "-–—~"
# datatrove.utils.text.PUNCTUATION_SET (Apache-2.0): a word made only of these is a "symbol word"; the terminal
# punctuation of scripts outside the Basic Multilingual Plane is left out.
_DT_PUNCT = (
    "!/\u2014\u201d:\uff05\uff11\u3008&(\u3001\u2501\\\u3010#%\u300c\u300d\uff0c\u3011\uff1b+^]~\u201c\u300a\u201e';"
    "\u2019{|\u2236\xb4[=-`*\uff0e\uff08\u2013\uff1f\uff01\uff1a$\uff5e\xab\u3009,><\u300b)?\uff09\u3002\u2026@_.\"}"
    "\u25ba\xbb\u0589\u061d\u061e\u061f\u06d4\u0700\u0701\u0702\u07f9\u0837\u0839\u083d\u083e\u0964\u0965\u104a\u104b"
    "\u1362\u1367\u1368\u166e\u1735\u1736\u17d4\u17d5\u17d6\u17d9\u17da\u1803\u1809\u1944\u1945\u1aa8\u1aa9\u1aaa"
    "\u1aab\u1b5a\u1b5b\u1b5e\u1b5f\u1b7d\u1b7e\u1c3b\u1c3c\u1c7e\u1c7f\u203c\u203d\u2047\u2048\u2049\u2e2e\u2e3c"
    "\u2e53\u2e54\ua4ff\ua60e\ua60f\ua6f3\ua6f7\ua876\ua877\ua8ce\ua8cf\ua92f\ua9c8\ua9c9\uaa5d\uaa5e\uaa5f\uaaf0"
    "\uaaf1\uabeb\ufe52\ufe56\ufe57\uff61"
    + "".join(map(chr, (x for a, b in ((0, 9), (11, 13), (13, 32), (127, 160)) for x in range(a, b))))
)
# spaCy English special cases without an apostrophe ("|" marks the split) and abbreviations that keep their period
_SPECIAL_SPLITS = (
    "ai|nt are|nt can|not ca|nt ca|nt|ve could|nt could|nt|ve could|ve dare|nt did|nt did|nt|ve does|nt does|nt|ve "
    "do|nt do|nt|ve gon|na got|ta had|nt had|nt|ve has|nt have|nt he|d he|d|ve he|ll|ve he|s how|d how|d|ve how|ll "
    "how|ll|ve how|re how|s how|ve i|d i|d|ve i|ll|ve i|m i|m|a is|nt it|d it|d|ve it|ll it|ll|ve i|ve may|nt "
    "may|nt|ve might|nt might|nt|ve might|ve must|nt must|nt|ve must|ve need|nt need|nt|ve not|ve ought|nt "
    "ought|nt|ve sha|nt sha|nt|ve she|d|ve she|ll|ve she|s should|nt should|nt|ve should|ve that|d that|d|ve that|ll "
    "that|ll|ve that|s there|d there|d|ve there|ll there|ll|ve there|re there|s there|ve these|d these|d|ve these|ll "
    "these|ll|ve these|re these|ve they|d they|d|ve they|ll they|ll|ve they|re they|ve this|d this|d|ve this|ll "
    "this|ll|ve this|s those|d those|d|ve those|ll those|ll|ve those|re those|ve was|nt we|d we|d|ve we|ll|ve were|nt "
    "we|ve what|d what|d|ve what|ll what|ll|ve what|re what|s what|ve when|d when|d|ve when|ll when|ll|ve when|re "
    "when|s when|ve where|d where|d|ve where|ll where|ll|ve where|re where|s where|ve who|d who|d|ve who|ll "
    "who|ll|ve who|s who|ve why|d why|d|ve why|ll why|ll|ve why|re why|s why|ve wo|nt wo|nt|ve would|nt "
    "would|nt|ve would|ve y|all you|d you|d|ve you|ll you|ll|ve you|re you|ve"
).split()
_ABBREVIATIONS = (
    "Adm. Ak. Ala. Apr. Ariz. Ark. Aug. Bros. Calif. Co. Colo. Conn. Corp. Dec. Del. Dr. Feb. Fla. Ga. Gen. Gov. Ia. "
    "Id. Ill. Inc. Ind. Jan. Jr. Jul. Jun. Kan. Kans. Ky. La. Ltd. Mar. Mass. Md. Messrs. Mich. Minn. Miss. Mo. Mont. "
    "Mr. Mrs. Ms. Mt. Neb. Nebr. Nev. Nov. Oct. Okla. Ore. Pa. Prof. Rep. Rev. Sen. Sep. Sept. St. Tenn. Va. Wash. "
    "Wis. co. vs."
).split()
# spaCy's two-character special cases made of punctuation (emoticons, "''"): adjacent, they stay one word
_PAIRS = "''(:(;(=)::(:):*:/:>:]:|:};)=(=)=/=[=]=|[:[=]=’’"
_PAIR_KEYS = np.sort(np.array([ord(_PAIRS[i]) << 21 | ord(_PAIRS[i + 1]) for i in range(0, len(_PAIRS), 2)], dtype=np.int64))
_CONTRACTIONS = ("'d", "'ll", "'m", "'re", "'ve")  # split off a word ending with them ("I'm" -> "I" "'m")

_TABLE: list[np.ndarray] = []


def _char_table() -> np.ndarray:
    """Flags of every code point below 0x10000 (built once per process, ~50 ms)."""
    if not _TABLE:
        t = np.zeros(0x10000, dtype=np.uint32)
        for cp in range(0x10000):
            ch = chr(cp)
            f = 0
            if ch.isspace():
                f |= _SP
            elif ch.isalpha():
                f |= _AL | (_LO if ch.islower() else 0) | (_UP if ch.isupper() else 0)
            elif unicodedata.category(ch) == "So":
                f |= _ICON | _PRE | _SUF
            t[cp] = f

        def add(chars: str, flag: int) -> None:
            for ch in chars:
                t[ord(ch)] |= flag
        add("0123456789", _DG)
        add(_DT_PUNCT, _PU)
        add(_SPACY_PUNCT, _SPUNCT | _PRE | _SUF)
        add(_SPACY_QUOTES, _QU | _PRE | _SUF)
        add(_SPACY_CURRENCY, _CUR | _PRE)
        add("§%=—–", _PRE)
        add("—–", _SUF)
        add(_HYPHENS_CHARS, _HY)
        add(":<>=/", _INF)
        add(".", _DOT)
        add("'’", _APOS)
        add("+", _PLUS)
        add("%", _PCT)
        add("%²-+", _DOTPREV)
        add("+-*^", _OPS)
        add("…", _ELL)
        _TABLE.append(t)
    return _TABLE[0]


_SPECIALS: list[tuple[np.ndarray, list[list[int]], np.ndarray]] = []


def _cps(s: str) -> np.ndarray:
    return np.frombuffer(s.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _hash_str(s: str) -> np.uint64:
    cp = _cps(s)
    return span_hashes(cp, np.array([0]), np.array([cp.size]))[0]


def _specials() -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    """(sorted hashes of the special cases, their split offsets, sorted hashes of the abbreviations)."""
    if not _SPECIALS:
        entries: dict[int, list[int]] = {}
        for form in _SPECIAL_SPLITS:
            parts = form.split("|")
            cuts = list(np.cumsum([len(p) for p in parts[:-1]]))
            word = "".join(parts)
            for w in {word, word[0].upper() + word[1:]}:
                entries[int(_hash_str(w))] = [int(c) for c in cuts]
        keys = sorted(entries)
        abbrev = np.sort(np.array([_hash_str(a) for a in _ABBREVIATIONS], dtype=np.uint64))
        _SPECIALS.append((np.array(keys, dtype=np.uint64), [entries[k] for k in keys], abbrev))
    return _SPECIALS[0]


def _uniq(a: np.ndarray) -> np.ndarray:
    """Sorted distinct values (np.unique hashes in numpy 2, which is many times slower on integers)."""
    a = np.sort(a)
    return a[np.concatenate([[True], a[1:] != a[:-1]])] if a.size else a


class _Hasher:
    """span_hashes over one array, its prefix sums computed once for many calls."""

    def __init__(self, data: np.ndarray):
        n = data.size
        self.prefix = np.zeros(n + 1, dtype=np.uint64)
        if n:
            powers, self.inv = _powers(n)
            np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers, dtype=np.uint64, out=self.prefix[1:])

    def __call__(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        if starts.size == 0:
            return np.zeros(0, dtype=np.uint64)
        return (self.prefix[ends] - self.prefix[starts]) * self.inv[starts]


class _Tokens:
    """The words of many texts at once: code points, token spans, each token's document, and per-text lengths."""

    def __init__(self, texts: Sequence[str]):
        self.n_docs = len(texts)
        self.text_chars = np.array([len(t) for t in texts], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.text_chars[:-1] + 1)]).astype(np.int64) if texts else np.zeros(0, np.int64)
        self.cp = _cps("\n".join(texts))
        self.flags = _flags(self.cp)
        self.hasher = _Hasher(self.cp)
        self.starts, self.ends = _split_words(self.cp, self.flags, self.hasher)
        self.doc = (np.searchsorted(self.offsets, self.starts, side="right") - 1).astype(np.int64)
        self.lens = (self.ends - self.starts).astype(np.int64)
        self._hashes: np.ndarray | None = None

    @property
    def hashes(self) -> np.ndarray:
        if self._hashes is None:
            self._hashes = self.hasher(self.starts, self.ends)
        return self._hashes

    def words(self, i: int) -> list[str]:
        """The words of text `i` (for tests and debugging)."""
        text = self.cp.tobytes().decode("utf-32-le", "surrogatepass")
        sel = self.doc == i
        return [text[s:e] for s, e in zip(self.starts[sel].tolist(), self.ends[sel].tolist())]


def _flags(cp: np.ndarray) -> np.ndarray:
    table = _char_table()
    if cp.size and int(cp.max()) > 0xFFFF:  # outside the BMP: emoji and other symbols are icons, the rest letters
        flags = table[np.minimum(cp, 0xFFFF)]
        big = cp > 0xFFFF
        icon = (cp >= 0x1F000) & (cp < 0x1FB00)
        flags[big & icon] = _ICON | _PRE | _SUF
        flags[big & ~icon] = _AL
        return flags
    return table[cp]


def _split_words(cp: np.ndarray, f: np.ndarray, hasher: _Hasher) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the words of code points `cp` (flags `f`), as spaCy's English tokenizer splits them.

    Whitespace makes chunks; only the positions of punctuation-like characters (a few percent) are looked at
    after that: leading and trailing runs of detachable characters, infixes, groups ("...", "'s"), then
    contractions and special cases per chunk."""
    n = cp.size
    empty = np.zeros(0, np.int64)
    sp = (f & _SP) != 0
    edges = np.diff(np.concatenate([[True], sp, [True]]).view(np.int8))
    S, E = np.flatnonzero(edges == -1), np.flatnonzero(edges == 1)  # chunks [S, E)
    if S.size == 0:
        return empty, empty
    P = np.flatnonzero((f & _SPECIAL) != 0)
    ap = P[((f[P] & _APOS) != 0) & (P + 1 < n)]
    s_after = ap[(cp[ap + 1] | 32) == 115] + 1  # the s of "'s"
    if s_after.size:
        P = _uniq(np.concatenate([P, s_after]))
    if P.size == 0:
        return S, E
    fP, cP = f[P], cp[P]
    fprev = np.where(P >= 1, f[np.maximum(P - 1, 0)], _SP)
    fprev2 = np.where(P >= 2, f[np.maximum(P - 2, 0)], _SP)
    fnext = np.where(P + 1 < n, f[np.minimum(P + 1, n - 1)], _SP)
    c = np.searchsorted(S, P, side="right") - 1  # chunk of each position
    cs, ce = S[c], E[c]
    is_s = np.zeros(P.size, dtype=bool)
    if s_after.size:
        is_s[np.searchsorted(P, s_after)] = True
    dot = (fP & _DOT) != 0
    dotrun = dot & (((fprev & _DOT) != 0) | ((fnext & _DOT) != 0))  # "..", "...": one word
    # prefixes: detached one by one from the start of a chunk
    pe = ((fP & _PRE) != 0) | (((fP & _PLUS) != 0) & ((fnext & _DG) == 0)) | dotrun
    Q = P[pe]
    lead = pe & (np.searchsorted(Q, P, side="right") - np.searchsorted(Q, cs, side="left") == P - cs + 1)
    # suffixes: detached one by one from the end
    dot_ok = ((fprev & (_DG | _LO | _QU | _SPUNCT | _DOTPREV)) != 0) | (((fprev & _UP) != 0) & ((fprev2 & _UP) != 0))
    se = ((fP & _SUF) != 0) | dotrun | (dot & dot_ok) | (((fP & (_PLUS | _PCT | _CUR)) != 0) & ((fprev & _DG) != 0)) | is_s
    R = P[se]
    trail = se & ~lead & (np.searchsorted(R, ce, side="left") - np.searchsorted(R, P, side="left") == ce - P)
    n_chunks = S.size
    ms_chunk = S + np.bincount(c[lead], minlength=n_chunks)  # each chunk's middle: [ms, me)
    me_chunk = E - np.bincount(c[trail], minlength=n_chunks)
    # abbreviations keep their period: "e.g.", "U.S.", "A.", "Mr."
    ch = np.flatnonzero(me_chunk < E)
    k = me_chunk[ch]
    sel = (cp[k] == 46) & (cp[np.minimum(k + 1, n - 1)] != 46) & (k > ms_chunk[ch])
    ch, k = ch[sel], k[sel]
    if k.size:
        ms = ms_chunk[ch]
        alpha_before = (f[k - 1] & _AL) != 0
        keep = ((k - ms == 1) & alpha_before) | ((k - ms >= 3) & (cp[np.maximum(k - 2, 0)] == 46) & alpha_before)
        _, _, abbrev = _specials()
        h = hasher(ms, k + 1)
        keep |= abbrev[np.minimum(np.searchsorted(abbrev, h), abbrev.size - 1)] == h
        if keep.any():
            trail[np.searchsorted(P, k[keep])] = False
            me_chunk[ch[keep]] += 1
    # infixes, inside the middle
    ms_c, me_c = ms_chunk[c], me_chunk[c]
    mid = ~lead & ~trail
    both = mid & (P > ms_c) & (P + 1 < me_c)
    colon = P[(cP == 58) & (P + 2 < n)]
    url = colon[(cp[np.minimum(colon + 1, n - 1)] == 47) & (cp[np.minimum(colon + 2, n - 1)] == 47)]
    if url.size:  # URLs keep their infixes
        url_chunk = np.zeros(n_chunks, dtype=bool)
        url_chunk[np.searchsorted(S, url, side="right") - 1] = True
        both &= ~url_chunk[c]
    infix = mid & (dotrun | ((fP & (_ELL | _ICON)) != 0))
    next_dash = cp[np.minimum(P + 1, n - 1)] == 45
    infix |= both & ((fP & _OPS) != 0) & ((fprev & _DG) != 0) & (((fnext & _DG) != 0) | next_dash)
    infix |= both & dot & ((fprev & (_LO | _QU)) != 0) & ((fnext & (_UP | _QU)) != 0)
    infix |= both & (cP == 44) & ((fprev & _AL) != 0) & ((fnext & _AL) != 0)
    infix |= both & ((fP & (_HY | _INF)) != 0) & ((fprev & (_AL | _DG)) != 0) & ((fnext & _AL) != 0)
    piece = lead | trail | infix
    adjacent = np.concatenate([[False], P[1:] == P[:-1] + 1])  # the previous character is also in P
    prev_piece = adjacent & np.concatenate([[False], piece[:-1]])
    cprev = cp[np.maximum(P - 1, 0)]
    pk = (cprev.astype(np.int64) << 21) | cP.astype(np.int64)
    pair = _PAIR_KEYS[np.minimum(np.searchsorted(_PAIR_KEYS, pk), _PAIR_KEYS.size - 1)] == pk
    group = piece & prev_piece & ((dot & ((fprev & _DOT) != 0)) | (is_s & trail) | pair)
    group &= ~(np.concatenate([[False], group[:-1]]) & pair)  # emoticon pairs do not chain
    next_group = np.concatenate([group[1:], [False]])  # group[i+1] implies P[i+1] == P[i] + 1
    cuts = [S, P[piece & ~group], (P + 1)[piece & ~next_group & (P + 1 < ce)]]
    # contractions at the end of a middle: "do|n't", "I|'m" (only chunks holding an apostrophe)
    if ap.size:
        chs = _uniq(np.searchsorted(S, ap, side="right") - 1)
        ms, me = ms_chunk[chs], me_chunk[chs]
        low = lambda i: cp[np.clip(i, 0, n - 1)] | 32  # noqa: E731
        is_ap = lambda i: (f[np.clip(i, 0, n - 1)] & _APOS) != 0  # noqa: E731
        letter = lambda i: (i >= ms) & ((f[np.clip(i, 0, n - 1)] & _AL) != 0)  # noqa: E731
        nt = (me - ms >= 4) & (low(me - 3) == 110) & is_ap(me - 2) & (low(me - 1) == 116) & letter(me - 4)
        two = (me - ms >= 3) & is_ap(me - 2) & ((low(me - 1) == 100) | (low(me - 1) == 109)) & letter(me - 3)  # 'd 'm
        three = (me - ms >= 4) & is_ap(me - 3) & letter(me - 4) & (
            ((low(me - 2) == 108) & (low(me - 1) == 108)) | ((low(me - 2) == 114) & (low(me - 1) == 101))
            | ((low(me - 2) == 118) & (low(me - 1) == 101)))  # 'll 're 've
        cuts += [(me - 3)[nt], (me - 2)[two], (me - 3)[three]]
    # special cases: the whole middle is a known form ("cannot" -> "can" "not")
    keys, offsets, _ = _specials()
    ok = np.flatnonzero((me_chunk - ms_chunk >= 2) & (me_chunk - ms_chunk <= 12))
    h = hasher(ms_chunk[ok], me_chunk[ok])
    pos = np.minimum(np.searchsorted(keys, h), keys.size - 1)
    for i in np.flatnonzero(keys[pos] == h).tolist():
        cuts.append(np.array([ms_chunk[ok[i]] + o for o in offsets[pos[i]]], dtype=np.int64))
    starts = _uniq(np.concatenate(cuts))
    ends = np.minimum(np.append(starts[1:], n), E[np.searchsorted(S, starts, side="right") - 1])
    return starts, ends


def split_words(text: str) -> list[str]:
    """The words of `text` as the Gopher filters count them (an approximation of spaCy's English tokenizer)."""
    return _Tokens([text]).words(0)


class GopherRepetitionFilter(DocFilter):
    """Gopher's repetition rules as datatrove 0.10 defines them (thresholds: Gopher's table A1).

    - paragraphs (the stripped text split on blank lines) and lines (split on newlines, blank ones
      included) repeating an earlier one: their share of the paragraphs/lines, and their characters
      as a share of the whole text;
    - the top 2-, 3- and 4-gram of words (the most frequent, the earliest on a tie; words are
      case-sensitive and include punctuation words, see `split_words`): its characters (words
      joined by spaces) times its count, as a share of the whole text's characters;
    - duplicated 5- to 10-grams, found by datatrove's greedy scan (a repeat of an earlier n-gram
      counts its characters and jumps n words ahead), as a share of the whole text's characters.

    Code documentation skips the duplicated n-gram rules (see the module docstring). `batch(docs)`
    is vectorized over many documents at once (64-bit n-gram hashes, one sort per n, over fewer
    positions as n grows); calling the filter on one document gives the same answer.
    """

    def __init__(
        self,
        dup_line_frac: float = 0.30,
        dup_para_frac: float = 0.30,
        dup_line_char_frac: float = 0.20,
        dup_para_char_frac: float = 0.20,
        top_n_grams: Sequence[tuple[int, float]] = ((2, 0.20), (3, 0.18), (4, 0.16)),
        dup_n_grams: Sequence[tuple[int, float]] = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
        exceptions: Iterable[str] = EXCEPTIONS,
    ):
        self.dup_line_frac, self.dup_para_frac = dup_line_frac, dup_para_frac
        self.dup_line_char_frac, self.dup_para_char_frac = dup_line_char_frac, dup_para_char_frac
        checks = [(n, f, "top") for n, f in top_n_grams] + [(n, f, "dup") for n, f in dup_n_grams]
        self.checks = sorted(checks, key=lambda c: (c[2] != "top", c[0]))  # datatrove's order
        if self.checks and min(c[0] for c in self.checks) < 2:
            raise ValueError("n-gram sizes start at 2")
        self.exceptions = frozenset(exceptions)

    def __call__(self, doc: dict) -> str | None:
        return self.batch([doc])[0]

    def batch(self, docs: Sequence[dict]) -> list[str | None]:
        reasons = [self._lines(d["text"]) for d in docs]
        todo = [i for i, r in enumerate(reasons) if r is None]
        for chunk in _chunks(docs, todo):
            for j, r in zip(chunk, self._with_tokens([docs[j] for j in chunk], _Tokens([docs[j]["text"] for j in chunk]))):
                reasons[j] = r
        return reasons

    def _with_tokens(self, docs: Sequence[dict], tok: _Tokens) -> list[str | None]:
        code = np.array(["code-doc-ngrams" in self.exceptions and is_code_doc(d) for d in docs], dtype=bool)
        return self._ngrams(tok, code)

    def _lines(self, text: str) -> str | None:
        if not text:
            return "empty"
        paras = _PARAGRAPHS.split(text.strip())
        n, chars = _dup_count_chars(paras)
        if n / len(paras) > self.dup_para_frac:
            return "repetition:dup-para-frac"
        if chars / len(text) > self.dup_para_char_frac:
            return "repetition:dup-para-char-frac"
        lines = _LINES.split(text)
        n, chars = _dup_count_chars(lines)
        if n / len(lines) > self.dup_line_frac:
            return "repetition:dup-line-frac"
        if chars / len(text) > self.dup_line_char_frac:
            return "repetition:dup-line-char-frac"
        return None

    def _ngrams(self, tok: _Tokens, code: np.ndarray) -> list[str | None]:
        """The n-gram rules for many documents at once, over the words of their concatenation."""
        n_docs = tok.n_docs
        reasons: list[str | None] = [None] * n_docs
        words, doc, lens = tok.hashes, tok.doc, tok.lens
        nw = words.size
        if nw == 0:
            return reasons
        total = tok.text_chars.astype(np.float64)
        csum = np.concatenate([[0], np.cumsum(lens)])
        first = np.searchsorted(doc, np.arange(n_docs))  # each document's first word
        n_words = np.bincount(doc, minlength=n_docs)
        h = words  # hash of the n-gram starting at each position, for n = cur
        cur = 1
        cand = np.arange(nw)  # positions whose (n-1)-gram repeats: only they can start a repeated n-gram
        bad = np.zeros(n_docs, dtype=bool)
        for n, frac, kind in sorted(self.checks):  # increasing n: candidates shrink
            while cur < n:
                h = h[:-1] * _MULT + words[cur:]
                cur += 1
            cand = cand[cand < nw - n + 1]
            cand = cand[doc[cand] == doc[cand + n - 1]]  # n-grams within one document
            keys = h[cand] * _MULT + doc[cand].astype(np.uint64)  # the same n-gram in another document is another key
            order = np.argsort(keys, kind="stable")
            sk, sp = keys[order], cand[order]  # stable: the first of each group is its earliest occurrence
            new = np.concatenate([[True], sk[1:] != sk[:-1]]) if sk.size else np.zeros(0, bool)
            group = np.cumsum(new) - 1
            counts = np.bincount(group) if sk.size else np.zeros(0, np.int64)
            repeated = counts[group] >= 2
            if kind == "top":
                value = np.zeros(n_docs, dtype=np.float64)
                has = n_words >= n  # a document without a repeated n-gram: its first n-gram, once
                fp = first[has]
                value[has] = csum[fp + n] - csum[fp] + (n - 1)
                rep = counts >= 2
                p, c = sp[new][rep], counts[rep]
                if p.size:
                    o = np.lexsort((p, -c, doc[p]))  # per document: highest count, then earliest
                    p, c = p[o], c[o]
                    d = doc[p]
                    top = np.concatenate([[True], d[1:] != d[:-1]])
                    value[d[top]] = (csum[p[top] + n] - csum[p[top]] + (n - 1)) * c[top]
                hit = value > frac * total
            else:
                dup = self._greedy(sp[repeated], sk[repeated], doc, csum, n, n_docs)
                hit = (dup > frac * total) & ~code
            for i in np.flatnonzero(hit & ~bad):
                reasons[i] = f"repetition:{kind}-{n}-gram"
            bad |= hit
            cand = np.sort(sp[repeated & ~bad[doc[sp]]])
        return reasons

    @staticmethod
    def _greedy(pos: np.ndarray, keys: np.ndarray, doc: np.ndarray, csum: np.ndarray, n: int, n_docs: int) -> np.ndarray:
        """datatrove's find_all_duplicate over the repeated positions only (the others never match, so skipping
        them changes nothing): a position seen jumping ahead is skipped; a repeat of a visited n-gram counts its
        characters (words joined without spaces) and jumps n words."""
        dup = np.zeros(n_docs, dtype=np.float64)
        if pos.size == 0:
            return dup
        o = np.argsort(pos, kind="stable")
        pos, keys = pos[o], keys[o]
        d = doc[pos]
        # fast path: first occurrences are visited, later ones are repeats, unless a jump skips them
        firsts = np.zeros(pos.size, dtype=bool)
        o2 = np.argsort(keys, kind="stable")
        sk = keys[o2]
        firsts[o2[np.concatenate([[True], sk[1:] != sk[:-1]])]] = True
        gap = np.diff(pos)
        if not np.any((gap < n) & (d[1:] == d[:-1])):  # no two repeated positions closer than n: no jump skips any
            later = ~firsts
            np.add.at(dup, d[later], csum[pos[later] + n] - csum[pos[later]])
            return dup
        seen: set[int] = set()
        nxt, cur = -1, -1
        span = (csum[pos + n] - csum[pos]).tolist()
        for j, k, dd, s in zip(pos.tolist(), keys.tolist(), d.tolist(), span):
            if dd != cur:
                cur, nxt = dd, -1
            if j < nxt:
                continue
            if k in seen:
                dup[dd] += s
                nxt = j + n
            else:
                seen.add(k)
        return dup


STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")  # datatrove's (case-sensitive)


class GopherQualityFilter(DocFilter):
    """Gopher's quality rules as datatrove 0.10 defines them, in its order, over `split_words` words.

    - word count: 50 to 100,000 non-symbol words (a symbol word is made only of punctuation);
    - mean length of the non-symbol words: 3 to 10 characters;
    - `#` per word (all words) at most 0.1, and `...`/`…` per word at most 0.1, counted separately;
    - at most 90% of lines (all lines, blank ones included) start with a bullet (`BULLETS`);
    - at most 30% of lines end with an ellipsis;
    - at least 80% of words hold a letter;
    - at least 2 of the stop words the, be, to, of, and, that, have, with.

    Exceptions (module docstring): transcripts skip the four punctuation rules; markdown heading
    marks are not counted as `#`; code documentation takes the letter fraction over non-symbol words.
    """

    def __init__(
        self,
        min_doc_words: int = 50,
        max_doc_words: int = 100_000,
        min_avg_word_length: float = 3,
        max_avg_word_length: float = 10,
        max_symbol_word_ratio: float = 0.1,
        max_bullet_lines_ratio: float = 0.9,
        max_ellipsis_lines_ratio: float = 0.3,
        min_alpha_words_ratio: float = 0.8,
        min_stop_words: int = 2,
        stop_words: Sequence[str] = STOP_WORDS,
        exceptions: Iterable[str] = EXCEPTIONS,
    ):
        self.min_doc_words, self.max_doc_words = min_doc_words, max_doc_words
        self.min_avg_word_length, self.max_avg_word_length = min_avg_word_length, max_avg_word_length
        self.max_symbol_word_ratio = max_symbol_word_ratio
        self.max_bullet_lines_ratio, self.max_ellipsis_lines_ratio = max_bullet_lines_ratio, max_ellipsis_lines_ratio
        self.min_alpha_words_ratio, self.min_stop_words = min_alpha_words_ratio, min_stop_words
        self.stop_words = tuple(stop_words)
        self.exceptions = frozenset(exceptions)  # empty: datatrove's rules for every source (for comparisons)

    def __call__(self, doc: dict) -> str | None:
        return self.batch([doc])[0]

    def batch(self, docs: Sequence[dict]) -> list[str | None]:
        reasons: list[str | None] = [None] * len(docs)
        for chunk in _chunks(docs, list(range(len(docs)))):
            for j, r in zip(chunk, self._with_tokens([docs[j] for j in chunk], _Tokens([docs[j]["text"] for j in chunk]))):
                reasons[j] = r
        return reasons

    def _with_tokens(self, docs: Sequence[dict], tok: _Tokens) -> list[str | None]:
        stop = np.sort(np.array([_hash_str(w) for w in self.stop_words], dtype=np.uint64))
        n_docs = tok.n_docs
        flags = tok.flags
        # per word: holds a non-punctuation character? a letter?
        nonsym_c = np.concatenate([[0], np.cumsum((flags & _PU) == 0, dtype=np.int32)])
        alpha_c = np.concatenate([[0], np.cumsum((flags & _AL) != 0, dtype=np.int32)])
        nonsym = (nonsym_c[tok.ends] - nonsym_c[tok.starts]) > 0
        alpha = (alpha_c[tok.ends] - alpha_c[tok.starts]) > 0
        n_words = np.bincount(tok.doc, minlength=n_docs)
        n_nonsym = np.bincount(tok.doc, weights=nonsym, minlength=n_docs)
        len_nonsym = np.bincount(tok.doc, weights=np.where(nonsym, tok.lens, 0), minlength=n_docs)
        n_alpha = np.bincount(tok.doc, weights=alpha, minlength=n_docs)
        stops = np.zeros(n_docs, dtype=np.int64)
        if stop.size and tok.starts.size:
            hs = tok.hashes
            pos = np.minimum(np.searchsorted(stop, hs), stop.size - 1)
            hit = stop[pos] == hs
            pairs = _uniq(tok.doc[hit] * stop.size + pos[hit])
            stops = np.bincount(pairs // stop.size, minlength=n_docs)
        return [self._rules(d, int(n_words[k]), int(n_nonsym[k]), float(len_nonsym[k]), int(n_alpha[k]), int(stops[k]))
                for k, d in enumerate(docs)]

    def _rules(self, doc: dict, n_words: int, n_nonsym: int, len_nonsym: float, n_alpha: int, stops: int) -> str | None:
        text = doc["text"]
        if n_nonsym < self.min_doc_words:
            return "quality:too-few-words"
        if n_nonsym > self.max_doc_words:
            return "quality:too-many-words"
        mean = len_nonsym / n_nonsym
        if mean < self.min_avg_word_length:
            return "quality:short-words"
        if mean > self.max_avg_word_length:
            return "quality:long-words"
        ex = self.exceptions
        if not ("transcript-punctuation" in ex and is_transcript(doc)):
            hashes = text.count("#")
            if hashes and "heading-marks" in ex:
                hashes -= sum(len(m) for m in _HEADING_MARKS.findall(text))
            if hashes / n_words > self.max_symbol_word_ratio:
                return "punctuation:hash-word-ratio"
            ellipses = text.count("...") + text.count("…")
            if ellipses / n_words > self.max_symbol_word_ratio:
                return "punctuation:ellipsis-word-ratio"
            n_lines = None
            bullets = len((_BULLET_LINE if "extra-bullets" in ex else _DT_BULLET_LINE).findall(text))
            if bullets:
                n_lines = _count_lines(text)
                if bullets / n_lines > self.max_bullet_lines_ratio:
                    return "punctuation:bullet-lines"
            if ellipses:
                n_lines = _count_lines(text) if n_lines is None else n_lines
                if len(_ELLIPSIS_LINE.findall(text)) / n_lines > self.max_ellipsis_lines_ratio:
                    return "punctuation:ellipsis-lines"
        base = n_nonsym if "code-doc-alpha" in ex and is_code_doc(doc) else n_words
        if n_alpha / base < self.min_alpha_words_ratio:
            return "quality:alpha-words"
        if stops < self.min_stop_words:
            return "quality:stop-words"
        return None




class GopherFilters(DocFilter):
    """`GopherRepetitionFilter` then `GopherQualityFilter`, splitting each batch's words once for both (the
    reasons are those of the two filters run one after the other)."""

    def __init__(self, repetition: GopherRepetitionFilter | None = None, quality: GopherQualityFilter | None = None):
        self.repetition = repetition or GopherRepetitionFilter()
        self.quality = quality or GopherQualityFilter()

    def __call__(self, doc: dict) -> str | None:
        return self.batch([doc])[0]

    def batch(self, docs: Sequence[dict]) -> list[str | None]:
        reasons = [self.repetition._lines(d["text"]) for d in docs]
        todo = [i for i, r in enumerate(reasons) if r is None]
        for chunk in _chunks(docs, todo):
            some = [docs[j] for j in chunk]
            tok = _Tokens([d["text"] for d in some])
            for j, r, q in zip(chunk, self.repetition._with_tokens(some, tok), self.quality._with_tokens(some, tok)):
                reasons[j] = r or q
        return reasons


def _count_lines(text: str) -> int:
    """len(text.splitlines())."""
    breaks = len(_LINE_BREAK.findall(text))
    return breaks + (0 if not text or _LINE_BREAK.match(text[-1]) else 1)


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
    """The standard chain, cheapest first: length, Gopher repetition, Gopher quality (with its per-source
    exceptions), language."""
    chain: list[Filter] = [LengthFilter(min_chars, max_chars), GopherFilters()]
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
