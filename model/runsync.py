"""Training on object storage: token folders cached once per machine, runs trained in a local copy synced with their URL.

A token folder at a URL (`s3://bucket/data/tokens`) is copied whole to `CACHE/tokens/<name>-<hash>` the first time a
process on this machine needs it (the shards are memmapped and read with `os.pread`: they must be files), keyed by
the URL and the folder's fingerprint from its meta.json, so a re-tokenized folder is fetched again. Processes on
one machine (torchrun ranks, two "nodes") take a file lock around the copy: one downloads, the others wait and
reuse it.

A run at a URL is trained in its working copy `CACHE/runs/<name>-<hash>`, which mirrors the bucket:

- `pull()` (at the start of `prepare_run` and of every chunk, on every machine) makes the working copy what the
  bucket holds: run.json, metrics.jsonl, checkpoints/best.json and tokenizer/ are fetched; a checkpoint that is
  complete in the bucket (its `.complete` marker written last, see model.storage.put_dir) appears locally as a
  stub (state.json and config.json, which is all the retention and resume logic reads) and the latest one in
  full (weights and optimizer state: where training goes on). Local checkpoints the bucket lacks go: the bucket
  is the truth, so a fresh machine with an empty cache resumes from the bucket alone.
- `push()` (global rank 0 only: after every checkpoint it saves, mid-chunk or at a chunk's end, and after the
  run is prepared) uploads what changed, in an order a crash can stop anywhere: run.json and metrics.jsonl (so a
  checkpoint never lands without its records), new checkpoint folders (marker last), cooled ones (copied inside
  the bucket), best.json, then deletes the checkpoints pruned or moved locally (marker first). A checkpoint is "the same" in both places when its
  state.json bytes are (they hold the save time and RNG states), so a checkpoint retrained under an old name
  after an extension is uploaded again.

A local run folder (a plain path) is its own working copy: pull and push do nothing. This module never imports
prefect.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
from pathlib import Path
from typing import Iterator

from model import storage
from model.atomic import atomic_dir
from model.checkpoint import BEST, CHECKPOINTS, CONFIG_FILE, MODEL_FILE, STATE_FILE, _NAME, latest_checkpoint
from model.errors import CookError

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TOKENIZER_DIR = "tokenizer"
COOLED_DIR = "cooled"
# files of the run itself (beside its checkpoints), fetched and uploaded whole
_SMALL = (RUN_FILE, METRICS_FILE, f"{CHECKPOINTS}/{BEST}")
LOCK_WAIT_S = 3600.0  # a download of a large token folder by another process on this machine


@contextlib.contextmanager
def machine_lock(path: Path, wait_s: float = LOCK_WAIT_S, busy: str | None = None) -> Iterator[None]:
    """Hold `path` (a lock file) against the other processes on this machine (flock: dropped if the holder dies);
    after `wait_s` a CookError: `busy`, or a line naming the lock."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=wait_s)
    try:
        lock.acquire()
    except Timeout:
        raise CookError(busy or f"{path}: another process on this machine held the cache lock for over {wait_s:.0f} s"
                        ) from None
    try:
        yield
    finally:
        lock.release()


# ---------------------------------------------------------------- token folders


def data_fingerprint(meta_bytes: bytes) -> str:
    """A token folder's identity: the fingerprint its meta.json records, else a hash of meta.json itself."""
    import hashlib

    try:
        fp = json.loads(meta_bytes.decode("utf-8")).get("fingerprint")
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        fp = None
    return str(fp) if fp else "meta-" + hashlib.sha256(meta_bytes).hexdigest()


