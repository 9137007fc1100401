"""Where cook's files live: a local path, or a URL that fsspec opens (s3://, gs://, az://, memory://, file://).

Every stage takes its inputs and outputs as a location: a plain path keeps the code paths it always had
(atomic rename, memmap), a URL is streamed through fsspec. What needs a real file (memmapped token shards,
SQLite ledgers, a run being trained) works on a local copy under the cache folder (`COOK_CACHE_DIR`, default
`~/.cache/cook`), keyed so that a fresh machine rebuilds it from the bucket alone.

Atomic on object stores: an object is written by one PUT, or by a multipart upload that is completed only when
the writer closes without an error and aborted otherwise, so a reader never sees part of one. A folder of objects
(a checkpoint) counts only once its marker object, written last, exists (`put_dir`, `is_complete`).

Credentials come from the standard environment (`AWS_*`, `AWS_ENDPOINT_URL` for S3-compatible stores,
`GOOGLE_APPLICATION_CREDENTIALS`, …) or fsspec's `FSSPEC_<PROTOCOL>_<OPTION>` variables; a location is shown
with `redact`, never with credentials written into it. This module never imports prefect.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from model.atomic import atomic_dir, atomic_write
from model.errors import CookError

# the object written last into a folder uploaded by put_dir: the folder is whole once it exists
MARKER = ".complete"
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
_LOCAL_PROTOCOLS = {"file", "local"}
# stores whose fsspec writer uploads in parts and can abort the upload (discard): the object appears on close only
_ABORTABLE = {"s3", "s3a", "gs", "gcs"}
# query parameters that carry credentials in signed or SAS URLs
_SECRET_PARAMS = re.compile(r"(sig|signature|token|key|secret|password|credential|x-amz-.*|x-goog-.*)$", re.I)


def protocol(loc: str | os.PathLike) -> str:
    """The URL's protocol (`s3`, `memory`, …), or `file` for a plain path."""
    m = _URL.match(os.fspath(loc))
    return m.group(1).lower() if m else "file"


def is_remote(loc: str | os.PathLike | None) -> bool:
    """True for a URL that fsspec opens with a protocol other than the local file system."""
    return loc is not None and protocol(loc) not in _LOCAL_PROTOCOLS


def local_path(loc: str | os.PathLike) -> Path:
    """A plain path or `file://` URL as a Path; CookError for a remote URL (a caller that needs a real file)."""
    s = os.fspath(loc)
    if is_remote(s):
        raise CookError(f"{redact(s)}: needs a local path here, not a URL")
    if _URL.match(s):
        s = urlsplit(s).path
    return Path(s)


def redact(loc: str | os.PathLike) -> str:
    """The location as it may be shown: no user or password in the URL, no signature or token in its query."""
    s = os.fspath(loc)
    if not _URL.match(s):
        return s
    parts = urlsplit(s)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urlencode([(k, "REDACTED" if _SECRET_PARAMS.match(k) else v) for k, v in parse_qsl(parts.query, keep_blank_values=True)])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def join(loc: str | os.PathLike, *parts: str) -> str:
    """`loc/part/...` for a path or a URL (always `/` in a URL)."""
    s = os.fspath(loc)
    if is_remote(s):
        return posixpath.join(s.rstrip("/"), *parts) if parts else s
    return str(Path(local_path(s), *parts))


def name(loc: str | os.PathLike) -> str:
    """The last part of a path or URL."""
    return posixpath.basename(os.fspath(loc).rstrip("/")) if is_remote(loc) else local_path(loc).name


def parent(loc: str | os.PathLike) -> str:
    s = os.fspath(loc).rstrip("/")
    if is_remote(s):
        head = s[: s.index("://") + 3]
        rest = posixpath.dirname(s[len(head):])
        return head + rest
    return str(local_path(s).parent)


