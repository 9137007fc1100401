"""`cook demo`: its report sets the model's val loss and bits/byte beside the bigram baseline's, and says by
how much the model beats it (the demo's own learning is a 3-minute run, measured by hand, not here)."""

from __future__ import annotations

import json
import math

import pytest

from flows.demo import compare, result_text
from model.baseline import bigram_baseline
from model.presets import get_preset
from model.shards import ShardStream, list_shards, load_meta, write_meta
from chardata import make_char_data


def test_compare_reads_the_baseline_and_bpb(tmp_path):
    data = make_char_data(tmp_path / "tokens")
    meta = load_meta(data)
    meta["baseline"] = {"bigram": {"val_loss": 2.0, "val_bpb": 2.5}}
    write_meta(data, meta)

    r = compare({"val_loss": 1.7, "val_bpb": 2.25}, data)
    assert r["val_loss"] == 1.7 and r["val_bpb"] == 2.25
    assert r["bigram_val_loss"] == 2.0 and r["bigram_val_bpb"] == 2.5
    assert r["beats_bigram_pct"] == pytest.approx(15.0)
    assert "15.0% below the bigram" in result_text(r)

    # an eval record without val_bpb (older metrics): bits per byte from meta's val tokens and bytes
    val = meta["splits"]["val"]
    r = compare({"val_loss": 2.2}, data)
    assert r["val_bpb"] == pytest.approx(2.2 * val["tokens"] / val["bytes"] / math.log(2))
    assert r["beats_bigram_pct"] == pytest.approx(-10.0)
    assert "10.0% ABOVE the bigram" in result_text(r)


def test_compare_fits_the_baseline_when_meta_lacks_it(tmp_path):
    data = make_char_data(tmp_path / "tokens")
    meta = load_meta(data)
    assert "baseline" not in meta
    expected = bigram_baseline(ShardStream(list_shards(data, "train")), ShardStream(list_shards(data, "val")),
                               meta["vocab_size"], meta["splits"]["val"]["bytes"])
    r = compare({"val_loss": 1.0}, data)
    assert r["bigram_val_loss"] == pytest.approx(expected["val_loss"]) and 1.0 < r["bigram_val_loss"] < math.log(meta["vocab_size"])
    assert r["beats_bigram_pct"] == pytest.approx(100 * (1 - 1.0 / expected["val_loss"]))
    # no eval at all: every model figure is missing, nothing raises
    r = compare({}, data)
    assert r["val_loss"] is None and r["val_bpb"] is None and r["beats_bigram_pct"] is None
    assert "model val loss - nats/token" in result_text(r)


def test_demo_preset_fits_a_small_vocabulary():
    config, train = get_preset("demo", 1024)
    assert config.vocab_size == 1024 and config.padded_vocab_size == 1024
    assert train["batch_size"] * config.block_size >= 1024


def test_cook_demo_prints_the_model_against_the_bigram(cook, cook_env, tmp_path):
    """The whole demo at a few iterations: corpus, bpe tokens with a baseline, 2 chunks, sample, report."""
    r = cook(["demo", "--iters-per-chunk", "3"], timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "smoothed bigram" in out and "val bits/byte" in out
    assert "the model's val loss is" in out and "the bigram's" in out
    root = tmp_path / "data" / "demo"
    meta = json.loads((root / "tokens" / "meta.json").read_text())
    assert meta["encoding"].startswith("bpe:") and meta["baseline"]["bigram"]["val_loss"] > 0
    runs = list((root / "runs").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "run.json").read_text())["preset"] == "demo"
    evals = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in evals if e["kind"] == "eval"][-1] == 6
