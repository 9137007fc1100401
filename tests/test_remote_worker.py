"""A worker on another machine: prefect.remote.yaml's deployments clone the code with git and install it, so a
worker that has no checkout runs them. On a real Prefect server (as tests/test_server.py starts one):

- the code is a bare git repository in tmp, made from a commit of the working tree as it is now (tracked and new
  files, uncommitted edits included), served as a `file://` URL;
- the worker runs in an empty folder of its own, with a Python environment of its own that has cook's
  dependencies but not cook (a venv that sees this venv's packages through a .pth file);
- a `remote` deployment's run ends Completed, its output is in the shared data dir, the clone is in the run's
  working directory under the worker's folder, the install step installed cook from it into the worker's
  environment, and the flow's modules were imported from the clone (their bytecode is written there).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import REPO
from test_server import BIN, _alive, _client, _free_port, _runs_of, _stop, server_env  # noqa: F401 - server_env is a fixture

REMOTE_PULL = [
    {"prefect.deployments.steps.git_clone": {"id": "clone", "repository": "{{ $COOK_GIT_REPOSITORY }}", "branch": "main"}},
    {"prefect.deployments.steps.run_shell_script": {
        "directory": "{{ clone.directory }}",
        "script": "python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation ."}},
]


def test_remote_yaml_mirrors_the_default_deployments():
    """prefect.remote.yaml: a `remote` deployment per flow, like prefect.yaml's `default` (entrypoint, tags,
    parameters, concurrency), on the pool `cook-remote`, no schedules, pulled with git_clone and installed."""
    local = yaml.safe_load((REPO / "prefect.yaml").read_text())
    remote = yaml.safe_load((REPO / "prefect.remote.yaml").read_text())
    assert remote["pull"] == REMOTE_PULL
    defaults = {d["entrypoint"]: d for d in local["deployments"] if d["name"] == "default"}
    assert [d["entrypoint"] for d in remote["deployments"]] == list(defaults)
    for d in remote["deployments"]:
        want = defaults[d["entrypoint"]]
        assert d["name"] == "remote" and d["work_pool"] == {"name": "cook-remote"} and "schedules" not in d
        for key in ("description", "tags", "parameters", "concurrency_limit"):
            assert d.get(key) == want.get(key), (d["entrypoint"], key)


def _snapshot_repo(tmp: Path) -> Path:
    """A bare repository whose `main` is the working tree as it is now: the files git tracks or would add."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    src = tmp / "snapshot"
    for name in filter(None, files):
        if (REPO / name).is_file():  # a tracked file deleted in the tree is not in it
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    git = ["git", "-c", "user.name=cook tests", "-c", "user.email=tests@cook.invalid", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot of the working tree"]):
        subprocess.run([*git, *args], cwd=src, check=True, capture_output=True)
    bare = tmp / "cook.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(src), str(bare)], check=True, capture_output=True)
    shutil.rmtree(src)
    return bare


def _worker_python(folder: Path) -> Path:
    """A venv of the worker's own that sees this venv's packages (prefect, torch, pip...) but not cook."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    site = Path(subprocess.run([str(folder / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "cook-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")  # a plain path: its .pth files stay unread
    r = subprocess.run([str(folder / "bin" / "python"), "-c", "import prefect, pip; import tasks"], cwd=folder,
                       capture_output=True, text=True)
    assert "No module named 'tasks'" in r.stderr, r.stderr  # cook itself is not there
    return folder / "bin" / "python"


@pytest.mark.timeout(300)
def test_worker_in_another_folder_runs_a_git_clone_deployment(tmp_path, server_env):
    bare = _snapshot_repo(tmp_path)
    host = tmp_path / "other-machine"  # the worker's machine: an empty folder, no checkout
    (host / "tmp").mkdir(parents=True)
    (host / "runs").mkdir()  # the runs' working directory (a work pool's `working_dir` must exist)
    python = _worker_python(host / "venv")
    data = tmp_path / "data"  # the data dir both sides see (a shared filesystem)
    src = tmp_path / "in" / "stories.parquet"
    src.parent.mkdir()
    texts = [f"Story {i}: " + "the cat sat on the mat. " * 20 for i in range(5)]
    pq.write_table(pa.table({"text": texts}), src)

    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**server_env, "PREFECT_API_URL": api_url}
    run = lambda args, **kw: subprocess.run(args, env={**env, **kw.pop("env", {})}, cwd=kw.pop("cwd", REPO),  # noqa: E731
                                            capture_output=True, text=True, timeout=kw.pop("timeout", 180), **kw)
    procs: list[subprocess.Popen] = []
    try:
        with open(tmp_path / "server.log", "w") as log:
            procs.append(subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                          env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        for args in (["server", "status", "--wait", "--timeout", "120"],
                     ["work-pool", "create", "cook-remote", "--type", "process", "--overwrite"],
                     ["--no-prompt", "deploy", "--all", "--prefect-file", "prefect.remote.yaml"]):
            r = run([str(BIN / "prefect"), *args], env={"COOK_GIT_REPOSITORY": bare.as_uri()})
            assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-3000:])

        # the worker: its own folder and environment; the API and the data dir are all it shares with us (it writes
        # bytecode, which shows where its modules came from)
        worker_env = {k: v for k, v in env.items() if k not in ("PWD", "VIRTUAL_ENV", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")}
        worker_env.update(PATH=f"{python.parent}{os.pathsep}{os.environ['PATH']}", PWD=str(host), TMPDIR=str(host / "tmp"),
                          COOK_DATA_DIR=str(data), PIP_NO_INDEX="1")
        with open(tmp_path / "worker.log", "w") as log:
            procs.append(subprocess.Popen([str(python), "-m", "prefect", "worker", "start", "--pool", "cook-remote",
                                           "--type", "process"], env=worker_env, cwd=host, stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

        # a cheap flow, run where the work pool's process worker is; working_dir keeps the clone for us to see
        r = run([str(BIN / "prefect"), "deployment", "run", "unparquet/remote", "--param", f'sources=["{src}"]',
                 "--param", "fmt=text", "--job-variable", f"working_dir={host / 'runs'}", "--watch", "--watch-timeout", "150"])
        logs = f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n--- worker ---\n{(tmp_path / 'worker.log').read_text()[-6000:]}"
        assert r.returncode == 0, logs

        stack, client = _client(api_url)
        with stack:
            d = client.read_deployment_by_name("unparquet/remote")
            assert d.work_pool_name == "cook-remote"
            assert d.pull_steps[0]["prefect.deployments.steps.git_clone"]["repository"] == bare.as_uri()
            runs = _runs_of(client, d.id)  # this deployment's runs, not the server's latest
            assert len(runs) == 1 and runs[0].state.is_completed(), runs
        out = data / "cosmopedia"
        assert [p.read_text().count("Story ") for p in out.glob("*.txt")] == [5], logs

        # the code came from the clone: git_clone made it under the worker's folder, pip installed cook from it
        # into the worker's own environment, and the flow's modules were imported from it
        clone = host / "runs" / "cook-main"
        assert (clone / ".git").is_dir() and (clone / "flows" / "unparquet.py").is_file(), sorted(host.rglob("*"))[:50]
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
        assert head == subprocess.run(["git", "rev-parse", "main"], cwd=bare, capture_output=True, text=True).stdout
        site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                   capture_output=True, text=True).stdout.strip())
        assert (site / "tasks" / "corpus" / "unparquet.py").is_file(), sorted(p.name for p in site.iterdir())
        for module in ("flows/unparquet", "tasks/corpus/unparquet", "tasks/core/settings", "model/errors"):  # bytecode
            folder, name = module.rsplit("/", 1)
            assert list((clone / folder / "__pycache__").glob(f"{name}.*.pyc")), f"{module} not imported from the clone"
    finally:
        for proc in reversed(procs):  # the worker, then the server
            _stop(proc.pid, group=True)
    for proc in procs:
        assert not _alive(proc.pid)
    with socket.socket() as s:  # nothing listens on the port any more
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
