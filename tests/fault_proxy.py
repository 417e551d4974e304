"""A fault-injecting HTTP proxy on loopback, in front of a real OpenAI-compatible server (vLLM in the tests).

Faults a healthy server never makes, at a configured rate: a 500, a 429 with retry-after, a request that hangs
past the client's timeout, a dropped connection and a 200 whose body is cut short (garbage JSON). Faults are
transient as real ones are: the same request (same body) gets at most `burst` faults in a row, then goes
through, so a client that retries ends with what a healthy server would have answered. Which attempts fail is a
function of the request body and the attempt number, not of timing, so a run is reproducible.
The proxy records every Authorization header it saw (a test checks the key was sent, and then that no artifact
holds it) and counts the faults it injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections import Counter

import httpx

KINDS = ("500", "429", "timeout", "drop", "garbage")


class FaultProxy:
    def __init__(self, upstream: str, rate: float, kinds: tuple[str, ...] = KINDS, burst: int = 2,
                 hang_s: float = 6.0, seed: int = 0):
        """upstream: the server's root URL (http://127.0.0.1:PORT). The proxy serves the same paths at self.url."""
        from .vllm_server import free_port

        self.upstream, self.rate, self.kinds, self.burst, self.hang_s = upstream.rstrip("/"), rate, kinds, burst, hang_s
        self.seed, self.port = seed, free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = self.root + "/v1"
        self.attempts: Counter = Counter()  # per request body
        self.faults: Counter = Counter()  # per kind
        self.requests = 0
        self.auth: set[str] = set()
        self._lock = threading.Lock()
        self._server = None

    # ------------------------------------------------------------------------------------------ decisions
    def _fault(self, body: bytes) -> str | None:
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            n = self.attempts[key]
            self.attempts[key] += 1
            self.requests += 1
        if n >= self.burst:
            return None
        h = hashlib.sha256(f"{self.seed}:{key}:{n}".encode()).digest()
        if int.from_bytes(h[:4], "big") / 2**32 >= self.rate:
            return None
        kind = self.kinds[h[4] % len(self.kinds)]
        with self._lock:
            self.faults[kind] += 1
        return kind

    # ------------------------------------------------------------------------------------------ the app
    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        client = httpx.AsyncClient(base_url=self.upstream, timeout=600)

        async def forward(request):
            body = await request.body()
            if "authorization" in request.headers:
                self.auth.add(request.headers["authorization"])
            kind = self._fault(body) if request.method == "POST" else None
            if kind == "500":
                return JSONResponse({"error": {"message": "injected server error"}}, status_code=500)
            if kind == "429":
                return JSONResponse({"error": {"message": "injected rate limit"}}, status_code=429,
                                    headers={"retry-after-ms": "20"})
            if kind == "timeout":
                await asyncio.sleep(self.hang_s)  # past the client's timeout: it gives up and retries
                return JSONResponse({"error": {"message": "too late"}}, status_code=504)
            headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
            up = client.build_request(request.method, request.url.path, params=request.query_params,
                                      headers=headers, content=body)
            resp = await client.send(up, stream=True)
            keep = {k: v for k, v in resp.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
            if kind in ("garbage", "drop"):
                data = await resp.aread()
                await resp.aclose()
                half = data[: max(1, len(data) // 2)]
                if kind == "garbage":  # a complete response whose body is cut short
                    return Response(half, status_code=resp.status_code, headers=keep)

                async def dropped():  # the connection dies half-way through the body
                    yield half
                    raise ConnectionResetError("injected dropped connection")
                return StreamingResponse(dropped(), status_code=resp.status_code, headers=keep)
            if "text/event-stream" in resp.headers.get("content-type", ""):
                async def relay():
                    try:
                        async for chunk in resp.aiter_raw():
                            yield chunk
                    finally:
                        await resp.aclose()
                return StreamingResponse(relay(), status_code=resp.status_code, headers=keep)
            data = await resp.aread()
            await resp.aclose()
            return Response(data, status_code=resp.status_code, headers=keep)

        @contextlib.asynccontextmanager
        async def lifespan(app):
            yield
            await client.aclose()

        return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])], lifespan=lifespan)

    # ------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> "FaultProxy":
        import uvicorn

        config = uvicorn.Config(self._app(), host="127.0.0.1", port=self.port, log_level="critical",
                                lifespan="on", timeout_keep_alive=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fault proxy did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return f"{sum(self.faults.values())} faults in {self.requests} requests ({kinds})"