def filesystem(loc: str | os.PathLike):
    """(fsspec filesystem, path within it) for a URL. Credentials and endpoints come from the environment."""
    import fsspec

    s = os.fspath(loc)
    try:
        return fsspec.core.url_to_fs(s)
    except (ImportError, ValueError) as e:
        proto = protocol(s)
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}.get(proto)
        hint = f" (pip install 'cook[{extra}]')" if extra and isinstance(e, ImportError) else ""
        raise CookError(f"{redact(s)}: cannot open {proto}:// locations{hint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _fs(loc: str | os.PathLike):
    s = os.fspath(loc)
    if is_remote(s):
        return filesystem(s)
    import fsspec

    return fsspec.filesystem("file"), str(local_path(s).absolute())


def exists(loc: str | os.PathLike) -> bool:
    if not is_remote(loc):
        return local_path(loc).exists()
    fs, p = filesystem(loc)
    return fs.exists(p)


def isdir(loc: str | os.PathLike) -> bool:
    """True for a folder; on an object store, for a prefix that has objects under it."""
    if not is_remote(loc):
        return local_path(loc).is_dir()
    fs, p = filesystem(loc)
    return fs.isdir(p)


def isfile(loc: str | os.PathLike) -> bool:
    if not is_remote(loc):
        return local_path(loc).is_file()
    fs, p = filesystem(loc)
    return fs.isfile(p)


def listdir(loc: str | os.PathLike) -> list[str]:
    """Names (not paths) directly under a folder, sorted; [] when it does not exist."""
    if not is_remote(loc):
        p = local_path(loc)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
    fs, p = filesystem(loc)
    fs.invalidate_cache(p)
    try:
        return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False) if e.rstrip("/") != p.rstrip("/"))
    except FileNotFoundError:
        return []


def glob(pattern: str) -> list[str]:
    """Locations matching a glob pattern, as full URLs for remote ones; sorted."""
    if not is_remote(pattern):
        import glob as _glob

        return sorted(_glob.glob(str(local_path(pattern))))
    fs, p = filesystem(pattern)
    return sorted(fs.unstrip_protocol(m) for m in fs.glob(p))


def size(loc: str | os.PathLike) -> int:
    if not is_remote(loc):
        return local_path(loc).stat().st_size
    fs, p = filesystem(loc)
    return int(fs.size(p))


def remove(loc: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or a folder with `recursive`); nothing if it is not there."""
    if not is_remote(loc):
        p = local_path(loc)
        if p.is_dir() and not p.is_symlink():
            if recursive:
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.rmdir()
        else:
            p.unlink(missing_ok=True)
        return
    fs, p = filesystem(loc)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(p, recursive=recursive)
    fs.invalidate_cache(p)


@contextlib.contextmanager
def open_read(loc: str | os.PathLike, mode: str = "rb") -> Iterator[IO]:
    """Open a file for streaming reads (text modes decode UTF-8)."""
    if not is_remote(loc):
        with open(local_path(loc), mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
        return
    fs, p = filesystem(loc)
    with fs.open(p, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        yield f


@contextlib.contextmanager
def atomic_open(loc: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write a file that appears whole under its name or not at all.

    Local: a temp file beside it, renamed over it (model.atomic). Remote: fsspec's buffered writer, which uploads
    in parts and completes the object on close; on an error the upload is discarded (aborted), so no object or
    the old one stays."""
    if not is_remote(loc):
        with atomic_write(local_path(loc), mode) as f:
            yield f
        return
    import uuid

    fs, p = filesystem(loc)
    tmp = None
    if protocol(loc) in _ABORTABLE:
        binary = fs.open(p, "wb")
    else:  # a writer that cannot abort (memory://, other stores): a temp object, moved over the name once whole
        tmp = posixpath.join(posixpath.dirname(p), f".{posixpath.basename(p)}.{uuid.uuid4().hex[:8]}.tmp")
        binary = fs.open(tmp, "wb")
    f = binary if "b" in mode else _TextWriter(binary)
    try:
        yield f
    except BaseException:
        _discard(binary)
        if tmp is not None:
            with contextlib.suppress(Exception):
                fs.rm(tmp)
        raise
    binary.close()
    if tmp is not None:
        fs.mv(tmp, p)
    fs.invalidate_cache(posixpath.dirname(p))


