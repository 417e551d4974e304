"""Chat calls to many models (candidate responses, judgments), through one path: cache first, then an
OpenAI-compatible endpoint (`OpenAIServer`, whose openai client retries 429/5xx/timeouts with backoff, on another
replica where the model has several) or a local transformers model (`LocalChat`). Concurrency applies per served
replica and a requests-per-minute limit per model; a local model generates `concurrency` calls at a time, in one
batch. A call that still fails is returned as a failure (recorded by the caller, retried by a rerun); a refused
credential or an unknown model aborts the run with one clear error. The calls the cache does not hold are sent
from here (`send_calls`) or by another engine with the same contract (`pilot_core.models.ray_calls`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import Field

from pilot_core.config import BaseConfig
from pilot_core.errors import UserError
from pilot_core.models.call_cache import cache_key
from pilot_core.models.compute import Compute
from pilot_core.models.local_chat import LocalChat
from pilot_core.models.openai_server import OpenAIServer, malformed_errors
from pilot_core.models.source import ModelSource


class ClientConfig(BaseConfig):
    """How calls reach the models of a stage (its `client:` section)."""

    concurrency: int = Field(8, ge=1, description="requests in flight per served replica (a model with a list of "
                             "urls: this many on each; a local model: calls generated together in one batch)")
    requests_per_minute: float | None = Field(None, gt=0, description="rate limit per model, all its replicas "
                                              "together (null: none)")
    max_retries: int = Field(5, ge=0, le=20, description="retries with backoff on 429, 5xx, timeouts and broken "
                             "bodies (a model's own `max_retries` wins where set)")
    timeout_s: float = Field(120.0, gt=0, description="seconds per request (a model's own `timeout_s` wins where "
                             "set)")


def _weights_id(path: str | None) -> list | None:
    """Cheap identity of a local checkpoint (names, sizes and modification times of its weight files), so a
    checkpoint retrained in place does not hit the previous one's cache entries (a copy misses the cache once)."""
    from pathlib import Path

    if not path or not Path(path).is_dir():
        return None
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).glob("*.safetensors"))


class Endpoint:
    """One model to call, with its concurrency and rate limits."""

    def __init__(self, src: ModelSource, client: ClientConfig, http_client=None, compute: Compute | None = None):
        if src.url:  # the model's own timeout and retries win where its config sets them; `client:` is the default
            self.backend = OpenAIServer.of(src, client, http_client)
        else:
            self.backend = LocalChat.of(src, client.concurrency, compute)  # a local model's batch
        # what the cache key names: the served model (not the host, so another replica or a moved server still
        # hits the cache), or the local weights; never the key variable
        self.identity = ({"served_model": src.served_model} if src.url else
                         {"path": src.path, "tiny": src.tiny.model_dump(mode="json") if src.tiny else None,
                          "weights": _weights_id(src.path)})
        self.sem = asyncio.Semaphore(client.concurrency * max(1, len(src.urls)))
        self.interval = 60.0 / client.requests_per_minute if client.requests_per_minute else 0.0
        self.next_start = 0.0
        self.rate_lock = asyncio.Lock()

    async def wait_turn(self) -> None:
        if not self.interval:
            return
        async with self.rate_lock:
            now = time.monotonic()
            wait = self.next_start - now
            self.next_start = max(now, self.next_start) + self.interval
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class Call:
    kind: str  # "response" or "judgment"
    who: str  # generator or judge name
    messages: list[dict]
    params: dict  # max_tokens, temperature, top_p, seed
    key: str  # cache_key(endpoint identity, params, messages): see `make_call`


def make_call(kind: str, who: str, endpoint: Endpoint, messages: list[dict], params: dict) -> Call:
    return Call(kind, who, messages, params, cache_key(endpoint.identity, params, messages))


@dataclass
class CallStats:
    requests: int = 0
    cache_hits: int = 0
    failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict = field(default_factory=dict)

    def add(self, result: dict, hit: bool = False) -> None:
        """One call's outcome: a cache hit, or a request that answered (its tokens) or failed (`error`: "<exception
        name>: <message>", counted by name)."""
        if hit:
            self.cache_hits += 1
            return
        self.requests += 1
        if "error" in result:
            self.failures += 1
            name = result["error"].split(":", 1)[0]
            self.errors[name] = self.errors.get(name, 0) + 1
        else:
            self.prompt_tokens += result["prompt_tokens"]
            self.completion_tokens += result["completion_tokens"]


Done = Callable[[Call, dict, bool], None]  # (call, its result, whether the cache held it)


async def run_calls(calls: list[Call], endpoints: dict[str, Endpoint], cache, stats: dict[str, CallStats],
                    progress=None, engine=None) -> dict[str, dict]:
    """Every call's result by key: {text, prompt_tokens, completion_tokens, finish_reason} or {error: ...}. What
    `cache` (a `ResponseCache`, or anything with its get/put) holds is not sent again; the rest goes to
    `engine(todo, endpoints, cache, done)` (default `send_calls`, here), which commits each answer to the cache
    as it arrives and reports every call to `done`."""
    results: dict[str, dict] = {}

    def done(c: Call, r: dict, hit: bool = False) -> None:
        stats[c.who].add(r, hit)
        results[c.key] = r
        if progress is not None:
            progress.update(1)

    todo = []
    for c in calls:
        stats.setdefault(c.who, CallStats())
        hit = cache.get(c.key)
        if hit is not None:
            done(c, hit, True)
        else:
            todo.append(c)
    if todo:
        await (engine or send_calls)(todo, endpoints, cache, done)
    return results


async def send_calls(todo: list[Call], endpoints: dict[str, Endpoint], cache, done: Done) -> None:
    """Send each call: served models one request per call (up to their `concurrency` in flight), a local model its
    calls in batches, one batch at a time. An answer is committed to `cache` as it arrives; a failure is not (a
    rerun tries it again)."""
    import openai

    failures = (openai.APIError, ValueError, *malformed_errors())  # after retries; a rerun tries again

    def finish(c: Call, r: dict | None = None, error: BaseException | None = None) -> None:
        if error is not None:
            r = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
        else:
            cache.put(c.key, c.kind, c.who, r)
        done(c, r, False)

    async def served(c: Call) -> None:
        ep = endpoints[c.who]
        async with ep.sem:
            await ep.wait_turn()
            try:
                r = await ep.backend.chat(c.messages, **c.params)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                raise UserError(f"{c.who}: the server refused the request ({e.status_code}): check the model "
                                "name and the API key variable") from None
            except failures as e:
                return finish(c, error=e)
        finish(c, r)

    async def local(who: str, todo: list[Call]) -> None:
        backend = endpoints[who].backend
        for i in range(0, len(todo), backend.batch_size):
            part = todo[i : i + backend.batch_size]
            try:
                rs = await backend.chat_many([(c.messages, c.params) for c in part])
            except ValueError as e:
                for c in part:
                    finish(c, error=e)
                continue
            for c, r in zip(part, rs):
                finish(c, r)

    jobs, by_local = [], {}
    for c in todo:
        if isinstance(endpoints[c.who].backend, LocalChat):
            by_local.setdefault(c.who, []).append(c)
        else:
            jobs.append(served(c))
    await asyncio.gather(*jobs, *(local(who, todo) for who, todo in by_local.items()))
