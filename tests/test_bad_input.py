"""Bad input, as a user meets it: every case runs the real `cook` CLI in a subprocess (`cook unparquet`, `cook merge`,
`cook tokenize`) and checks the exit code, that stderr holds one `error:` line naming the file (and row) or that the
run succeeded with the bad rows rejected under a reason (`invalid-utf8`), that no traceback is printed, and that a
refused run leaves nothing half-written. Peak memory is that of the `cook` process tree (ru_maxrss of the children
of a small wrapper), never of pytest.

The catalog: an integer `text` column, a dictionary-encoded `text` column (accepted, same result as plain strings),
invalid UTF-8 inside a parquet string column, a latin-1 .txt file, a 200,000-character CSV row (Python's csv module
refuses fields over 131,072 characters unless `csv.field_size_limit` is raised), and one 100 MB document (peak RSS
under 1 GB). Plus the linear text-format reader and invalid-row search, checked by completion in a fresh Python
within a timeout sized with a 20x margin either way (never by comparing measured times).
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from model.errors import CookError
from tasks.corpus.documents import TEXT_SEPARATOR, escape_text, iter_texts, read_text_documents, text_array

T0 = "2024-01-01T00:00:00+00:00"
INT_LINE = r"ints\.parquet: column 'text' is int64, not text"
MB100 = 100_000_000
PEAK_LIMIT_MB = 1024

# Runs a command and writes the peak RSS (MB) of its process tree's largest member to argv[1].
_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))\n"
    "sys.exit(rc)\n"
)


def run_cook_measured(args: list, env: dict, tmp_path: Path, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    """`cook ARGS` in a fresh process; returns (completed process, peak RSS in MB of cook and its children)."""
    peak = tmp_path / f"peak-{time.monotonic_ns()}.txt"
    proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(peak), sys.executable, "-m", "flows.cli", *map(str, args)],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    mb = float(peak.read_text())
    print(f"cook {args[0]}: peak RSS {mb:.0f} MB")  # shown with `pytest -s`
    return proc, mb


# --- inputs ------------------------------------------------------------------------------------------

WORDS = ("river stone light north word tree house water small great city field story music garden winter "
         "letter morning island paper window summer forest bridge mountain market station teacher").split()


def prose(seed: int, sentences: int = 10) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(" ".join(rng.choice(WORDS, int(rng.integers(8, 15)))).capitalize() + "." for _ in range(sentences))


def doc_table(text: pa.Array) -> pa.Table:
    """Documents (cook's columns) around a given `text` column."""
    n = len(text)
    return pa.table({
        "id": [f"d{i}" for i in range(n)], "source": ["web"] * n, "url": [f"https://example.com/{i}" for i in range(n)],
        "title": [f"t{i}" for i in range(n)], "text": text,
        "fetched_at": pa.array([T0] * n, pa.string()).cast(pa.timestamp("us", tz="UTC")),
    })


def invalid_utf8_strings(texts: list[bytes]) -> pa.Array:
    """A `string` array holding these bytes as they are (Arrow checks nothing here, nor does parquet on read)."""
    return pa.array(texts, pa.binary()).view(pa.string())


def _real_texts() -> list[str]:
    """Six real English documents (Python's own doc topics, non-ASCII included), which merge's filters keep."""
    from pydoc_data.topics import topics

    from tasks.sources.pydoc_corpus import tidy

    return [tidy(topics[k]) for k in ("atom-identifiers", "atom-literals", "conversions", "exceptions", "execmodel", "lists")]


TEXTS = _real_texts()
BAD_ROW = 3  # the row with invalid UTF-8 (latin-1 bytes)
BAD_TEXTS = [t.encode() for t in TEXTS]
BAD_TEXTS[BAD_ROW] = "Caf\xe9 au lait, cr\xe8me br\xfbl\xe9e. ".encode("latin-1") + TEXTS[BAD_ROW].encode()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bad-inputs")
    files = {
        "ints": doc_table(pa.array(range(6), pa.int64())),
        "plain": doc_table(pa.array(TEXTS, pa.string())),
        "dict": doc_table(pa.array(TEXTS, pa.string()).dictionary_encode()),
        "invalid": doc_table(invalid_utf8_strings(BAD_TEXTS)),
    }
    out = {}
    for name, table in files.items():
        out[name] = d / name / f"{name}.parquet"  # one folder each: unparquet names outputs after the parent folder
        out[name].parent.mkdir()
        pq.write_table(table, out[name])
    assert pq.read_schema(out["dict"]).field("text").type == pa.dictionary(pa.int32(), pa.string())
    out["latin1"] = d / "latin1" / "notes.txt"
    out["latin1"].parent.mkdir()
    out["latin1"].write_bytes(("Caf\xe9 au lait.\n" + prose(1)).encode("latin-1"))
    return out


@pytest.fixture(scope="module")
def huge(tmp_path_factory) -> Path:
    """One 100 MB document (repeated random words, generated in about a second) between two short ones."""
    rng = np.random.default_rng(7)
    block = " ".join(rng.choice(WORDS, 200_000).tolist()) + "\n"
    text = (block * (MB100 // len(block) + 1))[:MB100]
    path = tmp_path_factory.mktemp("huge") / "huge" / "huge.parquet"
    path.parent.mkdir()
    pq.write_table(doc_table(pa.array([TEXTS[0], text, TEXTS[1]], pa.string())), path)
    return path


# --- checks ------------------------------------------------------------------------------------------


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [l for l in proc.stderr.splitlines() if l.startswith("error:")]


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out, out[-4000:]
    for raw in ("UnicodeDecodeError", "TypeError", "ArrowInvalid", "ArrowTypeError", "ArrowNotImplementedError", "MemoryError"):
        assert raw not in out, out[-4000:]


def assert_refused(proc: subprocess.CompletedProcess, out: Path, *patterns: str) -> str:
    """Exit code non-zero, one `error:` line matching every pattern, no traceback, nothing half-written."""
    assert proc.returncode not in (0, None), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_traceback(proc)
    errors = error_lines(proc)
    assert len(errors) == 1, proc.stderr[-3000:]
    for p in patterns:
        assert re.search(p, errors[0]), (p, errors[0])
    assert_nothing_half_written(out)
    return errors[0]


def assert_nothing_half_written(out: Path) -> None:
    visible = [p for p in out.rglob("*") if p.is_file() and not any(s.startswith(".") for s in p.relative_to(out).parts)] if out.exists() else []
    assert visible == [], visible
    leftovers = [p for p in out.parent.rglob("*") if p.name.endswith(".tmp") or ".old-" in p.name]
    assert leftovers == [], leftovers


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_no_traceback(proc)
    assert error_lines(proc) == []


def utf8_texts_of_parquet(path: Path) -> list[str]:
    """The texts of a parquet file; fails if any of them is not valid UTF-8."""
    texts, bad = text_array(pq.read_table(path, columns=["text"]).column("text"), str(path))
    assert bad is None, f"{path}: rows {np.flatnonzero(bad).tolist()} are not UTF-8"
    return texts.to_pylist()


def merge_stats(out: Path) -> dict:
    return json.loads((out / "stats.json").read_text())


def tokenize_meta(out: Path) -> dict:
    return json.loads((out / "meta.json").read_text())


def tokenized_documents(out: Path) -> int:
    return sum(s["documents"] for s in tokenize_meta(out)["splits"].values())


# --- cook unparquet: every parquet case in one run per format ----------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "text"])
def test_unparquet_catalog(inputs, cook, tmp_path, fmt):
    """One run over all the parquet cases (unparquet tries every file): the integer column is the one `error:`
    line, naming the file, and has no output; the dictionary column converts exactly as plain strings do; the
    invalid UTF-8 row is rejected (`invalid-utf8`), counted and named in the log, and never written."""
    out = tmp_path / "out"
    proc = cook(["unparquet", inputs["ints"], inputs["dict"], inputs["plain"], inputs["invalid"], "--out", out, "--format", fmt])
    assert proc.returncode != 0
    assert_no_traceback(proc)
    [line] = error_lines(proc)
    assert re.search(r"1 of 4 files failed: .*" + INT_LINE + "$", line), line
    suffix = ".parquet" if fmt == "parquet" else ".txt"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [f"{n}__{n}{suffix}" for n in ("dict", "invalid", "plain")]
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))
    assert re.search(rf"invalid\.parquet: 1 rows rejected \(invalid-utf8: text not valid UTF-8\): row {BAD_ROW}\b", proc.stderr), proc.stderr[-3000:]
    assert "1 rejected (invalid-utf8)" in proc.stderr
    want = TEXTS[:BAD_ROW] + TEXTS[BAD_ROW + 1:]
    if fmt == "parquet":
        assert utf8_texts_of_parquet(out / "dict__dict.parquet") == TEXTS
        assert utf8_texts_of_parquet(out / "invalid__invalid.parquet") == want
        assert pq.read_table(out / "invalid__invalid.parquet").column("row").to_pylist() == [i for i in range(6) if i != BAD_ROW]
    else:
        assert list(read_text_documents(out / "dict__dict.txt")) == TEXTS  # the reader is strict UTF-8
        assert (out / "dict__dict.txt").read_bytes() == (out / "plain__plain.txt").read_bytes()
        assert list(read_text_documents(out / "invalid__invalid.txt")) == want


# --- an integer `text` column -----------------------------------------------------------------------

def test_integer_text_column_merge(inputs, cook, tmp_path):
    """One line naming the file, or every row rejected as `not-text`."""
    out = tmp_path / "merged"
    proc = cook(["merge", inputs["ints"], "--out", out])
    if proc.returncode:
        assert_refused(proc, out, r"ints\.parquet", r"int64|not text")
    else:
        assert_ok(proc)
        assert merge_stats(out)["rejected"].get("not-text") == 6


def test_integer_text_column_tokenize(inputs, cook, tmp_path):
    out = tmp_path / "tokens"
    assert_refused(cook(["tokenize", inputs["ints"], "-e", "char", "--out", out]), out, r"ints\.parquet", r"int64|not text")


# --- a dictionary-encoded `text` column: accepted, same result as plain strings ----------------------


def test_dictionary_text_column_merge(inputs, cook, tmp_path):
    """Merged with the same texts as plain strings (read after it), each dictionary text is judged as its plain twin:
    kept (the twin then an exact duplicate) or rejected by the same filter (the filters are not what this tests)."""
    out = tmp_path / "merged"
    assert_ok(cook(["merge", inputs["dict"], inputs["plain"], "--out", out, "--format", "text"]))
    stats = merge_stats(out)
    rejected = dict(stats["rejected"])
    assert stats["documents_in"] == 12 and rejected.pop("exact-duplicate", 0) == stats["documents_out"], stats
    assert all(n % 2 == 0 for n in rejected.values()), stats
    assert not {"not-text", "invalid-utf8"} & set(rejected), stats


def test_dictionary_text_column_tokenize(inputs, cook, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert_ok(cook(["tokenize", inputs["dict"], "-e", "char", "--out", a]))
    assert_ok(cook(["tokenize", inputs["plain"], "-e", "char", "--out", b]))
    assert tokenize_meta(a)["fingerprint"] == tokenize_meta(b)["fingerprint"]
    assert tokenized_documents(a) == 6


# --- invalid UTF-8 inside a parquet string column ----------------------------------------------------


def test_invalid_utf8_merge(inputs, cook, tmp_path):
    """The row is rejected as `invalid-utf8`; everything written is UTF-8."""
    out = tmp_path / "merged"
    proc = cook(["merge", inputs["invalid"], "--out", out])
    assert_ok(proc)
    stats = merge_stats(out)
    assert stats["documents_in"] == 6 and stats["rejected"].get("invalid-utf8") == 1, stats
    for shard in out.glob("shard_*.parquet"):
        utf8_texts_of_parquet(shard)
    rejects = pq.read_table(out / "rejects", columns=["id", "reason"]).to_pylist() if (out / "rejects").exists() else []
    assert {"id": f"d{BAD_ROW}", "reason": "invalid-utf8"} in rejects


def test_invalid_utf8_tokenize(inputs, cook, tmp_path):
    """The row is left out with a warning naming the file (counted in meta.json), or the run is one line naming file and row."""
    out = tmp_path / "tokens"
    proc = cook(["tokenize", inputs["invalid"], "-e", "char", "--out", out])
    if proc.returncode:
        assert_refused(proc, out, r"invalid\.parquet", rf"row {BAD_ROW}\b", "UTF-8")
    else:
        assert_ok(proc)
        meta = tokenize_meta(out)
        assert meta["skipped"] == {"invalid-utf8": 1} and tokenized_documents(out) == 5
        assert "invalid.parquet" in proc.stderr


# --- a latin-1 .txt file: the text format is UTF-8; refused with the file and byte offset -------------

LATIN1_LINE = r"notes\.txt: not UTF-8 text \(byte 0xe9 at offset 3\)"


def test_latin1_txt_merge(inputs, cook, tmp_path):
    out = tmp_path / "merged"
    proc = cook(["merge", inputs["latin1"], "--out", out])
    assert_ok(proc)  # a plain .txt is one document: rejected, `invalid-utf8`
    assert merge_stats(out)["rejected"] == {"invalid-utf8": 1}


@pytest.mark.parametrize("command", ["merge", "tokenize"])
def test_text_format_file_with_bad_bytes(cook, tmp_path, command):
    """A cook text-format file (documents between separator lines) with bytes that are not UTF-8: one line
    naming the file and the offset (which document holds them is not known without decoding)."""
    src = tmp_path / "docs.txt"
    src.write_bytes((prose(1) + "\n<|endoftext|>\n").encode() + "caf\xe9 ".encode("latin-1") + (prose(2) + "\n<|endoftext|>\n").encode())
    out = tmp_path / "out"
    args = [command, src, "--out", out] + (["-e", "char"] if command == "tokenize" else [])
    assert_refused(cook(args), out, re.escape(str(src)), r"not UTF-8 .*offset \d+")


def test_latin1_txt_tokenize(inputs, cook, tmp_path):
    out = tmp_path / "tokens"
    assert_refused(cook(["tokenize", inputs["latin1"], "-e", "char", "--out", out]), out, LATIN1_LINE)


def test_latin1_and_binary_txt_readers(tmp_path):
    """The readers themselves: one CookError line with the file and byte offset, never UnicodeDecodeError; in a
    text-format file the offset counts from the start of the file."""
    plain = tmp_path / "plain.txt"
    plain.write_bytes("na\xefve".encode("latin-1"))
    with pytest.raises(CookError, match=r"plain\.txt: not UTF-8 text \(byte 0xef at offset 2\)"):
        list(iter_texts(plain))
    docs = tmp_path / "docs.txt"
    good = escape_text("héllo <|endoftext|> wörld") + TEXT_SEPARATOR
    docs.write_bytes(good.encode() + b"\x89PNG\r\n\x1a\n" + TEXT_SEPARATOR.encode())
    for chunk in (1, 3, 16, 1 << 20):
        with pytest.raises(CookError, match=rf"docs\.txt: not UTF-8 text \(byte 0x89 at offset {len(good.encode())}\)"):
            list(read_text_documents(docs, chunk_bytes=chunk))
        with pytest.raises(CookError, match=r"docs\.txt: not UTF-8 text"):
            list(iter_texts(docs))


# --- a 200,000-character CSV row -----------------------------------------------------------------------


def test_csv_row_past_the_default_field_limit(cook, tmp_path):
    """`cook unparquet --format csv` writes a 200k-character document; it reads back exactly with csv.reader once
    `csv.field_size_limit` is raised (as the README says), and with pyarrow's reader as it is."""
    long_text = ("A line, with \"quotes\" and commas.\n" + prose(9, 400)) * 20
    long_text = long_text[:200_000]
    assert len(long_text) == 200_000 > 131_072
    src = tmp_path / "long" / "long.parquet"
    src.parent.mkdir()
    texts = [TEXTS[0], long_text, TEXTS[1]]
    pq.write_table(pa.table({"text": texts}), src)
    out = tmp_path / "out"
    assert_ok(cook(["unparquet", src, "--out", out, "--format", "csv"]))
    path = out / "long__long.csv"
    old = csv.field_size_limit()
    try:
        with open(path, newline="", encoding="utf-8") as f, pytest.raises(csv.Error, match="field larger than field limit"):
            list(csv.reader(f))  # why the README names the setting
        csv.field_size_limit(2**31 - 1)
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    finally:
        csv.field_size_limit(old)
    assert rows[0][:2] == ["id", "text"] and [r[1] for r in rows[1:]] == texts
    assert pa_csv.read_csv(path).column("text").to_pylist() == texts


# --- one 100 MB document: peak RSS under 1 GB, one run per command ----------------------------------


@pytest.mark.parametrize("fmt", ["text", "parquet"])
def test_100mb_document_unparquet(huge, cook_env, tmp_path, fmt):
    out = tmp_path / "out"
    proc, peak = run_cook_measured(["unparquet", huge, "--out", out, "--format", fmt], cook_env, tmp_path)
    assert_ok(proc)
    if fmt == "parquet":
        texts = pq.read_table(out / "huge__huge.parquet", columns=["text"]).column("text").to_pylist()
    else:
        texts = list(read_text_documents(out / "huge__huge.txt"))
    assert [len(t) for t in texts] == [len(TEXTS[0]), MB100, len(TEXTS[1])]
    del texts
    assert peak < PEAK_LIMIT_MB, f"cook unparquet peaked at {peak:.0f} MB on one 100 MB document"


def test_100mb_document_merge(huge, cook_env, tmp_path):
    """Rejected as too long (the default --max-chars), the others kept."""
    out = tmp_path / "merged"
    proc, peak = run_cook_measured(["merge", huge, "--out", out], cook_env, tmp_path)
    assert_ok(proc)
    stats = merge_stats(out)
    assert stats["documents_in"] == 3 and stats["rejected"].get("too-long") == 1, stats
    assert peak < PEAK_LIMIT_MB, f"cook merge peaked at {peak:.0f} MB on one 100 MB document"


def test_100mb_document_tokenize(huge, cook_env, tmp_path):
    out = tmp_path / "tokens"
    proc, peak = run_cook_measured(["tokenize", huge, "-e", "char", "--out", out], cook_env, tmp_path)
    assert_ok(proc)
    assert tokenized_documents(out) == 3
    assert peak < PEAK_LIMIT_MB, f"cook tokenize peaked at {peak:.0f} MB on one 100 MB document"


# --- the text-format reader is linear --------------------------------------------------------------


def run_child(code: str, args: list, timeout: float, what: str) -> str:
    """Run `code` in a fresh Python (argv: `args`), which must finish within `timeout` seconds of wall time: a
    completion check sized with a wide margin either way, never a timing; returns its stdout."""
    try:
        r = subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: not done within {timeout} s (quadratic again? linear, it needs a small fraction of that)")
    assert r.returncode == 0, f"{what}: failed\n{r.stderr[-3000:]}"
    return r.stdout


READ_ONE_DOC = """
import sys
from tasks.corpus.documents import read_text_documents
[doc] = read_text_documents(sys.argv[1], chunk_bytes=int(sys.argv[2]))
print(len(doc))
"""


def test_text_reader_is_linear(tmp_path):
    """One 32 MB document read in 256-byte chunks, by a fresh Python, within 10 s: the reader needs ~0.2 s of CPU
    (plus ~0.4 s to start and import); the old one, which re-split its whole growing buffer at every chunk, needed
    ~7.4 s for 4 MB and so ~475 s for this (n^2: 64x). A completion check with a 20x margin either way, never a
    timing."""
    n = 32 << 20
    p = tmp_path / "one.txt"
    p.write_bytes(b"word " * (n // 5) + TEXT_SEPARATOR.encode())
    out = run_child(READ_ONE_DOC, [p, 256], timeout=10, what="reading one 32 MB document in 256-byte chunks")
    assert int(out) == n // 5 * 5


def test_text_reader_round_trip_at_every_chunk_size(tmp_path):
    texts = ["", "a", "héllo\n<|endoftext|> x", "<||endoftext|>", "x" * 5000, "\n<|endoftext|", "ends with\n", "日本語テキスト"]
    p = tmp_path / "docs.txt"
    p.write_bytes("".join(escape_text(t) + TEXT_SEPARATOR for t in texts).encode())
    for chunk in (1, 2, 3, 7, 14, 15, 16, 100, 1 << 20):
        assert list(read_text_documents(p, chunk_bytes=chunk)) == texts, chunk
    p.write_bytes(p.read_bytes() + b"tail")
    with pytest.raises(CookError, match="text after the last separator"):
        list(read_text_documents(p, chunk_bytes=5))


# --- text_array, the shared column reader -------------------------------------------------------------


def test_text_array_finds_every_invalid_row_fast():
    """Dictionary, view, large and chunked columns become one plain array; every bad row is found (nulls never are),
    even when half the rows are bad (in linear time: test_text_array_invalid_rows_in_linear_time); a non-text column
    is one line."""
    raw = [b"ok", b"\xff\xfe", None, "fin\u00e9".encode(), b"\xc3"]
    arr = invalid_utf8_strings(raw)
    want = [False, True, False, False, True]
    for variant in (arr, arr.cast(pa.large_string()), arr.cast(pa.string_view()), pa.chunked_array([arr.slice(0, 2), arr.slice(2)]),
                    pa.DictionaryArray.from_arrays(pa.array([0, 1, 2, 3, 4]), arr)):
        texts, bad = text_array(variant, "f.parquet")
        assert pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)
        assert bad is not None and bad.tolist() == want, variant.type
        assert texts.is_null().to_pylist() == [False, False, True, False, False]
    texts, bad = text_array(pa.array(["a", None, "b"]).dictionary_encode(), "f.parquet")
    assert bad is None and texts.to_pylist() == ["a", None, "b"] and texts.type == pa.string()
    with pytest.raises(CookError, match=r"^f\.parquet: column 'text' is int64, not text$"):
        text_array(pa.array([1, 2]), "f.parquet")
    with pytest.raises(CookError, match=r"^f\.parquet: column 'body' is binary, not text$"):
        text_array(pa.array([b"x"]), "f.parquet", "body")
    many = invalid_utf8_strings([b"valid text " * 3, b"\xe9"] * 100_000)
    _, bad = text_array(many, "f.parquet")
    assert int(bad.sum()) == 100_000 and bad[1::2].all()


FIND_BAD_ROWS = """
import sys
import numpy as np
import pyarrow as pa
from tasks.corpus.documents import text_array
k, n = int(sys.argv[1]), int(sys.argv[2])
data = b"a\\xe9" * k + b"a" * (n - 2 * k)  # one byte a row: k bad rows, every other one, then good rows
offsets = pa.py_buffer(np.arange(n + 1, dtype=np.int32))
_, bad = text_array(pa.Array.from_buffers(pa.string(), n, [None, offsets, pa.py_buffer(data)]), "f.parquet")
print(int(bad.sum()), bool(bad[1 : 2 * k : 2].all()), int(bad[2 * k :].sum()))
"""


def test_text_array_invalid_rows_in_linear_time():
    """100,000 bad rows among 4,000,000, by a fresh Python, within 10 s: text_array needs ~0.06 s (plus ~0.5 s to
    start and import pyarrow). Skipping from error to error (Arrow names only the first bad row, and full
    validation of the rest checks all its offsets) costs ~7 ms a bad row here: ~700 s. A completion check with a
    20x margin either way, never a timing."""
    k, n = 100_000, 4_000_000
    out = run_child(FIND_BAD_ROWS, [k, n], timeout=10, what=f"finding {k:,} invalid rows among {n:,}")
    assert out.split() == [str(k), "True", "0"]
