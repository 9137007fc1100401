"""Test setup: one session-wide Prefect test harness (a real local API) with PREFECT_HOME in a temp dir."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_HOME = tempfile.mkdtemp(prefix="cook-prefect-home-")
os.environ["PREFECT_HOME"] = _HOME
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(Path(_HOME) / "storage")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_UI_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(_HOME) / "tiktoken-empty")  # never reach the network for encodings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """A real Prefect API for the whole session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture
def cook_env(prefect_api, tmp_path):
    """Environment for `cook` subprocesses: the session's Prefect API and a data dir in tmp."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(prefect_api)
    env["COOK_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_cook(args: list[str], env: dict, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run the `cook` CLI in a subprocess (as a user would) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *map(str, args)],
        env=env, cwd=kw.pop("cwd", REPO), capture_output=True, text=True, timeout=timeout, **kw,
    )


@pytest.fixture
def cook(cook_env):
    """Call the CLI: cook(["tokenize", ...]) -> CompletedProcess."""
    return lambda args, **kw: run_cook(args, kw.pop("env", cook_env), **kw)
