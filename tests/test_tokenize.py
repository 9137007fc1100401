"""Tokenize stage: exact round trips, llm.c shard layout, val split, bytes per split, the bigram baseline,
tokenizer reuse, caching, bad input, workers (same output for any count, no Prefect in them)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prefect import flow

from chardata import make_char_data
from flows.tokenize import tokenize_flow
from model.baseline import KneserNeyBigram, bigram_baseline, bits_per_byte
from model.errors import CookError
from model.shards import HEADER_INTS, ShardStream, ShardWriter, list_shards, load_meta, read_shard, write_shard
from model.tokenizer import (
    EOT,
    R50K_SHA256,
    get_tokenizer,
    gpt2_ranks,
    load_tokenizer,
    ranks_to_tiktoken,
    tiktoken_cache_path,
)
from tasks.corpus.documents import TEXT_SEPARATOR, DocumentWriter, escape_text, write_documents
from tasks.corpus.tokenize import (
    HASH,
    PART,
    TASK_BYTES,
    _val_hash,
    check_tokenize_args,
    encode_piece,
    plan_pieces,
    tokenize_corpus,
    tokenize_task,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]

TEXTS = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Unicode: café, naïve, Ærøskøbing, Straße — “quotes” and emoji 😀🍕👩‍👩‍👧 done.",
    "中文文本：东京和北京。日本語のテキスト、한국어 텍스트.",
    "  leading spaces, trailing newline\n\n\tand a tab\r\nwindows line\n",
    "numbers 1234567890 3.14159 and code: def f(x): return x ** 2",
    "a",
    "Ελληνικά και русский текст, עברית, العربية.",
]
TXT = "A plain text file is one document.\nIt has two lines and an emoji 🎉.\n"


def _corpus(tmp: Path, texts=TEXTS, txt: str | None = TXT, name: str = "docs.parquet") -> list[Path]:
    docs = [{"id": str(i), "source": "test", "url": f"u{i}", "title": f"t{i}", "text": t} for i, t in enumerate(texts)]
    files = [write_documents(tmp / name, docs)]
    if txt is not None:
        (tmp / "extra.txt").write_text(txt, encoding="utf-8")
        files.append(tmp / "extra.txt")
    return files


def _split_docs(out: Path, split: str) -> tuple[list[str], np.ndarray]:
    tok = load_tokenizer(out)
    ids = np.concatenate([np.asarray(read_shard(p), dtype=np.int64) for p in list_shards(out, split)])
    if ids.size:
        assert ids[-1] == tok.eot_id, "every document ends with eot"
    docs, start = [], 0
    for end in np.flatnonzero(ids == tok.eot_id):
        docs.append(tok.decode(ids[start:end]))
        start = end + 1
    return docs, ids


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["char", "gpt2", "r50k_base", "bpe:300"])
def test_round_trip_every_offline_encoding(tmp_path, encoding):
    files = _corpus(tmp_path)
    out = tokenize_corpus(files, encoding, tmp_path / "out", None, 0.3, "auto", 64, 2)
    meta = load_meta(out)
    train, _ = _split_docs(out, "train")
    val, _ = _split_docs(out, "val")
    expected = TEXTS + [TXT]
    assert sorted(train + val) == sorted(expected)  # exact text back, unicode included
    assert [d for d in expected if d in train] == train  # train keeps input order
    assert len(val) >= 1 and meta["splits"]["val"]["documents"] == len(val)
    assert meta["splits"]["train"]["documents"] == len(train)
    assert meta["encoding"] == encoding and meta["dtype"] == "uint16"
    assert meta["splits"]["train"]["tokens"] == sum(read_shard(p).size for p in list_shards(out, "train"))
    names = meta["splits"]["train"]["shards"]
    assert names == [f"train_{i:06d}.bin" for i in range(len(names))] and len(names) > 1  # rolled at 64 tokens
    assert meta["tokenizer"]["hash"] == load_tokenizer(out / meta["tokenizer"]["dir"]).hash
    # deterministic: same inputs -> same fingerprint and same bytes
    again = tokenize_corpus(files, encoding, tmp_path / "again", None, 0.3, "auto", 64, 1)
    assert load_meta(again)["fingerprint"] == meta["fingerprint"]
    assert (again / "train_000000.bin").read_bytes() == (out / "train_000000.bin").read_bytes()


def test_gpt2_offline_matches_published_ranks():
    assert hashlib.sha256(ranks_to_tiktoken(gpt2_ranks())).hexdigest() == R50K_SHA256
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert get_tokenizer("r50k_base").hash == tok.hash


@pytest.mark.parametrize("encoding", ["gpt2", "bpe:400"])
def test_long_text_split_for_threads_encodes_identically(encoding):
    """Long documents are cut at safe points to use every core: the ids must equal one-piece encoding."""
    para = "The year 1987 saw café prices rise.\nIt's 东京 time 😀, isn't it?\n  Indented line.\n\n"
    text = para * 40000  # ~3.4M chars: cut into pieces
    tok = get_tokenizer(encoding, lambda: iter([para * 50]))
    [ids] = tok.encode_batch([text], num_threads=2)
    assert ids.tolist() == tok.encode(text)


# ---- shard layout -----------------------------------------------------------------------------


def test_llm_c_header_layout_uint16_and_uint32(tmp_path):
    files = _corpus(tmp_path)
    for dtype, magic, version, item in (("auto", 20240520, 1, 2), ("uint32", 20240801, 7, 4)):
        out = tokenize_corpus(files, "char", tmp_path / dtype, None, 0.3, dtype, 10_000, 2)
        shard = list_shards(out, "train")[0]
        header = np.fromfile(shard, dtype="<i4", count=HEADER_INTS)  # what llm.c's loader reads
        assert (header[0], header[1]) == (magic, version)
        assert shard.stat().st_size == HEADER_INTS * 4 + int(header[2]) * item
        raw = np.fromfile(shard, dtype="<u2" if item == 2 else "<u4", offset=HEADER_INTS * 4)
        assert raw.tolist() == read_shard(shard).tolist()
        assert load_meta(out)["dtype"] == ("uint16" if item == 2 else "uint32")


def test_shard_reader_rejects_bad_and_truncated_files(tmp_path):
    p = write_shard(tmp_path / "s.bin", np.arange(100, dtype=np.uint16))
    assert read_shard(p).tolist() == list(range(100))
    (tmp_path / "bad.bin").write_bytes(b"\0" * 2048)
    with pytest.raises(CookError, match="not a token shard"):
        read_shard(tmp_path / "bad.bin")
    (tmp_path / "cut.bin").write_bytes(p.read_bytes()[:-10])
    with pytest.raises(CookError, match="header says 100 tokens, file holds 95"):
        read_shard(tmp_path / "cut.bin")
    w = ShardWriter(tmp_path / "w", "train", np.uint16, 7)
    for chunk in np.array_split(np.arange(30), 4):
        w.add(chunk)
    paths = w.close()
    assert [p.name for p in paths] == [f"train_{i:06d}.bin" for i in range(5)]
    assert np.concatenate([read_shard(p) for p in paths]).tolist() == list(range(30))


# ---- validation split -------------------------------------------------------------------------


def test_val_always_holds_a_document(tmp_path):
    files = _corpus(tmp_path)
    out = tokenize_corpus(files, "gpt2", tmp_path / "out", None, 0.0, "auto", 1000, 2)
    train, _ = _split_docs(out, "train")
    val, _ = _split_docs(out, "val")
    assert val == [TXT] and train == TEXTS  # the last document moved to val


def test_single_document_corpus_splits_its_tokens(tmp_path):
    (tmp_path / "one.txt").write_text("only one document here, " * 100, encoding="utf-8")
    out = tokenize_corpus([tmp_path / "one.txt"], "gpt2", tmp_path / "out", None, 0.005, "auto", 1000, 2)
    meta = load_meta(out)
    train = np.concatenate([read_shard(p) for p in list_shards(out, "train")])
    val = np.concatenate([read_shard(p) for p in list_shards(out, "val")])
    assert val.size >= 2 and train.size > val.size
    tok = load_tokenizer(out)
    assert tok.decode(np.concatenate([train, val])) == "only one document here, " * 100 + EOT
    assert meta["splits"]["val"]["tokens"] == val.size


# ---- bytes per split, bigram baseline -----------------------------------------------------------


def _nbytes(texts) -> int:
    return sum(len(t.encode("utf-8")) for t in texts)


def _assert_baseline_of_shards(out: Path) -> None:
    """meta.json's bigram baseline (fitted as the train shards were written) is the one fitted on the shards."""
    meta = load_meta(out)
    train, val = ShardStream(list_shards(out, "train")), ShardStream(list_shards(out, "val"))
    assert meta["baseline"]["bigram"] == bigram_baseline(train, val, meta["vocab_size"], meta["splits"]["val"]["bytes"])


