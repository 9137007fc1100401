"""Test setup: one session-wide Prefect test harness (a real local API) with PREFECT_HOME in a temp dir, which is
removed when the session ends, together with the temp files of every process the tests start (TMPDIR)."""

from __future__ import annotations

import os
import shutil
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
# Child processes (cook, torchrun, prefect server and workers) and Dask keep their temp files in the session's home,
# so nothing is left in /tmp. This process keeps /tmp (mkdtemp above fixed tempfile.tempdir): pytest's tmp_path too.
(Path(_HOME) / "tmp").mkdir()
os.environ["TMPDIR"] = str(Path(_HOME) / "tmp")
os.environ["DASK_TEMPORARY_DIRECTORY"] = str(Path(_HOME) / "dask")

# One torch/OpenMP thread in this process and every one it starts: `make test`'s two workers already fill the two
# cores, and a second thread per process only spins (about 5x the CPU time per training step under load). Set before
# torch is imported; bit-identical comparisons then train with the same thread count in and out of process.
os.environ["OMP_NUM_THREADS"] = "1"
# Every `cook` a test starts without PREFECT_API_URL starts a temporary Prefect API, on two cores shared by three
# test workers: give it longer than the CLI's default (flows/cli.py EPHEMERAL_STARTUP_S).
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"

# The tests read the runs' step-by-step log lines from the CLI's output, as `cook --verbose` shows them; the quiet
# default is tested on its own (test_cli.py::test_quiet_console_and_log_file).
os.environ["COOK_VERBOSE"] = "1"

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def prefect_api():
    """A real Prefect API for the whole session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


# The longest test files first (by a full run's --durations): pytest-xdist (`--dist loadfile --no-loadscope-reorder`)
# hands files out in collection order, so a long one collected last would run alone at the end while the other
# worker idles.
SLOW_FIRST = ("test_server.py", "test_nodes.py", "test_pipeline.py", "test_gpu_check.py", "test_notebook.py",
              "test_train_ops.py", "test_bucket_train.py", "test_dask_bucket.py", "test_remote_worker.py",
              "test_youtube.py", "test_train.py", "test_merge.py", "test_bad_input.py", "test_demo.py", "test_lock.py",
              "test_dedup.py", "test_bucket_corpus.py", "test_bucket_scrape.py", "test_wikipedia.py", "test_dask.py",
              "test_ddp.py", "test_tokenize.py", "test_wikidump.py", "test_cli.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the others keep their order


def pytest_sessionfinish(session, exitstatus):
    """Remove the session's PREFECT_HOME (database, results, temp files) once every fixture is torn down."""
    shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def cook_env(prefect_api, tmp_path):
    """Environment for `cook` subprocesses: the session's Prefect API and a data dir in tmp."""
    env = dict(os.environ)
    env["PREFECT_API_URL"] = str(prefect_api)
    env["COOK_DATA_DIR"] = str(tmp_path / "data")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tagged_flow_runs(client, tag: str, running: bool = False) -> list:
    """The flow runs that carry `tag` (only running ones if `running`): the test's own, never another test's (an
    unfiltered `read_flow_runs()` sees only the first 200). Start the flow inside `with prefect.tags(tag):`."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType, FlowRunFilterTags
    from prefect.client.schemas.objects import StateType

    state = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])) if running else None
    return client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]), state=state))


def cancel_tagged(tag: str) -> list:
    """Cancel the running flow runs that carry `tag` (as the UI's Cancel does); returns them."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client:
        runs = tagged_flow_runs(client, tag, running=True)
        for r in runs:
            client.set_flow_run_state(r.id, Cancelling(), force=True)
    return runs


def artifacts_of(client, flow_runs, key: str | None = None) -> list:
    """The artifacts that these flow runs made (with `key` if given)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    return client.read_artifacts(artifact_filter=ArtifactFilter(
        flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in flow_runs]),
        key=ArtifactFilterKey(any_=[key]) if key else None))


def new_tag() -> str:
    """A tag that marks one test's flow runs."""
    import uuid

    return f"test-{uuid.uuid4().hex[:12]}"


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


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server (its own process) for the test session; see tests/s3server.py."""
    from s3server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the session's S3 server, with the server's endpoint and keys in this process's environment
    (and in `s3.env` for subprocesses). Yields the server; `s3.url` is `s3://BUCKET`."""
    import fsspec

    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    fsspec.filesystem("s3").clear_instance_cache()
    s3_server.url = s3_server.bucket()
    yield s3_server
    fsspec.filesystem("s3").clear_instance_cache()
