"""A run's loss curve: RUN/loss.png from RUN/metrics.jsonl, and the same image in the Prefect UI.

Prefect's image artifacts take a URL, not bytes, so the PNG travels as a `data:image/png;base64,...` URI
(kept small: 800x400 px); the chunk's markdown report embeds the same URI. Plotting is a by-product:
`publish_loss_curve` never raises, it logs a warning, so a plotting problem never fails training.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable

from model import storage
from model.atomic import atomic_write_bytes
from model.errors import CookError
from model.shards import load_meta

LOSS_PNG = "loss.png"
IMAGE_KEY = "train-loss"  # artifact keys: lowercase letters, digits, dashes
WIDTH_IN, HEIGHT_IN, DPI = 8, 4, 100


def read_metrics(run: str | os.PathLike) -> list[dict]:
    """The records of RUN/metrics.jsonl (lines cut by a crash are skipped); [] if there is none. RUN may be a URL."""
    try:
        text = storage.read_text(storage.join(run, "metrics.jsonl"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("iter"), int):
            out.append(rec)
    return out


def render_loss_curve(records: list[dict], title: str = "", iters_per_chunk: int | None = None,
                      bpb_per_nat: float | None = None, baseline: float | None = None) -> bytes:
    """PNG bytes: train loss (every logged iteration) and eval losses vs iteration, chunk boundaries dotted.

    `bpb_per_nat` (val tokens / val bytes / ln 2) adds a right-hand axis in bits per byte; `baseline` (nats per
    token) draws the smoothed bigram's val loss as a horizontal line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global state, safe off the main thread

    train = sorted((r["iter"], r["loss"]) for r in records if r.get("kind") == "train" and r.get("loss") is not None)
    evals = sorted((r["iter"], r.get("train_loss"), r.get("val_loss")) for r in records if r.get("kind") == "eval")
    fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if train:
        ax.plot([i for i, _ in train], [v for _, v in train], color="tab:blue", linewidth=1, alpha=0.6, label="train loss")
    ev_train = [(i, t) for i, t, _ in evals if t is not None]
    ev_val = [(i, v) for i, _, v in evals if v is not None]
    if ev_train:
        ax.plot([i for i, _ in ev_train], [t for _, t in ev_train], "o--", color="tab:blue", markersize=4, label="train loss (eval)")
    if ev_val:
        ax.plot([i for i, _ in ev_val], [v for _, v in ev_val], "o-", color="tab:orange", markersize=4, label="val loss")
    last_iter = max([i for i, _ in train] + [i for i, *_ in evals] + [0])
    chunks = sorted({int(r["chunk"]) for r in records if isinstance(r.get("chunk"), int)})
    if iters_per_chunk:
        bounds = [c * iters_per_chunk for c in range(1, max(chunks or [1])) if c * iters_per_chunk < last_iter]
    else:  # without run.json: where the chunk number changes
        ordered = sorted(records, key=lambda r: r["iter"])
        bounds = [b["iter"] - 1 for a, b in zip(ordered, ordered[1:]) if a.get("chunk") != b.get("chunk")]
    for k, x in enumerate(bounds):
        ax.axvline(x, color="grey", linestyle=":", linewidth=1, label="chunk boundary" if k == 0 else None)
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", linestyle="--", linewidth=1, label="bigram baseline (val)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    if bpb_per_nat:
        right = ax.secondary_yaxis("right", functions=(lambda x: x * bpb_per_nat, lambda y: y / bpb_per_nat))
        right.set_ylabel("val bits/byte")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if train or evals:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def save_loss_curve(run: str | os.PathLike) -> bytes | None:
    """Render RUN's loss curve and write it atomically to RUN/loss.png (RUN may be a URL); return the PNG (None: no
    metrics yet)."""
    records = read_metrics(run)
    if not records:
        return None
    try:
        info = json.loads(storage.read_text(storage.join(run, "run.json")))
        iters_per_chunk = int(info["iters_per_chunk"])
    except (OSError, ValueError, KeyError, TypeError):
        info, iters_per_chunk = {}, None
    bpb_per_nat, baseline = _bpb_scale(info)
    png = render_loss_curve(records, title=f"{storage.name(run)}: loss", iters_per_chunk=iters_per_chunk,
                            bpb_per_nat=bpb_per_nat, baseline=baseline)
    if storage.is_remote(run):
        storage.write_bytes(storage.join(run, LOSS_PNG), png)
    else:
        atomic_write_bytes(Path(run) / LOSS_PNG, png)
    return png


def _bpb_scale(info: dict) -> tuple[float | None, float | None]:
    """(val bits/byte per nat/token, bigram val loss) from the run's data folder's meta.json; None where unknown."""
    try:
        meta = load_meta(info["data"]["dir"])  # a path or a URL
        val = meta["splits"]["val"]
        scale = val["tokens"] / val["bytes"] / math.log(2) if val.get("bytes") else None
    except (CookError, OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None, None
    return scale, ((meta.get("baseline") or {}).get("bigram") or {}).get("val_loss")


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def publish_loss_curve(run: str | os.PathLike, description: str = "", warn: Callable[[str], None] | None = None) -> str | None:
    """Save RUN/loss.png and publish it as the image artifact `train-loss`; return its data URI.

    Never raises: on any problem it calls `warn` (default: a logging warning) and returns None."""
    warn = warn or logging.getLogger(__name__).warning
    try:
        png = save_loss_curve(run)
        if png is None:
            return None
        uri = png_data_uri(png)
    except Exception as e:  # noqa: BLE001 - a plot must never fail training
        warn(f"loss curve for {run} not drawn: {type(e).__name__}: {e}")
        return None
    try:
        from prefect.artifacts import create_image_artifact
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() or TaskRunContext.get():
            create_image_artifact(image_url=uri, key=IMAGE_KEY, description=description or f"loss curve of {run}")
    except Exception as e:  # noqa: BLE001
        warn(f"loss curve for {run} not published: {type(e).__name__}: {e}")
    return uri