def local_data(data: str | os.PathLike) -> Path:
    """A token folder as a local path: itself, or for a URL this machine's cached copy of it (fetched once)."""
    if not storage.is_remote(data):
        return storage.local_path(data)
    from model.shards import META_NAME

    url = os.fspath(data).rstrip("/")
    try:
        meta = storage.read_bytes(storage.join(url, META_NAME))
    except FileNotFoundError:
        raise CookError(f"{storage.redact(url)}: no meta.json — not a tokenized data folder (run `cook tokenize`)") from None
    key = data_fingerprint(meta)
    target = storage.cache_dir() / "tokens" / storage.cache_key(url, key)
    if (target / META_NAME).is_file():
        return target
    with machine_lock(target.parent / f".{target.name}.lock"):
        if not (target / META_NAME).is_file():  # another process may have fetched it while we waited
            try:
                storage.get_dir(url, target)
                same = data_fingerprint((target / META_NAME).read_bytes()) == key
            except FileNotFoundError:  # an object went away mid-copy: the folder is being written again
                same = False
            if not same:  # re-tokenized while we copied
                shutil.rmtree(target, ignore_errors=True)
                raise CookError(f"{storage.redact(url)} changed while it was being copied; run the command again")
    return target


# ---------------------------------------------------------------- runs


