"""A stand-in for the Hugging Face Hub's HTTP API on loopback (the real Hub is unreachable here): the endpoints
`HfApi.create_repo`, `upload_folder` (regular uploads, content inline) and `create_tag` call, recording what
arrives."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hub:
    def __init__(self):
        self.repos, self.files, self.tags, self.log, self.auth = {}, {}, {}, [], []
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

            def do_GET(self):
                hub.log.append(("GET", self.path))
                self._send(404, {"error": "not found"})

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
