"""`cook unparquet`: lossless, provenance kept, bad files fail alone, cached per file, resumable after SIGKILL."""

from __future__ import annotations

import csv
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import artifacts_of, new_tag, tagged_flow_runs

from model.errors import CookError
from tasks.corpus.documents import read_text_documents
from tasks.corpus.unparquet import BATCH_BYTES, BATCH_ROWS, FORMATS, SEPARATOR, _batches, _open, batch_rows, convert_file, output_path, subset_of

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
COSMO_ORDERS = {  # Cosmopedia's column order differs between subsets
    "stanford": ["prompt", "text", "text_token_length", "seed_data", "format", "audience"],
    "stories": ["text", "audience", "format", "seed_data", "text_token_length", "prompt"],
}
UNICODE = ["emoji 😀🚀 and ZWJ 👩‍💻", "中文字符 日本語のテキスト 한국어", "combining e\u0301 a\u0308 ñ vs ñ", "rtl עברית العربية",
           "nul\x00and\ttabs\r\nCRLF", '"quoted", commas, and\nnewlines', "ends with newline\n", "  spaces  ",
           "marker <|endoftext|> inside", "escaped <||endoftext|> and <|||endoftext|>", "\n<|endoftext|>\n"]


def _listing(folder: Path) -> list[Path]:
    """A folder's entries but its writer's lock (`.cook.lock` and its `.info`, which tasks/core/lock.py keeps)."""
    return [p for p in folder.iterdir() if not re.fullmatch(r"\..*\.lock(\.info)?", p.name)]


