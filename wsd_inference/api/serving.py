"""Serving OpenAI's completions over a WSD backend (`wsd_inference.serving.LocalBackend` or `ServedBackend`):
admission (a bound on answers in flight), a request's answers as backend jobs, the whole response or its stream,
timeouts and clients that go away (after vLLM's `OpenAIServingChat`). The HTTP side is `api/router.py`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from pilot_core.errors import UserError
from pilot_core.method_record import MethodRecord
from pilot_core.models.templates import STOP_STRINGS, cut_before_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.api.protocol import (
    ApiError,
    Choice,
    Completion,
    Message,
    SamplingParams,
    ServerLimits,
    Usage,
    WSDDetails,
    bad_request,
)
from wsd_inference.config import WSDConfig
from wsd_inference.serving import Job, JobCancelled, prompt_tokens, request_config

log = logging.getLogger("pilot.wsd.server")


def finish_reason(record: MethodRecord, cfg: WSDConfig, job: Job) -> str:
    """The decoder's own reason where it reported one (in-process: an answer that ends in EOS or a stop string
    exactly at its budget is "stop"); otherwise "length" where the answer used the whole budget, else "stop"."""
    if job.finish is not None:
        return job.finish
    return "length" if record.completion_tokens >= cfg.max_new_tokens else "stop"


def wsd_details(record: MethodRecord) -> WSDDetails:
    w = record.wsd
    return WSDDetails(switched=w.switched, switch_index=w.switch_index, kept_draft_tokens=w.kept_draft_tokens,
                      pilot_tokens=record.pilot_tokens, base_tokens=record.base_tokens, draft_text=w.draft_text)


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


def _sse(payload: dict | str) -> str:
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload)) + "\n\n"


class OpenAIServing:
    """One server's state (answers in flight, requests served) and what it does with a checked request."""

    def __init__(self, backend, cfg: WSDConfig, model_name: str, limits: ServerLimits):
        self.backend, self.cfg, self.model_name, self.limits = backend, cfg, model_name, limits
        self.in_flight = self.served = 0
        self.started = int(time.time())

    # -------------------------------------------------------------------------------------------- admission
    def admit(self, answers: int) -> Callable[[], None]:
        """Slots for a request's answers (its choices) in flight; its `release` may be called more than once."""
        if answers > self.limits.max_concurrent:
            raise bad_request(f"{answers} answers (prompts x n) is over the server's limit of "
                              f"{self.limits.max_concurrent} in flight", "n")
        if self.in_flight + answers > self.limits.max_concurrent:
            raise ApiError(429, f"the server is at its limit of {self.limits.max_concurrent} answers in flight; "
                           "retry", "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": "1"})
        self.in_flight += answers
        held = [True]

        def release() -> None:
            if held:
                held.clear()
                self.in_flight -= answers
                self.served += 1

        return release

    def jobs_for(self, recs: list[PromptRecord], s: SamplingParams) -> tuple[list[Job], WSDConfig]:
        rcfg = request_config(self.cfg, s.max_tokens, s.temperature, s.top_p)
        nonce = uuid.uuid4().hex if s.seed is None else f"seed{s.seed}"
        jobs = []
        for p, rec in enumerate(recs):
            n_tok = prompt_tokens(self.backend, rec)
            if n_tok > self.limits.max_prompt_tokens:
                raise bad_request(f"the prompt has {n_tok} tokens, over the limit of {self.limits.max_prompt_tokens}",
                                  "messages")
            for i in range(s.n):  # the choice's random stream: keyed by the seed (or a nonce), prompt and index
                jobs.append(Job(PromptRecord(f"{nonce}:{p}:{i}", rec.messages), rcfg, s.stop))
        return jobs, rcfg

    def usage(self, recs: list[PromptRecord], records: list[MethodRecord]) -> Usage:
        p = sum(prompt_tokens(self.backend, r) for r in recs)
        c = sum(r.completion_tokens for r in records)
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    @staticmethod
    def upstream(task) -> MethodRecord:
        try:
            return task.result()
        except UserError as e:  # a model server that failed after its retries, or refused the request
            raise ApiError(502, f"a model server failed: {e}", "api_error", code="upstream_error") from None
        except Exception as e:  # noqa: BLE001 — a bug or a model that broke: logged here, OpenAI's shape there
            log.exception("an answer failed")
            raise ApiError(500, f"the answer failed ({type(e).__name__}); see the server's log", "server_error",
                           code="internal_error") from None

    # -------------------------------------------------------------------------------------------- answers
    async def run_all(self, is_disconnected, jobs: list[Job]) -> list[MethodRecord]:
        tasks = [asyncio.ensure_future(self.backend.answer(j)) for j in jobs]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.request_timeout_s
        try:
            while True:
                _, pending = await asyncio.wait(tasks, timeout=0.25)
                if not pending:
                    return [self.upstream(t) for t in tasks]
                if await is_disconnected():
                    log.info("client went away: %d answers cancelled", len(pending))
                    raise JobCancelled()
                if loop.time() > deadline:
                    raise ApiError(504, f"the answer took longer than {self.limits.request_timeout_s:g} s",
                                   "timeout_error", code="timeout")
        finally:
            for t in tasks:
                t.cancel()

    async def complete(self, is_disconnected, recs: list[PromptRecord], s: SamplingParams, chat: bool,
                       release, jobs: list[Job], rcfg: WSDConfig) -> Completion:
        """The whole response; raises JobCancelled when the client went away."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        try:
            records = await self.run_all(is_disconnected, jobs)
        finally:
            release()
        choices = []
        for i, (job, record) in enumerate(zip(jobs, records)):
            text = record.response
            body = {"message": Message(role="assistant", content=text)} if chat else {"text": text}
            choices.append(Choice(index=i, finish_reason=finish_reason(record, rcfg, job), logprobs=None,
                                  wsd=wsd_details(record), **body))
        return Completion(id=rid, object="chat.completion" if chat else "text_completion", created=created,
                          model=self.model_name, choices=choices, usage=self.usage(recs, records))

    async def stream(self, recs: list[PromptRecord], s: SamplingParams, chat: bool, release, jobs: list[Job],
                     rcfg: WSDConfig) -> AsyncIterator[str]:
        """Server-sent events: the answers piece by piece as they become final, then [DONE]."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[Choice], usage: Usage | None = None) -> str:
            extra = {} if usage is None else {"usage": usage}
            return _sse(Completion(id=rid, object=obj, created=created, model=self.model_name, choices=choices,
                                   **extra).dump())

        def piece(i: int, text: str, finish: str | None = None, wsd: WSDDetails | None = None) -> Choice:
            body = {"delta": {"content": text} if text or finish is None else {}} if chat else {"text": text}
            if wsd is not None:
                body["wsd"] = wsd
            return Choice(index=i, finish_reason=finish, logprobs=None, **body)

        try:
            loop = asyncio.get_running_loop()
            updates: asyncio.Queue = asyncio.Queue()
            streamers = [Streamer(STOP_STRINGS + s.stop) for _ in jobs]
            for i, job in enumerate(jobs):
                job.on_text = lambda text, i=i: loop.call_soon_threadsafe(updates.put_nowait, (i, text))
            tasks = [asyncio.ensure_future(self.backend.answer(j)) for j in jobs]
            for i, t in enumerate(tasks):
                t.add_done_callback(lambda t, i=i: updates.put_nowait((i, None)))
            deadline = loop.time() + self.limits.request_timeout_s
            records: list[MethodRecord | None] = [None] * len(jobs)
            try:
                if chat:
                    yield event([Choice(index=i, delta={"role": "assistant", "content": ""}, finish_reason=None,
                                        logprobs=None) for i in range(len(jobs))])
                while any(r is None for r in records):
                    try:
                        i, text = await asyncio.wait_for(updates.get(), max(0.0, deadline - loop.time()))
                    except asyncio.TimeoutError:
                        yield _sse(ApiError(504, "the answer took longer than "
                                            f"{self.limits.request_timeout_s:g} s", "timeout_error",
                                            code="timeout").body())
                        return
                    if text is not None:
                        d = streamers[i].delta(text)
                        if d:
                            yield event([piece(i, d)])
                        continue
                    try:
                        records[i] = self.upstream(tasks[i])
                    except ApiError as e:
                        yield _sse(e.body())
                        return
                    rest = streamers[i].rest(records[i].response)
                    if rest:
                        yield event([piece(i, rest)])
                    yield event([piece(i, "", finish_reason(records[i], rcfg, jobs[i]), wsd_details(records[i]))])
                if s.include_usage:
                    yield event([], usage=self.usage(recs, records))
                yield _sse("[DONE]")
            finally:  # also when the client went away mid-stream: its answers stop
                for t in tasks:
                    t.cancel()
        finally:
            release()