def test_meta_records_each_splits_text_bytes(tmp_path):
    """meta bytes = UTF-8 bytes of the documents the task put in each split (by its hash rule), also when
    the last document is moved to val and when one document's tail becomes val."""
    files = _corpus(tmp_path)
    docs = TEXTS + [TXT]
    out = tokenize_corpus(files, "gpt2", tmp_path / "out", None, 0.3, "auto", 64, 2)
    meta = load_meta(out)
    to_val = [_val_hash(d.encode("utf-8")) < 0.3 for d in docs]
    assert 0 < sum(to_val) < len(docs)  # both splits hold documents by the hash rule
    for split, want in (("train", [d for d, v in zip(docs, to_val) if not v]), ("val", [d for d, v in zip(docs, to_val) if v])):
        assert _split_docs(out, split)[0] == want
        assert meta["splits"][split]["bytes"] == _nbytes(want) > 0

    moved_out = tokenize_corpus(files, "gpt2", tmp_path / "moved", None, 0.0, "auto", 1000, 2)
    moved = load_meta(moved_out)
    assert (moved["splits"]["train"]["bytes"], moved["splits"]["val"]["bytes"]) == (_nbytes(TEXTS), _nbytes([TXT]))
    _assert_baseline_of_shards(moved_out)  # the held-back document went to val, never to the fit

    text = "ünïcödé one document, " * 50
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    for encoding in ("char", "gpt2"):  # one document: its tail is val, its bytes split where its tokens are
        one = tokenize_corpus([tmp_path / "one.txt"], encoding, tmp_path / encoding, None, 0.005, "auto", 1000, 2)
        split = load_meta(one)["splits"]
        assert split["train"]["bytes"] + split["val"]["bytes"] == _nbytes([text]) and split["val"]["bytes"] > 0
        _assert_baseline_of_shards(one)  # the fit saw the document's head only
        if encoding == "char":
            val_text = load_tokenizer(one).decode(np.asarray(read_shard(list_shards(one, "val")[0]))[:-1])  # eot dropped
            assert split["val"]["bytes"] == _nbytes([val_text])


