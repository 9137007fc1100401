"""Politeness across parallel runs: `cook server-setup` creates the per-host global limits (idempotent), and
PoliteClients in parallel flow runs stay within them together, against the session's real Prefect API and a
loopback server that counts requests in flight; without them, one warning and each run's own limits."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from loopback import Loopback

from tasks.core.limits import SCRAPER_DEFAULTS, Limits, default_limits, ensure_limits, forget, host_of, limit_names

pytestmark = pytest.mark.timeout(120)


def crawl(url: str, requests: int, concurrency: int, rate: float, start: threading.Barrier | None = None) -> int:
    """One run's crawl: a PoliteClient with its own limits, driven by more threads than it allows; returns the
    number of answers. `start`: wait for the other runs there, so that the runs overlap."""
    from tasks.core.http import PoliteClient

    client = PoliteClient(concurrency=concurrency, rate_limit=rate, retries=0)
    try:
        if start is not None:
            start.wait(timeout=60)
        with ThreadPoolExecutor(max_workers=2 * concurrency) as pool:
            return sum(r.status_code == 200 for r in pool.map(lambda i: client.get(f"{url}/p{i}"), range(requests)))
    finally:
        client.close()


def parallel_runs(url: str, runs: int = 2, **kw) -> list[int]:
    """`runs` flow runs at once, each crawling `url` (as two deployments' runs would on one server)."""
    from prefect import flow

    start = threading.Barrier(runs)

    @flow(name="limits-test-crawl")
    def crawl_flow(url: str, requests: int, concurrency: int, rate: float) -> int:
        return crawl(url, requests, concurrency, rate, start)

    with ThreadPoolExecutor(max_workers=runs) as pool:
        return list(pool.map(lambda _: crawl_flow(url, **kw), range(runs)))


@pytest.fixture
def api_env(prefect_api, monkeypatch):
    """PREFECT_API_URL in the environment, as on a server, so runs started in other threads use it too."""
    monkeypatch.setenv("PREFECT_API_URL", str(prefect_api))
    return str(prefect_api)


def read_limit(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None


def drop_limits(host: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in limit_names(host):
            try:
                client.delete_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                pass
    forget(host)


# --- names and defaults ----------------------------------------------------------------------------


def test_defaults_are_the_scrapers_own():
    from tasks.sources import britannica, wikipedia, youtube
    from tasks.core.http import PoliteClient

    def defaults(fn, *names):
        params = inspect.signature(fn).parameters
        return tuple(params[n].default for n in names)

    assert SCRAPER_DEFAULTS["wikipedia"][1] == Limits(*defaults(wikipedia.Crawler, "concurrency", "rate_limit"))
    assert SCRAPER_DEFAULTS["britannica"][1] == Limits(*defaults(britannica.Crawler, "concurrency", "rate_limit"))
    api = youtube.DataAPI("not-a-key")
    try:
        assert SCRAPER_DEFAULTS["youtube-api"][1] == Limits(api.concurrency, 1 / api.limiter.interval)
    finally:
        api.close()
    assert api.concurrency == defaults(PoliteClient, "concurrency")[0]
    assert SCRAPER_DEFAULTS["youtube"][1] == Limits(*defaults(youtube.fetch_batch, "concurrency"), youtube.YouTubeOptions.model_fields["rate_limit"].default)
    assert set(default_limits()) == {"en.wikipedia.org", "www.britannica.com", "www.googleapis.com", "www.youtube.com"}


def test_limit_names_are_valid_prefect_names():
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    assert host_of("https://EN.wikipedia.org/w/api.php") == "en.wikipedia.org"
    assert host_of("http://user:pw@127.0.0.1:8080/x") == "127.0.0.1:8080"
    assert limit_names("127.0.0.1:8080") == ("cook-host-127.0.0.1-8080-concurrency", "cook-host-127.0.0.1-8080-rate")
    for url in ("https://en.wikipedia.org/w/api.php", "http://127.0.0.1:8080", "http://[::1]:8080/x"):
        for name in limit_names(host_of(url)):
            GlobalConcurrencyLimitCreate(name=name, limit=1)  # raises on a banned character


# --- cook server-setup -----------------------------------------------------------------------------


def test_server_setup_is_idempotent(cook, cook_env):
    env = {**cook_env, "COOK_WIKIPEDIA_API_URL": "http://wiki.cook-test.invalid:8001/w/api.php",
           "COOK_BRITANNICA_URL": "http://wiki.cook-test.invalid:8001",  # one host for two scrapers: the stricter limits
           "COOK_YOUTUBE_API_URL": "http://api.cook-test.invalid/youtube/v3",
           "COOK_YOUTUBE_URL": "http://tube.cook-test.invalid"}
    wanted = {"wiki.cook-test.invalid:8001": (4, 5.0), "api.cook-test.invalid": (4, 20.0), "tube.cook-test.invalid": (4, 2.0)}
    names = [n for host, (_, rate) in wanted.items() for n in limit_names(host)[: 1 if rate is None else 2]]

    first = cook(["server-setup"], env=env)
    assert first.returncode == 0, first.stderr
    for name in names:
        assert f"{name} " in first.stdout and "created" in first.stdout.split(name, 1)[1].splitlines()[0], first.stdout
    for host, (conc, rate) in wanted.items():
        c, r = (read_limit(n) for n in limit_names(host))
        assert (c.limit, c.slot_decay_per_second, c.active) == (conc, 0.0, True)
        if rate is None:
            assert r is None
        else:
            assert (r.limit, r.slot_decay_per_second, r.active) == (1, rate, True)

    before = {n: read_limit(n).updated for n in names}
    again = cook(["server-setup"], env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("unchanged") == len(names) and "created" not in again.stdout and "updated" not in again.stdout
    assert {n: read_limit(n).updated for n in names} == before  # nothing written

    bad = cook(["server-setup", "--rate", "0"], env=env)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --rate must be above 0 requests/s (got 0.0)"
    no_server = cook(["server-setup"], env={k: v for k, v in env.items() if k != "PREFECT_API_URL"})
    assert no_server.returncode == 1 and "no Prefect server configured" in no_server.stderr
    assert "Traceback" not in no_server.stderr

    # a changed limit is put back; then nothing to do
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        host = "api.cook-test.invalid"
        rows = ensure_limits(client, {host: Limits(2, 3.0)})
        assert [(r["name"], r["action"]) for r in rows] == [(n, "updated") for n in limit_names(host)]
        assert [r["action"] for r in ensure_limits(client, {host: Limits(2, 3.0)})] == ["unchanged", "unchanged"]
    assert (read_limit(limit_names(host)[0]).limit, read_limit(limit_names(host)[1]).slot_decay_per_second) == (2, 3.0)
    for host in wanted:
        drop_limits(host)


# --- the limits at work ----------------------------------------------------------------------------


def test_global_concurrency_holds_across_parallel_runs(api_env):
    """Two runs, each allowing 2 in flight, share a host limit of 2: never more than 2 in flight in all."""
    from prefect.client.orchestration import get_client

    with Loopback(gather=4, hold_s=0.5) as site:
        with get_client(sync_client=True) as client:
            ensure_limits(client, {site.host: Limits(2, 200.0)})
        try:
            done = parallel_runs(site.url, requests=4, concurrency=2, rate=200.0)
        finally:
            drop_limits(site.host)
    assert done == [4, 4]
    assert site.max_in_flight == 2  # each run's own limit alone would let 4 overlap (the next test)


def test_missing_limits_warn_once_and_keep_own_limits(api_env, caplog):
    with Loopback(gather=4, hold_s=2.0) as site, caplog.at_level(logging.WARNING):
        forget(site.host)
        done = parallel_runs(site.url, requests=4, concurrency=2, rate=200.0)
    assert done == [4, 4]
    assert site.max_in_flight == 4  # 2 per run: their own limits, and no shared one
    warnings = [r.getMessage() for r in caplog.records if site.host in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "no global limit" in warnings[0] and "cook server-setup" in warnings[0]


def test_global_rate_holds_across_clients_in_worker_threads():
    """Two clients, each allowed 200 starts/s, share a host rate of 5/s: their 8 starts span at least 7/5 s.
    Outside any flow run, the requests sent from pool threads."""
    from prefect.client.orchestration import get_client

    from tasks.core.http import PoliteClient

    with Loopback(hold_s=0.0) as site:
        with get_client(sync_client=True) as client:
            ensure_limits(client, {site.host: Limits(4, 5.0)})
        clients = [PoliteClient(concurrency=2, rate_limit=200.0, retries=0) for _ in range(2)]
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                codes = list(pool.map(lambda i: clients[i % 2].get(f"{site.url}/p{i}").status_code, range(8)))
        finally:
            for c in clients:
                c.close()
            drop_limits(site.host)
    assert codes == [200] * 8
    starts = sorted(site.starts)
    assert starts[-1] - starts[0] >= 7 / 5 - 0.25, [round(b - a, 3) for a, b in zip(starts, starts[1:])]


def test_no_prefect_server_means_own_limits_only(cook_env):
    """Without PREFECT_API_URL (the ephemeral API) the client never asks Prefect and warns about nothing."""
    env = {k: v for k, v in cook_env.items() if k != "PREFECT_API_URL"}
    env["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "false"  # were the client to ask the API, it would fail and warn
    env["PYTHONPATH"] = os.path.dirname(__file__)  # tests/, for the helpers test_limits imports
    with Loopback(gather=2, hold_s=2.0) as site:
        code = f"from tests.test_limits import crawl; print(crawl({site.url!r}, 4, 2, 200.0))"
        p = subprocess.run([sys.executable, "-c", code], env=env, cwd=os.path.dirname(os.path.dirname(__file__)),
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "4" and "global" not in p.stderr and "Prefect" not in p.stderr, p.stderr
    assert site.max_in_flight == 2


def test_a_limit_that_stays_full_is_waited_for_then_left(api_env, monkeypatch):
    """A global concurrency limit whose only slot a stuck run holds: a request waits COOK_LIMIT_WAIT_S (423 after
    423), then goes on within its own limits, says so once, and leaves the host's global limits alone for a while."""
    from prefect.client.orchestration import get_client

    from tasks.core.http import PoliteClient
    from tasks.core.limits import log as limits_log
    from tasks.core.settings import get_settings

    seen: list[str] = []
    collect = logging.Handler(logging.WARNING)
    collect.emit = lambda record: seen.append(record.getMessage())
    monkeypatch.setenv("COOK_LIMIT_WAIT_S", "1.5")
    get_settings.cache_clear()
    limits_log.addHandler(collect)
    with Loopback(hold_s=0.0) as site:
        conc_name = limit_names(site.host)[0]
        with get_client(sync_client=True) as client:
            ensure_limits(client, {site.host: Limits(1, 200.0)})
            stuck = client.increment_concurrency_slots_with_lease(names=[conc_name], slots=1, mode="concurrency",
                                                                  lease_duration=300).json()["lease_id"]
        crawler = PoliteClient(concurrency=1, rate_limit=200.0, retries=0)
        try:
            codes = [crawler.get(f"{site.url}/p{i}").status_code for i in range(3)]
        finally:
            crawler.close()
            limits_log.removeHandler(collect)
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(stuck)
            drop_limits(site.host)
            monkeypatch.undo()
            get_settings.cache_clear()
    assert codes == [200] * 3
    assert len(site.starts) == 3
    full = [m for m in seen if site.host in m]
    assert len(full) == 1 and "full for 1.5 s (COOK_LIMIT_WAIT_S)" in full[0] and "own limits" in full[0], seen
