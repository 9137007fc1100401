"""model/storage.py against a real S3-compatible server (moto, tests/s3server.py), memory:// and local paths:
whole objects or none, folders that count only once complete, local copies keyed by content, URLs shown without
credentials."""

from __future__ import annotations

import pytest

from model import storage
from model.errors import CookError


def test_paths_and_urls(tmp_path):
    assert not storage.is_remote(tmp_path) and not storage.is_remote(f"file://{tmp_path}")
    assert storage.is_remote("s3://b/k") and storage.is_remote("memory://x")
    assert storage.local_path(f"file://{tmp_path}/a") == tmp_path / "a"
    assert storage.join("s3://b/data/", "tokens", "meta.json") == "s3://b/data/tokens/meta.json"
    assert storage.join(tmp_path, "x") == str(tmp_path / "x")
    assert storage.parent("s3://b/data/tokens") == "s3://b/data" and storage.name("s3://b/data/tokens/") == "tokens"
    with pytest.raises(CookError, match="needs a local path"):
        storage.local_path("s3://b/k")


def test_redact_never_shows_credentials():
    shown = storage.redact("s3://AKIAXX:very-secret@bucket/data?X-Amz-Signature=deadbeef&versionId=3&sig=abc")
    assert "very-secret" not in shown and "AKIAXX" not in shown and "deadbeef" not in shown and "abc" not in shown
    assert shown.startswith("s3://bucket/data?") and "versionId=3" in shown
    assert storage.redact("/plain/path") == "/plain/path"


def test_unknown_protocol_is_one_line():
    with pytest.raises(CookError) as e:
        storage.exists("nosuchproto://bucket/x")
    assert "nosuchproto://" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["local", "memory", "s3"])
def test_atomic_open_whole_or_nothing(where, tmp_path, request):
    if where == "s3":
        base = request.getfixturevalue("s3").url + "/data"
    elif where == "memory":
        base = f"memory://cook-test-{tmp_path.name}"
    else:
        base = str(tmp_path / "data")
    target = storage.join(base, "docs", "a.bin")
    storage.write_bytes(target, b"old")
    big = b"x" * (6 << 20)  # more than one 5 MiB part: a multipart upload on S3
    for payload in (b"new", big):
        with pytest.raises(RuntimeError):
            with storage.atomic_open(target) as f:
                f.write(payload)
                raise RuntimeError("writer crashed")
        assert storage.read_bytes(target) == b"old"  # the crashed write left the old object whole
    with storage.atomic_open(storage.join(base, "docs", "fresh.bin")) as f:
        f.write(big)
    with pytest.raises(RuntimeError):
        with storage.atomic_open(storage.join(base, "docs", "never.bin")) as f:
            f.write(big)
            raise RuntimeError("writer crashed")
    assert storage.listdir(storage.join(base, "docs")) == ["a.bin", "fresh.bin"]
    assert storage.size(storage.join(base, "docs", "fresh.bin")) == len(big)
    with storage.atomic_open(storage.join(base, "t.txt"), "w") as f:
        f.write("héllo\n")
    assert storage.read_text(storage.join(base, "t.txt")) == "héllo\n"
    storage.remove(base, recursive=True)
    assert not storage.exists(storage.join(base, "docs", "a.bin"))


def test_folder_counts_once_complete(s3, tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(b"m" * 1000)
    (src / "sub" / "state.json").write_text("{}")
    dest = s3.url + "/run/checkpoints/chunk_000001"
    storage.put_dir(src, dest)
    assert storage.is_complete(dest)
    assert dest[len(s3.url) + 1:] + "/.complete" in s3.keys(dest)
    # an upload that dies half-way leaves the folder incomplete: the marker is removed first, written last
    (src / "model.safetensors").write_bytes(b"n" * 1000)

    class Dies(Exception):
        pass

    calls = []
    real = storage.put_file

    def dying_put(local, loc):
        calls.append(loc)
        if len(calls) == 2:
            raise Dies()
        real(local, loc)

    storage.put_file, saved = dying_put, storage.put_file
    try:
        with pytest.raises(Dies):
            storage.put_dir(src, dest)
    finally:
        storage.put_file = saved
    assert not storage.is_complete(dest)
    storage.put_dir(src, dest)
    got = storage.get_dir(dest, tmp_path / "back")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == ["model.safetensors", "sub/state.json"]
    assert (got / "model.safetensors").read_bytes() == b"n" * 1000
