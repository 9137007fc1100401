"""A loopback stand-in for the Hugging Face Hub: the few endpoints `HfFileSystem` uses to list and read a dataset.

Serves the dataset repos under a local folder (`ROOT/<namespace>/<name>/...`) at one revision:
repo info, tree listing, paths-info, and file resolve with HTTP range requests. Point
COOK_HF_ENDPOINT at `FakeHub.url` and `hf://datasets/<namespace>/<name>/...` paths read from it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

SHA = "c0ffee" + "0" * 34  # the one revision's commit id


def _entry(root: Path, p: Path) -> dict:
    rel = p.relative_to(root).as_posix()
    if p.is_dir():
        return {"type": "directory", "oid": hashlib.sha1(rel.encode()).hexdigest(), "path": rel}
    data = p.read_bytes()
    return {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": rel,
            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}


class FakeHub:
    """`with FakeHub(folder) as hub: hub.url` — a threaded HTTP server on 127.0.0.1; `hub.requests` logs the paths asked."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _json(self, obj, code: int = 200) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _repo(self, parts: list[str]) -> tuple[Path, list[str]] | None:
                if len(parts) < 2 or not (hub.root / parts[0] / parts[1]).is_dir():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return hub.root / parts[0] / parts[1], parts[2:]

            def do_GET(self) -> None:
                self._handle(body=True)

            def do_HEAD(self) -> None:
                self._handle(body=False)

            def do_POST(self) -> None:
                hub.requests.append("POST " + self.path)
                url = urlparse(self.path)
                parts = [unquote(s) for s in url.path.strip("/").split("/")]
                if parts[:2] != ["api", "datasets"] or "paths-info" not in parts:
                    return self._not_found()
                found = self._repo(parts[2:])
                if found is None:
                    return None
                repo, _ = found
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                out = [_entry(repo, repo / p) for p in form.get("paths", []) if (repo / p).exists()]
                self._json(out)

            def _handle(self, body: bool) -> None:
                hub.requests.append(self.command + " " + self.path)
                url = urlparse(self.path)
                parts = [unquote(s) for s in url.path.strip("/").split("/")]
                if parts[:2] == ["api", "datasets"]:
                    found = self._repo(parts[2:])
                    if found is None:
                        return None
                    repo, rest = found
                    if not rest or rest[0] == "revision":
                        return self._json({"id": f"{parts[2]}/{parts[3]}", "sha": SHA, "private": False, "siblings": []})
                    if rest[0] == "tree":
                        folder = repo.joinpath(*rest[2:])
                        if not folder.is_dir():
                            return self._not_found()
                        recursive = parse_qs(url.query).get("recursive", ["false"])[0].lower() == "true"
                        items = sorted(folder.rglob("*") if recursive else folder.iterdir())
                        return self._json([_entry(repo, p) for p in items])
                    return self._not_found()
                if parts[:1] == ["datasets"] and len(parts) > 5 and parts[3] == "resolve":
                    found = self._repo(parts[1:])
                    if found is None:
                        return None
                    repo, _ = found
                    f = repo.joinpath(*parts[5:])
                    if not f.is_file():
                        return self._not_found()
                    return self._file(f, body)
                return self._not_found()

            def _file(self, f: Path, body: bool) -> None:
                data = f.read_bytes()
                start, end, code = 0, len(data) - 1, 200
                rng = self.headers.get("Range") or self.headers.get("range")
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[len("bytes="):].partition("-")
                    if a == "":  # suffix range: the last b bytes
                        start = max(0, len(data) - int(b))
                    else:
                        start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
                    code = 206
                chunk = data[start : end + 1]
                self.send_response(code)
                self.send_header("Content-Length", str(len(chunk)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
                self.send_header("X-Repo-Commit", SHA)
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.end_headers()
                if body:
                    self.wfile.write(chunk)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
