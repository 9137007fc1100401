"""What the flows show in the Prefect UI: run tags per flow, descriptive run names, artifacts that never fail a run.

    TAGS["merge"]                      # ("stage:process",): for `with prefect.tags(*TAGS[name])`, prefect.yaml
    @flow(name="merge", flow_run_name=run_name("merge", lambda p: f"merge ... -> {short(p['out'])}"))
    publish_table("merge-sources", rows, "documents per source")
"""

from __future__ import annotations

import inspect
import logging
from pathlib import PurePath
from typing import Any, Callable, Iterable

# Flow name -> the tags its runs carry: the source gathered (`source:*`) and the stage (`stage:*`). The CLI wraps
# each flow call in `prefect.tags(*TAGS[name])`; runs a flow starts inside (demo -> tokenize) add their own.
TAGS: dict[str, tuple[str, ...]] = {
    "scrape-wikipedia": ("source:wikipedia", "stage:gather"),
    "scrape-britannica": ("source:britannica", "stage:gather"),
    "scrape-youtube": ("source:youtube", "stage:gather"),
    "wiki-dump": ("source:wiki-dump", "stage:gather"),
    "unparquet": ("source:parquet", "stage:gather"),
    "merge": ("stage:process",),
    "tokenize": ("stage:tokenize",),
    "train": ("stage:train",),
    "export": ("stage:export",),
    "pipeline": ("pipeline",),
    "demo": ("demo", "source:pydoc"),
}

MAX_NAME = 80  # run names stay one short line in the UI

log = logging.getLogger("cook.report")


def tags_for(flow_name: str) -> tuple[str, ...]:
    """The tags of `flow_name`'s runs (none for a flow not listed)."""
    return TAGS.get(flow_name, ())


def short(path: Any) -> str:
    """The last part of a path or URL (`hf://datasets/x/y.parquet` -> `y.parquet`); `?` for None."""
    if path is None:
        return "?"
    s = str(path).rstrip("/")
    return PurePath(s).name or s


def count(n: int, noun: str, plural: str | None = None) -> str:
    """`1 input`, `3 inputs`, `2 queries` (with `plural`)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def items_label(items: list | None, items_file: str | None, noun: str, plural: str | None = None) -> str:
    """`3 queries`, `queries from topics.txt` or `built-in queries`: what a scraper was given, for run names."""
    many = plural or noun + "s"
    if items:
        return count(len(items), noun, many)
    return f"{many} from {short(items_file)}" if items_file else f"built-in {many}"


def run_name(flow_name: str, describe: Callable[[dict], str]) -> Callable[[], str]:
    """A `flow_run_name` callable: `describe(parameters)` (the call's, defaults filled in), cut to MAX_NAME.

    Prefect calls it inside the run without arguments; any failure falls back to the flow's name, so a
    name never fails a run.
    """

    def name() -> str:
        try:
            from prefect.context import FlowRunContext
            from prefect.runtime import flow_run

            params = dict(flow_run.parameters or {})
            ctx = FlowRunContext.get()
            if ctx is not None:
                sig = inspect.signature(ctx.flow.fn)
                defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
                params = defaults | params
            text = " ".join(str(describe(params)).split())
        except Exception:  # a nicety: never fail the run over its name
            return flow_name
        return text if len(text) <= MAX_NAME else text[: MAX_NAME - 1] + "…"

    name.__name__ = f"{flow_name.replace('-', '_')}_run_name"
    return name


def publish_markdown(key: str, markdown: str | Iterable[str], description: str) -> None:
    """A markdown artifact under `key`; a failure to publish is logged, never raised."""
    text = markdown if isinstance(markdown, str) else "\n".join(markdown)
    _publish("markdown", key, lambda: _create_markdown(key, text, description))


def publish_table(key: str, rows: list[dict], description: str) -> None:
    """A table artifact under `key` (one dict per row, the same keys in each); never raises."""
    _publish("table", key, lambda: _create_table(key, rows, description))


def _create_markdown(key: str, text: str, description: str) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=text, description=description)


def _create_table(key: str, rows: list[dict], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(key=key, table=rows, description=description)


def _publish(kind: str, key: str, create: Callable[[], None]) -> None:
    try:
        create()
    except Exception as e:  # artifacts are a nicety: never fail the run over them
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        try:
            from prefect import get_run_logger

            get_run_logger().warning("could not publish the %s artifact %r: %s", kind, key, line)
        except Exception:
            log.warning("could not publish the %s artifact %r: %s", kind, key, line)
