"""One writer per output folder (tasks/core/lock.py), through the CLI against the fake MediaWiki and through the flows:

- without a Prefect server, a second `cook scrape wikipedia` on one --out fails at once (one line, exit 4) while the
  first completes, and the output is that of one clean run;
- merge, tokenize, unparquet and train refuse a folder that a live process holds, and a dead holder's lock is taken
  over (its stale info file notwithstanding);
- on a Prefect server, two runs on one --out started together queue on the folder's global concurrency limit: the
  second says it waits and for whom, the fake API sees their requests in two disjoint time intervals, both complete.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest
from conftest import new_tag, tagged_flow_runs
from fake_mediawiki import FakeMediaWiki, FakeWiki
from scraped import docs_in

from model.errors import OutputBusy
from tasks.core.lock import clean_stale_beside, info_path, limit_name, lock_path, read_holder
from tasks.corpus.documents import write_documents

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[1]
QUERY_ARGS = ["--depth", "1", "--max-pages", "3000", "--concurrency", "2", "--rate-limit", "100"]


class GatedWiki(FakeMediaWiki):
    """The fake MediaWiki, logging (arrival time, User-Agent) of every request, and, until `gate` is set, holding
    each parse answer back for `hold_s` seconds (less than the client's timeout): a run stays mid-crawl for a
    long while as the test starts another, and finishes quickly once the gate opens."""

    def __init__(self, *a, hold_s: float = 8.0, **kw):
        super().__init__(*a, **kw)
        self.log: list[tuple[float, str]] = []
        self.gate = threading.Event()
        self.hold_s = hold_s

    def _handle(self, h) -> bool:
        with self._lock:
            self.log.append((time.monotonic(), h.headers.get("User-Agent", "")))
        if "action=parse" in h.path:
            self.gate.wait(self.hold_s)
        return super()._handle(h)

    def interval(self, agent: str) -> tuple[float, float] | None:
        times = [t for t, ua in self.log if ua == agent]
        return (min(times), max(times)) if times else None


class Cook:
    """`cook ARGS` in its own process group, its output in `LOG.out` / `LOG.err`; with `tag`, its flow runs carry it."""

    def __init__(self, args: list, env: dict, log: Path, tag: str = "cook-test"):
        code = "import sys\nfrom prefect import tags\nfrom flows.cli import main\nwith tags(sys.argv[1]):\n    main(sys.argv[2:])"
        self.out, self.err = log.with_suffix(".out"), log.with_suffix(".err")
        with open(self.out, "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen([sys.executable, "-c", code, tag, *map(str, args)], env=env, cwd=REPO,
                                         stdout=o, stderr=e, start_new_session=True)
        self.pid = self.proc.pid

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def poll(self) -> int | None:
        return self.proc.poll()

    def stderr(self) -> str:
        return self.err.read_text()

    def output(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def _pid(doc: dict) -> int:
    return int(doc["id"].rsplit(":", 1)[1])


def _agent(name: str) -> str:
    return f"cook-test-{name}/0.1 (https://example.org/cook-test; test@example.org)"


def test_second_run_is_refused_at_once_and_the_first_completes(cook_env, tmp_path):
    wiki = FakeWiki(n_pages=30, seed=11)
    expected = wiki.expected_crawl(["Alpha"], 1, search_limit=10_000)
    out = tmp_path / "wiki"
    env = {k: v for k, v in cook_env.items() if k != "PREFECT_API_URL"}  # no server: each CLI its temporary API
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    args = ["scrape", "wikipedia", "--query", "Alpha", "--out", out, *QUERY_ARGS]
    with GatedWiki(wiki) as api:
        env["COOK_WIKIPEDIA_API_URL"] = api.url
        first = Cook(args, {**env, "COOK_USER_AGENT": _agent("first")}, tmp_path / "first")
        second = None
        try:
            info = info_path(lock_path(out))
            deadline = time.monotonic() + 120
            while not info.exists() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert info.exists(), "the first run never took the lock: " + first.stderr()[-3000:]
            second = Cook(args, {**env, "COOK_USER_AGENT": _agent("second")}, tmp_path / "second")
            code2 = second.wait(timeout=120)
            still_running = first.poll() is None
            api.gate.set()
            code1 = first.wait(timeout=180)
        finally:
            api.gate.set()
            for p in (first, second):
                if p is not None:
                    p.stop()
    err1, err2 = first.stderr(), second.stderr()
    assert code2 == 4, err2[-3000:]
    assert still_running, "the first run ended before the second was refused"
    errors = [line for line in err2.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err2, err2[-3000:]
    assert re.fullmatch(rf"error: another cook run is writing {re.escape(str(out))} \(pid {first.pid} on \S+ since [^()]+\)",
                        errors[0]), errors
    assert api.interval(_agent("second")) is None, "the refused run sent requests"
    assert code1 == 0, err1[-3000:]
    ids = [_pid(d) for d in docs_in(out)]
    assert len(ids) == len(set(ids)) and set(ids) == expected, "not the output of one clean run"
    assert set(api.parse_counts.values()) == {1}, "a page was fetched twice"
    assert not info.exists(), "the info file outlived the run"


# --- merge, tokenize, unparquet, train: refused while held, taken over once the holder is dead -------------


WORDS = ("river mountain theory energy field protein island empire treaty climate ocean probability network language "
         "city music physics chemistry history culture harbour forest desert valley bridge library garden").split()


def _documents(path: Path, n: int = 40) -> Path:
    """`n` distinct documents of plain English-like prose."""
    rng = random.Random(5)
    docs = [{"id": f"t:{i}", "source": "t", "url": f"https://example.org/{i}", "title": f"Doc {i}",
             "text": " ".join("The " + " ".join(rng.choice(WORDS) for _ in range(12)) + " of the " + rng.choice(WORDS) + "."
                              for _ in range(8)),
             "fetched_at": datetime(2026, 1, 1, tzinfo=timezone.utc)} for i in range(n)]
    return write_documents(path, docs)


def _holder(locks: list[tuple[Path, bool]], api_url: str | None = None) -> subprocess.Popen:
    """A process that takes these folders' file locks (folder, replaced), with `api_url` their server slots first,
    and sleeps; it prints `held` once it has them."""
    code = ("import sys, time, contextlib\nfrom tasks.core.lock import file_lock, output_lock\n"
            f"locks = {[(str(p), r) for p, r in locks]!r}\n"
            "with contextlib.ExitStack() as s:\n"
            f"    for p, r in locks:\n        s.enter_context({'output_lock' if api_url else 'file_lock'}(p, r))\n"
            "    print('held', flush=True)\n    time.sleep(300)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | ({"PREFECT_API_URL": api_url} if api_url else {})
    p = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_stages_refuse_a_live_holder_and_take_over_from_a_dead_one(prefect_api, tmp_path):
    from flows.merge import merge_flow
    from flows.tokenize import tokenize_flow
    from flows.train import train_flow
    from flows.unparquet import unparquet_flow

    docs = _documents(tmp_path / "docs" / "part-0.parquet")
    merged, tokens, run, unpq = tmp_path / "merged", tmp_path / "tokens", tmp_path / "run", tmp_path / "unpq"
    tokenize_flow(inputs=[str(docs)], encoding="char", out=str(tokens), val_fraction=0.1)
    stale = tmp_path / f".{merged.name}.abc123xy.tmp"  # a crashed merge's temp folder
    stale.mkdir()
    neighbour = tmp_path / ".other.abc123xy.tmp"  # another folder's: not this run's to clean
    neighbour.mkdir()

    holder = _holder([(merged, True), (tokens, True), (run, False), (unpq, False)])
    try:
        attempts = {
            "merge": lambda: merge_flow(inputs=[str(docs)], out=str(merged)),
            "tokenize": lambda: tokenize_flow(inputs=[str(docs)], encoding="char", out=str(tokens), val_fraction=0.1),
            "unparquet": lambda: unparquet_flow(sources=[str(docs)], out=str(unpq), column="text"),
            "train": lambda: train_flow(data=str(tokens), run=str(run), preset="tiny", chunks=1, iters_per_chunk=2, device="cpu"),
        }
        for stage, attempt in attempts.items():
            with pytest.raises(OutputBusy) as e:
                attempt()
            msg = str(e.value)
            assert msg.startswith("another cook run is writing ") and f"(pid {holder.pid} on " in msg, (stage, msg)
            assert "\n" not in msg
        assert stale.exists(), "a refused run cleaned up"
        assert not (run / "run.json").exists() and not merged.exists() and not list(unpq.glob("*.parquet"))
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()

    assert read_holder(lock_path(merged, True))["pid"] == holder.pid  # the dead holder's info is still there
    stats = merge_flow(inputs=[str(docs)], out=str(merged))
    assert stats["documents_in"] == 40 and (merged / "stats.json").is_file()
    assert not stale.exists() and neighbour.exists()
    assert read_holder(lock_path(merged, True)) is None, "the info file outlived the run"

    # a run on the server killed without a goodbye: the next run gives its slot back rather than wait for its lease
    # to run out (the tests' temporary server runs no repossessor: it would wait forever)
    holder = _holder([(merged, True)], api_url=prefect_api)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    assert read_holder(lock_path(merged, True))["lease_id"]
    assert merge_flow(inputs=[str(docs)], out=str(merged))["documents_in"] == 40


def test_clean_stale_beside_touches_only_this_folders_temps(tmp_path):
    mine = [tmp_path / ".data.k2j4h5g6.tmp", tmp_path / ".data.old-4242"]
    theirs = [tmp_path / ".data.v2.k2j4h5g6.tmp", tmp_path / ".datax.k2j4h5g6.tmp", tmp_path / ".data.lock",
              tmp_path / ".data.lock.info", tmp_path / "data"]
    for p in mine + theirs:
        p.mkdir()
    assert clean_stale_beside(tmp_path / "data") == 2
    assert not any(p.exists() for p in mine) and all(p.exists() for p in theirs)
    assert limit_name(tmp_path / "Data Set") == limit_name(tmp_path / "x" / ".." / "Data Set")
    assert limit_name(tmp_path / "Data Set").startswith("cook-out-data-set-") and limit_name(tmp_path / "a") != limit_name(tmp_path / "b")


# --- on a Prefect server: the second run waits its turn ------------------------------------------------------


def test_on_a_server_two_runs_on_one_folder_take_turns(cook_env, prefect_api, tmp_path):
    """Two `cook scrape wikipedia` runs on one --out, started together against the session's Prefect server (a real
    server process with its own SQLite database): one waits on the folder's global concurrency limit, saying so and
    for whom, and starts when the other ends; the fake API sees their requests in two disjoint intervals."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    wiki = FakeWiki(n_pages=30, seed=12)
    expected = wiki.expected_crawl(["Alpha", "Beta"], 1, search_limit=10_000)
    out = tmp_path / "wiki"
    tag = new_tag()
    procs: dict[str, Cook] = {}
    with GatedWiki(wiki) as api:
        env = {**cook_env, "COOK_WIKIPEDIA_API_URL": api.url}
        try:
            for name, query in (("default", "Alpha"), ("nightly", "Beta")):
                procs[name] = Cook(["scrape", "wikipedia", "--query", query, "--out", out, *QUERY_ARGS],
                                   {**env, "COOK_USER_AGENT": _agent(name)}, tmp_path / name, tag)
            # the crawl is held back (parse answers take `hold_s` each) until one run says it waits for the other
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and all(p.poll() is None for p in procs.values()):
                if any("waiting for " in p.output() for p in procs.values()):
                    break
                time.sleep(0.2)
            api.gate.set()
            codes = {name: p.wait(timeout=240) for name, p in procs.items()}
        finally:
            api.gate.set()
            for p in procs.values():
                p.stop()

    for name, p in procs.items():
        assert codes[name] == 0, (name, p.stderr()[-3000:])
    with get_client(sync_client=True) as client:
        runs = tagged_flow_runs(client, tag)
        limit = client.read_global_concurrency_limit_by_name(limit_name(out))
    assert sorted(r.state.type for r in runs) == [StateType.COMPLETED] * 2
    assert limit.limit == 1 and limit.active_slots == 0
    spans = sorted((api.interval(_agent(name)), name) for name in procs)
    assert all(span for span, _ in spans), spans
    (first, first_name), (second, second_name) = spans
    assert first[1] < second[0], f"the runs' requests overlap: {spans}"
    waited = procs[second_name].output()
    assert f"waiting for {out}: another cook run is writing it (flow run " in waited, waited[-3000:]
    assert f", pid {procs[first_name].pid} on " in waited, waited[-3000:]
    ids = [_pid(d) for d in docs_in(out)]
    assert len(ids) == len(set(ids)) and set(ids) == expected
    assert set(Counter(api.parse_counts).values()) == {1}, "a page was fetched twice"
