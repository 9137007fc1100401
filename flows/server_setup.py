"""`cook server-setup`: create the per-host politeness limits on the Prefect server, so they hold across
parallel runs (tasks/core/limits.py). Idempotent: a re-run leaves limits that already match unchanged.

    cook server-setup [--concurrency N] [--rate R]

A plain function, not a flow: it only talks to the API, and needs a server (PREFECT_API_URL), since the
ephemeral API of a plain run lives only as long as its process.
"""

from __future__ import annotations

from model.errors import CookError
from tasks.core.limits import default_limits, ensure_limits


def check_server_setup_args(concurrency: int | None = None, rate: float | None = None) -> None:
    if concurrency is not None and not 1 <= concurrency <= 32:
        raise CookError(f"--concurrency must be between 1 and 32 (got {concurrency})")
    if rate is not None and not rate > 0:
        raise CookError(f"--rate must be above 0 requests/s (got {rate})")


def server_setup(concurrency: int | None = None, rate: float | None = None) -> list[dict]:
    """Create or update every scraper host's global limits; returns ensure_limits' rows.
    `concurrency`/`rate` replace the scrapers' defaults for every host (`rate` where a host has one)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    check_server_setup_args(concurrency, rate)
    url = PREFECT_API_URL.value()
    if not url:
        raise CookError("no Prefect server configured: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api); "
                        "a plain run without a server keeps its limits in process")
    try:
        with get_client(sync_client=True) as client:
            return ensure_limits(client, default_limits(concurrency, rate))
    except httpx.HTTPError as e:
        raise CookError(f"cannot set up the limits on the Prefect API at {url}: {type(e).__name__}: {e}") from e


def print_limits(rows: list[dict]) -> None:
    """The limits as a table: limit name (it holds the host), value, and what this run did to it."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title="per-host limits, shared by every run on this Prefect server")
    table.add_column("limit", no_wrap=True)
    table.add_column("value", no_wrap=True)
    table.add_column("action", no_wrap=True)
    for r in rows:
        value = f"{r['limit']} in flight" if r["kind"] == "concurrency" else f"{r['decay']:g} requests/s"
        table.add_row(r["name"], value, r["action"])
    console = Console()
    if not console.is_terminal:  # piped or logged: whole names rather than 80 columns
        console = Console(width=160)
    console.print(table, markup=False, highlight=False)
