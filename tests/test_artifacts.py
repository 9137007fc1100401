"""What the flows leave in the Prefect UI: descriptive run names, source/stage tags, and table artifacts whose numbers
match the files written. Runs go through the real `cook` CLI against the session's Prefect API and are read back
with the Prefect client."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fake_mediawiki import FakeMediaWiki, FakeWiki

from flows.report import TAGS, publish_markdown, publish_table, run_name, tags_for

pytestmark = pytest.mark.timeout(300)

FLOW_NAMES = ("scrape-wikipedia", "scrape-britannica", "scrape-youtube", "wiki-dump", "unparquet", "merge", "tokenize",
              "train", "export", "pipeline", "demo")


def _prose(n: int, seed: int) -> list[str]:
    """Distinct paragraphs of real words from Python's help topics (long enough to pass merge's filters)."""
    from pydoc_data.topics import topics

    words = sorted({w for t in topics.values() for w in re.findall(r"[a-z]{3,12}", t)})
    rng = random.Random(seed)
    return [" ".join(("The " + " ".join(rng.sample(words, 12)) + " of the " + rng.choice(words) + ".") for _ in range(10))
            for _ in range(n)]


def _flow_run(client, flow_name: str, **params):
    """The latest run of `flow_name` whose parameters include `params` (an output folder in the test's tmp_path).
    Newest first: a page of runs (200 at most) always holds the run just made, however many the session has."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
    runs = [r for r in runs if all(r.parameters.get(k) == v for k, v in params.items())]
    assert runs, f"no {flow_name} run with {params}"
    return max(runs, key=lambda r: r.created)


def _table(client, run, key: str) -> list[dict]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]),
                                                                key=ArtifactFilterKey(any_=[key])))
    assert len(arts) == 1, f"{run.name}: {len(arts)} artifacts with key {key}"
    assert arts[0].type == "table"
    data = arts[0].data
    return json.loads(data) if isinstance(data, str) else data


