"""Helpers for the scraper tests: read what a scraper wrote, and score extracted text."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq


def token_f1(got: str, want: str) -> float:
    """Token-level F1 of extracted text against the known body text (bag of whitespace tokens)."""
    a, b = Counter(got.split()), Counter(want.split())
    overlap = sum((a & b).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(a.values()), overlap / sum(b.values())
    return 2 * p * r / (p + r)


def docs_in(out: Path) -> list[dict]:
    """Every document of the parquet parts in `out`, in part order; a part is never empty."""
    rows = []
    for part in sorted(out.glob("*.parquet")):
        t = pq.read_table(part)
        assert t.num_rows > 0, f"empty output file {part.name}"
        rows += t.to_pylist()
    return rows
