"""The README's Cosmopedia path, as a user runs it: unparquet, then merge, then tokenize (the real CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.shards import list_shards, read_shard
from model.tokenizer import load_tokenizer
from tasks.corpus.documents import read_documents

pytestmark = pytest.mark.timeout(600)


def _prose(n: int, offset: int) -> list[str]:
    """Real prose: groups of paragraphs from Python's own help topics (prose, not code samples: outside code
    documentation the quality filter wants 80% of words to hold a letter)."""
    from pydoc_data.topics import topics

    from tasks.corpus.filters import split_words

    def prose_like(p: str) -> bool:
        ws = split_words(p)
        return sum(any(c.isalpha() for c in w) for w in ws) >= 0.85 * len(ws)

    paras = [p.strip() for t in sorted(topics) for p in topics[t].split("\n\n") if len(p.strip()) > 200 and prose_like(p)]
    return ["\n\n".join(paras[(offset + 3 * i + k) % len(paras)] for k in range(3)) for i in range(n)]


def _cosmo(path: Path, texts: list, order: list[str]) -> Path:
    n = len(texts)
    cols = {"prompt": [f"Write about topic {i}" for i in range(n)], "text": texts,
            "text_token_length": [len(t or "") // 4 for t in texts], "seed_data": ["web"] * n,
            "format": ["textbook"] * n, "audience": ["students"] * n}
    schema = pa.schema([(c, pa.int64() if c == "text_token_length" else pa.string()) for c in order])
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: cols[c] for c in order}, schema=schema), path, row_group_size=7)
    return path


def test_cosmopedia_path_end_to_end(cook, tmp_path):
    a = _prose(20, 0)
    b = _prose(15, 100) + [a[3], None, ""]  # a duplicate across subsets, a null and an empty text
    src = tmp_path / "cosmopedia" / "data"
    _cosmo(src / "stanford" / "train-00000-of-00001.parquet", a,
           ["prompt", "text", "text_token_length", "seed_data", "format", "audience"])
    _cosmo(src / "stories" / "train-00000-of-00001.parquet", b,
           ["text", "audience", "format", "seed_data", "text_token_length", "prompt"])

    docs, merged, tokens = tmp_path / "docs", tmp_path / "merged", tmp_path / "tokens"
    for args in (["unparquet", src, "--out", docs],
                 ["merge", docs, "--out", merged, "--shard-size", "20KB"],
                 ["tokenize", merged, "--encoding", "gpt2", "--out", tokens]):
        proc = cook(args)
        assert proc.returncode == 0, proc.stderr[-3000:]

    stats = json.loads((merged / "stats.json").read_text())
    kept = [d["text"] for p in sorted(merged.glob("shard_*.parquet")) for d in read_documents(p)]
    assert len(list(merged.glob("shard_*.parquet"))) > 1, "shards roll at --shard-size"
    rejects = [d for p in sorted((merged / "rejects").glob("*.parquet")) for d in read_documents(p)]
    assert [r["reason"] for r in rejects if r["text"] == a[3]] == ["exact-duplicate"]
    assert len(kept) + len(rejects) == 20 + 16, "every converted document is kept or rejected with a reason"
    assert stats, "merge wrote its stats"

    meta = json.loads((tokens / "meta.json").read_text())
    tok = load_tokenizer(tokens)
    ids = np.concatenate([read_shard(p) for s in ("train", "val") for p in list_shards(tokens, s)])
    texts = tok.decode(ids).split("<|endoftext|>")[:-1]
    assert len(texts) == len(kept), (len(texts), len(kept))
    for t, k in zip(sorted(texts), sorted(kept)):
        assert t == k, (t[:300], k[:300])
    assert meta["splits"]["val"]["documents"] >= 1


def _stages(stdout_and_logs: str) -> dict[str, str]:
    """stage -> ran/unchanged, from the pipeline's closing log line."""
    line = next(ln for ln in stdout_and_logs.splitlines() if " - pipeline: gather " in ln)
    body = line.split(" - pipeline: ", 1)[1].rsplit(" -> ", 1)[0]
    return {part.rsplit(" ", 1)[0]: part.rsplit(" ", 1)[1] for part in body.split(", ")}