def test_bigram_probabilities_sum_to_one():
    V = 50
    rng = np.random.default_rng(0)
    train = rng.integers(0, 30, 2000)  # ids 30..49 never occur
    model = KneserNeyBigram(V).fit(np.array_split(train, 7))
    whole = KneserNeyBigram(V).fit([train])
    assert np.array_equal(model.keys, whole.keys) and np.array_equal(model.counts, whole.counts)  # pairs across pieces
    assert model.tokens == 2000 and model.counts.sum() == 1999
    for a in (int(train[0]), int(train[-1]), 29, 31, 49):  # seen contexts, one never a context, unseen ids
        p = model.probs(a)
        assert p.sum() == pytest.approx(1.0, abs=1e-12) and (p > 0).all()
    assert model.probs(3)[:30].min() > model.probs(3)[30:].max()  # seen ids above unseen ones


@pytest.mark.parametrize("V, dtype", [(50, np.uint32), (65_536, np.uint16), (70_000, np.int64)])  # keys: 32, 32, 64 bits
def test_bigram_counts_match_a_counter_however_the_stream_is_cut(monkeypatch, V, dtype):
    """`update` gathers pieces of any size (a long one in views) and counts the pair across their ends: the
    counts equal collections.Counter's over the whole stream, fed at once or cut anywhere."""
    import collections

    from model import baseline

    monkeypatch.setattr(baseline, "PIECE_TOKENS", 64)  # many gathered pieces, long pieces cut in views
    rng = np.random.default_rng(1)
    stream = rng.integers(0, V, 3000).astype(dtype)
    stream[[7, 8, 9]] = V - 1  # the largest key, (V - 1) * V + V - 1 = V * V - 1, twice
    ref = collections.Counter(zip(stream[:-1].tolist(), stream[1:].tolist()))
    cuts = np.sort(rng.choice(np.arange(1, stream.size), 40, replace=False))
    for pieces in ([stream], np.split(stream, cuts), [stream[:1], stream[1:2], stream[2:]]):
        model = KneserNeyBigram(V)
        for p in pieces:
            model.update(p)
        model.finish()
        got = {(int(k) // V, int(k) % V): int(c) for k, c in zip(model.keys, model.counts)}
        assert got == dict(ref) and model.tokens == stream.size
    for bad in (np.array([V]), np.array([-1]), np.array([2**32 + 3])):  # never wrapped into the vocabulary
        with pytest.raises(ValueError, match="outside the vocabulary"):
            KneserNeyBigram(V).update(bad)


def test_tokenize_fits_the_baseline_on_the_first_train_tokens_as_it_writes(tmp_path, monkeypatch):
    """meta.json's baseline is fitted on the train tokens as they are written, not read back: it equals the
    bigram of the shards' first FIT_TOKENS, for any worker count."""
    from model import baseline

    monkeypatch.setattr(baseline, "FIT_TOKENS", 1000)  # a limit that falls inside a document
    files = _corpus(tmp_path, [f"{i}: " + TEXTS[i % len(TEXTS)] * (1 + i % 3) for i in range(80)])
    for workers in (1, 3):
        out = tokenize_corpus(files, "gpt2", tmp_path / f"out{workers}", None, 0.3, "auto", 700, workers, processes=False)
        meta = load_meta(out)
        train, val = ShardStream(list_shards(out, "train")), ShardStream(list_shards(out, "val"))
        assert train.tokens > 1000
        expected = bigram_baseline(train, val, meta["vocab_size"], meta["splits"]["val"]["bytes"], fit_tokens=1000)
        assert meta["baseline"]["bigram"] == expected and expected["train_tokens"] == 1000


def test_bigram_beats_unigram_on_held_out_text(tmp_path):
    data = make_char_data(tmp_path / "chars", n_words=4000)
    meta = load_meta(data)
    train, val = ShardStream(list_shards(data, "train")), ShardStream(list_shards(data, "val"))
    b = bigram_baseline(train, val, meta["vocab_size"], 1234)
    ids = lambda s: np.concatenate(list(s.chunks(1 << 20))).astype(np.int64)  # noqa: E731
    counts = np.bincount(ids(train), minlength=meta["vocab_size"]) + 1.0  # add-one unigram
    unigram = -np.log(counts / counts.sum())[ids(val)[1:]].mean()
    assert 0 < b["val_loss"] < 0.9 * unigram
    assert b["val_tokens"] == val.tokens - 1 and b["train_tokens"] == train.tokens
    assert b["val_bpb"] == pytest.approx(b["val_loss"] * val.tokens / 1234 / math.log(2))
    assert bits_per_byte(math.log(2), 10, 10) == 1.0 and bits_per_byte(1.0, 3, 6) == pytest.approx(0.5 / math.log(2))
    limited = bigram_baseline(train, val, meta["vocab_size"], 1234, fit_tokens=100, score_tokens=50)
    assert (limited["train_tokens"], limited["val_tokens"]) == (100, 49)


def test_meta_baseline_is_the_bigram_of_the_shards(tmp_path):
    out = tokenize_corpus(_corpus(tmp_path), "char", tmp_path / "out", None, 0.3, "auto", 40, 2)
    meta = load_meta(out)
    base = meta["baseline"]["bigram"]
    again = bigram_baseline(ShardStream(list_shards(out, "train")), ShardStream(list_shards(out, "val")), meta["vocab_size"],
                            meta["splits"]["val"]["bytes"])
    assert base == again and base["method"] == "interpolated Kneser-Ney bigram, d=0.75"
    assert base["val_bpb"] == pytest.approx(bits_per_byte(base["val_loss"], meta["splits"]["val"]["tokens"], meta["splits"]["val"]["bytes"]))
    assert base["train_tokens"] == meta["splits"]["train"]["tokens"] and base["val_tokens"] == meta["splits"]["val"]["tokens"] - 1


# ---- tokenizer reuse, caching -------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["char", "bpe:300"])
def test_tokenizer_reuse_gives_same_ids(tmp_path, encoding):
    a = tokenize_corpus(_corpus(tmp_path), encoding, tmp_path / "a", None, 0.3, "auto", 10_000, 2)
    (tmp_path / "b").mkdir()
    subset = [TEXTS[0], TEXTS[2]]
    b = tokenize_corpus(_corpus(tmp_path / "b", subset, None), "gpt2", tmp_path / "b_out", a / "tokenizer", 0.0, "auto", 10_000, 2)
    ta, tb = load_tokenizer(a), load_tokenizer(b)
    assert ta.hash == tb.hash == load_meta(b)["tokenizer"]["hash"]
    assert load_meta(b)["encoding"] == encoding
    ids = np.concatenate([read_shard(p) for s in ("train", "val") for p in list_shards(b, s)]).tolist()
    assert ids == ta.encode(subset[0]) + [ta.eot_id] + ta.encode(subset[1]) + [ta.eot_id]


def test_char_reuse_rejects_unseen_characters_and_keeps_old_output(tmp_path):
    a = tokenize_corpus(_corpus(tmp_path, ["abc abc"], None), "char", tmp_path / "a", None, 0.0, "auto", 100, 2)
    (tmp_path / "b").mkdir()
    files = _corpus(tmp_path / "b", ["abc xyz"], None)
    tokenize_corpus(files[:0] + _corpus(tmp_path / "b", ["abc"], None, "ok.parquet"), "char", tmp_path / "b_out", a, 0.0, "auto", 100, 2)
    before = sorted(p.name for p in (tmp_path / "b_out").iterdir())
    with pytest.raises(CookError, match="not in the char vocabulary: 'x', 'y', 'z'") as e:
        tokenize_corpus(files, "char", tmp_path / "b_out", a, 0.0, "auto", 100, 2)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "b_out").iterdir()) == before  # old output intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b_out") and ".lock" not in p.name]  # no temp left


