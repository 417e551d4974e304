"""Model calls for responses and judgments, through one path: cache first, then an OpenAI-compatible endpoint
(`wsd_inference.openai_backend.OpenAIServer`, whose openai client retries 429/5xx/timeouts with backoff) or a
local transformers model. Concurrency and a requests-per-minute limit apply per endpoint. A call that still
fails is returned as a failure (recorded by the caller, retried by a rerun); a refused credential or an unknown
model aborts the run with one clear error."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field

from data_curation.preferences_config import ClientConfig
from data_curation.response_cache import ResponseCache, cache_key
from pilot_core.errors import UserError
from pilot_core.model_source import ModelSource


class LocalChat:
    """A local transformers chat model; calls run one at a time in a worker thread, seeded per call."""

    def __init__(self, src: ModelSource):
        from wsd_inference.hf_backend import load_hf_model

        self.m = load_hf_model(src.local_path(), f"model {src.name}", trust_remote_code=src.trust_remote_code,
                               need_chat_template=True)
        self.lock = threading.Lock()

    def _generate(self, messages, max_tokens, temperature, top_p, seed) -> dict:
        import torch

        from wsd_inference.prompts import pilot_prompt

        ids = self.m.encode(pilot_prompt(self.m.tokenizer, messages))
        with self.lock, torch.no_grad():
            torch.manual_seed(seed or 0)
            out = self.m.model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=temperature > 0,
                                        temperature=temperature or None, top_p=top_p if temperature > 0 else None,
                                        eos_token_id=sorted(self.m.stop_ids), pad_token_id=self.m.pad_id)
        new = out[0, len(ids):].tolist()
        stopped = bool(new) and new[-1] in self.m.stop_ids
        return {"text": self.m.decode(new).strip(), "prompt_tokens": len(ids), "completion_tokens": len(new),
                "finish_reason": "stop" if stopped else "length"}

    async def chat(self, messages, max_tokens, temperature, top_p, seed) -> dict:
        return await asyncio.to_thread(self._generate, messages, max_tokens, temperature, top_p, seed)

    async def close(self) -> None:
        pass


def _weights_id(path: str | None) -> list | None:
    """Cheap identity of a local checkpoint (names, sizes and modification times of its weight files), so a
    checkpoint retrained in place does not hit the previous one's cache entries (a copy misses the cache once)."""
    from pathlib import Path

    if not path or not Path(path).is_dir():
        return None
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(path).glob("*.safetensors"))


class Endpoint:
    """One model to call, with its concurrency and rate limits."""

    def __init__(self, src: ModelSource, client: ClientConfig, http_client=None):
        if src.url:
            from wsd_inference.openai_backend import OpenAIServer

            self.backend = OpenAIServer(src.url, src.served_model, src.api_key_env, client.timeout_s,
                                        client.max_retries, http_client)
        else:
            self.backend = LocalChat(src)
        # what the cache key names: the served model (not the host, so another replica or a moved server still
        # hits the cache), or the local weights; never the key variable
        self.identity = ({"served_model": src.served_model} if src.url else
                         {"path": src.path, "tiny": src.tiny.model_dump(mode="json") if src.tiny else None,
                          "weights": _weights_id(src.path)})
        self.sem = asyncio.Semaphore(client.concurrency)
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


async def run_calls(calls: list[Call], endpoints: dict[str, Endpoint], cache: ResponseCache,
                    stats: dict[str, CallStats], progress=None) -> dict[str, dict]:
    """Every call's result by key: {text, prompt_tokens, completion_tokens, finish_reason} or {error: ...}."""
    import openai

    from wsd_inference.openai_backend import malformed_errors

    results: dict[str, dict] = {}

    async def one(c: Call) -> None:
        ep, st = endpoints[c.who], stats.setdefault(c.who, CallStats())
        hit = cache.get(c.key)
        if hit is not None:
            st.cache_hits += 1
            results[c.key] = hit
        else:
            async with ep.sem:
                await ep.wait_turn()
                st.requests += 1
                try:
                    r = await ep.backend.chat(c.messages, **c.params)
                except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as e:
                    raise UserError(f"{c.who}: the server refused the request ({e.status_code}): check the model "
                                    "name and the API key variable") from None
                except (openai.APIError, ValueError, *malformed_errors()) as e:  # after retries; a rerun tries again
                    st.failures += 1
                    name = type(e).__name__
                    st.errors[name] = st.errors.get(name, 0) + 1
                    results[c.key] = {"error": f"{name}: {str(e).splitlines()[0][:200]}"}
                    if progress is not None:
                        progress.update(1)
                    return
            st.prompt_tokens += r["prompt_tokens"]
            st.completion_tokens += r["completion_tokens"]
            cache.put(c.key, c.kind, c.who, r)
            results[c.key] = r
        if progress is not None:
            progress.update(1)

    await asyncio.gather(*(one(c) for c in calls))
    return results