class _TextWriter:
    """UTF-8 text writes onto a binary fsspec file (io.TextIOWrapper would close the file, and with it commit)."""

    def __init__(self, raw: IO) -> None:
        self.raw = raw

    def write(self, s: str) -> int:
        self.raw.write(s.encode("utf-8"))
        return len(s)



def _discard(f: IO) -> None:
    """Drop what a writer holds without completing it (an S3 multipart upload is aborted)."""
    discard = getattr(f, "discard", None)
    if discard is not None:
        with contextlib.suppress(Exception):
            discard()
        # fsspec's writer would flush the discarded buffer again when it is garbage collected
        with contextlib.suppress(Exception):
            f.closed = True
    else:
        with contextlib.suppress(Exception):
            f.close()


def read_bytes(loc: str | os.PathLike) -> bytes:
    with open_read(loc) as f:
        return f.read()


def read_text(loc: str | os.PathLike) -> str:
    return read_bytes(loc).decode("utf-8")


def write_bytes(loc: str | os.PathLike, data: bytes) -> None:
    with atomic_open(loc) as f:
        f.write(data)


def write_text(loc: str | os.PathLike, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def put_file(local: str | os.PathLike, loc: str | os.PathLike) -> None:
    """Copy a local file to `loc`, atomically (see atomic_open)."""
    with open(local, "rb") as src, atomic_open(loc) as dst:
        shutil.copyfileobj(src, dst, 8 << 20)


def get_file(loc: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Copy `loc` to a local file, atomically; returns the local path."""
    local = Path(local)
    with open_read(loc) as src, atomic_write(local, "wb") as dst:
        shutil.copyfileobj(src, dst, 8 << 20)
    return local


def put_dir(local: str | os.PathLike, loc: str | os.PathLike) -> None:
    """Upload a local folder's files to `loc/`, then the marker object last: readers take the folder only once
    `is_complete(loc)`. Files already there are replaced; nothing else under `loc` is touched."""
    local = Path(local)
    remove(join(loc, MARKER))
    for path in sorted(p for p in local.rglob("*") if p.is_file() and p.name != MARKER):
        put_file(path, join(loc, *path.relative_to(local).parts))
    write_bytes(join(loc, MARKER), b"")


def is_complete(loc: str | os.PathLike) -> bool:
    """A folder uploaded by put_dir whose marker is there (a local folder counts when it exists: renamed whole)."""
    if not is_remote(loc):
        return local_path(loc).is_dir()
    return exists(join(loc, MARKER))


def remove_dir(loc: str | os.PathLike) -> None:
    """Delete a folder uploaded by put_dir: its marker first, so that no reader takes a half-deleted folder for whole."""
    if is_remote(loc):
        remove(join(loc, MARKER))
    remove(loc, recursive=True)


def get_dir(loc: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Download a folder (every file under `loc`, the marker left out) to `local`, which appears whole."""
    fs, p = _fs(loc)
    p = p.rstrip("/")
    with atomic_dir(local) as tmp:
        for f in sorted(fs.find(p)):
            rel = f[len(p):].lstrip("/")
            if rel == MARKER or not rel:
                continue
            dest = tmp.joinpath(*rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            with fs.open(f, "rb") as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 << 20)
    return Path(local)


def cache_dir() -> Path:
    """Where local copies of remote files live: COOK_CACHE_DIR, else ~/.cache/cook."""
    env = os.environ.get("COOK_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "cook"


def cache_key(loc: str | os.PathLike, *extra: str) -> str:
    """A folder name for a location's local copy: readable tail plus a hash of the (redacted) URL and `extra`."""
    s = redact(loc).rstrip("/")
    h = hashlib.sha256("\0".join((s, *extra)).encode()).hexdigest()[:16]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "_", posixpath.basename(s))[:40] or "root"
    return f"{tail}-{h}"


def temp_dir(kind: str) -> str:
    """A fresh local scratch folder under the cache (removed by the caller)."""
    base = cache_dir() / "tmp"
    base.mkdir(parents=True, exist_ok=True)
    return tempfile.mkdtemp(prefix=f"{kind}-", dir=base)


# --- added for the corpus stages (unparquet, merge, tokenize) ------------------------------------------------


def info(loc: str | os.PathLike) -> dict:
    """fsspec's details of a file (size, type, and what the store adds: ETag, LastModified, created, …);
    FileNotFoundError when it is not there."""
    fs, p = _fs(loc)
    fs.invalidate_cache(p)
    return fs.info(p)


def find(loc: str | os.PathLike) -> list[str]:
    """Every file under a folder, recursively, as locations written like `loc` (`loc/a/b.parquet`), sorted."""
    fs, p = _fs(loc)
    p = p.rstrip("/")
    fs.invalidate_cache(p)
    base = os.fspath(loc).rstrip("/")
    out = []
    for f in fs.find(p):
        rel = f[len(p):].lstrip("/")
        if rel:
            out.append(join(base, *rel.split("/")))
    return sorted(out)


def copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy one file within a store (server-side where the store can, as S3 does: no data through this machine)."""
    fs, s = _fs(src)
    _, d = _fs(dst)
    fs.copy(s, d)


@contextlib.contextmanager
def staged_dir(loc: str | os.PathLike, last: str | None = None) -> Iterator[str | Path]:
    """A folder that appears at `loc` whole, replacing what was there, or not at all.

    Local: model.atomic.atomic_dir (a temp folder beside it, renamed into place); yields its Path. Remote: yields
    a hidden temp prefix beside `loc` (`.NAME.XXXXXXXX.tmp/`: folder readers skip hidden names) to write into;
    once the block ends without an error, `loc`'s completeness marker `last` is deleted first, then everything
    else under `loc`, the new objects are copied in (server-side) with `last` after all the others, and the temp
    prefix goes. A crash while writing leaves only the temp prefix (`clean_stale_beside` removes it); a crash
    while copying leaves `loc` without `last`, which readers take as absent. On an error the temp prefix goes."""
    if not is_remote(loc):
        with atomic_dir(local_path(loc)) as tmp:
            yield tmp
        return
    import uuid

    base = os.fspath(loc).rstrip("/")
    tmp = join(parent(base), f".{name(base)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        made = [f[len(tmp):].lstrip("/") for f in find(tmp)]
        if last is not None:
            remove(join(base, last))
        remove(base, recursive=True)
        rest = sorted(r for r in made if r != last)
        if rest:  # one batch: the store runs the copies concurrently (s3fs), server-side
            fs, _ = filesystem(base)
            fs.copy([filesystem(join(tmp, *r.split("/")))[1] for r in rest],
                    [filesystem(join(base, *r.split("/")))[1] for r in rest])
        if last is not None and last in made:
            copy(join(tmp, last), join(base, last))
    finally:
        remove(tmp, recursive=True)
    fs, p = filesystem(base)
    fs.invalidate_cache(p)


def clean_stale(folder: str | os.PathLike, match) -> int:
    """Remove the entries of `folder` whose names `match(name)` accepts (temp objects or prefixes a crashed writer
    left); a local folder goes through model.atomic.clean_stale_temps. Returns how many."""
    if not is_remote(folder):
        from model.atomic import clean_stale_temps

        return clean_stale_temps(local_path(folder), match)
    n = 0
    for entry in listdir(folder):
        if match(entry):
            remove(join(folder, entry), recursive=True)
            n += 1
    return n
