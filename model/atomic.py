"""Atomic writes: a file or folder appears whole under its final name, or not at all.

Temp files and folders come from `tempfile` (created 0600 / 0700); before the rename they get the modes
an ordinary `open()` / `mkdir()` would give (0666 / 0777 less the umask), so other users and serving
containers can read what cook writes where the umask allows it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import IO, Iterator


_umask_lock = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status), else set and restored."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:  # os.umask can only be read by setting it: briefly, under a lock
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def make_readable(fd_or_path: int | str | os.PathLike, is_dir: bool = False) -> None:
    """Give a mkstemp file (or mkdtemp folder) the mode open()/mkdir() would: 0666 (0777) less the umask."""
    mode = (0o777 if is_dir else 0o666) & ~current_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root`, then `root` itself (children first)."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            p = os.path.join(folder, name)
            if os.path.islink(p):
                continue
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    try:
        make_readable(fd)
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path` (old content removed).

    Before the rename every file and folder inside is fsynced, and the folder itself, so a crash after it
    cannot leave `path` holding empty or partial files.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        make_readable(tmp, is_dir=True)
        yield tmp
        _fsync_tree(tmp)
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def clean_stale_temps(folder: str | os.PathLike, match=None) -> int:
    """Remove temp files/folders left by a crashed writer in `folder`: the names `match(name)` accepts, by default
    any `.*.tmp` or `.*.old-*`. Returns how many."""
    folder = Path(folder)
    n = 0
    if not folder.is_dir():
        return 0
    for child in folder.iterdir():
        name = child.name
        if not (match(name) if match is not None else name.startswith(".") and (name.endswith(".tmp") or ".old-" in name)):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                child.unlink()
        n += 1
    return n
