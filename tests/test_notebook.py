"""notebooks/colab.ipynb run headless (nbclient, the venv's ipykernel) as two Colab sittings on CPU.

COOK_NOTEBOOK_TEST=1 stubs the install and Drive-mount cells (cook is importable; "Drive" is a local folder) and
shrinks the run to the tiny preset for a few iterations. Each sitting is a fresh kernel running the whole notebook,
as after a disconnect: the first trains chunk 1, the second finds the corpus and tokens on "Drive", skips them and
trains chunk 2 from chunk 1's checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "colab.ipynb"
ITERS = 20  # the notebook's ITERS_PER_CHUNK when COOK_NOTEBOOK_TEST=1
PROMPT = "The with statement"  # its PROMPT


@pytest.fixture
def kernel_env(cook_env, tmp_path, monkeypatch) -> dict:
    """A kernelspec that runs this venv's python, Jupyter's files in tmp, and the kernel's environment."""
    spec = tmp_path / "jupyter" / "kernels" / "cook-venv"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "cook (venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter" / "runtime"))  # connection files
    env = dict(cook_env)
    env.update(COOK_NOTEBOOK_TEST="1", COOK_NOTEBOOK_DRIVE=str(tmp_path / "drive"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),  # `cook` is the venv's
               IPYTHONDIR=str(tmp_path / "ipython"), JUPYTER_PATH=str(tmp_path / "jupyter"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter" / "runtime"))
    env.pop("COOK_DATA_DIR", None)  # the notebook sets it, on "Drive"
    (tmp_path / "content").mkdir()
    return env


def sitting(env: dict, cwd: Path, extra: list[str] = ()) -> nbformat.NotebookNode:
    """Run the whole notebook in a fresh kernel (one Colab sitting), plus `extra` cells; return it executed."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells += [nbformat.v4.new_code_cell(src, metadata={"tags": ["extra"]}) for src in extra]
    NotebookClient(nb, kernel_name="cook-venv", timeout=300, resources={"metadata": {"path": str(cwd)}}).execute(env=env)
    return nb


def tagged(nb, tag: str) -> dict:
    [cell] = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    return cell


def text_of(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def test_two_sittings_train_two_chunks(kernel_env, tmp_path):
    run = tmp_path / "drive" / "cook" / "runs" / "colab"

    first = sitting(kernel_env, tmp_path / "content")
    assert "0 chunk(s) done; training chunk 1" in text_of(tagged(first, "train"))
    assert json.loads((run / "checkpoints" / "chunk_000001" / "state.json").read_text())["iteration"] == ITERS

    # a disconnect, then Run all again in a new runtime: corpus and tokens are kept, the run gets one more chunk
    second = sitting(kernel_env, tmp_path / "content", extra=[
        # a failing command fails its cell (unlike `!cmd`), after printing what it printed
        "try:\n"
        "    run(f\"{sys.executable} -c 'print(\\\"half done\\\"); raise SystemExit(3)'\")\n"
        "except CommandFailed as e:\n"
        "    print('raised:', e)\n"])
    out = "".join(text_of(c) for c in second.cells if c.cell_type == "code")
    assert "already tokenized" in out and "corpus already built" in out
    train = text_of(tagged(second, "train"))
    assert "1 chunk(s) done; training chunk 2" in train and train.rstrip().endswith("2 chunk(s) done")
    assert json.loads((run / "checkpoints" / "chunk_000002" / "state.json").read_text())["iteration"] == 2 * ITERS
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {r["chunk"] for r in records} == {1, 2}
    assert max(r["iter"] for r in records if r["chunk"] == 1) == ITERS
    assert max(r["iter"] for r in records) == 2 * ITERS

    assert (run / "loss.png").stat().st_size > 0
    plot = tagged(second, "plot")
    assert any("image/png" in o.get("data", {}) for o in plot.outputs), "the loss plot is shown"
    command, printed = text_of(tagged(second, "sample")).split("\n", 1)  # "$ cook sample ...", then its text
    assert command.startswith("$ cook sample") and printed.startswith(PROMPT)
    assert len(printed.strip()) > len(PROMPT) + 10, printed  # the prompt and what the model wrote after it

    failed = text_of(tagged(second, "extra"))
    assert "half done" in failed and "raised: exit code 3" in failed

