"""The WSD server's HTTP side, thin: OpenAI's chat completions, completions and models endpoints, /health,
/metrics (Prometheus' text format, as vLLM's server exposes; like /health, without the API key), authentication
and the body's size and shape; each route checks its request (`protocol`) and hands it to `OpenAIServing` (after
vLLM's `api_router.py`). Any OpenAI client or evaluation harness can use "pilot + base" as one model; each choice
carries WSD's decisions in an extra field, `wsd`; errors are OpenAI's JSON error shape."""

from __future__ import annotations

import asyncio
import hmac
import json
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from pilot_core.prompts import PromptRecord
from wsd_inference.api.protocol import (
    ApiError,
    ModelCard,
    ModelList,
    SamplingParams,
    ServerLimits,
    bad_request,
    parse_messages,
    parse_prompts,
)
from wsd_inference.api.serving import OpenAIServing
from wsd_inference.config import WSDConfig
from wsd_inference.serving import JobCancelled


def create_app(backend, cfg: WSDConfig, model_name: str, limits: ServerLimits, api_key: str | None = None):
    serving = OpenAIServing(backend, cfg, model_name, limits)

    @asynccontextmanager
    async def lifespan(app):
        yield
        await backend.close()  # uvicorn has let the requests in flight finish

    app = FastAPI(title="Pilot WSD server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        if request.url.path.endswith("completions"):
            serving.metrics.request(e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, e):
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(e.status_code, "invalid_request_error")
        return JSONResponse(ApiError(e.status_code, str(e.detail), kind).body(), status_code=e.status_code)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "authentication_error",
                           code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        authorize(request)
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_request_bytes:
            raise ApiError(413, f"request body of {size} bytes is over the limit of {limits.max_request_bytes}")
        raw = await request.body()
        if len(raw) > limits.max_request_bytes:
            raise ApiError(413, f"request body is over the limit of {limits.max_request_bytes} bytes")
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise bad_request(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        if body.get("model") not in (None, model_name):
            raise ApiError(404, f"model {body.get('model')!r} is not served here (this server serves "
                           f"{model_name!r})", "not_found_error", "model", "model_not_found")
        return body

    async def answer(request: Request, recs: list[PromptRecord], s: SamplingParams, chat: bool):
        if s.stream:  # the generator releases the answers when it ends (or, never started, the response does)
            loop, updates = asyncio.get_running_loop(), asyncio.Queue()
            adm = serving.admit(recs, s, lambda i, text: loop.call_soon_threadsafe(updates.put_nowait, (i, text)))
            return StreamingResponse(serving.stream(adm, updates, s, chat), media_type="text/event-stream",
                                     background=BackgroundTask(adm.release),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        adm = serving.admit(recs, s)
        try:
            body = (await serving.complete(request.is_disconnected, adm, chat)).dump()
        except JobCancelled:
            serving.metrics.request(499)
            return JSONResponse(ApiError(499, "client closed the request").body(), status_code=499)
        serving.metrics.request(200)
        return body

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "in_flight": serving.in_flight, "served": serving.served,
                **backend.stats()}

    @app.get("/metrics")
    async def metrics(request: Request):
        body, content_type = serving.metrics.exposition(request.headers.get("accept"))
        return Response(body, media_type=content_type)

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return ModelList(data=[ModelCard(id=model_name, created=serving.started,
                                         max_model_len=limits.max_tokens)]).model_dump()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        s = SamplingParams.from_body(body, limits, {"messages"})
        return await answer(request, [PromptRecord("request", parse_messages(body.get("messages")))], s, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        s = SamplingParams.from_body(body, limits, {"prompt"})
        prompts = parse_prompts(body.get("prompt"), s.n, limits)
        return await answer(request, [PromptRecord("request", ({"role": "user", "content": p},)) for p in prompts],
                            s, chat=False)

    return app
