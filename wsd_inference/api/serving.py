"""Serving OpenAI's completions over a WSD backend (`wsd_inference.serving.LocalBackend` or `ServedBackend`):
admission (a request's answers into the backend's bounded queue, all or none, else a 429 with Retry-After), the
whole response or its stream, the request's timeout (from admission: waiting counts), clients that go away, and
the metrics (after vLLM's `OpenAIServingChat`). What runs the answers, and when, is the backend's scheduler. The
HTTP side is `api/router.py`."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from pilot_core.errors import UserError
from pilot_core.method_record import MethodRecord
from pilot_core.models.templates import STOP_STRINGS, cut_before_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.api.metrics import ServerMetrics
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
from wsd_inference.serving import Job, JobCancelled, QueueFull, prompt_tokens, request_config

log = logging.getLogger("pilot.wsd.server")


def finish_reason(record: MethodRecord, cfg: WSDConfig, job: Job) -> str:
    """The decoder's own reason where it reported one (in-process: an answer that ends in EOS or a stop string
    exactly at its budget is "stop"); otherwise "length" where the answer used the whole budget, else "stop"."""
    if job.finish is not None:
        return job.finish
    return "length" if record.completion_tokens >= cfg.max_new_tokens else "stop"


def wsd_details(record: MethodRecord) -> WSDDetails:
    w = record.wsd
    calls = {} if record.calls is None else {"calls": record.calls}  # left out where not counted (in-process)
    return WSDDetails(switched=w.switched, switch_index=w.switch_index, kept_draft_tokens=w.kept_draft_tokens,
                      pilot_tokens=record.pilot_tokens, base_tokens=record.base_tokens, draft_text=w.draft_text,
                      **calls)


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


@dataclass(eq=False)
class Admitted:
    """A request's answers in the server, from admission until `release`: its jobs (one per choice), the
    settings they decode with, and its deadline (monotonic seconds)."""

    jobs: list[Job]  # prompt by prompt, n choices each
    rcfg: WSDConfig
    n: int
    arrived: float
    deadline: float
    release: Callable[[], None]

    def waiting(self) -> int:
        return sum(job.started_at is None for job in self.jobs)


class OpenAIServing:
    """One server's state (answers in flight, requests served, metrics) and what it does with a checked request."""

    def __init__(self, backend, cfg: WSDConfig, model_name: str, limits: ServerLimits):
        self.backend, self.cfg, self.model_name, self.limits = backend, cfg, model_name, limits
        self.in_flight = self.served = 0
        self.started = int(time.time())
        self.metrics = ServerMetrics(backend)
        self.answer_s: float | None = None  # a running mean of an answer's decoding seconds (Retry-After)

    # -------------------------------------------------------------------------------------------- admission
    def admit(self, recs: list[PromptRecord], s: SamplingParams, on_text=None) -> Admitted:
        """The request's answers into the backend's queue, all or none; `on_text(i, text)`, when streaming, is
        given answer i's text so far (from any thread). Its `release` (idempotent) stops what is unfinished."""
        rcfg = request_config(self.cfg, s.max_tokens, s.temperature, s.top_p)
        nonce = uuid.uuid4().hex if s.seed is None else f"seed{s.seed}"
        jobs = []
        for p, rec in enumerate(recs):
            n_tok = prompt_tokens(self.backend, rec)
            if n_tok > self.limits.max_prompt_tokens:
                raise bad_request(f"the prompt has {n_tok} tokens, over the limit of {self.limits.max_prompt_tokens}",
                                  "messages")
            for i in range(s.n):  # the choice's random stream: keyed by the seed (or a nonce), prompt and index
                jobs.append(Job(PromptRecord(f"{nonce}:{p}:{i}", rec.messages), rcfg, s.stop, priority=s.priority,
                                prompt_tokens=n_tok))
        if on_text is not None:
            for i, job in enumerate(jobs):
                job.on_text = lambda text, i=i: on_text(i, text)
        bound = self.backend.queue.bound
        if len(jobs) > bound:
            raise bad_request(f"{len(jobs)} answers (prompts x n) is over the server's queue of {bound}", "n")
        try:
            self.backend.submit(jobs)
        except QueueFull as e:
            raise ApiError(429, f"the server is busy: {e}; retry", "rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self.retry_after())}) from None
        self.in_flight += len(jobs)
        held = [True]

        def release() -> None:
            if held:
                held.clear()
                for job in jobs:
                    if not job.future.done():
                        self.backend.cancel(job)
                self.in_flight -= len(jobs)
                self.served += 1

        now = time.monotonic()
        return Admitted(jobs, rcfg, s.n, now, now + self.limits.request_timeout_s, release)

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved on by what waits now (at least 1, at most 60)."""
        if self.answer_s is None:
            return 1
        return int(min(60, max(1, math.ceil(len(self.backend.queue) / max(self.backend.capacity, 1)
                                            * self.answer_s))))

    def finished(self, adm: Admitted, job: Job, record: MethodRecord) -> None:
        """An answer is done: the metrics and the running mean of decoding time."""
        now = time.monotonic()
        if job.started_at is not None:
            took = now - job.started_at
            self.answer_s = took if self.answer_s is None else 0.9 * self.answer_s + 0.1 * took
        self.metrics.answer(record, finish_reason(record, adm.rcfg, job), job.prompt_tokens, now - adm.arrived,
                            None if job.started_at is None else job.started_at - adm.arrived)

    def usage(self, adm: Admitted, records: list[MethodRecord]) -> Usage:
        p = sum(job.prompt_tokens for job in adm.jobs[:: adm.n])  # each prompt once, as OpenAI counts n > 1
        c = sum(r.completion_tokens for r in records)
        return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)

    def timed_out(self, adm: Admitted) -> ApiError:
        waiting = adm.waiting()
        where = f" ({waiting} of its {len(adm.jobs)} answers still waiting in the queue)" if waiting else ""
        return ApiError(504, f"the answer took longer than {self.limits.request_timeout_s:g} s{where}",
                        "timeout_error", code="timeout")

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
    async def run_all(self, is_disconnected, adm: Admitted) -> list[MethodRecord]:
        tasks = [asyncio.ensure_future(self.backend.result(j)) for j in adm.jobs]
        try:
            while True:
                left = adm.deadline - time.monotonic()
                _, pending = await asyncio.wait(tasks, timeout=max(0.0, min(0.25, left)))
                if not pending:
                    records = [self.upstream(t) for t in tasks]
                    for job, record in zip(adm.jobs, records):
                        self.finished(adm, job, record)
                    return records
                if await is_disconnected():
                    log.info("client went away: %d answers cancelled", len(pending))
                    raise JobCancelled()
                if time.monotonic() >= adm.deadline:
                    raise self.timed_out(adm)
        finally:
            for t in tasks:
                t.cancel()

    async def complete(self, is_disconnected, adm: Admitted, chat: bool) -> Completion:
        """The whole response; raises JobCancelled when the client went away."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        try:
            records = await self.run_all(is_disconnected, adm)
        finally:
            adm.release()
        choices = []
        for i, (job, record) in enumerate(zip(adm.jobs, records)):
            text = record.response
            body = {"message": Message(role="assistant", content=text)} if chat else {"text": text}
            choices.append(Choice(index=i, finish_reason=finish_reason(record, adm.rcfg, job), logprobs=None,
                                  wsd=wsd_details(record), **body))
        return Completion(id=rid, object="chat.completion" if chat else "text_completion", created=created,
                          model=self.model_name, choices=choices, usage=self.usage(adm, records))

    async def stream(self, adm: Admitted, updates: asyncio.Queue, s: SamplingParams,
                     chat: bool) -> AsyncIterator[str]:
        """Server-sent events: the answers piece by piece as they become final, then [DONE]. `updates` gets
        (answer index, text so far) from the jobs' `on_text` (see `admit`)."""
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        created = int(time.time())
        obj = "chat.completion.chunk" if chat else "text_completion"
        jobs = adm.jobs

        def event(choices: list[Choice], usage: Usage | None = None) -> str:
            extra = {} if usage is None else {"usage": usage}
            return _sse(Completion(id=rid, object=obj, created=created, model=self.model_name, choices=choices,
                                   **extra).dump())

        def piece(i: int, text: str, finish: str | None = None, wsd: WSDDetails | None = None) -> Choice:
            body = {"delta": {"content": text} if text or finish is None else {}} if chat else {"text": text}
            if wsd is not None:
                body["wsd"] = wsd
            return Choice(index=i, finish_reason=finish, logprobs=None, **body)

        status = 499  # until it ends otherwise: the client went away mid-stream
        try:
            streamers = [Streamer(STOP_STRINGS + s.stop) for _ in jobs]
            tasks = [asyncio.ensure_future(self.backend.result(j)) for j in jobs]
            for i, t in enumerate(tasks):
                t.add_done_callback(lambda t, i=i: updates.put_nowait((i, None)))
            records: list[MethodRecord | None] = [None] * len(jobs)
            try:
                if chat:
                    yield event([Choice(index=i, delta={"role": "assistant", "content": ""}, finish_reason=None,
                                        logprobs=None) for i in range(len(jobs))])
                while any(r is None for r in records):
                    try:
                        i, text = await asyncio.wait_for(updates.get(), max(0.0, adm.deadline - time.monotonic()))
                    except asyncio.TimeoutError:
                        e = self.timed_out(adm)
                        status = e.status
                        yield _sse(e.body())
                        return
                    if text is not None:
                        d = streamers[i].delta(text)
                        if d:
                            yield event([piece(i, d)])
                        continue
                    try:
                        records[i] = self.upstream(tasks[i])
                    except ApiError as e:
                        status = e.status
                        yield _sse(e.body())
                        return
                    self.finished(adm, jobs[i], records[i])
                    rest = streamers[i].rest(records[i].response)
                    if rest:
                        yield event([piece(i, rest)])
                    yield event([piece(i, "", finish_reason(records[i], adm.rcfg, jobs[i]), wsd_details(records[i]))])
                if s.include_usage:
                    yield event([], usage=self.usage(adm, records))
                yield _sse("[DONE]")
                status = 200
            finally:  # also when the client went away mid-stream: its answers stop
                for t in tasks:
                    t.cancel()
        finally:
            adm.release()
            self.metrics.request(status)