def _texts(n: int, seed: int, words: int = 60) -> list[str | None]:
    """Texts with nulls, empty strings and unicode mixed in, deterministic by seed."""
    rng = np.random.default_rng(seed)
    vocab = ["the", "cat", "über", "naïve", "日本", "data", "😀", "model", "x" * 12, "line\n", "para\n\n"]
    out: list[str | None] = []
    for i in range(n):
        r = i % 13
        if r == 3:
            out.append(None)
        elif r == 7:
            out.append("")
        elif r == 11:
            out.append(UNICODE[(i // 13) % len(UNICODE)])
        else:
            out.append(f"doc {seed}/{i}: " + " ".join(rng.choice(vocab, size=words)))
    return out


def write_cosmo(path: Path, texts: list[str | None], order: list[str], row_group_size: int = 50) -> Path:
    n = len(texts)
    cols = {
        "prompt": [f"prompt {i}" for i in range(n)],
        "text": texts,
        "text_token_length": [None if i % 17 == 5 else len(t or "") // 4 for i, t in enumerate(texts)],
        "seed_data": ["web"] * n,
        "format": [["textbook", "blogpost", None][i % 3] for i in range(n)],
        "audience": [["students", "general"][i % 2] for i in range(n)],
    }
    schema = pa.schema([(c, pa.int64() if c == "text_token_length" else pa.string()) for c in order])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: cols[c] for c in order}, schema=schema), path, row_group_size=row_group_size)
    return path


def _digest(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")  # a boundary, so a split or merged document changes the hash
    return h.hexdigest()


def texts_in(src: Path, column: str = "text") -> list[str]:
    return [t for t in pq.read_table(src, columns=[column]).column(column).to_pylist() if t]


def texts_out(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return pq.read_table(path, columns=["text"]).column("text").to_pylist()
    if path.suffix == ".txt":
        return list(read_text_documents(path))
    old = csv.field_size_limit(2**31 - 1)  # documents are longer than csv's default 131,072-character field limit
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    finally:
        csv.field_size_limit(old)
    assert rows[0][:2] == ["id", "text"]
    return [r[1] for r in rows[1:]]


@pytest.fixture(scope="module")
def cosmo(tmp_path_factory) -> list[Path]:
    """Two subsets with different column orders, several row groups each (Cosmopedia's layout)."""
    root = tmp_path_factory.mktemp("cosmo") / "data"
    return [
        write_cosmo(root / "stanford" / "train-00000-of-00002.parquet", _texts(230, 1), COSMO_ORDERS["stanford"]),
        write_cosmo(root / "stanford" / "train-00001-of-00002.parquet", _texts(120, 2), COSMO_ORDERS["stanford"], 16),
        write_cosmo(root / "stories" / "train-00000-of-00001.parquet", _texts(175, 3), COSMO_ORDERS["stories"], 40),
    ]


# --- convert_file ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_lossless_every_format(cosmo, tmp_path, fmt):
    """sha256 of the non-null, non-empty texts in == the same over the output, for every file and format."""
    for src in cosmo:
        assert pq.ParquetFile(src).num_row_groups > 1
        r = convert_file(str(src), tmp_path, fmt)
        out = Path(r["out"])
        assert out == output_path(str(src), tmp_path, fmt) and out.exists()
        want = texts_in(src)
        assert _digest(texts_out(out)) == _digest(want)
        n = pq.ParquetFile(src).metadata.num_rows
        assert r["rows"] == n and r["written"] == len(want) and r["null_or_empty"] == n - len(want)
        assert r["bytes_in_text"] == sum(len(t.encode()) for t in want)
    assert sorted(p.name for p in _listing(tmp_path)) == sorted(output_path(str(s), tmp_path, fmt).name for s in cosmo)


def test_provenance_columns(cosmo, tmp_path):
    """Columns selected by name whatever the order; row = index in the source; ids unique and stable."""
    for src in cosmo:
        src_t = pq.read_table(src).to_pylist()
        out = pq.read_table(convert_file(str(src), tmp_path)["out"])
        assert out.schema.names[:6] == ["id", "source", "url", "title", "text", "fetched_at"]
        docs = out.to_pylist()
        assert len({d["id"] for d in docs}) == len(docs)
        for d in docs:
            s = src_t[d["row"]]
            assert d["text"] == s["text"]
            assert (d["format"], d["audience"], d["text_token_length"]) == (s["format"], s["audience"], s["text_token_length"])
            assert d["subset"] == src.parent.name and d["source"] == "cosmopedia"
            assert d["source_file"] == str(src) and d["id"] == f"cosmopedia/{src.parent.name}/{src.stem}/{d['row']}"
    # the csv carries the same provenance
    src = cosmo[2]
    with open(convert_file(str(src), tmp_path, "csv")["out"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    src_t = pq.read_table(src).to_pylist()
    for r in rows:
        s = src_t[int(r["row"])]
        assert r["text"] == s["text"] and r["audience"] == s["audience"] and r["subset"] == "stories"


def test_text_format_separator_and_escapes(tmp_path):
    """Every document is followed by the separator line; texts holding the marker round-trip exactly."""
    texts = ["a", "<|endoftext|>", "x<||endoftext|>y", "\n<|endoftext|>\n", "tail\n", "<|endoftext|"]
    src = write_cosmo(tmp_path / "in" / "t.parquet", texts, ["text"])
    out = Path(convert_file(str(src), tmp_path / "out", "text")["out"])
    raw = out.read_text(encoding="utf-8")
    assert raw.startswith("a" + SEPARATOR) and raw.endswith(SEPARATOR)
    assert raw.count("<|endoftext|>") == len(texts)  # only the separators
    assert list(read_text_documents(out)) == texts
    assert list(read_text_documents(out, chunk_bytes=3)) == texts  # separators split across reads


def test_plain_parquet_without_cosmopedia_columns(tmp_path):
    src = tmp_path / "corpus" / "mine.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"body": ["x", "y"], "text": ["one", None]}), src)
    docs = pq.read_table(convert_file(str(src), tmp_path / "o")["out"]).to_pylist()
    assert [(d["source"], d["subset"], d["row"], d["text"], d["format"], d["text_token_length"]) for d in docs] == [
        ("parquet", "corpus", 0, "one", None, None)]
    assert subset_of("hf://datasets/HuggingFaceTB/cosmopedia/data/web_samples_v2/train-00001-of-00104.parquet") == "web_samples_v2"


def test_other_text_column(tmp_path):
    src = tmp_path / "d" / "x.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"body": ["b1", "", "b3"], "text": [None, None, None]}), src)
    assert texts_out(Path(convert_file(str(src), tmp_path / "o", "text", column="body")["out"])) == ["b1", "b3"]


def test_text_column_types_and_invalid_utf8_rows(tmp_path):
    """Dictionary-encoded and string_view text columns convert as plain strings do; rows that are not UTF-8 are never
    written: counted as `invalid_utf8` (reject reason `invalid-utf8`), the others keep their row numbers."""
    texts = ["one", "two", None, "two", "three"]
    plain = pa.array(texts, pa.string())
    bad = pa.array([b"one", b"t\xe9l\xe9", None, b"two", b"\xff"], pa.binary()).view(pa.string())
    outs = {}
    for name, col in {"plain": plain, "dict": plain.dictionary_encode(), "view": plain.cast(pa.string_view()), "bad": bad}.items():
        src = tmp_path / name / "x.parquet"
        src.parent.mkdir()
        pq.write_table(pa.table({"text": col}), src)
        outs[name] = convert_file(str(src), tmp_path / "o" / name, "text")
    for name in ("dict", "view"):
        assert Path(outs[name]["out"]).read_bytes() == Path(outs["plain"]["out"]).read_bytes()
        assert {k: outs[name][k] for k in ("rows", "written", "null_or_empty", "invalid_utf8")} == {
            "rows": 5, "written": 4, "null_or_empty": 1, "invalid_utf8": 0}
    r = outs["bad"]
    assert (r["rows"], r["written"], r["null_or_empty"], r["invalid_utf8"]) == (5, 2, 1, 2)
    assert list(read_text_documents(r["out"])) == ["one", "two"]
    out = convert_file(str(tmp_path / "bad" / "x.parquet"), tmp_path / "o" / "badp")["out"]
    assert pq.read_table(out, columns=["row", "text"]).to_pylist() == [{"row": 0, "text": "one"}, {"row": 3, "text": "two"}]


def test_record_batches_are_bounded_by_bytes(tmp_path):
    """A row group of long documents is read BATCH_BYTES at a time, not BATCH_ROWS rows at a time (1024 x 100 KB
    would be 100 MB in one batch); a row group of short ones still in batches of BATCH_ROWS rows."""
    rng = np.random.default_rng(0)
    block = " ".join(rng.choice(["river", "stone", "light", "north"], 40_000).tolist())
    long_texts = [block[i % 1000 :][:100_000] for i in range(300)]  # 30 MB
    src = tmp_path / "d" / "long.parquet"
    src.parent.mkdir()
    with pq.ParquetWriter(src, pa.schema([("text", pa.string())])) as w:
        w.write_table(pa.table({"text": long_texts}))  # one row group
        w.write_table(pa.table({"text": ["short"] * 3000}))
    pf = _open(str(src), [])
    assert batch_rows(pf, 0, "text") == BATCH_BYTES // 100_000
    assert batch_rows(pf, 1, "text") == BATCH_ROWS
    sizes = [(b.num_rows, b.column(0).nbytes) for b in _batches(pf, str(src), ["text"])]
    assert sum(n for n, _ in sizes) == 3300
    assert max(nbytes for _, nbytes in sizes) <= BATCH_BYTES * 1.05
    assert max(n for n, _ in sizes) == BATCH_ROWS


def make_bad_inputs(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.parquet"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) * 2 // 3])
    notparquet = folder / "notparquet.parquet"
    notparquet.write_text("id,text\n1,hello\n")
    notext = folder / "notext.parquet"
    pq.write_table(pa.table({"prompt": ["p"], "body": ["b"]}), notext)
    return {"truncated": truncated, "notparquet": notparquet, "notext": notext}


def test_bad_inputs_give_clear_errors(cosmo, tmp_path):
    bad = make_bad_inputs(tmp_path / "bad", cosmo[0])
    with pytest.raises(CookError, match=r"truncated\.parquet: not a readable parquet file"):
        convert_file(str(bad["truncated"]), tmp_path / "o")
    with pytest.raises(CookError, match=r"notparquet\.parquet: not a readable parquet file"):
        convert_file(str(bad["notparquet"]), tmp_path / "o")
    with pytest.raises(CookError, match=r"notext\.parquet: no 'text' column \(columns: prompt, body\)"):
        convert_file(str(bad["notext"]), tmp_path / "o")
    with pytest.raises(CookError, match=r"column 'n' is int64, not text"):
        src = tmp_path / "ints.parquet"
        pq.write_table(pa.table({"n": [1, 2]}), src)
        convert_file(str(src), tmp_path / "o", column="n")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir()), "nothing half-written"


# --- the flow --------------------------------------------------------------------------------------


def test_check_args(cosmo, tmp_path):
    from flows.unparquet import check_unparquet_args

    with pytest.raises(CookError, match="unknown format 'tsv'"):
        check_unparquet_args([str(cosmo[0])], str(tmp_path), "tsv")
    with pytest.raises(CookError, match="input not found or empty"):
        check_unparquet_args([str(tmp_path / "nope" / "*.parquet")], str(tmp_path))
    dup = write_cosmo(tmp_path / "other" / "stanford" / cosmo[0].name, ["t"], ["text"])
    with pytest.raises(CookError, match="would both be written to"):
        check_unparquet_args([str(cosmo[0]), str(dup)], str(tmp_path / "o"))
    files = check_unparquet_args([str(cosmo[0].parents[1])], str(tmp_path / "o"))  # a folder, recursively
    assert files == sorted(str(p.resolve()) for p in cosmo)


def test_flow_failures_do_not_stop_the_others(cosmo, tmp_path):
    import prefect

    from flows.unparquet import unparquet_flow

    bad = make_bad_inputs(tmp_path / "bad", cosmo[0])
    out = tmp_path / "out"
    tag = new_tag()
    with pytest.raises(CookError) as e, prefect.tags(tag):
        unparquet_flow(sources=[str(p) for p in cosmo] + [str(p) for p in bad.values()], out=str(out), fmt="text")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("unparquet: 3 of 6 files failed: ")
    assert "no 'text' column (columns: prompt, body)" in msg and "truncated.parquet" in msg and "notparquet.parquet" in msg
    assert sorted(p.name for p in _listing(out)) == sorted(output_path(str(s), out, "text").name for s in cosmo)
    for s in cosmo:
        assert _digest(texts_out(output_path(str(s), out, "text"))) == _digest(texts_in(s))
    md = _summary_artifact(tag)
    assert "3 ok" in md and "3 failed" in md and "## Failed" in md
    failed = md.split("## Failed", 1)[1]
    assert all(name in failed for name in ("truncated.parquet", "notparquet.parquet", "notext.parquet"))


def _summary_artifact(tag: str) -> str:
    """The summary artifact of the flow run that carries `tag`."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        arts = artifacts_of(client, tagged_flow_runs(client, tag), "unparquet-summary")
    assert len(arts) == 1, f"{len(arts)} summary artifacts"
    return arts[0].data


def test_flow_cache_and_reconvert_only_missing(cosmo, tmp_path):
    from flows.unparquet import unparquet_flow

    out = tmp_path / "out"
    srcs = [str(p) for p in cosmo]
    first = unparquet_flow(sources=srcs, out=str(out))
    assert (first["converted"], first["cached"], first["failed"]) == (3, 0, [])
    stamp = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _listing(out)}
    again = unparquet_flow(sources=srcs, out=str(out))
    assert (again["converted"], again["cached"]) == (0, 3)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in _listing(out)} == stamp
    gone = output_path(str(cosmo[1].resolve()), out)
    gone.unlink()
    third = unparquet_flow(sources=srcs, out=str(out))
    assert (third["converted"], third["cached"]) == (1, 2) and gone.exists()
    for p in _listing(out):
        if p != gone:
            assert (p.stat().st_ino, p.stat().st_mtime_ns) == stamp[p.name]
    assert _digest(texts_out(gone)) == _digest(texts_in(cosmo[1]))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hub_unreachable_is_one_clear_line(monkeypatch, tmp_path):
    from flows.unparquet import check_unparquet_args
    from tasks.core.settings import get_settings

    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("COOK_HF_ENDPOINT", endpoint)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    get_settings.cache_clear()
    try:
        t0 = time.monotonic()
        with pytest.raises(CookError) as e:
            check_unparquet_args(["hf://datasets/HuggingFaceTB/cosmopedia/data/stanford/*.parquet"], str(tmp_path))
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"cannot reach the Hugging Face Hub at {endpoint} for hf://datasets/HuggingFaceTB/cosmopedia/")
        assert "download the files and pass local paths, or set COOK_HF_ENDPOINT" in msg
        assert time.monotonic() - t0 < 60
    finally:
        get_settings.cache_clear()


# --- the CLI, as a user meets it ------------------------------------------------------------------


def _argv(args: list) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "unparquet", *map(str, args)]


def test_cli_bad_inputs_exit_nonzero_after_the_rest(cosmo, cook, tmp_path):
    bad = make_bad_inputs(tmp_path / "bad", cosmo[0])
    out = tmp_path / "out"
    proc = cook(["unparquet", *cosmo, *bad.values(), "--out", out, "--format", "csv"])
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "3 of 6 files failed" in errors[0] and "no 'text' column (columns: prompt, body)" in errors[0]
    for s in cosmo:
        assert _digest(texts_out(output_path(str(s.resolve()), out, "csv"))) == _digest(texts_in(s))
    proc = cook(["unparquet", cosmo[0], "--out", out, "--format", "tsv"])
    assert proc.returncode == 2 and "error: unknown format 'tsv'" in proc.stderr


def test_cli_hub_offline_is_one_line(cook, cook_env, tmp_path):
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    proc = cook(["unparquet", "hf://datasets/HuggingFaceTB/cosmopedia/data/stanford/train-00000-of-00002.parquet",
                 "--out", tmp_path / "out"], env={**cook_env, "COOK_HF_ENDPOINT": endpoint})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and f"cannot reach the Hugging Face Hub at {endpoint}" in errors[0], proc.stderr
    assert not (tmp_path / "out").exists()


def _big_inputs(folder: Path, n_files: int, rows: int) -> list[Path]:
    """Several files big enough that converting them takes a few seconds in all."""
    rng = np.random.default_rng(0)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz     \n", dtype=np.uint8)
    files = []
    for k in range(n_files):
        blob = letters[rng.integers(0, len(letters), size=rows * 3000)].tobytes().decode()
        texts = [f"{k}/{i} " + blob[i * 3000:(i + 1) * 3000] for i in range(rows)]
        texts[5] = None
        files.append(write_cosmo(folder / "data" / "stories" / f"train-{k:05d}-of-{n_files:05d}.parquet", texts,
                                 COSMO_ORDERS["stories"], row_group_size=256))
    return files


@pytest.mark.timeout(600)
def test_sigkill_then_rerun_converts_only_what_is_missing(cook, cook_env, tmp_path):
    files = _big_inputs(tmp_path / "in", n_files=40, rows=600)  # Prefect spends ~0.1 s per task: seconds in all
    out = tmp_path / "out"
    names = {output_path(str(f.resolve()), out, "csv").name for f in files}
    proc = subprocess.Popen(_argv([*files, "--out", out, "--format", "csv"]), env=cook_env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    done_at: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            now = time.monotonic()
            done = {p.name for p in out.glob("*.csv")} if out.exists() else set()
            for n in done - done_at.keys():
                done_at[n] = now
            # kill once one file has been finished a while (its cache record is stored) and some are left
            if done and len(done) < len(names) and now - min(done_at.values()) > 0.5:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: make the inputs bigger"

    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    print(f"killed with {len(visible)} of {len(names)} outputs, temp files: {[p.name for p in out.iterdir() if p.name.startswith('.')]}")
    assert visible and visible < names, "some but not all outputs exist"
    by_name = {output_path(str(f.resolve()), out, "csv").name: f for f in files}
    for n in visible:  # no half file looks whole: every visible output is complete
        assert _digest(texts_out(out / n)) == _digest(texts_in(by_name[n]))
    kill_time = time.monotonic()
    settled = {n for n, t in done_at.items() if kill_time - t > 0.5}  # finished well before the kill
    assert settled
    stamp = {n: ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) for n in settled}

    proc2 = cook(["unparquet", *files, "--out", out, "--format", "csv"], timeout=400)
    assert proc2.returncode == 0, proc2.stderr
    assert {p.name for p in _listing(out)} == names, "all converted, temp files cleaned"
    for n, st in stamp.items():
        assert ((out / n).stat().st_ino, (out / n).stat().st_mtime_ns) == st, f"{n} was converted again"
    h_in = _digest(t for f in sorted(files) for t in texts_in(f))
    h_out = _digest(t for n in sorted(names) for t in texts_out(out / n))
    assert h_in == h_out


def test_hub_paths_read_through_the_hub(cosmo, monkeypatch, tmp_path):
    """hf:// globs are listed and read over HTTP (range requests) from a loopback stand-in for the Hub."""
    import shutil

    from fixtures_hub import FakeHub

    from flows.unparquet import unparquet_flow
    from tasks.core.settings import get_settings

    repo = tmp_path / "hub" / "HuggingFaceTB" / "cosmopedia"
    for src in cosmo:
        dst = repo / "data" / src.parent.name / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    with FakeHub(tmp_path / "hub") as hub:
        monkeypatch.setenv("COOK_HF_ENDPOINT", hub.url)
        get_settings.cache_clear()
        try:
            out = tmp_path / "out"
            sources = ["hf://datasets/HuggingFaceTB/cosmopedia/data/stanford/*.parquet",
                       "hf://datasets/HuggingFaceTB/cosmopedia/data/stories/train-00000-of-00001.parquet"]
            first = unparquet_flow(sources=sources, out=str(out), fmt="text")
            assert (first["converted"], first["failed"]) == (3, [])
            assert any("/resolve/main/data/stories/" in r for r in hub.requests)
            again = unparquet_flow(sources=sources, out=str(out), fmt="text")
            assert (again["converted"], again["cached"]) == (0, 3)
        finally:
            get_settings.cache_clear()
    for src in cosmo:
        path = out / f"{src.parent.name}__{src.stem}.txt"
        assert _digest(texts_out(path)) == _digest(texts_in(src))
