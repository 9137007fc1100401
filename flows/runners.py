"""Where a stage's tasks run: on the flow's own task runner, or on a Dask cluster (prefect-dask).

The CPU-heavy stages (`tokenize`, `merge`, `unparquet`, `scrape wiki-dump`) take a `dask` parameter
(CLI: `--dask`); when it is None the setting `COOK_DASK_ADDRESS` decides:

- a scheduler address (`tcp://host:8786`): the tasks run on that cluster's workers;
- `local`: a LocalCluster is started for the run (single-threaded worker processes, one per core up to
  LOCAL_WORKERS, not daemonic: a stage's one task may start its own process pool there) and closed after it;
- unset, or `off`: the tasks run on the flow's own (thread) runner, as before.

The choice is a flow parameter rather than the flow's `task_runner`, so a deployment run can pick
it (`--param dask=tcp://...`) as well as the CLI. Dask workers are separate processes with cook installed.
Tasks get locations, never data: with the data on a bucket (COOK_DATA_DIR and the stages' inputs and outputs
URLs) they are URLs, so workers need nothing of the flow's machine but the bucket; a local path goes to the
workers as it is, and they must see it at the same path (a shared filesystem). Task results go to the flow's
`<data_dir>/.cook/results` (pinned when the task is submitted: a block on the bucket for a URL data dir), so the
workers' own COOK_DATA_DIR does not matter. Settings a task reads itself (credentials such as AWS_* for `s3://`,
COOK_HF_TOKEN for `hf://`) and its scratch folder (under COOK_CACHE_DIR) are the workers' own. Task runs
report to the flow's Prefect API: without PREFECT_API_URL, workers on this machine share the flow's temporary
server; a cluster elsewhere needs a Prefect server it can reach (with a URL data dir the result block lives there).
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

from model.errors import CookError

LOCAL = "local"
OFF = "off"
LOCAL_WORKERS = 8  # most worker processes of a `local` cluster: a bigger one is a cluster of your own
_ADDRESS = re.compile(r"^(?:[a-z][a-z0-9+.-]*://)?(?:\[[0-9a-fA-F:.]+\]|[^\s:/\[\]]+)(?::\d{1,5})?/?$")


def dask_target(dask: str | None = None) -> str | None:
    """The Dask scheduler a stage uses: `dask`, else COOK_DASK_ADDRESS; "local" for a LocalCluster; None for none.

    Raises a one-line CookError for a malformed address or when prefect-dask is missing.
    """
    if dask is None:
        from tasks.core.settings import get_settings

        dask = get_settings().dask_address
    target = (dask or "").strip()
    if not target or target.lower() == OFF:
        return None
    if target.lower() == LOCAL:
        target = LOCAL
    elif not _ADDRESS.match(target):
        raise CookError(f"bad Dask address '{dask}': give a scheduler address such as tcp://host:8786, or 'local'")
    try:
        import prefect_dask  # noqa: F401
    except ImportError:
        raise CookError("running on Dask needs prefect-dask: pip install 'cook[dask]'") from None
    return target


def dask_runner(target: str):
    """A DaskTaskRunner for `target`: a LocalCluster for "local", else the scheduler at that address."""
    from prefect_dask import DaskTaskRunner

    from model.tokenizer import default_threads

    if target == LOCAL:
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            # processes: the work is pure Python (the GIL); no per-worker memory cap: one task may hold a
            # whole dedup index; no dashboard: it needs bokeh and a free port
            cluster_kwargs=dict(n_workers=min(default_threads(), LOCAL_WORKERS), threads_per_worker=1, processes=True,
                                memory_limit=0, dashboard_address=None),
        )
    return DaskTaskRunner(address=target)  # connect timeout: dask's distributed.comm.timeouts.connect (30 s)


class StageRunner:
    """Submits a stage's tasks to one task runner: the flow's own, or a DaskTaskRunner."""

    def __init__(self, runner, dask: bool):
        self.runner = runner
        self.dask = dask

    def submit(self, task, *args, **kwargs):
        """`task.submit(*args, **kwargs)`, on this runner; returns the PrefectFuture.

        On Dask a persisted task's results go to this process's `<data_dir>/.cook/results`, pinned now: the
        worker need not share COOK_DATA_DIR, only the bucket (a URL data dir) or the filesystem (a local one).
        """
        from prefect.utilities.callables import get_call_parameters

        from tasks.core.caching import RESULTS, result_storage

        if self.dask and task.result_storage is RESULTS:
            task = task.with_options(result_storage=result_storage(pinned=True))
        return self.runner.submit(task, get_call_parameters(task.fn, args, kwargs))


@contextlib.contextmanager
def stage_runner(dask: str | None = None) -> Iterator[StageRunner]:
    """Where to submit a stage's tasks, inside a flow run: `with stage_runner(dask) as r: r.submit(task, ...)`.

    On Dask the runner (and a LocalCluster it started) is closed when the block ends: wait for the futures
    (`final_state`) inside it.
    """
    target = dask_target(dask)
    if target is None:
        from prefect.context import FlowRunContext

        ctx = FlowRunContext.get()
        if ctx is None:
            raise RuntimeError("stage_runner() runs inside a flow")
        yield StageRunner(ctx.task_runner, dask=False)
        return
    from prefect import get_run_logger

    check_api_reachable(target)
    runner = dask_runner(target)
    with _environ_kept(), _workers_may_spawn(target), runner, _shared_api(target):
        try:
            client = runner.client  # connect now: an unreachable scheduler is one clear line
        except (OSError, TimeoutError) as e:
            raise CookError(f"cannot reach the Dask scheduler at {target} ({type(e).__name__}: {e})") from None
        workers = len(client.scheduler_info().get("workers", {}))
        get_run_logger().info("tasks run on Dask: %s (%d workers)", client.scheduler.address, workers)
        yield StageRunner(runner, dask=True)


@contextlib.contextmanager
def _workers_may_spawn(target: str) -> Iterator[None]:
    """A `local` cluster's worker processes are started non-daemonic (Dask's `distributed.worker.daemon`), so
    tokenize, merge and wiki-dump, one task each, start their own process pools there and use every core
    (tasks/core/spawn.py); daemonic workers would run them in one process. A cluster of your own: its setting."""
    if target != LOCAL:
        yield
        return
    import dask

    # read by each nanny as it starts (or restarts) its worker; Dask's config is process-wide, so while the stage
    # runs any other cluster this process starts gets non-daemonic workers too
    with dask.config.set({"distributed.worker.daemon": False}):
        yield


@contextlib.contextmanager
def _environ_kept() -> Iterator[None]:
    """Put os.environ back afterwards: distributed's nanny sets OMP_NUM_THREADS=1 (and MKL_..., MALLOC_...) in the
    spawning process for good, which would slow down (and change the thread count of) everything run after it."""
    import os

    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


def _loopback(target: str) -> bool:
    if target == LOCAL:
        return True
    host = re.sub(r"^[a-z][a-z0-9+.-]*://", "", target).rsplit(":", 1)[0].strip("[]")
    return host in ("127.0.0.1", "localhost", "::1")


def check_api_reachable(target: str) -> None:
    """CookError when a cluster on other machines could not load the flow's result storage: with a URL data dir
    task results go to a block saved on the flow's Prefect API, and without PREFECT_API_URL that API is a temporary
    server on this machine's loopback, which the workers cannot reach (each would start one of its own, without the
    block)."""
    from prefect.settings import PREFECT_API_URL

    from tasks.core.settings import get_settings

    if _loopback(target) or PREFECT_API_URL.value() or not get_settings().data_url:
        return
    raise CookError(f"the Dask workers at {target} need a Prefect server they can reach (set PREFECT_API_URL, e.g. "
                    "http://HOST:4200/api of `prefect server start --host 0.0.0.0`): with COOK_DATA_DIR a URL the "
                    "tasks' results are stored through it")


@contextlib.contextmanager
def _shared_api(target: str) -> Iterator[None]:
    """Without PREFECT_API_URL the flow talks to a temporary API server that its own process started. Workers on
    this machine are pointed at it, else each would start another one on the same database; a cluster elsewhere
    needs a Prefect server that it can reach (PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value() or not _loopback(target):
        yield
        return
    from prefect.client.orchestration import get_client

    url = str(get_client(sync_client=True).api_url).rstrip("/")
    with temporary_settings(updates={PREFECT_API_URL: url}):  # what the tasks' serialized context carries
        yield


def final_state(future):
    """Wait for `future` and return its final state (Completed, Cached, Failed...).

    A task the runner lost (its Dask worker died, its inputs did not pickle) has no final state: CookError.
    """
    future.wait()
    state = future.state
    if not state.is_final():
        wrapped = getattr(future, "wrapped_future", None)
        why = None
        with contextlib.suppress(Exception):
            why = wrapped.exception(timeout=0) if wrapped is not None else None
        detail = f"{type(why).__name__}: {why}" if why is not None else f"state {state.name}"
        raise CookError(f"task run {future.task_run_id} did not finish on the task runner ({detail})")
    return state
