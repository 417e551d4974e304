"""What the WSD server runs its requests on, apart from HTTP: one `Job` per answer (a choice of a request), and a
backend that decodes jobs with the method's runner from the registry, in-process or with the models on servers.

- `LocalBackend`: the models in this process. One engine thread decodes batches; jobs that arrive while it is busy
  wait, and the next batch takes up to `batch_size` of them that share decoding settings (dynamic batching). An
  answer's random stream is seeded by its own key, so it does not depend on the batch it ran in.
- `ServedBackend`: the model that writes is on a server (vLLM); every job is its own requests there, and the
  servers batch them; a streamed answer streams the base's continuation.

A job whose client went away is cancelled: in-process its rows stop at the next token; over HTTP the requests to
the model servers are aborted.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pilot_core.method_record import MethodRecord
from pilot_core.models.sampling import Stream, Watch
from pilot_core.models.templates import base_prompt
from pilot_core.prompts import PromptRecord
from wsd_inference.config import WSDConfig
from wsd_inference.methods import LocalModels, Method, ServedModels


class JobCancelled(Exception):
    """The job's client went away (or its time ran out) before the answer was finished."""


@dataclass
class Job:
    """One answer to decode: the prompt (its id keys the answer's random stream), the request's settings, and,
    when the client streams, a callback given the answer's text so far (from the engine's thread)."""

    rec: PromptRecord
    cfg: WSDConfig
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish: str | None = None  # the decoder's own stop reason where it is known (in-process): "stop" or "length"

    @property
    def batch_key(self) -> tuple:
        """Jobs decoded in one batch share these (a batch has one sampling rule, one budget, one stop list)."""
        return self.cfg.temperature, self.cfg.top_p, self.cfg.max_new_tokens, self.stop


class LocalBackend:
    """In-process models; one engine thread, dynamic batching."""

    def __init__(self, method: Method, models: LocalModels, batch_size: int, gather_s: float = 0.005):
        self.method, self.models, self.batch_size, self.gather_s = method, models, batch_size, gather_s
        self.base_tokenizer = (models.base or models.pilot).tokenizer
        self.batches, self.largest_batch = 0, 0  # batches run, and the most answers one held
        self.cancelled = 0  # answers stopped part-way because their client went away
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="wsd-engine", daemon=True)
        self._thread.start()

    def encode(self, text: str) -> list[int]:
        return self.base_tokenizer(text, add_special_tokens=False).input_ids

    def stats(self) -> dict:
        return {"batches": self.batches, "largest_batch": self.largest_batch, "cancelled": self.cancelled}

    async def answer(self, job: Job) -> MethodRecord:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((job, fut))
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            job.cancelled.set()  # its rows stop at their next token
            raise

    async def close(self) -> None:
        """After the jobs already queued are finished."""
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        waiting: deque = deque()
        while True:
            item = waiting.popleft() if waiting else self._queue.get()
            if item is None:  # closing: after the jobs that came before it
                if not waiting:
                    return
                waiting.append(None)
                continue
            time.sleep(self.gather_s)  # requests sent together arrive a little apart: let them join this batch
            while True:
                try:
                    waiting.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item]
            for other in list(waiting):
                if other is not None and len(batch) < self.batch_size and other[0].batch_key == item[0].batch_key:
                    waiting.remove(other)
                    batch.append(other)
            self._decode(batch)

    def _decode(self, batch: list) -> None:
        live = [(job, fut) for job, fut in batch if not job.cancelled.is_set() and fut.set_running_or_notify_cancel()]
        for job, fut in batch:
            if job.cancelled.is_set() and not fut.done():
                fut.set_exception(JobCancelled())
        if not live:
            return
        self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(live))
        jobs = [job for job, _ in live]
        watch = Watch(jobs[0].stop, tuple(self._watcher(job) for job in jobs))
        try:
            records = self.method.watched(self.models, [j.rec for j in jobs], jobs[0].cfg, watch)
        except BaseException as e:  # noqa: BLE001 — handed to every waiting request, the engine goes on
            for _, fut in live:
                fut.set_exception(e)
            return
        for (job, fut), record in zip(live, records):
            fut.set_result(record)

    def _watcher(self, job: Job) -> Callable[[list[int], Stream], None]:
        decode = self.base_tokenizer.decode

        def watch(before: list[int], stream: Stream) -> None:
            job.finish = stream.finish
            if job.cancelled.is_set():
                if not stream.done:
                    self.cancelled += 1
                stream.done = True
            elif job.on_text is not None:
                job.on_text(decode(before + stream.tokens, skip_special_tokens=True))

        return watch


class ServedBackend:
    """The model that writes on a server: each job is its own requests there (a stream that breaks part-way
    starts the job over, as in `pilot wsd generate`)."""

    def __init__(self, method: Method, models: ServedModels):
        self.method, self.models = method, models
        self.base_tokenizer = (models.base.tokenizer if models.base is not None else None)

    def encode(self, text: str) -> list[int]:
        return self.base_tokenizer(text, add_special_tokens=False).input_ids

    def stats(self) -> dict:
        return {}

    async def answer(self, job: Job) -> MethodRecord:
        def call():
            return self.method.served(self.models, job.rec, job.cfg, job.stop, job.on_text)

        server = self.models.pilot if self.models.pilot is not None else self.models.base.server
        return await server.retry_broken(call)

    async def close(self) -> None:
        for client in (self.models.base and self.models.base.server, self.models.pilot):
            if client is not None and hasattr(client, "close"):
                await client.close()


def prompt_tokens(backend: LocalBackend | ServedBackend, rec: PromptRecord) -> int:
    """The base's prompt tokens for a conversation (the role template it reads)."""
    return len(backend.encode(base_prompt(rec.messages, backend.base_tokenizer.bos_token)))


def request_config(cfg: WSDConfig, max_tokens: int | None, temperature: float | None, top_p: float | None) -> WSDConfig:
    """The server's settings with a request's own; max_tokens is WSD's total budget (kept draft + continuation)."""
    update = {k: v for k, v in (("max_new_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p))
              if v is not None}
    return cfg.model_copy(update=update) if update else cfg


def make_backend(method_name: str, pilot, base, cfg: WSDConfig, compute=None) -> LocalBackend | ServedBackend:
    """Load (or reach) what a servable method uses, in-process or on servers, as `pilot wsd generate` does."""
    from pilot_core.errors import UserError
    from wsd_inference.methods import get_method
    from wsd_inference.runner import ModelLoader, served_at_all

    method = get_method(method_name)
    if not method.servable:
        raise UserError(f"method {method_name} cannot be served (servable: wsd, base_only)")
    remote = served_at_all(method, pilot, base, None, cfg)
    loader, uses = ModelLoader(cfg, compute), method.models(cfg, in_process=not remote)
    if remote:
        return ServedBackend(method, loader.served(uses, pilot, base, None, method.pilot_ids))
    return LocalBackend(method, loader.local(uses, pilot, base, None), cfg.batch_size)
