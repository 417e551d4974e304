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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
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
    import openai

    return json.JSONDecodeError, httpx.TransportError, openai.APIResponseValidationError, StreamCutShort


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


class OpenAIServer:
    """One model on one OpenAI-compatible server."""

    def __init__(self, base_url: str, model: str, api_key_env: str | None = None, timeout: float = 120.0,
                 max_retries: int = 5, http_client=None):
        from openai import AsyncOpenAI

        key = os.environ.get(api_key_env, "") if api_key_env else ""
        if api_key_env and not key:
            raise UserError(f"environment variable {api_key_env} (the API key for {base_url}) is not set")
        self.url, self.model, self.tries = base_url, model, max_retries + 1
        self.structured: bool | None = None  # False once the server refused response_format
        self.client = AsyncOpenAI(base_url=base_url, api_key=key or "EMPTY", timeout=timeout,
                                  max_retries=max_retries, http_client=http_client)

    @classmethod
    def of(cls, src, defaults=None, http_client=None) -> "OpenAIServer":
        """The server of a url `ModelSource`, with the source's timeout and retries. `defaults` (an object with
        `timeout_s` and `max_retries`, such as a stage's `client:` section) applies where the source sets none."""
        def setting(name: str):
            return getattr(defaults, name) if defaults is not None and name not in src.model_fields_set else \
                getattr(src, name)

        return cls(src.url, src.served_model, src.api_key_env, setting("timeout_s"), setting("max_retries"),
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
                          seed: int | None):
        """Yield (text delta, finish_reason or "", tokens in the delta) of a chat completion, one per streamed
        chunk (closing the stream aborts it). A chunk can hold several tokens (vLLM merges the deltas a busy
        server has not sent yet), so tokens are counted from the chunk's logprobs, or as 1 where a server sends
        none. A stream that breaks part-way, or ends before a finish_reason (the openai client takes a body cut
        short at an event boundary for a finished stream), raises one of `malformed_errors()`; the caller
        restarts the prompt."""
        async with _api_errors(self.url):
            stream = await self.client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                seed=seed, stream=True, stream_options={"include_usage": True}, logprobs=True,
            )
        import openai

        finished = False
        try:
            async for chunk in stream:
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
