"""OpenAI-compatible servers (vLLM in production) through the `openai` client.

- base scoring: `/v1/completions` with a token-id prompt, echo + logprobs and max_tokens=1 (the generated
  token is dropped; this works on vLLM and llama.cpp alike). The caller tokenizes with the base's own tokenizer,
  so the server scores exactly the tokens the switch rule sees (and offsets for the tokenisation boundary come
  from that tokenizer: vLLM's `text_offset` is not usable with token ids);
- base continuation: `/v1/completions` from token ids (the kept draft tokens are exactly the scored ones),
  with the role markers as stop strings;
- pilot drafting: streamed `/v1/chat/completions`, closed as soon as the switch point is known.
Retries with backoff on 429/5xx/timeouts are the openai client's own (`max_retries`). A response that arrives
broken (a body cut short, a connection dropped mid-body) is not retried by the client: `retry_malformed` retries
it the same number of times, then the job fails (exit 1) and a rerun resumes.
The API key comes from the environment variable the caller names, never from a file or a flag.
A model served by several replicas (a list of URLs) is one client whose transport (`Replicas`) sends each attempt
to a replica: so the retry policy above is unchanged and a retried request lands on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass
from typing import NamedTuple

from pilot_core.errors import JobFailed, UserError


@contextlib.asynccontextmanager
async def _api_errors(url: str):
    """Server answers become one clear error: the request's fault -> UserError (exit 2); a server that is
    down or failing after the client's retries -> JobFailed (exit 1; finished records are kept, a rerun
    resumes)."""
    import openai

    try:
        yield
    except (openai.BadRequestError, openai.UnprocessableEntityError) as e:
        raise RequestRefused(f"{url}: the server refused the request ({e.status_code}): {_message(e)}") from None
    except (openai.NotFoundError, openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise UserError(f"{url}: the server refused the request ({e.status_code}): {_message(e)}") from None
    except (openai.APIConnectionError, openai.APIStatusError) as e:
        raise JobFailed(f"{url}: the server failed after retries: {_message(e)}; rerun the same command to "
                        "resume") from None


class RequestRefused(UserError):
    """A 400 or 422: this request cannot run (e.g. the prompt and max_tokens exceed the model's context). Fatal where
    every request is alike (a wrong model name, a bad parameter); a batch of prompts records the item instead."""


class StreamCutShort(Exception):
    """A streamed answer that ended (the connection closed cleanly) before the server said it was finished."""


def malformed_errors() -> tuple[type[BaseException], ...]:
    """What a broken response raises: JSON cut short, a connection dropped mid-body or mid-stream, a stream that
    ends early, a body of the wrong shape."""
    import httpx
    import httpx2
    import openai

    # httpx2: the openai client's own HTTP library; httpx: a client a caller passes in
    return (json.JSONDecodeError, httpx.TransportError, httpx2.TransportError, openai.APIResponseValidationError,
            StreamCutShort)


async def retry_malformed(url: str, tries: int, call, fail: bool = True):
    """await call() again (with backoff) while the server's answer arrives broken. After `tries`: JobFailed, or
    with fail=False the last error (for callers that record failed calls)."""
    errors = malformed_errors()
    for attempt in range(tries):
        try:
            return await call()
        except errors as e:
            if attempt == tries - 1:
                if not fail:
                    raise
                raise JobFailed(f"{url}: broken responses after {tries} tries ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]}); rerun the same command to resume") from None
            await asyncio.sleep(min(0.25 * 2**attempt, 4.0))


def _message(e) -> str:
    body = getattr(e, "body", None)
    msg = body.get("message") if isinstance(body, dict) else None
    return (msg or str(e)).splitlines()[0][:300]


class Completion(NamedTuple):
    text: str
    tokens: int  # completion tokens, as the server counts them
    finish_reason: str  # "stop": EOS or a stop string; "length": max_tokens
    token_ids: list[int] | None  # None where the server does not return them
    top_logprobs: list[float] | None = None  # per generated token, the log-prob of the most likely token there


@dataclass
class _Replica:
    base: str  # its base URL, ending in /
    outstanding: int = 0  # requests sent and not done (a stream until its body is closed)
    failures: int = 0  # in a row
    cool_until: float = 0.0  # time.monotonic() before which it is left out


class Replicas:
    """An httpx2 transport for the openai client that sends each attempt of a request to one of several replicas of
    a served model: the one with the fewest requests outstanding (a streamed answer counts until its body is
    closed; ties go round robin), leaving out a replica whose last attempt failed (connection error, timeout, 429,
    5xx, a body cut short) while its cool-down lasts (1 s, doubling per failure in a row, at most 30 s) unless all
    are cooling down. The openai client's retries therefore reach another replica; which replica answered changes
    no cache key (`calls.Endpoint.identity` names the served model). Requests go through `client` (default: an
    httpx2 client with openai's connection limits; a caller's httpx or httpx2 client, e.g. one injecting faults)."""

    def __init__(self, urls: list[str], client=None):
        import httpx2
        import openai

        self.replicas = [_Replica(u.rstrip("/") + "/") for u in urls]
        self.client = client if client is not None else openai.DefaultAsyncHttpxClient()
        self.turn = 0
        self._stream = _relay_class(httpx2.AsyncByteStream)

    def pick(self) -> int:
        n, now = len(self.replicas), time.monotonic()
        ready = [i for i, r in enumerate(self.replicas) if r.cool_until <= now] or range(n)
        i = min(ready, key=lambda i: (self.replicas[i].outstanding, (i - self.turn) % n))
        self.turn = (i + 1) % n
        return i

    def _done(self, i: int, failed: bool) -> None:
        r = self.replicas[i]
        r.outstanding -= 1
        if failed:
            r.failures += 1
            r.cool_until = time.monotonic() + min(2.0 ** (r.failures - 1), 30.0)
        else:
            r.failures = 0

    def _on(self, url: str, i: int) -> str:
        """The request's URL on replica i (the openai client builds it on the first replica's base URL)."""
        for r in self.replicas:
            if url.startswith(r.base):
                return self.replicas[i].base + url[len(r.base):]
        return url

    async def handle_async_request(self, request):
        import httpx2

        i = self.pick()
        self.replicas[i].outstanding += 1
        ext = dict(request.extensions)
        timeout = ext.pop("timeout", None)
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
        try:
            sent = self.client.build_request(
                request.method, self._on(str(request.url), i), headers=headers, content=await request.aread(),
                extensions=ext, **({"timeout": type(self.client.timeout)(**timeout)} if timeout else {}))
            response = await self.client.send(sent, stream=True)
        except BaseException as e:
            self._done(i, isinstance(e, Exception))
            raise
        failed = response.status_code == 429 or response.status_code >= 500
        return httpx2.Response(response.status_code, headers=response.headers.raw, extensions=response.extensions,
                               stream=self._stream(response, lambda broken: self._done(i, failed or broken)))

    async def aclose(self) -> None:
        await self.client.aclose()


@functools.cache
def _relay_class(base: type):
    class Relay(base):
        """A replica's response body, relayed; closing it (or its failing) ends the request's turn on the replica."""

        def __init__(self, response, done):
            self.response, self.done, self.broken = response, done, False

        async def __aiter__(self):
            try:
                if self.response.is_stream_consumed:  # built from bytes, as a test's mock transport does
                    yield self.response.content
                    return
                async for chunk in self.response.aiter_raw():
                    yield chunk
            except Exception:
                self.broken = True
                raise

        async def aclose(self) -> None:
            done, self.done = self.done, None
            try:
                await self.response.aclose()
            finally:
                if done is not None:
                    done(self.broken)

    return Relay


class OpenAIServer:
    """One model on one OpenAI-compatible server, or on several replicas of it (`base_url` a list: `Replicas`)."""

    def __init__(self, base_url: str | list[str], model: str, api_key_env: str | None = None,
                 timeout: float = 120.0, max_retries: int = 5, http_client=None):
        import openai
        from openai import AsyncOpenAI

        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        where = urls[0] if len(urls) == 1 else f"{model} at {', '.join(urls)}"
        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not key:
            raise UserError(f"environment variable {api_key_env} (the API key for {where}) is not set")
        self.url, self.model, self.tries = where, model, max_retries + 1
        self.structured: bool | None = None  # False once the server refused response_format
        if len(urls) > 1:
            http_client = openai.DefaultAsyncHttpxClient(transport=Replicas(urls, http_client))
        self.client = AsyncOpenAI(base_url=urls[0], api_key=key or "EMPTY", timeout=timeout,
                                  max_retries=max_retries, http_client=http_client)

    @classmethod
    def of(cls, src, defaults=None, http_client=None) -> "OpenAIServer":
        """The server of a url `ModelSource`, with the source's timeout and retries. `defaults` (an object with
        `timeout_s` and `max_retries`, such as a stage's `client:` section) applies where the source sets none."""
        def setting(name: str):
            return getattr(defaults, name) if defaults is not None and name not in src.model_fields_set else \
                getattr(src, name)

        return cls(src.urls, src.served_model, src.api_key_env, setting("timeout_s"), setting("max_retries"),
                   http_client)

    async def close(self) -> None:
        await self.client.close()

    async def retry_broken(self, call):
        """await call() (a whole request, e.g. one prompt's WSD) again while this server's answer arrives broken
        part-way, as a stream can: the request starts over."""
        return await retry_malformed(self.url, self.tries, call)

    async def _request(self, make):
        """await make() with the server's answers mapped to clear errors, again while the answer arrives broken."""
        async def call():
            async with _api_errors(self.url):
                return await make()

        return await retry_malformed(self.url, self.tries, call)

    # ------------------------------------------------------------------------------------------- base side
    async def score(self, ids: list[int]) -> list[float | None]:
        """log p(ids[i] | ids[:i]) for every token (None for the first), scored by the server."""
        r = await self._request(lambda: self.client.completions.create(
            model=self.model, prompt=ids, echo=True, logprobs=1, max_tokens=1, temperature=0.0))
        lp = r.choices[0].logprobs
        if lp is None or not lp.token_logprobs or len(lp.token_logprobs) < len(ids):
            raise UserError(f"{self.url}: the server returned no prompt logprobs for echo=True; WSD needs a "
                            "server that scores prompts (vLLM does; `transformers serve` does not)")
        return list(lp.token_logprobs[: len(ids)])  # drop the one generated token

    async def complete(self, prompt_ids: list[int], max_tokens: int, stop: list[str], temperature: float,
                       top_p: float, seed: int | None, top_k: int = 0, top_logprobs: bool = False) -> Completion:
        """Continue from token ids. The sampled token ids come back where the server returns them (vLLM's
        `return_token_ids`), so a search can continue a chunk from exactly the tokens that were sampled; with
        `top_logprobs`, so does the top-1 log-prob at each generated position (Nudging's confidence)."""
        extra = {"return_token_ids": True, **({"top_k": top_k} if top_k else {})}
        r = await self._request(lambda: self.client.completions.create(
            model=self.model, prompt=prompt_ids, max_tokens=max_tokens, stop=stop, temperature=temperature,
            top_p=top_p, seed=seed, extra_body=extra, **({"logprobs": 1} if top_logprobs else {})))
        c = r.choices[0]
        ids = getattr(c, "token_ids", None)
        top = None
        if top_logprobs:
            lp = c.logprobs
            if lp is None or lp.top_logprobs is None:
                raise UserError(f"{self.url}: the server returned no top log-probs for logprobs=1")
            # the sampled token is listed beside the top-1 one: the largest is the top-1
            top = [max(d.values()) if d else float("-inf") for d in lp.top_logprobs]
        return Completion(c.text, (r.usage.completion_tokens if r.usage else 0), c.finish_reason or "",
                          list(ids) if ids is not None else None, top)

    async def stream_complete(self, prompt_ids: list[int], max_tokens: int, stop: list[str], temperature: float,
                              top_p: float, seed: int | None):
        """Continue from token ids, streamed: yield (the text so far, completion tokens so far). A stream that
        breaks part-way raises `StreamCutShort` (the caller starts the answer over)."""
        import openai

        async with _api_errors(self.url):
            stream = await self.client.completions.create(
                model=self.model, prompt=prompt_ids, max_tokens=max_tokens, stop=stop, temperature=temperature,
                top_p=top_p, seed=seed, stream=True, stream_options={"include_usage": True})
        text, tokens, finished = "", 0, False
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    tokens = chunk.usage.completion_tokens
                c = chunk.choices[0] if chunk.choices else None
                if c is None:
                    continue
                finished = finished or bool(c.finish_reason)
                if c.text:
                    text, tokens = text + c.text, tokens + 1  # the usage chunk at the end has the exact count
                    yield text, tokens
            yield text, tokens
        except openai.APIError as e:  # the connection broke or stalled past the timeout, or an error event came
            raise StreamCutShort(f"{self.url}: the stream broke part-way ({type(e).__name__})") from e
        finally:
            await stream.close()
        if not finished:
            raise StreamCutShort(f"{self.url}: the streamed answer ended before the server finished it")

    # ------------------------------------------------------------------------------------------- chat
    async def chat(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
                   seed: int | None, response_format: dict | None = None, top_logprobs: int = 0) -> dict:
        """One chat completion: {text, prompt_tokens, completion_tokens, finish_reason}, and with `top_logprobs`
        the first generated token's most likely tokens (`top_logprobs`: [{token, logprob}], as the API returns
        them; AlpacaEval's annotator reads them). Errors are the openai client's own (after its retries; broken
        responses too); callers decide which abort a run and which are recorded. With `response_format`
        (structured output) the server is asked for that JSON schema; a server that refuses the parameter (400
        naming it) is asked without it from then on."""
        import openai

        extra = {"response_format": response_format} if response_format and self.structured is not False else {}
        if top_logprobs:
            extra.update(logprobs=True, top_logprobs=top_logprobs)
        try:
            r = await retry_malformed(self.url, self.tries, lambda: self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                seed=seed, **extra), fail=False)
        except openai.BadRequestError as e:
            if "response_format" not in extra or not any(w in str(e) for w in ("response_format", "json_schema",
                                                                                "guided")):
                raise
            self.structured = False  # this server has no structured output: prompt-only verdicts, still parsed
            return await self.chat(messages, max_tokens, temperature, top_p, seed, top_logprobs=top_logprobs)
        c = r.choices[0]
        out = {"text": c.message.content or "", "prompt_tokens": r.usage.prompt_tokens if r.usage else 0,
               "completion_tokens": r.usage.completion_tokens if r.usage else 0,
               "finish_reason": c.finish_reason or ""}
        if top_logprobs:
            first = c.logprobs.content[0] if c.logprobs and c.logprobs.content else None
            if first is None:
                raise UserError(f"{self.url}: the server returned no logprobs for logprobs=True; this judge reads "
                                "the first token's top_logprobs")
            out["top_logprobs"] = [{"token": t.token, "logprob": t.logprob} for t in first.top_logprobs]
        return out

    # ------------------------------------------------------------------------------------------- pilot side
    async def stream_chat(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
                          seed: int | None, usage: dict | None = None):
        """Yield (text delta, finish_reason or "", tokens in the delta) of a chat completion, one per streamed
        chunk (closing the stream aborts it). A chunk can hold several tokens (vLLM merges the deltas a busy
        server has not sent yet), so tokens are counted from the chunk's logprobs, or as 1 where a server sends
        none. A stream that breaks part-way, or ends before a finish_reason (the openai client takes a body cut
        short at an event boundary for a finished stream), raises one of `malformed_errors()`; the caller
        restarts the prompt. `usage`, where given, gets the server's `prompt_tokens` and `completion_tokens` from
        the stream's usage event (vLLM and OpenAI send it last, after the finish: a stream closed before its end
        leaves `usage` as it was, as does a server that sends none)."""
        async with _api_errors(self.url):
            stream = await self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                seed=seed, stream=True, stream_options={"include_usage": True}, logprobs=True,
            )
        import openai

        finished = False
        try:
            async for chunk in stream:
                if usage is not None and chunk.usage is not None:
                    usage.update(prompt_tokens=chunk.usage.prompt_tokens,
                                 completion_tokens=chunk.usage.completion_tokens)
                c = chunk.choices[0] if chunk.choices else None
                if c is None:
                    continue
                finished = finished or bool(c.finish_reason)
                text = (c.delta.content if c.delta else None) or ""
                tokens = len(c.logprobs.content) if c.logprobs and c.logprobs.content else int(bool(text))
                if text or tokens or c.finish_reason:
                    yield text, c.finish_reason or "", tokens
        except openai.APIConnectionError as e:  # the client wraps a read that hangs mid-stream (APITimeoutError)
            raise StreamCutShort(f"{self.url}: the stream broke part-way ({type(e).__name__})") from e
        finally:
            await stream.close()
        if not finished:
            raise StreamCutShort(f"{self.url}: the streamed answer ended before the server finished it")


@dataclass
class ServedModel:
    """A model on a server with its tokenizer loaded locally (tokenizer files are small): the caller tokenizes,
    so the server scores and continues exactly the token ids the caller chose."""

    server: OpenAIServer
    tokenizer: object

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
