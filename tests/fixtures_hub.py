"""A loopback stand-in for the Hugging Face Hub: the endpoints `HfFileSystem` uses to list and read a dataset,
and those `HfApi.create_repo` / `upload_folder` use to create a model repo and commit files to it.

Serves the dataset repos under a local folder (`ROOT/<namespace>/<name>/...`) at one revision:
repo info, tree listing, paths-info, and file resolve with HTTP range requests. Point
COOK_HF_ENDPOINT at `FakeHub.url` and `hf://datasets/<namespace>/<name>/...` paths read from it.

Model repos live in `ROOT/models/<namespace>/<name>/`: `POST /api/repos/create` makes one (409 when it
exists), `POST /api/models/<ns>/<name>/preupload/<rev>` answers "regular" for every file (the Hub decides
the mode: so files travel inline in the commit, no LFS or Xet storage is involved), and
`POST /api/models/<ns>/<name>/commit/<rev>` takes the NDJSON commit (a header line, then one base64
`file` line per file) and writes the files. Writes need `Authorization: Bearer <token>` with a token of
`tokens` (token -> user name, the namespace of a repo created without one); `hub.auth` logs the
Authorization header of every request.
"""

from __future__ import annotations

import base64
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

    def __init__(self, root: Path, tokens: dict[str, str] | None = None):
        self.root = Path(root)
        self.models = self.root / "models"
        self.tokens = dict(tokens or {})
        self.requests: list[str] = []
        self.auth: list[tuple[str, str | None]] = []  # (request line, its Authorization header)
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

            def _user(self) -> str | None:
                """The user of the request's bearer token; None (after a 401 answer) when it has none or a bad one."""
                auth = self.headers.get("Authorization") or ""
                user = hub.tokens.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
                if user is None:
                    self._json({"error": "Invalid username or password."}, 401)
                return user

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _model_repo(self, ns: str, name: str) -> Path | None:
                repo = hub.models / ns / name
                if not repo.is_dir():
                    self.send_response(404)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return repo

            def _create_repo(self) -> None:
                user = self._user()
                if user is None:
                    return None
                spec = json.loads(self._body() or b"{}")
                ns, name = spec.get("organization") or user, spec.get("name") or ""
                if spec.get("type", "model") != "model" or not name:
                    return self._json({"error": "only model repos here"}, 400)
                repo_url = f"{hub.url}/{ns}/{name}"
                if (hub.models / ns / name).exists():
                    return self._json({"error": "You already created this model repo", "url": repo_url}, 409)
                (hub.models / ns / name).mkdir(parents=True)
                (hub.models / ns / name / ".visibility").write_text(spec.get("visibility") or "public")
                self._json({"url": repo_url, "name": f"{ns}/{name}", "id": f"{ns}/{name}"})

            def _preupload(self, repo: Path) -> None:
                files = json.loads(self._body() or b"{}").get("files", [])
                self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                      for f in files], "commitOid": SHA})

            def _commit(self, repo: Path, ns: str, name: str) -> None:
                lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
                if not lines or lines[0].get("key") != "header":
                    return self._json({"error": "a commit starts with its header"}, 400)
                for item in lines[1:]:
                    value = item.get("value", {})
                    path = (repo / value.get("path", "")).resolve()
                    if item.get("key") != "file" or value.get("encoding") != "base64" or repo.resolve() not in path.parents:
                        return self._json({"error": f"unsupported commit line {item.get('key')!r}"}, 400)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(base64.b64decode(value["content"]))
                oid = hashlib.sha1(json.dumps(lines).encode()).hexdigest()
                self._json({"commitUrl": f"{hub.url}/{ns}/{name}/commit/{oid}", "commitOid": oid, "success": True})

            def do_POST(self) -> None:
                hub.requests.append("POST " + self.path)
                hub.auth.append(("POST " + self.path, self.headers.get("Authorization")))
                url = urlparse(self.path)
                parts = [unquote(s) for s in url.path.strip("/").split("/")]
                if parts == ["api", "repos", "create"]:
                    return self._create_repo()
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("preupload", "commit"):
                    if self._user() is None:
                        return None
                    repo = self._model_repo(parts[2], parts[3])
                    if repo is None:
                        return None
                    return self._preupload(repo) if parts[4] == "preupload" else self._commit(repo, parts[2], parts[3])
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
                hub.auth.append((self.command + " " + self.path, self.headers.get("Authorization")))
                url = urlparse(self.path)
                parts = [unquote(s) for s in url.path.strip("/").split("/")]
                if parts[:2] == ["api", "models"] and len(parts) in (4, 6):  # model repo info
                    repo = self._model_repo(parts[2], parts[3])
                    if repo is None:
                        return None
                    siblings = [{"rfilename": p.relative_to(repo).as_posix()} for p in sorted(repo.rglob("*"))
                                if p.is_file() and p.name != ".visibility"]
                    private = (repo / ".visibility").read_text() == "private"
                    return self._json({"id": f"{parts[2]}/{parts[3]}", "sha": SHA, "private": private, "siblings": siblings})
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