def _markdown_keys(client, run) -> set[str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    return {a.key for a in arts if a.type == "markdown"}


def test_unparquet_merge_tokenize_runs_are_named_tagged_and_tabled(cook, tmp_path):
    from prefect.client.orchestration import get_client

    src = tmp_path / "src"
    src.mkdir()
    a, b = _prose(14, 1), _prose(9, 2)
    b += [a[0], None, ""]  # a duplicate across files, a null and an empty text
    files = [src / "a.parquet", src / "b.parquet"]
    for f, texts in zip(files, (a, b)):
        pq.write_table(pa.table({"text": pa.array(texts, pa.string()), "prompt": [f"p{i}" for i in range(len(texts))]}), f)
    docs, merged, tokens = tmp_path / "docs", tmp_path / "merged", tmp_path / "tokens"
    for args in (["unparquet", *files, "--out", docs],
                 ["merge", docs, "--out", merged, "--shard-size", "8KB"],
                 ["tokenize", merged, "--encoding", "gpt2", "--out", tokens, "--val-fraction", "0.2"]):
        proc = cook(args)
        assert proc.returncode == 0, proc.stderr[-3000:]

    with get_client(sync_client=True) as client:
        # unparquet: one row per input file, counts as in the files written
        run = _flow_run(client, "unparquet", out=str(docs))
        assert run.name == "unparquet 2 sources -> docs (parquet)"
        assert {"source:parquet", "stage:gather"} <= set(run.tags)
        rows = _table(client, run, "unparquet-files")
        assert [(Path(r["file"]).name, r["state"], r["rows"]) for r in rows] == [("a.parquet", "converted", 14),
                                                                                 ("b.parquet", "converted", 12)]
        for r in rows:
            assert r["written"] == pq.ParquetFile(docs / r["output"]).metadata.num_rows
        assert [r["null_or_empty"] for r in rows] == [0, 2]
        assert "unparquet-summary" in _markdown_keys(client, run)

        # merge: per source and per shard, as stats.json and the shards on disk say
        stats = json.loads((merged / "stats.json").read_text())
        run = _flow_run(client, "merge", out=str(merged))
        assert run.name == "merge docs -> merged"
        assert "stage:process" in run.tags and not any(t.startswith("source:") for t in run.tags)
        rows = _table(client, run, "merge-sources")
        assert {r["source"]: (r["documents_in"], r["documents_out"], r["rejected"]) for r in rows} == {
            s: (v["documents_in"], v["documents_out"], sum(v["rejected"].values())) for s, v in stats["sources"].items()}
        assert sum(r["documents_in"] for r in rows) == 14 + 10 and sum(r["rejected"] for r in rows) >= 1
        assert sum(r["mb_out"] for r in rows) == pytest.approx(stats["bytes_out"] / 1e6, abs=0.01)
        shards = _table(client, run, "merge-shards")
        kept = [r for r in shards if r["kind"] == "kept"]
        assert [r["shard"] for r in kept] == sorted(p.name for p in merged.glob("shard_*.parquet")) and len(kept) > 1
        assert [r["documents"] for r in kept] == [pq.ParquetFile(merged / r["shard"]).metadata.num_rows for r in kept]
        assert sum(r["documents"] for r in kept) == stats["documents_out"]
        assert sum(r["documents"] for r in shards if r["kind"] == "rejects") == stats["documents_rejected"]
        assert "merge-summary" in _markdown_keys(client, run)

        # tokenize: per split, with the meta
        meta = json.loads((tokens / "meta.json").read_text())
        run = _flow_run(client, "tokenize", out=str(tokens))
        assert run.name == "tokenize gpt2 -> tokens"
        assert "stage:tokenize" in run.tags
        rows = _table(client, run, "tokenize-splits")
        assert {r["split"]: (r["documents"], r["tokens"], r["shards"]) for r in rows} == {
            s: (v["documents"], v["tokens"], len(v["shards"])) for s, v in meta["splits"].items()}
        assert {(r["encoding"], r["dtype"], r["vocab_size"]) for r in rows} == {("gpt2", "uint16", 50257)}
        assert sum(r["documents"] for r in rows) == stats["documents_out"]
        assert "tokenize-summary" in _markdown_keys(client, run)


def test_scrape_wikipedia_run_is_named_tagged_and_tabled(cook, cook_env, tmp_path):
    from prefect.client.orchestration import get_client

    from tasks.corpus.documents import read_documents

    out = tmp_path / "wiki"
    with FakeMediaWiki(FakeWiki(n_pages=16, seed=3)) as api:
        proc = cook(["scrape", "wikipedia", "--query", "Alpha", "--query", "Beta", "--max-pages", 6, "--depth", 1,
                     "--out", out], env={**cook_env, "COOK_WIKIPEDIA_API_URL": api.url})
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sum(1 for p in out.glob("*.parquet") for _ in read_documents(p))

    with get_client(sync_client=True) as client:
        run = _flow_run(client, "scrape-wikipedia", out=str(out))
        assert run.name == "scrape-wikipedia: 2 queries, max 6 pages, depth 1"
        assert {"source:wikipedia", "stage:gather"} <= set(run.tags)
        rows = _table(client, run, "scrape-wikipedia-queries")
        assert [(r["query"], r["state"]) for r in rows] == [("Alpha", "Completed"), ("Beta", "Completed")]
        assert sum(r["done"] for r in rows) == sum(r["fetched"] for r in rows) == written > 0
        assert sum(r["budget"] for r in rows) <= 6 + 1


def test_wiki_dump_run_is_named_tagged_and_tabled(cook, tmp_path):
    from prefect.client.orchestration import get_client

    from tests.dumpgen import make_pages, write_dump

    dump = write_dump(tmp_path / "enwiki-20240101-pages-articles.xml", make_pages(40, seed=4))
    out = tmp_path / "dumped"
    proc = cook(["scrape", "wiki-dump", dump, "--out", out, "--workers", 1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())

    with get_client(sync_client=True) as client:
        run = _flow_run(client, "wiki-dump", out=str(out))
        assert run.name == "wiki-dump enwiki-20240101-pages-articles.xml -> dumped"
        assert {"source:wiki-dump", "stage:gather"} <= set(run.tags)
        rows = _table(client, run, "wiki-dump-shards")
        assert [r["shard"] for r in rows] == summary["shards"]
        assert [r["articles"] for r in rows] == [pq.ParquetFile(out / r["shard"]).metadata.num_rows for r in rows]
        assert sum(r["articles"] for r in rows) == summary["kept"] > 0


def test_artifact_and_name_failures_never_fail_a_run():
    """A name that cannot be built falls back to the flow's name; an artifact that cannot be published is skipped."""
    from prefect import flow

    def broken(p: dict) -> str:
        raise KeyError("no such parameter")

    @flow(name="report-probe", flow_run_name=run_name("report-probe", broken))
    def probe(n: int = 2) -> tuple[str, bool]:
        from prefect.artifacts import create_table_artifact
        from prefect.runtime import flow_run

        try:
            create_table_artifact(key="Not A Valid Key!", table=[{"n": n}])
            refused = False
        except Exception:
            refused = True
        publish_table("Not A Valid Key!", [{"n": n}], "invalid key: refused by Prefect")
        publish_markdown("report-probe", ["# ok"], "a valid one")
        return flow_run.name, refused

    assert probe() == ("report-probe", True)

    @flow(name="report-probe", flow_run_name=run_name("report-probe", lambda p: f"probe n={p['n']} " + "x" * 200))
    def named(n: int = 2) -> str:
        from prefect.runtime import flow_run

        return flow_run.name

    name = named()
    assert name.startswith("probe n=2 x") and len(name) <= 80, "defaults filled in, long names cut"


def test_every_flow_has_source_or_stage_tags():
    assert set(FLOW_NAMES) <= set(TAGS)
    for name in FLOW_NAMES:
        assert tags_for(name), name
        assert all(re.fullmatch(r"[a-z]+(:[a-z0-9-]+)?", t) for t in tags_for(name)), tags_for(name)
    assert {t for n in FLOW_NAMES for t in tags_for(n) if t.startswith("source:")} == {
        "source:wikipedia", "source:britannica", "source:youtube", "source:wiki-dump", "source:parquet", "source:pydoc"}
    assert {t for n in FLOW_NAMES for t in tags_for(n) if t.startswith("stage:")} == {
        "stage:gather", "stage:process", "stage:tokenize", "stage:train", "stage:export"}
