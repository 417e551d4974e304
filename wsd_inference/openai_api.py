"""The WSD server's HTTP side: OpenAI's chat completions, completions and models endpoints over a backend
(`serving.LocalBackend` or `serving.ServedBackend`), so any OpenAI client or evaluation harness can use
"pilot + base" as one model.

Every sampling parameter is honoured or refused with a 400 naming it: `max_tokens` / `max_completion_tokens` (WSD's
total budget: kept draft + the base's continuation), `temperature` (1.0 where a request gives none, as OpenAI and
vLLM; `pilot wsd serve --temperature` sets another default), `top_p`, `seed` (a choice's random stream is keyed by
the seed and its index, never by its batch), `stop` (up to 4 strings), `n`, `stream`; vLLM's extra fields at their
neutral values (`top_k` -1 or 0, `repetition_penalty` 1, `min_p` 0). Each choice carries WSD's decisions in an
extra field, `wsd`. Errors are OpenAI's JSON error shape. The concurrency limit counts answers (choices), not
requests.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from pilot_core.errors import UserError
from pilot_core.models.templates import STOP_STRINGS, cut_before_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.config import WSDConfig
from wsd_inference.serving import Job, JobCancelled, prompt_tokens, request_config

log = logging.getLogger("pilot.wsd.server")

# Parameters a client may send with their neutral value (anything else is refused), and ones that change nothing.
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, 0), "top_logprobs": (0,),
           "top_k": (-1, 0), "repetition_penalty": (1, 1.0), "min_p": (0, 0.0),  # vLLM's extras, at their "off"
           "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},),
           "echo": (False,), "suffix": ("",), "best_of": (1,)}
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options", "model"}
WSD_FIELDS = ("switched", "switch_index", "kept_draft_tokens", "pilot_tokens", "base_tokens", "draft_text")


@dataclass(frozen=True)
class ServerLimits:
    max_concurrent: int = 64  # answers (choices: a request with n=4 counts 4) in flight; more get a 429
    max_request_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_n: int = 8
    request_timeout_s: float = 600.0
    default_temperature: float = 1.0  # for a request that gives none: OpenAI's and vLLM's default


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# ----------------------------------------------------------------------------------------------- request parsing
@dataclass(frozen=True)
class Sampling:
    """A request's decoding parameters, checked."""

    n: int
    max_tokens: int | None
    temperature: float | None
    top_p: float | None
    seed: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or v > hi or v < lo or (lo_open and v == lo):
        kind = "an integer" if integer else "a number"
        raise _bad(f"{key} must be {kind} in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return v


def parse_sampling(body: dict, limits: ServerLimits, known: set[str]) -> Sampling:
    for key, value in body.items():
        if key in known or key in IGNORED:
            continue
        if key in NEUTRAL:
            if value is None or value in NEUTRAL[key]:
                continue
            raise _bad(f"{key}={json.dumps(value)[:80]} is not supported by the WSD server", key)
        raise _bad(f"unknown or unsupported parameter {key!r}", key)
    n = _number(body, "n", 1, limits.max_n, integer=True) or 1
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    mt = _number({"max_tokens": mt}, "max_tokens", 1, limits.max_tokens, integer=True)
    stop = body.get("stop")
    if stop is None:
        stop = ()
    elif isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
        stop = tuple(stop)
    else:
        raise _bad("stop must be a string or a list of at most 4 strings", "stop")
    if any(s == "" for s in stop):
        raise _bad("stop strings must not be empty", "stop")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise _bad("stream_options must be an object", "stream_options")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _bad(f"seed must be an integer, got {seed!r}", "seed")
    temperature = _number(body, "temperature", 0, 2)
    return Sampling(n, mt, limits.default_temperature if temperature is None else temperature,
                    _number(body, "top_p", 0, 1, lo_open=True), seed, stop, stream, bool(opts.get("include_usage")))


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise _bad(f"{where}: only text content parts are supported", "messages")
            parts.append(p["text"])
        return "".join(parts)
    raise _bad(f"{where}: content must be a string or a list of text parts", "messages")


def parse_messages(messages) -> tuple[dict, ...]:
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _bad(f"messages[{i}] must be an object", "messages")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        if role not in ("system", "user", "assistant"):
            raise _bad(f"messages[{i}].role {m.get('role')!r} is not supported (system, developer, user, "
                       "assistant)", "messages")
        out.append({"role": role, "content": _text(m.get("content"), f"messages[{i}]")})
    if out[-1]["role"] != "user":
        raise _bad("the last message must be the user's: WSD answers a user turn", "messages")
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise _bad("the user's message is empty", "messages")
    return tuple(out)


# ----------------------------------------------------------------------------------------------- answers
def finish_reason(record: dict, cfg: WSDConfig, job: Job) -> str:
    """The decoder's own reason where it reported one (in-process: an answer that ends in EOS or a stop string
    exactly at its budget is "stop"); otherwise "length" where the answer used the whole budget, else "stop"."""
    if job.finish is not None:
        return job.finish
    return "length" if completion_tokens(record) >= cfg.max_new_tokens else "stop"


def completion_tokens(record: dict) -> int:
    return record["kept_draft_tokens"] + record["base_tokens"]


def wsd_details(record: dict) -> dict:
    return {k: record.get(k) for k in WSD_FIELDS}


class Streamer:
    """Turns an answer's text so far into the deltas a client may be sent: what can no longer change. Held back:
    leading and trailing whitespace (the answer is stripped), a tail that may still become a stop string, an
    unfinished UTF-8 character."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops, self.sent = stops, ""

    def delta(self, text: str) -> str:
        cut = cut_before_markers(text, self.stops).lstrip()
        hold = max((k for s in self.stops for k in range(1, len(s)) if cut.endswith(s[:k])), default=0)
        safe = cut[: len(cut) - hold].rstrip().rstrip("\ufffd")
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        d, self.sent = safe[len(self.sent):], safe
        return d

    def rest(self, final: str) -> str:
        if not final.startswith(self.sent):  # a decoder that rewrote earlier text: nothing can be unsent
            log.warning("streamed text is not a prefix of the final answer; sending the final text's tail")
            return final[len(self.sent):]
        d, self.sent = final[len(self.sent):], final
        return d


# ----------------------------------------------------------------------------------------------- the app
def create_app(backend, cfg: WSDConfig, model_name: str, limits: ServerLimits, api_key: str | None = None):

    state = {"in_flight": 0, "served": 0, "started": int(time.time())}

    @asynccontextmanager
    async def lifespan(app):
        yield
        await backend.close()  # uvicorn has let the requests in flight finish

    app = FastAPI(title="Pilot WSD server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
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
            raise _bad(f"the body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise _bad("the body must be a JSON object")
        if body.get("model") not in (None, model_name):
            raise ApiError(404, f"model {body.get('model')!r} is not served here (this server serves "
                           f"{model_name!r})", "not_found_error", "model", "model_not_found")
        return body

    def jobs_for(recs: list[PromptRecord], s: Sampling) -> tuple[list[Job], WSDConfig]:
        rcfg = request_config(cfg, s.max_tokens, s.temperature, s.top_p)
        nonce = uuid.uuid4().hex if s.seed is None else f"seed{s.seed}"
        jobs = []
        for p, rec in enumerate(recs):
            n_tok = prompt_tokens(backend, rec)
            if n_tok > limits.max_prompt_tokens:
                raise _bad(f"the prompt has {n_tok} tokens, over the limit of {limits.max_prompt_tokens}",
                           "messages")
            for i in range(s.n):  # the choice's random stream: keyed by the seed (or a nonce), prompt and index
                jobs.append(Job(PromptRecord(f"{nonce}:{p}:{i}", rec.messages), rcfg, s.stop))
        return jobs, rcfg

    def admit(answers: int):
        """Slots for a request's answers (its choices) in flight; its `release` may be called more than once."""
        if answers > limits.max_concurrent:
            raise _bad(f"{answers} answers (prompts x n) is over the server's limit of {limits.max_concurrent} in "
                       "flight", "n")
        if state["in_flight"] + answers > limits.max_concurrent:
            raise ApiError(429, f"the server is at its limit of {limits.max_concurrent} answers in flight; retry",
                           "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        state["in_flight"] += answers
        held = [True]

        def release() -> None:
            if held:
                held.clear()
                state["in_flight"] -= answers
                state["served"] += 1

        return release

    async def run_all(request: Request, jobs: list[Job]) -> list[dict]:
        tasks = [asyncio.ensure_future(backend.answer(j)) for j in jobs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.request_timeout_s
        try:
            while True:
                _, pending = await asyncio.wait(tasks, timeout=0.25)
                if not pending:
                    return [upstream(t) for t in tasks]
                if await request.is_disconnected():
                    log.info("client went away: %d answers cancelled", len(pending))
                    raise JobCancelled()
                if loop.time() > deadline:
                    raise ApiError(504, f"the answer took longer than {limits.request_timeout_s:g} s",
                                   "timeout_error", code="timeout")
        finally:
            for t in tasks:
                t.cancel()

    def upstream(task) -> dict:
        try:
            return task.result()
        except UserError as e:  # a model server that failed after its retries, or refused the request
            raise ApiError(502, f"a model server failed: {e}", "api_error", code="upstream_error") from None
        except Exception as e:  # noqa: BLE001 — a bug or a model that broke: logged here, OpenAI's shape there
            log.exception("an answer failed")
            raise ApiError(500, f"the answer failed ({type(e).__name__}); see the server's log", "server_error",
                           code="internal_error") from None

    def usage(recs: list[PromptRecord], records: list[dict]) -> dict:
        p = sum(prompt_tokens(backend, r) for r in recs)
        c = sum(completion_tokens(r) for r in records)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def answer(request: Request, recs: list[PromptRecord], s: Sampling, chat: bool):
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        jobs, rcfg = jobs_for(recs, s)
        release = admit(len(jobs))
        if s.stream:  # the generator releases the slot when it ends (or, never started, the response does)
            gen = stream_events(jobs, rcfg, recs, s, chat, rid, created, release)
            return StreamingResponse(gen, media_type="text/event-stream", background=BackgroundTask(release),
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            records = await run_all(request, jobs)
        except JobCancelled:
            return JSONResponse(ApiError(499, "client closed the request").body(), status_code=499)
        finally:
            release()
        choices = []
        for i, (job, record) in enumerate(zip(jobs, records)):
            text = record["response"]
            choice = {"index": i, "finish_reason": finish_reason(record, rcfg, job), "logprobs": None,
                      "wsd": wsd_details(record)}
            choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
            choices.append(choice)
        return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
                "model": model_name, "choices": choices, "usage": usage(recs, records)}

    async def stream_events(jobs, rcfg, recs, s: Sampling, chat: bool, rid: str, created: int,
                            release) -> AsyncIterator[str]:
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict], **extra) -> str:
            return "data: " + json.dumps({"id": rid, "object": obj, "created": created, "model": model_name,
                                          "choices": choices, **extra}) + "\n\n"

        def piece(i: int, text: str, finish: str | None = None, wsd: dict | None = None) -> dict:
            c = {"index": i, "finish_reason": finish, "logprobs": None}
            c.update({"delta": {"content": text} if text or finish is None else {}} if chat else {"text": text})
            if wsd is not None:
                c["wsd"] = wsd
            return c

        try:
            loop = asyncio.get_running_loop()
            updates: asyncio.Queue = asyncio.Queue()
            streamers = [Streamer(STOP_STRINGS + s.stop) for _ in jobs]
            for i, job in enumerate(jobs):
                job.on_text = lambda text, i=i: loop.call_soon_threadsafe(updates.put_nowait, (i, text))
            tasks = [asyncio.ensure_future(backend.answer(j)) for j in jobs]
            for i, t in enumerate(tasks):
                t.add_done_callback(lambda t, i=i: updates.put_nowait((i, None)))
            deadline = loop.time() + limits.request_timeout_s
            records: list[dict | None] = [None] * len(jobs)
            try:
                if chat:
                    yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                                  "logprobs": None} for i in range(len(jobs))])
                while any(r is None for r in records):
                    try:
                        i, text = await asyncio.wait_for(updates.get(), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        yield "data: " + json.dumps(ApiError(504, "the answer took longer than "
                                                             f"{limits.request_timeout_s:g} s", "timeout_error",
                                                             code="timeout").body()) + "\n\n"
                        return
                    if text is not None:
                        d = streamers[i].delta(text)
                        if d:
                            yield event([piece(i, d)])
                        continue
                    try:
                        records[i] = upstream(tasks[i])
                    except ApiError as e:
                        yield "data: " + json.dumps(e.body()) + "\n\n"
                        return
                    rest = streamers[i].rest(records[i]["response"])
                    if rest:
                        yield event([piece(i, rest)])
                    yield event([piece(i, "", finish_reason(records[i], rcfg, jobs[i]), wsd_details(records[i]))])
                if s.include_usage:
                    yield event([], usage=usage(recs, records))
                yield "data: [DONE]\n\n"
            finally:  # also when the client went away mid-stream: its answers stop
                for t in tasks:
                    t.cancel()
        finally:
            release()

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "in_flight": state["in_flight"], "served": state["served"],
                **backend.stats()}

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": state["started"],
                                            "owned_by": "pilot", "max_model_len": limits.max_tokens}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request)
        s = parse_sampling(body, limits, {"messages", "n", "max_tokens", "max_completion_tokens", "temperature",
                                          "top_p", "seed", "stop", "stream"})
        rec = PromptRecord("request", parse_messages(body.get("messages")))
        return await answer(request, [rec], s, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request)
        s = parse_sampling(body, limits, {"prompt", "n", "max_tokens", "max_completion_tokens", "temperature",
                                          "top_p", "seed", "stop", "stream"})
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise _bad("prompt must be a string or a list of strings (token-id prompts are not supported: WSD "
                       "renders the prompt for each model's template)", "prompt")
        if any(not p.strip() for p in prompts):
            raise _bad("prompt must not be empty", "prompt")
        if len(prompts) * s.n > limits.max_n * 4:
            raise _bad(f"{len(prompts)} prompts x n={s.n} is over the limit of {limits.max_n * 4} answers", "prompt")
        recs = [PromptRecord("request", ({"role": "user", "content": p},)) for p in prompts]
        return await answer(request, recs, s, chat=False)

    return app
