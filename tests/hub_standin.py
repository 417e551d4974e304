"""A stand-in for the Hugging Face Hub's HTTP API on loopback (the real Hub is unreachable here). Write side: the
endpoints `HfApi.create_repo`, `upload_folder` (regular uploads, content inline) and `create_tag` call, recording
what arrives. Read side (repositories put there with `add`): what `HfApi.repo_info` (model_info, dataset_info),
`snapshot_download` / `hf_hub_download` and `HfFileSystem` (datasets' online `load_dataset` of a hub id or an hf://
URL) call in huggingface_hub 2.x: `/api/{models,datasets}/<repo>/revision/<rev>` (the commit and the files),
`/api/{models,datasets}/<repo>/tree/<rev>[/<path>]` (the listing under a folder: its children, or with
`recursive=true` everything below, folders included), POST `/api/{models,datasets}/<repo>/paths-info/<rev>` (the
files and folders among `paths`), and HEAD and GET of `[/datasets]/<repo>/resolve/<rev>/<file>` with the headers a
download needs (X-Repo-Commit, ETag, Content-Length); an unknown repository, revision, file or folder is the hub's
404 with its X-Error-Code."""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit


def _blob(data: bytes) -> str:
    """git's blob id of a file (the hub's `oid` and ETag of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(files: dict[str, bytes], path: str) -> dict | None:
    """The hub's description of a file or a folder of a commit (None: neither)."""
    if path in files:
        return {"type": "file", "path": path, "size": len(files[path]), "oid": _blob(files[path])}
    if path and any(f.startswith(path + "/") for f in files):
        return {"type": "directory", "path": path, "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest()}
    return None


def _tree(files: dict[str, bytes], folder: str, recursive: bool) -> list[dict] | None:
    """The hub's listing of a folder of a commit ("" the root): its files and folders, or everything below it with
    `recursive` (folders first, as the hub lists them); None when there is no such folder."""
    prefix = folder + "/" if folder else ""
    below = [f[len(prefix):] for f in files if f.startswith(prefix)]
    if not below:
        return None
    names = set()
    for rel in below:
        parts = rel.split("/")
        for n in range(1, len(parts) + 1 if recursive else 2):
            names.add("/".join(parts[:n]))
    entries = [_entry(files, prefix + n) for n in sorted(names)]
    return sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))


class Hub:
    def __init__(self):
        self.repos, self.files, self.tags, self.log, self.auth = {}, {}, {}, [], []
        self.read = {}  # (kind, repo) -> {"refs": {branch: commit}, "commits": {commit: {path: bytes}}}
        self.read_auth = []  # (path, Authorization header) of each read request
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _error(self, code, error_code, commit=None):
                body = json.dumps({"error": error_code}).encode()
                self.send_response(code)
                self.send_header("X-Error-Code", error_code)
                self.send_header("X-Error-Message", error_code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _commit(self, kind, repo, rev):
                """(commit, files) of a repository at a revision, or an error sent (None)."""
                r = hub.read.get((kind, repo))
                if r is None:
                    return self._error(404, "RepoNotFound")
                commit = r["refs"].get(rev, rev if rev in r["commits"] else None)
                if commit is None:
                    return self._error(404, "RevisionNotFound")
                return commit, r["commits"][commit]

            def _api(self, path, form=None):
                """/api/{models,datasets}/<repo>/{revision,tree,paths-info}/<rev>[/<path>]; `form`: a POST's body."""
                kinds, _, rest = path.removeprefix("/api/").partition("/")
                kind = {"models": "model", "datasets": "dataset"}.get(kinds)
                for op in ("revision", "tree", "paths-info"):
                    repo, sep, tail = rest.partition(f"/{op}/")
                    if kind and sep:
                        rev, _, folder = tail.partition("/")
                        found = self._commit(kind, repo, unquote(rev))
                        if found is None:
                            return
                        commit, files = found
                        if op == "revision":
                            return self._send(200, {"id": repo, "sha": commit, "private": False,
                                                    "siblings": [{"rfilename": f} for f in sorted(files)]})
                        if op == "paths-info":
                            paths = parse_qs((form or b"").decode()).get("paths", [])
                            return self._send(200, [e for e in (_entry(files, p.strip("/")) for p in paths) if e])
                        query = parse_qs(urlsplit(self.path).query)
                        listing = _tree(files, unquote(folder).strip("/"),
                                        query.get("recursive", ["false"])[0].lower() == "true")
                        if listing is None:
                            return self._error(404, "EntryNotFound", commit)
                        return self._send(200, listing)
                return self._error(404, "RepoNotFound")

            def _read(self):
                hub.log.append((self.command, self.path))
                hub.read_auth.append((self.path, self.headers.get("Authorization")))
                path = urlsplit(self.path).path
                if path.startswith("/api/"):
                    return self._api(path)
                repo, sep, tail = path.partition("/resolve/")
                if not sep:
                    return self._error(404, "RepoNotFound")
                kind = "dataset" if repo.startswith("/datasets/") else "model"
                repo = repo.removeprefix("/datasets/").removeprefix("/")
                rev, _, file = tail.partition("/")
                found = self._commit(kind, repo, unquote(rev))
                if found is None:
                    return
                commit, files = found
                data = files.get(unquote(file))
                if data is None:
                    return self._error(404, "EntryNotFound", commit)
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{_blob(data)}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(data)

            def do_GET(self):
                self._read()

            def do_HEAD(self):
                self._read()

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "/paths-info/" in self.path:  # a read
                    hub.log.append(("POST", self.path))
                    hub.read_auth.append((self.path, self.headers.get("Authorization")))
                    return self._api(urlsplit(self.path).path, data)
                hub.log.append(("POST", self.path))
                hub.auth.append(self.headers.get("Authorization"))
                p = self.path.split("?")[0]
                if p == "/api/repos/create":
                    req = json.loads(data)
                    rid = f"{req.get('organization') or 'user'}/{req['name']}"
                    hub.repos[rid] = req
                    return self._send(200, {"url": f"{hub.url}/{rid}"})
                if p == "/api/validate-yaml":
                    return self._send(200, {"errors": [], "warnings": []})
                if "/preupload/" in p:
                    files = json.loads(data)["files"]
                    return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                       "shouldIgnore": False} for f in files]})
                if "/commit/" in p:
                    for line in data.decode().splitlines():
                        obj = json.loads(line)
                        if obj["key"] == "file":
                            hub.files[obj["value"]["path"]] = base64.b64decode(obj["value"]["content"])
                    return self._send(200, {"commitUrl": f"{hub.url}/org/pilot/commit/" + "a" * 40,
                                            "commitOid": "a" * 40, "pullRequestUrl": None})
                if "/tag/" in p:
                    hub.tags[json.loads(data)["tag"]] = p
                    return self._send(200, {})
                return self._send(404, {"error": p})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, kind: str, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A new commit of a readable repository holding `files`, at the head of `branch` (which moves to it);
        its id, 40 hex digits, derived from the repository and the files."""
        h = hashlib.sha1(f"{kind}:{repo}".encode())
        for path, data in sorted(files.items()):
            h.update(path.encode() + b"\0" + _blob(data).encode())
        r = self.read.setdefault((kind, repo), {"refs": {}, "commits": {}})
        commit = h.hexdigest()
        r["commits"][commit] = dict(files)
        r["refs"][branch] = commit
        return commit