class RunSync:
    """A run's location and its local working copy (`local`); `pull`/`push` keep them in step (see module doc)."""

    def __init__(self, run: str | os.PathLike, view: bool = False):
        """`view`: a separate read-only copy (sampling, export) that never touches the working copy a training run
        on this machine may be writing."""
        self.run = os.fspath(run)
        self.remote = storage.is_remote(self.run)
        if self.remote:
            self.url = self.run.rstrip("/")
            self.local = storage.cache_dir() / ("views" if view else "runs") / storage.cache_key(self.url)
        else:
            self.url = None
            self.local = storage.local_path(self.run)

    @property
    def shown(self) -> str:
        """The run as shown to people: its URL without credentials, or its path."""
        return storage.redact(self.url) if self.remote else str(self.local)

    def show(self, path: str | os.PathLike) -> str:
        """A path in the working copy as its location in the run (the URL for a remote run)."""
        p = Path(path)
        if not self.remote:
            return str(p)
        try:
            rel = p.relative_to(self.local)
        except ValueError:
            return str(p)
        return storage.redact(storage.join(self.url, *rel.parts))

    def _at(self, rel: str) -> str:
        return storage.join(self.url, *rel.split("/"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with machine_lock(self.local.parent / f".{self.local.name}.lock"):
            yield

    # -- what the bucket holds

    def _listing(self) -> set[str]:
        """Every object key under the run, relative to it."""
        fs, p = storage.filesystem(self.url)
        p = p.rstrip("/")
        fs.invalidate_cache()  # all of it: another machine may have changed any object since this process looked
        try:
            found = fs.find(p)
        except FileNotFoundError:
            return set()
        return {f[len(p):].lstrip("/") for f in found if f[len(p):].lstrip("/")}

    @staticmethod
    def _folders(keys: set[str], under: str) -> dict[str, set[str]]:
        """Checkpoint-named folders under `under/` and the keys (relative to each folder) they hold."""
        out: dict[str, set[str]] = {}
        for k in keys:
            parts = k.split("/")
            if len(parts) >= 3 and parts[0] == under and _NAME.match(parts[1]):
                out.setdefault(parts[1], set()).add("/".join(parts[2:]))
        return out

    def _remote_state(self, rel_folder: str) -> bytes | None:
        try:
            return storage.read_bytes(self._at(f"{rel_folder}/{STATE_FILE}"))
        except FileNotFoundError:
            return None

    # -- pull

    def pull(self) -> Path:
        """Make the working copy match the bucket (see module doc); returns it. Any process may call it."""
        if not self.remote:
            return self.local
        with self._locked():
            self.local.mkdir(parents=True, exist_ok=True)
            keys = self._listing()
            for rel in _SMALL:
                dest = self.local.joinpath(*rel.split("/"))
                if rel in keys:
                    storage.get_file(self._at(rel), dest)
                elif dest.is_file():
                    dest.unlink()
            tok = self.local / TOKENIZER_DIR
            if any(k.startswith(TOKENIZER_DIR + "/") for k in keys):
                if not tok.is_dir() or self._differs(TOKENIZER_DIR, tok, keys):
                    storage.get_dir(self._at(TOKENIZER_DIR), tok)
            elif tok.is_dir():
                shutil.rmtree(tok, ignore_errors=True)
            # cooled/: only what the bucket holds complete, with the same state (never a stale local one)
            cooled = {n: files for n, files in self._folders(keys, COOLED_DIR).items() if storage.MARKER in files}
            for name, folder in self._local_folders(COOLED_DIR).items():
                if name not in cooled or self._remote_state(f"{COOLED_DIR}/{name}") != (folder / STATE_FILE).read_bytes():
                    shutil.rmtree(folder, ignore_errors=True)
            remote = {n: files for n, files in self._folders(keys, CHECKPOINTS).items()
                      if storage.MARKER in files and STATE_FILE in files}
            ck_dir = self.local / CHECKPOINTS
            states: dict[str, bytes] = {}
            for name in remote:
                states[name] = self._remote_state(f"{CHECKPOINTS}/{name}") or b""
            if ck_dir.is_dir():
                for child in ck_dir.iterdir():
                    if not (child.is_dir() and _NAME.match(child.name)):
                        continue
                    mine = child / STATE_FILE
                    if child.name not in remote or not mine.is_file() or mine.read_bytes() != states[child.name]:
                        shutil.rmtree(child, ignore_errors=True)
            for name in sorted(remote):
                folder = ck_dir / name
                if folder.is_dir():
                    continue
                with atomic_dir(folder) as tmp:  # a stub: what listing, retention and best.json read
                    (tmp / STATE_FILE).write_bytes(states[name])
                    if CONFIG_FILE in remote[name]:
                        storage.get_file(self._at(f"{CHECKPOINTS}/{name}/{CONFIG_FILE}"), tmp / CONFIG_FILE)
            latest = latest_checkpoint(self.local)
            if latest is not None:
                self._hydrate(latest)
        return self.local

    def _differs(self, rel_folder: str, folder: Path, keys: set[str]) -> bool:
        """The local folder's file names or sizes differ from the bucket's (tokenizer files are small)."""
        prefix = rel_folder + "/"
        remote = sorted(k[len(prefix):] for k in keys if k.startswith(prefix) and k != prefix + storage.MARKER)
        mine = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        if remote != mine:
            return True
        return any(storage.read_bytes(self._at(prefix + r)) != folder.joinpath(*r.split("/")).read_bytes() for r in remote)

    def _hydrate(self, ckpt: Path) -> None:
        """Fetch a stub checkpoint's weights and optimizer state (the whole folder, replaced atomically)."""
        if (ckpt / MODEL_FILE).is_file():
            return
        storage.get_dir(self._at(f"{ckpt.parent.name}/{ckpt.name}"), ckpt)

    def ensure(self, ckpt: str | os.PathLike) -> Path:
        """A checkpoint of the working copy with all its files (a stub is fetched whole first)."""
        ckpt = Path(ckpt)
        if self.remote and not (ckpt / MODEL_FILE).is_file():
            with self._locked():
                self._hydrate(ckpt)
        return ckpt

    # -- push

    def push(self) -> None:
        """Upload what changed in the working copy and delete what it dropped (global rank 0 only)."""
        if not self.remote:
            return
        keys = self._listing()
        # the run's own records first: a checkpoint in the bucket always has its metrics there (a resume trims
        # records past the checkpoint it starts from, so records ahead of the checkpoints are harmless)
        self._put_or_drop(RUN_FILE, keys)
        self._put_or_drop(METRICS_FILE, keys)
        tok = self.local / TOKENIZER_DIR
        if tok.is_dir() and not any(k.startswith(TOKENIZER_DIR + "/") for k in keys):
            for f in sorted(tok.iterdir()):
                if f.is_file() and not f.name.startswith("."):
                    storage.put_file(f, self._at(f"{TOKENIZER_DIR}/{f.name}"))
        local_ck = self._local_folders(CHECKPOINTS)
        remote_ck = self._folders(keys, CHECKPOINTS)
        for name, folder in local_ck.items():
            if not self._same(f"{CHECKPOINTS}/{name}", folder, remote_ck.get(name)) and (folder / MODEL_FILE).is_file():
                storage.put_dir(folder, self._at(f"{CHECKPOINTS}/{name}"))
        remote_cooled = self._folders(keys, COOLED_DIR)
        for name, folder in self._local_folders(COOLED_DIR).items():
            if self._same(f"{COOLED_DIR}/{name}", folder, remote_cooled.get(name)):
                continue
            src = remote_ck.get(name)
            if src and self._same(f"{CHECKPOINTS}/{name}", folder, src):
                self._copy_inside(f"{CHECKPOINTS}/{name}", f"{COOLED_DIR}/{name}", src)
            elif (folder / MODEL_FILE).is_file():
                storage.put_dir(folder, self._at(f"{COOLED_DIR}/{name}"))
        self._put_or_drop(f"{CHECKPOINTS}/{BEST}", keys)
        for name in sorted(set(remote_ck) - set(local_ck)):  # pruned, or moved to cooled/
            storage.remove_dir(self._at(f"{CHECKPOINTS}/{name}"))

    def _local_folders(self, under: str) -> dict[str, Path]:
        d = self.local / under
        if not d.is_dir():
            return {}
        return {c.name: c for c in sorted(d.iterdir()) if c.is_dir() and _NAME.match(c.name) and (c / STATE_FILE).is_file()}

    def _same(self, rel_folder: str, folder: Path, remote_files: set[str] | None) -> bool:
        """The bucket holds this checkpoint complete, with the same state.json bytes."""
        if not remote_files or storage.MARKER not in remote_files:
            return False
        return self._remote_state(rel_folder) == (folder / STATE_FILE).read_bytes()

    def _copy_inside(self, src: str, dst: str, files: set[str]) -> None:
        """Copy a complete folder to another place in the bucket (no download), the marker last."""
        fs, root = storage.filesystem(self.url)
        root = root.rstrip("/")
        storage.remove(self._at(f"{dst}/{storage.MARKER}"))
        for f in sorted(files - {storage.MARKER}):
            fs.copy(posixpath.join(root, src, f), posixpath.join(root, dst, f))
        storage.write_bytes(self._at(f"{dst}/{storage.MARKER}"), b"")

    def _put_or_drop(self, rel: str, keys: set[str]) -> None:
        path = self.local.joinpath(*rel.split("/"))
        if path.is_file():
            storage.put_file(path, self._at(rel))
        elif rel in keys:
            storage.remove(self._at(rel))


def fetch_checkpoint(target: str) -> Path:
    """A checkpoint named by URL as a local folder: a run's latest (`RUN`), or `RUN/checkpoints/NAME`, complete in
    the bucket; fetched into a read-only view of the run under the cache (its tokenizer/ beside, as in a run)."""
    url = target.rstrip("/")
    if storage.name(url) == MODEL_FILE:
        url = storage.parent(url)
    if storage.exists(storage.join(url, RUN_FILE)):
        run, name = url, None
    elif storage.name(storage.parent(url)) == CHECKPOINTS:
        run, name = storage.parent(storage.parent(url)), storage.name(url)
    else:
        raise CookError(f"{storage.redact(target)}: no such run or checkpoint")
    sync = RunSync(run, view=True)
    local = sync.pull()
    if name is None:
        latest = latest_checkpoint(local)
        if latest is None:
            raise CookError(f"{storage.redact(target)}: no checkpoint found (none is complete in the bucket yet)")
        return latest
    ckpt = local / CHECKPOINTS / name
    if not ckpt.is_dir():
        raise CookError(f"{storage.redact(target)}: no such checkpoint (not complete in the bucket)")
    return sync.ensure(ckpt)

