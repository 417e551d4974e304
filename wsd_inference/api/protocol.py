"""The OpenAI-compatible API's protocol: what a request may carry (checked, each problem a 400 naming the
parameter) and the response, usage and error shapes, as pydantic models (after vLLM's
`entrypoints/openai/chat_completion/protocol.py`).

Every sampling parameter is honoured or refused: `max_tokens` / `max_completion_tokens` (WSD's total budget: kept
draft + the base's continuation), `temperature` (1.0 where a request gives none, as OpenAI and vLLM; `pilot wsd
serve --temperature` sets another default), `top_p`, `seed` (a choice's random stream is keyed by the seed and its
index, never by its batch), `stop` (up to 4 strings), `n`, `stream`; vLLM's extra fields at their neutral values
(`top_k` -1 or 0, `repetition_penalty` 1, `min_p` 0), and vLLM's `priority` (lower is served first; first come
first served within a priority). Unknown parameters are refused, not ignored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pilot_core.method_record import CallFigures

# accepted at these values only (what OpenAI's SDK or vLLM's clients send when a feature is off)
NEUTRAL = {"presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0), "logprobs": (False, 0), "top_logprobs": (0,),
           "top_k": (-1, 0), "repetition_penalty": (1, 1.0), "min_p": (0, 0.0),  # vLLM's extras, at their "off"
           "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",), "response_format": ({"type": "text"},),
           "echo": (False,), "suffix": ("",), "best_of": (1,)}
IGNORED = {"user", "store", "metadata", "service_tier", "parallel_tool_calls", "stream_options", "model"}
SAMPLING = {"n", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed", "stop", "stream", "priority"}


@dataclass(frozen=True)
class ServerLimits:
    """What a request may ask for (the queue's bound and how many answers run at once are the backend's)."""

    max_request_bytes: int = 1 << 20
    max_prompt_tokens: int = 8192
    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_n: int = 8
    request_timeout_s: float = 600.0
    default_temperature: float = 1.0  # for a request that gives none: OpenAI's and vLLM's default


# ----------------------------------------------------------------------------------------------- errors
class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    """An answer in OpenAI's error shape with its HTTP status (and headers: a 429's Retry-After)."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.info = ErrorInfo(message=message, type=type_, param=param, code=code)

    def body(self) -> dict:
        return ErrorResponse(error=self.info).model_dump()


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


# ----------------------------------------------------------------------------------------------- requests
class SamplingParams(BaseModel):
    """A request's decoding parameters, checked (`from_body`)."""

    model_config = ConfigDict(frozen=True)

    n: int = 1
    max_tokens: int | None = None
    temperature: float
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    priority: int = 0  # vLLM's: lower is served first; first come first served within a priority

    @classmethod
    def from_body(cls, body: dict, limits: ServerLimits, known: set[str]) -> "SamplingParams":
        for key, value in body.items():
            if key in known or key in SAMPLING or key in IGNORED:
                continue
            if key in NEUTRAL:
                if value is None or value in NEUTRAL[key]:
                    continue
                raise bad_request(f"{key}={json.dumps(value)[:80]} is not supported by the WSD server", key)
            raise bad_request(f"unknown or unsupported parameter {key!r}", key)
        mt = body.get("max_completion_tokens", body.get("max_tokens"))
        stop = body.get("stop")
        if stop is None:
            stop = ()
        elif isinstance(stop, str):
            stop = (stop,)
        elif isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop):
            stop = tuple(stop)
        else:
            raise bad_request("stop must be a string or a list of at most 4 strings", "stop")
        if any(s == "" for s in stop):
            raise bad_request("stop strings must not be empty", "stop")
        opts = body.get("stream_options") or {}
        if not isinstance(opts, dict):
            raise bad_request("stream_options must be an object", "stream_options")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise bad_request("stream must be true or false", "stream")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise bad_request(f"seed must be an integer, got {seed!r}", "seed")
        temperature = _number(body, "temperature", 0, 2)
        return cls(n=_number(body, "n", 1, limits.max_n, integer=True) or 1,
                   max_tokens=_number({"max_tokens": mt}, "max_tokens", 1, limits.max_tokens, integer=True),
                   temperature=limits.default_temperature if temperature is None else temperature,
                   top_p=_number(body, "top_p", 0, 1, lo_open=True), seed=seed, stop=stop, stream=stream,
                   include_usage=bool(opts.get("include_usage")),
                   priority=_number(body, "priority", -(2**63), 2**63 - 1, integer=True) or 0)


def _number(body: dict, key: str, lo: float, hi: float, integer: bool = False, lo_open: bool = False):
    v = body.get(key)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or v > hi or v < lo or (lo_open and v == lo):
        kind = "an integer" if integer else "a number"
        raise bad_request(f"{key} must be {kind} in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}", key)
    return v


def _text(content, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for p in content:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise bad_request(f"{where}: only text content parts are supported", "messages")
            parts.append(p["text"])
        return "".join(parts)
    raise bad_request(f"{where}: content must be a string or a list of text parts", "messages")


def parse_messages(messages) -> tuple[dict, ...]:
    """A chat request's messages as the decoders take them (developer is system; the last one the user's)."""
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise bad_request(f"messages[{i}] must be an object", "messages")
        role = {"developer": "system"}.get(m.get("role"), m.get("role"))
        if role not in ("system", "user", "assistant"):
            raise bad_request(f"messages[{i}].role {m.get('role')!r} is not supported (system, developer, user, "
                              "assistant)", "messages")
        out.append({"role": role, "content": _text(m.get("content"), f"messages[{i}]")})
    if out[-1]["role"] != "user":
        raise bad_request("the last message must be the user's: WSD answers a user turn", "messages")
    if not any(m["content"].strip() for m in out if m["role"] == "user"):
        raise bad_request("the user's message is empty", "messages")
    return tuple(out)


def parse_prompts(prompt, n: int, limits: ServerLimits) -> list[str]:
    """A completions request's prompts (a string or a list of strings)."""
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_request("prompt must be a string or a list of strings (token-id prompts are not supported: WSD "
                          "renders the prompt for each model's template)", "prompt")
    if any(not p.strip() for p in prompts):
        raise bad_request("prompt must not be empty", "prompt")
    if len(prompts) * n > limits.max_n * 4:
        raise bad_request(f"{len(prompts)} prompts x n={n} is over the limit of {limits.max_n * 4} answers",
                          "prompt")
    return prompts


# ----------------------------------------------------------------------------------------------- responses
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class WSDDetails(BaseModel):
    """WSD's decisions for one answer (an extra field of each choice)."""

    switched: bool | None = None
    switch_index: int | None = None
    kept_draft_tokens: int | None = None
    pilot_tokens: int | None = None
    base_tokens: int | None = None
    draft_text: str | None = None
    calls: CallFigures | None = None  # with the models on servers: requests and tokens per model


class Message(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """A choice of a whole answer or of a stream chunk; what it carries depends on the endpoint (`dump` keeps
    only the fields set)."""

    index: int
    finish_reason: str | None = None
    logprobs: None = None
    message: Message | None = None  # chat, whole
    delta: dict[str, str] | None = None  # chat, streamed
    text: str | None = None  # completions
    wsd: WSDDetails | None = None


class Completion(BaseModel):
    """A whole answer (`chat.completion`, `text_completion`) or a stream chunk (`chat.completion.chunk`)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None

    def dump(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "pilot"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
