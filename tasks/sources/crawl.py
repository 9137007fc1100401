"""What every query-driven scraper shares: its queries, its argument checks, and the per-query manifest
that keys a query task's cache (a hit only while the manifest and every part it lists exist)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlparse

from model.errors import CookError
from tasks.core.caching import stable_hash


def read_queries_file(path: str | Path) -> list[str]:
    """One query a line; blank lines and `#` comments skipped."""
    p = Path(path)
    if not p.is_file():
        raise CookError(f"queries file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CookError(f"queries file is not UTF-8 text: {p}") from None
    queries = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
    if not queries:
        raise CookError(f"queries file has no queries: {p}")
    return queries


def gather_queries(queries: list[str] | None, queries_file: str | None, defaults: list[str]) -> list[str]:
    """The given queries, then the file's, de-duplicated; `defaults` when neither is given."""
    qs = [q.strip() for q in (queries or [])]
    if any(not q for q in qs):
        raise CookError("--query must not be empty")
    if queries_file:
        qs += read_queries_file(queries_file)
    return list(dict.fromkeys(qs)) or list(defaults)


def check_crawl_args(concurrency: int, rate_limit: float, out: str | None, endpoint: tuple[str, str]) -> None:
    """Politeness limits in range, `out` not a file, and the endpoint setting (name, value) an http(s) URL."""
    if not 1 <= concurrency <= 32:
        raise CookError(f"--concurrency must be between 1 and 32 (got {concurrency})")
    if not rate_limit > 0:
        raise CookError(f"--rate-limit must be above 0 requests/s (got {rate_limit})")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CookError(f"--out {out} is a file, not a folder")
    name, url = endpoint
    u = urlparse(url)
    if u.scheme not in ("http", "https") or not u.netloc:
        raise CookError(f"{name} is not an http(s) URL: {url}")


def manifest_path(out: str | Path, query: str) -> Path:
    """Where a query's finished crawl is recorded: its cache output, with the parts it lists."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", query).strip("-")[:40] or "query"
    return Path(out) / "queries" / f"{slug}-{stable_hash(query)[:10]}.json"


def query_outputs(inputs: dict) -> list[Path]:
    """The manifest, plus any part it lists that is gone: a hit only while the manifest and all its parts exist
    (the key stays the same while they do)."""
    m = manifest_path(inputs["out"], inputs["query"])
    if not m.is_file():
        return [m]
    try:
        parts = [Path(inputs["out"]) / p for p in json.loads(m.read_text())["parts"]]
    except (ValueError, KeyError, TypeError):
        return [m, m.with_suffix(".unreadable")]
    return [m] + [p for p in parts if not p.exists()]
