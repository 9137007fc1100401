"""End to end on a real Prefect server: the README's "Run on a Prefect server" walkthrough, line by line, then
the nightly schedules, a watched pipeline run, and a failed run retried without redoing what had finished.

Everything runs as a user would: `prefect` and `cook` commands in bash, a process worker, a server on a free
loopback port with a temp PREFECT_HOME. The walkthrough runs once: where PostgreSQL answers on 127.0.0.1:5432 with
trust auth (as on CI), on it, with the README's "Prefect on PostgreSQL" lines first, in a database of its own that
is dropped at the end; elsewhere on Prefect's default SQLite database (in PREFECT_HOME). The other variant is
skipped, saying why.
Everything started here is stopped by PID.
The Wikipedia source talks to the loopback fake MediaWiki (COOK_WIKIPEDIA_API_URL in the worker's environment).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pgdb
import pytest
from conftest import REPO
from fake_mediawiki import FakeMediaWiki, FakeWiki

BIN = Path(sys.executable).parent  # the venv's bin: `prefect` and `cook`
NIGHTLY = {"scrape-wikipedia": "0 1 * * *", "scrape-britannica": "30 2 * * *", "scrape-youtube": "0 4 * * *"}
FLOWS = ("scrape-wikipedia", "scrape-britannica", "scrape-youtube", "wiki-dump", "unparquet", "merge", "tokenize",
         "train", "pipeline", "demo")
SMALL_TRAIN = "--param iters_per_chunk=20 --param eval_interval=10 --param eval_iters=2"


def walkthrough(marker: str = "server-walkthrough") -> list[str]:
    """The commands of the README's bash block after `<!-- MARKER:`, in order: the server walkthrough, or
    (`server-walkthrough-postgresql`) the lines that put its server on PostgreSQL."""
    text = (REPO / "README.md").read_text()
    start = text.index("```bash", text.index(f"<!-- {marker}:"))
    block = text[start + len("```bash"):text.index("```", start + len("```bash"))]
    return [line.strip() for line in block.strip().splitlines() if line.strip() and not line.strip().startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def _stop(pid: int, group: bool = False, timeout: float = 20) -> None:
    """SIGTERM (the process group if `group`), then SIGKILL if it is still there after `timeout` seconds."""
    kill = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGKILL)


class Shell:
    """Runs command lines with bash in the checkout, with one environment that `export` lines change."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs, self.background = env, logs, []

    def run(self, line: str, ok: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            self.env[key] = os.path.expandvars(value)
            return subprocess.CompletedProcess(line, 0, "", "")
        if line.endswith("&"):
            with open(self.logs / f"background-{len(self.background)}.log", "w") as log:  # the child keeps its own
                proc = subprocess.Popen(["bash", "-c", "exec " + line[:-1].strip()], env=self.env, cwd=REPO, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.background.append(proc)
            return subprocess.CompletedProcess(line, 0, "", "")
        r = subprocess.run(["bash", "-c", line], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if ok and r.returncode != 0:
            tail = "\n".join((r.stdout + r.stderr).splitlines()[-60:])
            background = "".join(p.read_text()[-4000:] for p in sorted(self.logs.glob("background-*.log")))
            pytest.fail(f"`{line}` exited {r.returncode}:\n{tail}\n--- background ---\n{background}")
        return r


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request):
    """The server's database. SQLite: None (Prefect's default, `prefect.db` in PREFECT_HOME). PostgreSQL: (server,
    name) of a uniquely named database, dropped at the end even on failure; the README's `createdb` line makes it,
    or this fixture where `createdb` is not installed. The walkthrough runs once (a budget for `make test`): on
    PostgreSQL where one answers, else on SQLite; the other is skipped with the reason."""
    server, why = pgdb.probe()
    if request.param == "sqlite":
        if server is not None:
            pytest.skip(f"PostgreSQL answers on {pgdb.HOST}:{pgdb.PORT}: the walkthrough runs there, and on SQLite "
                        "(Prefect's default) where none does")
        yield None
        return
    if server is None:
        pytest.skip(why)
    with pgdb.scratch_database(server, "cook_test_server", create=shutil.which("createdb") is None) as name:
        yield server, name


def postgresql_lines(server: pgdb.Server, name: str) -> list[str]:
    """The README's PostgreSQL lines for this server's user and the test's database (`createdb` left out where the
    fixture made the database)."""
    lines = [line.replace("cook_prefect", name).replace("-U postgres", f"-U {server.user}")
             .replace("://postgres@", f"://{server.user}@") for line in walkthrough("server-walkthrough-postgresql")]
    assert [line.split()[0] for line in lines if not line.startswith("export ")] == ["createdb"], lines
    return [line for line in lines if not line.startswith("createdb") or shutil.which("createdb")]


@pytest.fixture
def server_env(tmp_path):
    """A clean environment: no trace of the test harness's Prefect settings, a temp PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "COOK_"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PWD": str(REPO),
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_UI_ENABLED": "false",  # the UI build is not needed to test the API
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    stack = contextlib.ExitStack()
    stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
    client = stack.enter_context(get_client(sync_client=True))
    return stack, client


def _runs_of(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                 sort=FlowRunSort.EXPECTED_START_TIME_DESC)


def _wait_final(client, flow_run_id, run_count: int, timeout: float = 600):
    """The flow run once its `run_count`-th run has reached a final state."""
    deadline = time.monotonic() + timeout
    while True:
        fr = client.read_flow_run(flow_run_id)
        if fr.run_count >= run_count and fr.state is not None and fr.state.is_final():
            return fr
        if time.monotonic() > deadline:
            pytest.fail(f"flow run {flow_run_id} still {fr.state} (run {fr.run_count}) after {timeout:.0f} s")
        time.sleep(1)


def _task_runs(client) -> dict:
    """Every task run on the server: id -> (task function, state name); a task key is `<qualname>-<hash>`."""
    runs, offset = {}, 0
    while True:
        batch = client.read_task_runs(limit=200, offset=offset)
        runs.update({tr.id: (tr.task_key.rsplit("-", 1)[0], tr.state_name) for tr in batch})
        if len(batch) < 200:
            return runs
        offset += 200


def _artifacts_of(client, flow_run_ids) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=list(flow_run_ids))))


def _logs_of(client, flow_run_ids) -> list:
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=list(flow_run_ids))))


def _subflow_runs(client, parent_id) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    return client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))


def test_prefect_yaml_declares_every_flow():
    """prefect.yaml: a `default` per flow, a scheduled `nightly` per scraper, tags as the CLI's, parameters the flows
    take, no absolute paths."""
    import importlib
    import inspect

    import yaml

    from flows.report import TAGS

    text = (REPO / "prefect.yaml").read_text()
    assert not re.search(r"(^|[\s\"'])/(?!/)\w", "\n".join(line.split("#")[0] for line in text.splitlines())), "absolute path"
    spec = yaml.safe_load(text)
    found = {}
    for d in spec["deployments"]:
        path, fn = d["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        flow = getattr(importlib.import_module(module), fn)
        found[(flow.name, d["name"])] = d
        assert d["work_pool"]["name"] == "cook"
        assert tuple(d.get("tags", ())) == TAGS[flow.name], flow.name
        assert set(d.get("parameters", {})) <= set(inspect.signature(flow.fn).parameters), flow.name
        scraper = flow.name in NIGHTLY
        assert d.get("concurrency_limit") == (1 if scraper else None)
        assert [(s["cron"], s["timezone"]) for s in d.get("schedules", [])] == (
            [(NIGHTLY[flow.name], "UTC")] if d["name"] == "nightly" else [])
    assert set(found) == {(f, "default") for f in FLOWS} | {(f, "nightly") for f in NIGHTLY}
    assert spec["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $PWD }}"}}]


@pytest.mark.timeout(1500)
def test_readme_walkthrough_deploy_watch_and_retry(tmp_path, server_env, database):
    port = _free_port()
    data = tmp_path / "data"
    api_url = f"http://127.0.0.1:{port}/api"
    wiki = FakeWiki(n_pages=20, seed=11)
    shell = Shell(server_env, tmp_path)
    with FakeMediaWiki(wiki) as fake:
        shell.env["COOK_WIKIPEDIA_API_URL"] = fake.url  # the worker (and its flow runs) talk to the fake
        try:
            # 1. the README, command by command; only the port, the data dir and the training scale differ (and on
            # PostgreSQL the user and the database name)
            lines = walkthrough()
            assert [line.split()[:3] for line in lines if line.endswith("&")] == [["prefect", "server", "start"],
                                                                                 ["prefect", "worker", "start"]]
            if database is not None:
                lines = postgresql_lines(*database) + lines
            for line in lines:
                line = line.replace("4200", str(port)).replace("$PWD/data", str(data))
                if line.startswith("prefect deployment run"):
                    line = line.replace(" --watch", f" {SMALL_TRAIN} --watch --watch-timeout 600")
                shell.run(line)

            stack, client = _client(api_url)
            with stack:
                # deploy --all made every flow's `default`, and the scrapers' `nightly` with staggered UTC crons
                for name in FLOWS:
                    assert client.read_deployment_by_name(f"{name}/default").work_pool_name == "cook"
                for name, cron in NIGHTLY.items():
                    d = client.read_deployment_by_name(f"{name}/nightly")
                    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in d.schedules] == [(cron, "UTC", True)]
                    assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
                    # `{{ $PWD }}` in prefect.yaml: `prefect deploy` records the checkout it ran in
                    assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}]
                    client.pause_deployment(d.id)  # a nightly run must not start in the middle of this test

                # the watched pipeline run completed, with a checkpoint and its artifacts
                pipeline = client.read_deployment_by_name("pipeline/default")
                first = _runs_of(client, pipeline.id)[0]
                assert first.state.is_completed() and first.name.startswith("pipeline: pydoc")
                # the server keeps its state in the database it was given: SQLite, Prefect's default file in
                # PREFECT_HOME; PostgreSQL, the test's database (and no SQLite file at all)
                assert (Path(server_env["PREFECT_HOME"]) / "prefect.db").is_file() == (database is None)
                if database is not None:
                    assert pgdb.fetchval(*database, "SELECT state_type FROM flow_run WHERE id = $1", first.id) == "COMPLETED"
                ckpts = sorted(data.glob("runs/pipeline-*/checkpoints/chunk_000001/model.safetensors"))
                assert len(ckpts) == 1
                subflows = _subflow_runs(client, first.id)
                assert {r.flow_id for r in subflows} and all(r.state.is_completed() for r in subflows)
                keys = {a.key for a in _artifacts_of(client, [first.id, *(r.id for r in subflows)])}
                assert {"pipeline-stages", "pipeline-summary", "merge-summary", "train-chunk-1"} <= keys, keys
                assert any(tag.startswith("stage:") for r in subflows for tag in r.tags)

                # `train/default` with the README's --param chunks=4 trained DATA/runs/default
                train = _runs_of(client, client.read_deployment_by_name("train/default").id)[0]
                assert train.state.is_completed()
                assert (data / "runs" / "default" / "checkpoints" / "chunk_000004" / "model.safetensors").is_file()

                # 2. a task fails on purpose: DATA2/runs is a file, so preparing the training run fails
                data2 = tmp_path / "data2"
                (data2 / "runs").parent.mkdir(parents=True)
                (data2 / "runs").write_text("not a folder")
                r = shell.run(
                    "prefect deployment run 'pipeline/default' --param sources='[\"wikipedia\", \"pydoc\"]' "
                    "--param queries='[\"Gamma\"]' --param max_pages=6 --param chunks=2 "
                    f"--param data_dir={data2} {SMALL_TRAIN} --watch --watch-timeout 600", ok=False)
                assert r.returncode != 0
                failed = next(fr for fr in _runs_of(client, pipeline.id) if fr.parameters.get("data_dir") == str(data2))
                assert failed.state.is_failed(), failed.state
                fetched = sum(fake.parse_counts.values())
                assert fetched == 6
                tasks_before = _task_runs(client)
                subflows_before = {r.id: r.state.name for r in _subflow_runs(client, failed.id)}

                # 3. fix the fault, retry the flow run: what completed is not executed again
                (data2 / "runs").unlink()
                shell.run(f"prefect flow-run retry {failed.id}")
                retried = _wait_final(client, failed.id, run_count=2)
                assert retried.state.is_completed(), retried.state
                assert retried.run_count == 2
                if database is not None:  # the retry, too, went to PostgreSQL
                    assert pgdb.fetchval(*database, "SELECT run_count FROM flow_run WHERE id = $1", failed.id) == 2
                assert sum(fake.parse_counts.values()) == fetched  # no page fetched again
                new = [fn_state for i, fn_state in _task_runs(client).items() if i not in tasks_before]
                # finished work was not executed again: no new runs of the gather/merge/tokenize tasks (their
                # subflows were reused), and a task that ran in the parent flow itself came back from its cache
                assert not [n for n in new if n[0] in ("crawl_query_task", "merge_task", "tokenize_task", "unparquet_task")], new
                assert [n for n in new if n[0] == "build_pydoc_corpus_task"] == [("build_pydoc_corpus_task", "Cached")], new
                assert sorted(n for n in new if n[0] == "train_chunk_task") == [("train_chunk_task", "Completed")] * 2, new
                # the subflows that had completed were reused as they were; only training ran again
                subflows_after = {r.id: r.state.name for r in _subflow_runs(client, failed.id)}
                done_before = {i for i, s in subflows_before.items() if s == "Completed"}
                assert len(done_before) == 3 and done_before <= {i for i, s in subflows_after.items() if s == "Completed"}
                assert sum(1 for s in subflows_after.values() if s == "Completed") == len(done_before) + 1
                assert sorted(data2.glob("runs/pipeline-*/checkpoints/chunk_000002/model.safetensors"))

                # 4. `default` and `nightly` of one scraper started together on one folder never overlap: the
                # second waits on the folder's global concurrency limit (and says so), then finds the work done
                out = tmp_path / "both"
                params = {"queries": ["Delta"], "max_pages": 5, "depth": 0, "out": str(out)}
                before = Counter(fake.parse_counts)
                # a slow wiki keeps the first run on the folder for seconds: the two runs' processes start a few
                # seconds apart, and a fast first run could end before the second asks for the folder
                fake.latency_s = 1.5
                both = [client.create_flow_run_from_deployment(client.read_deployment_by_name(f"scrape-wikipedia/{name}").id,
                                                               parameters=params) for name in ("default", "nightly")]
                ended = [_wait_final(client, fr.id, run_count=1) for fr in both]
                fake.latency_s = 0.0
                assert all(fr.state.is_completed() for fr in ended), [fr.state for fr in ended]
                said = [log.message for log in _logs_of(client, [fr.id for fr in both])]
                assert sum(m.startswith(f"waiting for {out}") for m in said) == 1, said
                fetched = Counter(fake.parse_counts) - before
                assert fetched and set(fetched.values()) == {1}, fetched  # every page once, by one of the two runs
        finally:
            # 5. stop everything this test started, by PID
            for proc in reversed(shell.background):  # the worker, then the server
                _stop(proc.pid, group=True)
    for proc in shell.background:  # the server and the worker
        assert not _alive(proc.pid)
    with socket.socket() as s:  # nothing listens on the port any more (connections in TIME_WAIT may linger)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
