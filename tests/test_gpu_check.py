"""benchmarks/gpu_check.sh --smoke: the GPU check's plumbing (corpus, tokenize, one run per configuration, one JSON
line each) at tiny scale on CPU, so the script is known to work before a GPU machine runs it for real."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_smoke_prints_a_json_line_per_configuration(cook_env, tmp_path):
    env = dict(cook_env, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(line) for line in p.stdout.splitlines()]  # stdout is JSON lines only
    machine, *configs = lines
    assert machine["gpus"] == [] and machine["torch"]
    assert [c["config"] for c in configs] == ["default", "no-compile"]
    for c in configs:
        assert "error" not in c, c
        assert c["preset"] == "tiny" and c["iters"] == 5 and c["grad_accum"] == 4
        assert c["tokens_per_s"] > 0 and c["ms_per_iter"] > 0
        assert c["mfu"] is None and c["peak_mem_mb"] is None  # CUDA only
        assert c["val_loss"] is not None and c["loss_last"] is not None
    assert configs[1]["flags"].endswith("--no-compile")
    assert list(tmp_path.iterdir()) == []  # its work folder is removed


def test_a_failing_configuration_is_reported_and_fails_the_script(cook_env, tmp_path):
    """A run that fails prints an "error" line and its log's end, and the script exits non-zero."""
    env = dict(cook_env, PYTHON=sys.executable, TMPDIR=str(tmp_path), GPU_CHECK_ITERS="0")  # --iters-per-chunk 0: refused
    p = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--smoke"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 1
    configs = [json.loads(line) for line in p.stdout.splitlines()][1:]
    assert [c["config"] for c in configs] == ["default", "no-compile"] and all("error" in c for c in configs)
    assert "--iters-per-chunk" in p.stderr  # the log's tail names the problem
    assert list(tmp_path.iterdir()) == []
