"""The foundation: atomic writes, the document format, settings, and the output-aware cache."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect import flow, task

from model.atomic import atomic_dir, atomic_write, clean_stale_temps
from model.errors import CookError
from tasks.core.caching import OutputsCache, file_fingerprint
from tasks.corpus.documents import REQUIRED, DocumentWriter, expand_inputs, iter_texts, read_documents, write_documents
from tasks.core.settings import Settings


def test_atomic_write_leaves_nothing_on_crash(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("crash")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as f:
        f.write(b"whole")
    assert target.read_bytes() == b"whole"


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as d:
            (d / "a").write_text("2")
            raise KeyboardInterrupt
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    (tmp_path / ".x.tmp").write_text("stale")
    assert clean_stale_temps(tmp_path) == 1


_MODES_SCRIPT = """
import os, sys
import numpy as np
from pathlib import Path
from model.atomic import atomic_dir, atomic_write_text
from model.shards import ShardWriter
os.umask(int(sys.argv[2], 8))
root = Path(sys.argv[1])
atomic_write_text(root / "file.txt", "x")
with atomic_dir(root / "folder") as d:
    atomic_write_text(d / "inner.json", "{}")
    (d / "sub").mkdir()
    with ShardWriter(d / "sub", "train", np.uint16, 3) as w:
        w.add(np.arange(5))
"""


@pytest.mark.parametrize("umask,file_mode,dir_mode", [("022", 0o644, 0o755), ("027", 0o640, 0o750)])
def test_atomic_writes_get_ordinary_modes(tmp_path, umask, file_mode, dir_mode):
    """Temp files are made 0600 (mkstemp) / 0700 (mkdtemp); what lands is 0666 / 0777 less the umask."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _MODES_SCRIPT, str(tmp_path), umask], cwd=Path(__file__).resolve().parents[1],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes == {"file.txt": file_mode, "folder": dir_mode, "folder/inner.json": file_mode, "folder/sub": dir_mode,
                     "folder/sub/train_000000.bin": file_mode, "folder/sub/train_000001.bin": file_mode}


def _docs(n, prefix="doc"):
    return [{"id": f"{prefix}-{i}", "source": "test", "url": f"https://example.org/{i}", "title": f"T{i}",
             "text": f"text {i} ünïcödé 🙂 " * (i + 1), "fetched_at": None} for i in range(n)]


def test_documents_stream_by_row_group(tmp_path):
    path = tmp_path / "docs.parquet"
    with DocumentWriter(path, row_group_size=10) as w:
        for d in _docs(35):
            w.write(d)
    pf = pq.ParquetFile(path)
    assert pf.num_row_groups == 4
    assert tuple(pf.schema_arrow.names[: len(REQUIRED)]) == REQUIRED
    assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
    rows = list(read_documents(path))
    assert [r["id"] for r in rows] == [f"doc-{i}" for i in range(35)]
    assert all(r["fetched_at"] is not None for r in rows)
    assert list(iter_texts(path)) == [d["text"] for d in _docs(35)]


def test_document_writer_crash_leaves_no_file(tmp_path):
    path = tmp_path / "docs.parquet"
    with pytest.raises(ValueError):
        with DocumentWriter(path) as w:
            w.write(_docs(1)[0])
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_expand_inputs_files_folders_globs(tmp_path):
    write_documents(tmp_path / "a" / "x.parquet", _docs(1))
    write_documents(tmp_path / "a" / "b" / "y.parquet", _docs(1))
    (tmp_path / "z.txt").write_text("plain text")
    got = expand_inputs([tmp_path / "a", str(tmp_path / "*.txt"), tmp_path / "z.txt"])
    assert [p.name for p in got] == ["y.parquet", "x.parquet", "z.txt"]  # sorted by full path
    with pytest.raises(CookError, match="input not found"):
        expand_inputs([tmp_path / "nope*.parquet"])


def test_read_documents_bad_files(tmp_path):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(CookError, match="not a readable parquet"):
        list(read_documents(bad))
    import pyarrow as pa
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(CookError, match=r"no 'text' column \(columns: body\)"):
        list(read_documents(tmp_path / "nocol.parquet"))


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("COOK_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COOK_WIKIPEDIA_API_URL", "http://127.0.0.1:9/w/api.php")
    monkeypatch.setenv("COOK_YOUTUBE_API_KEY", "s3cret")
    s = Settings()
    assert s.data_dir == tmp_path and s.wikipedia_api_url.startswith("http://127.0.0.1")
    assert "s3cret" not in repr(s) and s.youtube_api_key.get_secret_value() == "s3cret"
    assert Settings.model_fields["wikipedia_api_url"].default == "https://en.wikipedia.org/w/api.php"


CALLS: list[str] = []


@task(cache_policy=OutputsCache(outputs=lambda i: [Path(i["out"]) / "result.txt"], version="1"), persist_result=True)
def copy_upper(src: Path, out: Path) -> str:
    CALLS.append(str(out))
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.txt").write_text(src.read_text().upper())
    return str(out / "result.txt")


@flow
def copy_flow(src: Path, out: Path) -> str:
    return copy_upper(src, out)


def test_cache_hits_only_while_outputs_exist(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    out = tmp_path / "out"
    CALLS.clear()
    copy_flow(src, out)
    copy_flow(src, out)
    assert len(CALLS) == 1, "same inputs and outputs present: cached"
    (out / "result.txt").unlink()
    copy_flow(src, out)
    assert len(CALLS) == 2 and (out / "result.txt").exists(), "deleted outputs: runs again"
    copy_flow(src, tmp_path / "elsewhere")
    assert len(CALLS) == 3, "the output location is part of the key"
    src.write_text("changed")
    os.utime(src, ns=(1, 1))
    copy_flow(src, out)
    assert len(CALLS) == 4 and (out / "result.txt").read_text() == "CHANGED", "a changed input runs again"


def test_file_fingerprint_sees_content(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"a" * 100)
    fp = file_fingerprint(p)
    st = p.stat()
    p.write_bytes(b"b" * 100)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_fingerprint(p) != fp


@flow
def counting_flow(n: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tasks.core.progress import progress

    with progress("counting", total=n) as bar, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda _: bar.advance(1), range(n)))  # worker threads report too


def test_progress_artifact_reaches_the_api():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterType, FlowRunFilter, FlowRunFilterId

    state = counting_flow(5, return_state=True)
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])),
        )
    assert len(arts) == 1 and arts[0].data == 100.0 and arts[0].description == "counting"


def test_model_never_imports_prefect():
    """model/ is pure PyTorch: importing every module of it pulls in no Prefect."""
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, model\n"
            "for m in pkgutil.iter_modules(model.__path__): importlib.import_module('model.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('prefect', 'tasks', 'flows')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout
    assert out.strip() == "[]"


def test_text_format_round_trip(tmp_path):
    """The text format: separator after every document, the marker escaped inside texts; iter_texts reads
    such a file as its documents, and any other .txt as one document."""
    from tasks.corpus.documents import TEXT_SEPARATOR, escape_text

    texts = ["plain", "has <|endoftext|> inside", "and <||endoftext|> too\n", "ünï 🙂"]
    p = tmp_path / "docs.txt"
    p.write_text("".join(escape_text(t) + TEXT_SEPARATOR for t in texts), encoding="utf-8")
    assert list(iter_texts(p)) == texts
    (tmp_path / "plain.txt").write_text("just one document <|endoftext|> with a marker")
    assert list(iter_texts(tmp_path / "plain.txt")) == ["just one document <|endoftext|> with a marker"]