def test_flow_caches_and_reruns_on_change(tmp_path):
    files = _corpus(tmp_path)
    out = tmp_path / "tokens"
    args = dict(inputs=[str(f) for f in files], encoding="gpt2", out=str(out), val_fraction=0.3, shard_tokens=1000)
    assert tokenize_flow(**args) == str(out)
    mtime = (out / "meta.json").stat().st_mtime_ns

    @flow
    def probe() -> str:
        state = tokenize_task(files, "gpt2", out, None, 0.3, "auto", 1000, return_state=True)
        return state.name

    assert probe() == "Cached"
    tokenize_flow(**args)
    assert (out / "meta.json").stat().st_mtime_ns == mtime  # cache hit: nothing rewritten

    fp = load_meta(out)["fingerprint"]
    _corpus(tmp_path, TEXTS + ["one more document"])  # changed input -> re-tokenize
    tokenize_flow(**args)
    assert load_meta(out)["fingerprint"] != fp
    assert "one more document" in _split_docs(out, "train")[0] + _split_docs(out, "val")[0]

    mtime = (out / "meta.json").stat().st_mtime_ns
    (out / "meta.json").unlink()  # deleted output -> re-tokenize
    assert probe() == "Completed"
    assert (out / "meta.json").stat().st_mtime_ns != mtime


