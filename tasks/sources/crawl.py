"""What every query-driven scraper shares: its queries, its argument checks, and the per-query manifest
that decides a query task's cache: a hit only while the manifest says the run left nothing transient, has the
same spec, was finished less than `--refresh-after` hours ago, and every part it lists exists."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Callable, TypeVar
from urllib.parse import urlparse

from model.atomic import atomic_write_text
from model.errors import CookError
from tasks.core.caching import OutputsCache, stable_hash


def read_list_file(path: str | Path, kind: str, what: str, inline_comments: bool = False) -> list[str]:
    """One item a line (errors name the `kind` of file and `what` it lists); blank lines and `#` comment lines
    skipped, and with `inline_comments` anything after a `#` too (queries keep theirs: `C#` is a fine query)."""
    p = Path(path)
    if not p.is_file():
        raise CookError(f"{kind} file not found: {p}")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise CookError(f"{kind} file is not UTF-8 text: {p}") from None
    items = [(s.split("#", 1)[0] if inline_comments else s).strip() for s in lines]
    items = [s for s in items if s and not s.startswith("#")]
    if not items:
        raise CookError(f"{kind} file has no {what}: {p}")
    return items


def read_queries_file(path: str | Path) -> list[str]:
    """One query a line; blank lines and `#` comment lines skipped."""
    return read_list_file(path, "queries", "queries")


def gather_queries(queries: list[str] | None, queries_file: str | None, defaults: list[str]) -> list[str]:
    """The given queries, then the file's, de-duplicated; `defaults` when neither is given."""
    qs = [q.strip() for q in (queries or [])]
    if any(not q for q in qs):
        raise CookError("--query must not be empty")
    if queries_file:
        qs += read_queries_file(queries_file)
    return list(dict.fromkeys(qs)) or list(defaults)


def check_crawl_args(concurrency: int, rate_limit: float, out: str | None, endpoint: tuple[str, str],
                     refresh_after_hours: float | None = None) -> None:
    """Politeness limits in range, `out` not a file, the refresh age not negative, and the endpoint setting
    (name, value) an http(s) URL."""
    if refresh_after_hours is not None and not refresh_after_hours >= 0:
        raise CookError(f"--refresh-after must be 0 hours or more (got {refresh_after_hours})")
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
    """Where a query task's record lives: its manifest (its validity is `query_valid`'s business)."""
    return [manifest_path(inputs["out"], inputs["query"])]


def write_manifest(out: str | Path, query: str, spec: dict, summary: dict, complete: bool) -> Path:
    """Record a query's finished run: its spec (budget, depth...), when it finished, the parts holding its
    documents, and whether it left nothing transient to retry (only then is it a cache hit)."""
    m = manifest_path(out, query)
    body = {"query": query, "spec": spec, "complete": complete, "finished_at": time.time(),
            **{k: summary[k] for k in ("done", "parts") if k in summary}}
    atomic_write_text(m, json.dumps(body, indent=1))
    return m


def query_valid(spec_keys: tuple[str, ...]) -> Callable[[dict], bool]:
    """A query task's cached result holds while its manifest says: the same spec, complete (no transient
    failures left), every part it lists still there (on the data store, for a mirrored folder), and finished less
    than `refresh_after_hours` ago (an input; None: never too old)."""

    def valid(inputs: dict) -> bool:
        m = manifest_path(inputs["out"], inputs["query"])
        try:
            body = json.loads(m.read_text())
            parts, spec, finished = body["parts"], body["spec"], float(body["finished_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if body.get("complete") is not True or spec != {k: inputs.get(k) for k in spec_keys}:
            return False
        if not all(map(part_exists(inputs["out"], inputs.get("remote")), parts)):
            return False
        hours = inputs.get("refresh_after_hours")
        return hours is None or time.time() - finished < float(hours) * 3600

    return valid


def part_exists(out: str | Path, remote: str | None = None) -> Callable[[str], bool]:
    """`exists(part name)`: the part is in `out`; with `remote` (the folder's copy on the data store, listed once),
    in that copy, wherever else it is: what `cook merge` reads there is what counts (a run that does not hit the
    cache uploads the local parts the store lacks)."""
    names: set[str] | None = None

    def exists(part: str) -> bool:
        nonlocal names
        if remote is None:
            return (Path(out) / part).exists()
        if names is None:
            from model import storage

            names = set(storage.listdir(remote))
        return part in names

    return exists


def query_cache(spec_keys: tuple[str, ...], version: str) -> OutputsCache:
    """The cache policy of a query task: keyed on its inputs (politeness limits and the refresh age left out),
    a hit only while `query_valid` holds."""
    return OutputsCache(outputs=query_outputs, valid=query_valid(spec_keys), version=version,
                        exclude=("concurrency", "rate_limit", "refresh_after_hours"))


def refresh_cutoff(refresh_after_hours: float | None) -> float | None:
    """The time before which a done item counts as due for a re-check (None: never)."""
    return None if refresh_after_hours is None else time.time() - float(refresh_after_hours) * 3600



def outer_blocks(root, blocks: str, containers: tuple[str, ...]):
    """The nodes under `root` matching the CSS `blocks` that no `containers` tag between them and `root` holds:
    a block inside a block (a list inside a paragraph) has its text in the outer one already."""
    for node in root.css(blocks):
        anc = node.parent
        while anc is not None and anc.mem_id != root.mem_id:
            if anc.tag in containers:
                break
            anc = anc.parent
        else:
            yield node


_C = TypeVar("_C", bound="CrawlerBase")


class CrawlerBase:
    """What the Wikipedia and Britannica crawlers share as context managers: on close, the buffered documents are
    written (`_flush`) and, with a `mirror` (tasks/core/mirror.py), the ledger is copied to the data store; then the
    worker pool, the HTTP client (`client`) and the ledger (`ledger`) are closed."""

    mirror = None  # a Mirror when the output folder has a copy on the data store

    def _start_mirror(self, out: Path, remote: str | None) -> None:
        """Before the ledger opens: with a `remote`, restore the ledger from the store (a fresh machine) and upload
        the parts it lacks."""
        if remote:
            from tasks.core.mirror import Mirror

            self.mirror = Mirror(out, remote)
            self.mirror.start()

    def _part_exists(self, part: str) -> bool:
        return self.mirror.has(part) if self.mirror else (self.out / part).exists()

    def _write_batch(self, source: str, prefix: str, batch: list, schema=None) -> None:
        """`Ledger.write_batch` into `out`, then (mirrored) the part and the ledger to the data store."""
        part = self.ledger.write_batch(source, self.out, prefix, batch, schema)
        if self.mirror:
            self.mirror.push(part, self.ledger)

    def _flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        try:
            self._flush()
            if self.mirror:
                self.mirror.push_ledger(self.ledger)
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.client.close()
            self.ledger.close()

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
