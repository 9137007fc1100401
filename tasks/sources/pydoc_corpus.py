"""The demo's offline corpus: the help topics that ship with Python itself (pydoc_data.topics)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from prefect import task

from tasks.core.caching import PERSISTED, OutputsCache
from tasks.corpus.documents import now_utc, write_documents

LICENSE = "PSF-2.0"


_RULE = re.compile(r"^[\s|+=*~^#-]*$")  # table borders and section underlines
_SPACES = re.compile(r"[ \t]{2,}")


def tidy(text: str) -> str:
    """Prose from a help topic: indentation, table rules and space runs removed (they would crowd the demo's samples)."""
    lines = (_SPACES.sub(" ", line.strip().strip("|").strip()) for line in text.splitlines())
    kept = [line for line in lines if not (line and _RULE.match(line))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def build_pydoc_corpus(out: Path) -> Path:
    """Write each pydoc topic as one document to `out` (a parquet shard); return its path."""
    from pydoc_data.topics import topics

    fetched = now_utc()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    docs = (
        {
            "id": f"pydoc-{version}-{name}",
            "source": "pydoc",
            "url": f"https://docs.python.org/{version}/reference/",
            "title": name,
            "text": tidy(text),
            "fetched_at": fetched,
        }
        for name, text in sorted(topics.items())
        if tidy(text)
    )
    return write_documents(out, docs)


@task(name="build-pydoc-corpus", cache_policy=OutputsCache(outputs=lambda i: [i["out"]], version="1"), **PERSISTED)
def build_pydoc_corpus_task(out: Path) -> Path:
    return build_pydoc_corpus(out)
