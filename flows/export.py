"""`cook export`: a checkpoint as a Hugging Face `transformers` folder (model/export.py), optionally pushed to the Hub.

The push goes through huggingface_hub (`create_repo(exist_ok=True)`, then `upload_folder`) to the endpoint
`COOK_HF_ENDPOINT` (else `HF_ENDPOINT`, else huggingface.co) with the token `COOK_HF_TOKEN` (else
huggingface_hub's own: `HF_TOKEN` or a saved `hf auth login`). The token is sent to that endpoint only,
by huggingface_hub, and is never logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.report import publish_markdown, run_name, short
from model.errors import CookError, SourceUnavailable
from model.export import check_export, export_hf
from tasks.core.caching import FLOW_RESULTS
from tasks.core.lock import clean_stale_beside, hold_output, one_writer
from tasks.core.settings import get_settings

_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def hub_endpoint() -> str:
    """COOK_HF_ENDPOINT when set, else HF_ENDPOINT (huggingface_hub's variable), else https://huggingface.co."""
    settings = get_settings()
    if "hf_endpoint" not in settings.model_fields_set and os.environ.get("HF_ENDPOINT"):
        return os.environ["HF_ENDPOINT"].rstrip("/")
    return settings.hf_endpoint.rstrip("/")


def hub_token() -> str | None:
    """COOK_HF_TOKEN when set, else huggingface_hub's token (HF_TOKEN, or a saved login); None when there is none."""
    settings = get_settings()
    if settings.hf_token is not None and settings.hf_token.get_secret_value():
        return settings.hf_token.get_secret_value()
    from huggingface_hub import get_token

    return get_token()


def check_export_args(target: str, fmt: str, out: str, push_to_hub: str | None = None) -> Path:
    """Everything `cook export` can refuse before work starts (one-line CookError): the format, the output
    folder, the checkpoint, a model or tokenizer GPT-2 cannot express, the repo id, a missing token.
    Returns the checkpoint folder to export."""
    _, ckpt, _, _ = check_export(target, out, fmt)
    if push_to_hub is not None:
        if not _REPO_ID.match(push_to_hub) or ".." in push_to_hub or len(push_to_hub) > 96:
            raise CookError(f"--push-to-hub {push_to_hub!r}: not a Hub repo id (NAME or OWNER/NAME)")
        if not hub_token():
            raise CookError("--push-to-hub needs a Hub token with write access: set COOK_HF_TOKEN or HF_TOKEN")
    return ckpt


def push_folder(folder: str | os.PathLike, repo: str, private: bool = False, message: str = "Upload cook export") -> dict:
    """Create `repo` (a model repo; kept if it exists) on the Hub and upload `folder` to it in one commit.
    Returns {"repo", "url", "commit"}. CookError (one line, never the token) when the Hub refuses;
    SourceUnavailable when it cannot be reached."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=hub_token())
    where = f"push to {endpoint} ({repo}) failed"
    bars_were_off = are_progress_bars_disabled()
    disable_progress_bars()  # cook shows its own progress; the Hub's live display would draw over it
    try:
        repo_id = repo
        try:
            repo_id = api.create_repo(repo, repo_type="model", private=private or None).repo_id
        except HfHubHTTPError as e:
            # 409: it exists. 401/402/403: a token that may not create repos may still write to this one (as
            # huggingface_hub's exist_ok does): the upload below says whether it can.
            if _status(e) not in (409, 401, 402, 403) or "/" not in repo:
                raise
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", commit_message=message)
    except HfHubHTTPError as e:
        raise CookError(f"{where}: HTTP {_status(e)}: {_first_line(e)}") from e
    except Exception as e:  # huggingface_hub's HTTP client (httpx, requests) and its own checks
        if _unreachable(e):
            raise SourceUnavailable(f"{where}: cannot reach the Hub ({type(e).__name__})") from e
        raise CookError(f"{where}: {type(e).__name__}: {_first_line(e)}") from e
    finally:
        if not bars_were_off:
            enable_progress_bars()
    return {"repo": repo_id, "url": f"{endpoint}/{repo_id}", "commit": getattr(commit, "oid", None)}


def _status(e: Exception) -> int | str:
    response = getattr(e, "response", None)
    return getattr(response, "status_code", None) or "?"


def _unreachable(e: BaseException) -> bool:
    """A connection-level failure: no answer from the host (whichever HTTP client huggingface_hub uses)."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (ConnectionError, TimeoutError)) or bool(names & {"TransportError", "ConnectionError", "Timeout"})


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _loss(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "?"


def _run_name(p: dict) -> str:
    hub = f" + hub {p['push_to_hub']}" if p.get("push_to_hub") else ""
    return f"export {short(p['target'])} as {p.get('fmt', 'hf')} -> {short(p['out'])}{hub}"


@flow(name="export", flow_run_name=run_name("export", _run_name), **FLOW_RESULTS)
@one_writer
def export_flow(target: str, out: str, fmt: str = "hf", push_to_hub: str | None = None, private: bool = False) -> dict[str, Any]:
    """Export `target` (a run: its best checkpoint, else its latest; or a checkpoint folder) to `out` as a
    transformers folder; with `push_to_hub`, upload it to that Hub model repo. Returns the export's summary
    (plus `hub`: repo, url, commit)."""
    logger = get_run_logger()
    out_path = Path(out).absolute()
    hold_output(out_path, replaced=True)  # one writer: the folder is replaced whole
    clean_stale_beside(out_path)
    summary = export_hf(target, out_path, fmt)
    logger.info("%s: %s (iteration %s, val loss %s), %s, %d parameters", out_path, short(summary["checkpoint"]),
                summary["iteration"], _loss(summary["val_loss"]), summary["encoding"], summary["params"])
    if push_to_hub:
        message = f"cook export of {short(summary['checkpoint'])} (iteration {summary['iteration']})"
        summary["hub"] = push_folder(out_path, push_to_hub, private, message)
        logger.info("pushed to %s (commit %s)", summary["hub"]["url"], summary["hub"]["commit"])
    md = [f"# export -> `{out_path}`", "",
          f"- from checkpoint `{short(summary['checkpoint'])}`, iteration {summary['iteration']}, val loss {_loss(summary['val_loss'])}",
          f"- GPT2LMHeadModel, {summary['params']:,} parameters, tokenizer {summary['encoding']} ({summary['vocab_size']:,} ids)",
          f"- files: {', '.join(summary['files'])}"]
    if "hub" in summary:
        md.append(f"- pushed to {summary['hub']['url']} (commit {summary['hub']['commit']})")
    publish_markdown("export-summary", md, "cook export summary")
    return summary