# ---- bad input ----------------------------------------------------------------------------------


def _one_line_error(call, match: str) -> None:
    with pytest.raises(CookError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


def test_bad_inputs_fail_with_one_line_and_write_nothing(tmp_path):
    files = _corpus(tmp_path)
    (tmp_path / "empty").mkdir()
    empty = _corpus(tmp_path / "empty", ["", ""], "")
    out = tmp_path / "out"
    _one_line_error(lambda: tokenize_corpus(empty, "gpt2", out), r"empty corpus: no text in 2 input file\(s\)")
    _one_line_error(lambda: tokenize_corpus(files, "xyz", out), r"unknown encoding 'xyz' \(choose char, p50k_base")
    _one_line_error(lambda: tokenize_corpus(files, "bpe:100", out), "at least 257")
    _one_line_error(lambda: check_tokenize_args(files, "cl100k_base", "uint16"),
                    r"vocabulary of 100277 ids does not fit uint16 \(max 65536\); use --dtype uint32 or auto")
    _one_line_error(lambda: tokenize_corpus([tmp_path / "nope.parquet"], "gpt2", out), "input not found")
    _one_line_error(lambda: tokenize_flow(inputs=[str(f) for f in empty], encoding="char", out=str(out)), "empty corpus")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out") and ".lock" not in p.name]  # its lock stays


def test_downloaded_encodings_use_tiktoken_cache_or_say_how(tmp_path, monkeypatch):
    """p50k_base / cl100k_base come from TIKTOKEN_CACHE_DIR (no network here): missing or corrupt -> one line.

    A genuine cl100k/p50k file cannot be made offline (tiktoken checks its sha256), so this shows the
    lookup goes to the exact cache path and that a wrong file there is named in the error.
    """
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for enc, url in (("cl100k_base", "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"),
                     ("p50k_base", "https://openaipublic.blob.core.windows.net/encodings/p50k_base.tiktoken")):
        cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
        assert tiktoken_cache_path(url) == cached
        _one_line_error(lambda: get_tokenizer(enc), rf"needs {url}: no network .*not in TIKTOKEN_CACHE_DIR \({tmp_path}\); download it there as {cached.name}")
        cached.write_bytes(ranks_to_tiktoken(gpt2_ranks()))  # a valid .tiktoken file, but not this encoding's
        _one_line_error(lambda: get_tokenizer(enc), rf"{cached} has the wrong sha256")
        assert cached.exists()  # the user's file is reported, not deleted


# ---- memory stays flat ---------------------------------------------------------------------------

_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    from pathlib import Path
    from tasks.corpus.documents import DocumentWriter
    from tasks.corpus.tokenize import tokenize_corpus
    tmp = Path(sys.argv[1])
    para = "Streaming keeps memory flat; the corpus may grow without bound. Ünïcode ok. " * 40
    sizes = [int(a) for a in sys.argv[2:]]
    for mb in sizes:
        docs = ({"id": str(i), "source": "s", "url": "u", "title": "t", "text": f"{i} {para}"} for i in range(mb * 1_000_000 // len(para)))
        with DocumentWriter(tmp / f"c{mb}.parquet", row_group_size=1024) as w:
            for d in docs:
                w.write(d)
    peaks = []
    for mb in sizes:  # the first run pays the one-time costs (tokenizer, threads)
        tokenize_corpus([tmp / f"c{mb}.parquet"], "gpt2", tmp / f"out{mb}", None, 0.005, "auto", 1_000_000, 2)
        # VmHWM, this process's own peak: ru_maxrss would carry pytest's over the exec
        peaks.append(int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]) // 1024)
    print(*peaks)
    """
)


@pytest.mark.timeout(300)
def test_memory_stays_flat_as_corpus_grows(tmp_path):
    """Tokenizing a corpus 4x larger (many batches) must not raise peak memory in proportion."""
    r = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path), "10", "40"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    small, big = map(int, r.stdout.split())
    assert big - small < 15, (small, big)  # 30 MB more text (7+ more batches), far less extra memory


# ---- workers: pieces, order, no Prefect, bad input --------------------------------------------------

ESCAPED = ["<|endoftext|> opens it", "a <||endoftext|> inside", "", "last one\n"]


def _text_format(path: Path, docs: list[str]) -> Path:
    path.write_bytes("".join(escape_text(d) + TEXT_SEPARATOR for d in docs).encode("utf-8"))
    return path


def _doc_text(i: int) -> str:
    words = ["alpha", "Beta", "café", "東京", "1987", "naïve", "x=f(y)", "done."]
    return f"Doc {i}: " + " ".join(words[(i * k) % len(words)] for k in range(1, 40 + i % 90)) + ("\nNext line" if i % 3 else "")


def _mixed_corpus(tmp: Path) -> list[Path]:
    """Pieces of very different sizes, the largest first (so 2 workers finish them out of order): a 3 MB
    parquet file, a small one of many row groups, a text-format file, a plain text file above TASK_BYTES
    (its hash and its parts are pieces of their own)."""
    tmp.mkdir(parents=True, exist_ok=True)
    with DocumentWriter(tmp / "a.parquet", row_group_size=100_000) as w:
        size, i = 0, 0
        while size < 3_000_000:
            w.write({"id": str(i), "source": "s", "url": "", "title": "", "text": _doc_text(i)})
            size, i = size + len(_doc_text(i)), i + 1
    with DocumentWriter(tmp / "b.parquet", row_group_size=8) as w:
        for i in range(50):
            w.write({"id": str(i), "source": "s", "url": "", "title": "", "text": TEXTS[i % len(TEXTS)] if i % 5 else ""})
    _text_format(tmp / "c.txt", ESCAPED + TEXTS)
    para = "The year 1987 saw café prices rise.\nIt's 东京 time 😀, isn't it?\r\n  Indented line.\n\n"
    (tmp / "d.txt").write_bytes((para * (TASK_BYTES // len(para.encode()) + 2000)).encode("utf-8"))
    return [tmp / n for n in ("a.parquet", "b.parquet", "c.txt", "d.txt")]


def _folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_golden_output_unchanged(tmp_path):
    """The fingerprint (tokenizer + every split's token digest) and split sizes the stage gave before workers
    read their own pieces: the rewrite changed how the work is done, not the output."""
    out = tokenize_corpus(_corpus(tmp_path), "gpt2", tmp_path / "out", None, 0.3, "auto", 64, 2)
    meta = load_meta(out)
    assert meta["fingerprint"] == "0c5d11740d16ac817f6bd0796410572d8459b50598a54418c2ef90d88f0fd7c9"
    assert {s: (v["tokens"], v["documents"], v["bytes"]) for s, v in meta["splits"].items()} == {"train": (140, 4, 279), "val": (84, 4, 235)}


def test_threads_encode_a_char_vocabulary_of_few_characters(tmp_path):
    """On threads (a Dask worker's path) nothing is encoded but the corpus: a char vocabulary without a space or
    most letters gives the same bytes on 2 threads as on 1 worker."""
    files = [f for k in range(3) for f in _corpus(tmp_path, ["abba" * (50 + i + k) for i in range(20)], None, f"{k}.parquet")]
    assert len(plan_pieces(files)) == 3  # the threads have pieces to share
    one = tokenize_corpus(files, "char", tmp_path / "w1", None, 0.1, "auto", 500, 1)
    threads = tokenize_corpus(files, "char", tmp_path / "t2", None, 0.1, "auto", 500, 2, processes=False)
    assert load_tokenizer(one).vocab_size == 3  # a, b and eot
    assert _folder_bytes(threads) == _folder_bytes(one)


@pytest.mark.timeout(300)
def test_workers_give_identical_output_and_import_no_prefect(tmp_path, cook_env):
    """1 worker (in-process), 2 threads and `cook tokenize --workers 2` (2 spawned processes) write the same
    bytes: shards, tokenizer and meta (but its input paths). The CLI runs under `-X importtime`, which its
    spawned workers inherit: each process that imports a module prints it once, so the workers are seen to
    import tasks.corpus.tokenize, and only the main process Prefect."""
    files = _mixed_corpus(tmp_path / "in")
    kinds = [p.kind for p in plan_pieces(files)]
    assert kinds[:2] == ["rows", "rows"] and HASH in kinds and kinds.count(PART) >= 2
    one = tokenize_corpus(files, "gpt2", tmp_path / "w1", None, 0.05, "auto", 200_000, 1)
    threads = tokenize_corpus(files, "gpt2", tmp_path / "t2", None, 0.05, "auto", 200_000, 2, processes=False)
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", "tokenize", *map(str, files), "--out",
                        str(tmp_path / "p2"), "--val-fraction", "0.05", "--shard-tokens", "200000", "--workers", "2"],
                       env=cook_env, cwd=REPO, capture_output=True, text=True, timeout=280)
    imports = [line.rsplit("|", 1)[1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")]
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if not line.startswith("import time:"))[-3000:]
    assert imports.count("tasks.corpus.tokenize") == 3  # the CLI and its 2 workers
    assert imports.count("prefect") == 1  # the CLI only
    want = _folder_bytes(one)
    assert len([n for n in want if n.startswith("train_")]) > 1 and load_meta(one)["splits"]["val"]["documents"] > 1
    for other in (threads, tmp_path / "p2"):
        got = _folder_bytes(other)
        assert got.keys() == want.keys()
        assert all(got[n] == want[n] for n in want if n != "meta.json")
        strip = lambda m: {k: v for k, v in json.loads(m).items() if k != "inputs"}  # noqa: E731
        assert strip(got["meta.json"]) == strip(want["meta.json"])
    docs = _split_docs(one, "train")[0] + _split_docs(one, "val")[0]
    assert sum(d.startswith("Doc ") for d in docs) > 1000 and "<|endoftext|> opens it" in docs  # escapes undone


def test_pieces_cut_anywhere_encode_as_the_whole(tmp_path):
    """Text files cut into small pieces (documents split at separators, one plain text at safe cuts, or not
    at all where it has none) give each document's exact ids, UTF-8 bytes and hash."""
    tok = get_tokenizer("gpt2")
    docs = [t * 3 for t in TEXTS] + ESCAPED + ["x" * 700, "ü" * 300 + "\nA line\nB"]
    files = [_text_format(tmp_path / "docs.txt", docs)]
    plain = "".join(f"Line {i}: ünï 東京 {i * 7}\r\nword\n\n  spaced\nNext{i}\n" for i in range(80))
    (tmp_path / "plain.txt").write_bytes(plain.encode("utf-8"))
    (tmp_path / "nocut.txt").write_bytes(("東京" * 400).encode("utf-8"))  # no ASCII line start: one part
    files += [tmp_path / "plain.txt", tmp_path / "nocut.txt"]
    pieces = plan_pieces(files, task_bytes=97)
    results = [encode_piece(p, tok, np.dtype(np.uint16)) for p in pieces]
    assert sum(p.kind == PART for p in pieces) > 20
    kept = [d for d in docs if d]
    n = len(kept)
    lens = np.concatenate([r.lens for p, r in zip(pieces, results) if p.kind == "docs"])
    ids = np.concatenate([r.ids for p, r in zip(pieces, results) if p.kind == "docs"])
    assert len(lens) == n
    for d, part in zip(kept, np.split(ids, np.cumsum(lens)[:-1])):
        assert part.tolist() == tok.encode(d) + [tok.eot_id]
    sizes = np.concatenate([r.sizes for p, r in zip(pieces, results) if p.kind == "docs"])
    hashes = np.concatenate([r.hashes for p, r in zip(pieces, results) if p.kind == "docs"])
    assert sizes.tolist() == [len(d.encode()) for d in kept]
    assert [h / 2.0**64 for h in hashes.tolist()] == [_val_hash(d.encode()) for d in kept]
    for f in files[1:]:
        mine = [(p, r) for p, r in zip(pieces, results) if p.path == str(f)]
        text = f.read_bytes()
        assert mine[0][0].kind == HASH and mine[0][1].hashes[0] / 2.0**64 == _val_hash(text) and mine[0][1].sizes[0] == len(text)
        assert np.concatenate([r.ids for p, r in mine[1:]]).tolist() == tok.encode(text.decode())
        assert sum(int(r.sizes[0]) for _, r in mine[1:]) == len(text) and mine[-1][0].last


def test_bad_text_input_is_one_line_or_skipped_with_a_warning(tmp_path, caplog):
    """An integer text column and a non-UTF-8 .txt are one line naming the file; a dictionary-encoded text
    column is read as text; rows that are not UTF-8 are left out with a warning naming the file and count
    (what `cook merge` rejects as invalid-utf8), and meta.json counts them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array([1, 2, 3])}), tmp_path / "ints.parquet")
    _one_line_error(lambda: tokenize_corpus([tmp_path / "ints.parquet"], "gpt2", tmp_path / "o1"), r"ints\.parquet: column 'text' is int64, not text")
    (tmp_path / "latin1.txt").write_bytes("café crème, déjà vu\n".encode("latin-1"))
    _one_line_error(lambda: tokenize_corpus([tmp_path / "latin1.txt"], "gpt2", tmp_path / "o2"),
                    r"latin1\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)")
    (tmp_path / "bad.txt").write_bytes(("ok" + TEXT_SEPARATOR).encode() + b"caf\xe9" + TEXT_SEPARATOR.encode())
    _one_line_error(lambda: tokenize_corpus([tmp_path / "bad.txt"], "gpt2", tmp_path / "o3"), r"bad\.txt: not UTF-8 text \(byte 0xe9 at offset 20\)")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("o1", "o2", "o3", ".o"))]

    plain = tokenize_corpus([write_documents(tmp_path / "plain.parquet", [{"id": str(i), "source": "s", "url": "", "title": "",
                                                                            "text": t} for i, t in enumerate(TEXTS)])],
                            "gpt2", tmp_path / "plain", None, 0.3, "auto", 1000, 1)
    pq.write_table(pa.table({"text": pa.array(TEXTS).dictionary_encode()}), tmp_path / "dict.parquet")
    dict_out = tokenize_corpus([tmp_path / "dict.parquet"], "gpt2", tmp_path / "dict", None, 0.3, "auto", 1000, 1)
    assert load_meta(dict_out)["fingerprint"] == load_meta(plain)["fingerprint"]

    raw = [t.encode() for t in TEXTS[:3]] + [b"caf\xe9 latin-1", b"\xff\xfe"]
    pq.write_table(pa.table({"text": pa.array(raw, pa.binary()).view(pa.string())}), tmp_path / "mixed.parquet")
    with caplog.at_level("WARNING", logger="cook.tokenize"):
        out = tokenize_corpus([tmp_path / "mixed.parquet"], "gpt2", tmp_path / "mixed", None, 0.3, "auto", 1000, 1)
    assert sorted(_split_docs(out, "train")[0] + _split_docs(out, "val")[0]) == sorted(TEXTS[:3])
    assert load_meta(out)["skipped"] == {"invalid-utf8": 2}
    assert any("left out 2 row(s) of" in r.message and "mixed.parquet" in r.message for r in caplog.records)