def test_pipeline_skips_unchanged_stages(cook, cook_env, tmp_path):
    """`cook pipeline` twice: everything is unchanged the second time; a new source re-runs merge, tokenize and
    training (into a new run, named after the new tokens) while the old source's gathering stays skipped."""
    args = ["pipeline", "--source", "pydoc", "--chunks", "1", "--iters-per-chunk", "10"]
    first = cook(args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _stages(first.stdout + first.stderr) == {"gather pydoc": "ran", "merge": "ran", "tokenize": "ran", "train": "ran"}
    data = Path(cook_env["COOK_DATA_DIR"])
    runs = sorted(p.name for p in (data / "runs").iterdir())
    assert len(runs) == 1 and (data / "runs" / runs[0] / "checkpoints" / "chunk_000001" / "model.safetensors").is_file()

    again = cook(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert set(_stages(again.stdout + again.stderr).values()) == {"unchanged"}

    cosmo = _cosmo(tmp_path / "cosmo" / "train-00000-of-00001.parquet", _prose(12, 5),
                   ["prompt", "text", "text_token_length", "seed_data", "format", "audience"])
    more = cook(args + ["--source", "parquet", "--parquet", str(cosmo)])
    assert more.returncode == 0, more.stderr[-3000:]
    assert _stages(more.stdout + more.stderr) == {"gather pydoc": "unchanged", "gather parquet": "ran", "merge": "ran",
                                                  "tokenize": "ran", "train": "ran"}
    assert len(list((data / "runs").iterdir())) == 2
    assert json.loads((data / "merged" / "stats.json").read_text())["sources"].keys() >= {"pydoc", "cosmopedia"}


def test_pipeline_bad_input_is_one_line(cook):
    r = cook(["pipeline", "--source", "wiki-dump"])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == ["error: source wiki-dump needs dumps (paths to pages-articles XML dumps)"]


def test_a_gather_stage_with_failures_does_not_stop_the_pipeline(cook, cook_env):
    """A page that keeps failing leaves `gather wikipedia` incomplete: merge, tokenize and train still run on what was
    gathered, and the pipeline exits 3 naming the stage. With the page back, the next run fetches only that page and
    ends clean (exit 0)."""
    from fake_mediawiki import FakeMediaWiki, FakeWiki

    wiki = FakeWiki(n_pages=12, seed=3, links_per_page=1, missing=0)
    with FakeMediaWiki(wiki) as api:
        api.fail_retry_after = "0"  # the client's retries of the failing page take no time
        failing = wiki.search("Alpha")[0][0]
        api.fail_always.add(failing)
        env = {**cook_env, "COOK_WIKIPEDIA_API_URL": api.url}
        args = ["pipeline", "--source", "wikipedia", "--source", "pydoc", "--query", "Alpha", "--max-pages", "4",
                "--depth", "0", "--chunks", "1", "--iters-per-chunk", "5"]
        first = cook(args, env=env)
        assert first.returncode == 3, first.stderr[-3000:]
        error = [ln for ln in first.stderr.splitlines() if ln.startswith("error:")]
        assert len(error) == 1 and "gather wikipedia" in error[0] and "run the same command again" in error[0], error
        assert _stages(first.stdout + first.stderr) == {"gather wikipedia": "incomplete", "gather pydoc": "ran",
                                                        "merge": "ran", "tokenize": "ran", "train": "ran"}
        data = Path(cook_env["COOK_DATA_DIR"])
        assert list((data / "runs").glob("*/checkpoints/chunk_000001/model.safetensors")), "trained on what was gathered"
        fetched_once = {p for p, n in api.parse_counts.items() if n}
        assert failing not in fetched_once and all(api.parse_counts[p] == 1 for p in fetched_once)

        api.fail_always.clear()
        again = cook(args, env=env)
        assert again.returncode == 0, again.stderr[-3000:]
        assert _stages(again.stdout + again.stderr) == {"gather wikipedia": "ran", "gather pydoc": "unchanged",
                                                        "merge": "ran", "tokenize": "ran", "train": "ran"}
        assert api.parse_counts[failing] == 1 and all(api.parse_counts[p] == 1 for p in fetched_once), \
            "the second run fetched the page that failed, and nothing else again"
