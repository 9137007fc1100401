"""The `cook` CLI as a user meets it: one clear line per problem, non-zero exit, no traceback, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.corpus.documents import write_documents

pytestmark = pytest.mark.timeout(600)


def _one_line_error(proc, *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    docs = [{"id": str(i), "source": "t", "url": "", "title": "", "text": f"Document {i}. " + "The quick brown fox jumps over the lazy dog. " * 40,
             "fetched_at": None} for i in range(30)]
    write_documents(d / "docs.parquet", docs)
    return d / "docs.parquet"


def test_every_command_has_help(cook):
    for cmd in ([], ["tokenize"], ["train"], ["sample"], ["demo"]):
        proc = cook([*cmd, "--help"])
        assert proc.returncode == 0 and "Usage" in proc.stdout, proc.stderr


def test_bad_tokenize_inputs(cook, corpus, tmp_path):
    out = tmp_path / "tok"
    _one_line_error(cook(["tokenize", corpus, "--encoding", "nope", "--out", out]), "unknown encoding")
    _one_line_error(cook(["tokenize", tmp_path / "missing.parquet", "--out", out]), "missing.parquet")
    _one_line_error(cook(["tokenize", corpus, "--encoding", "bpe:70000", "--dtype", "uint16", "--out", out]), "uint16")
    empty = tmp_path / "empty.parquet"
    write_documents(empty, [{"id": "1", "source": "t", "url": "", "title": "", "text": "", "fetched_at": None}])
    _one_line_error(cook(["tokenize", empty, "--out", out]), "empty corpus")
    assert not out.exists(), "nothing half-written"


def test_debug_shows_the_traceback(cook, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = cook(["tokenize", empty, "--out", tmp_path / "tok", "--debug"])
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "empty corpus" in proc.stderr


def test_failure_inside_a_flow_is_one_line(cook, corpus, tmp_path):
    """A problem found by a task mid-flow: one line, no traceback, no Prefect failure chatter."""
    from tasks.corpus.tokenize import tokenize_corpus

    data = tokenize_corpus([corpus], "char", tmp_path / "tok")
    shard = data / "train_000000.bin"
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    proc = cook(["train", "--data", data, "--run", tmp_path / "run", "--chunks", 1, "--iters-per-chunk", 5,
                 "--eval-interval", 5, "--eval-iters", 1])
    _one_line_error(proc, "truncated token shard")
    assert "Finished in state Failed" not in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
