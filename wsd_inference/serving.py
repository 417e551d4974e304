"""What the WSD server runs its requests on, apart from HTTP: one `Job` per answer (a choice of a request), the
`JobQueue` between admission and the scheduler, and a backend that schedules and decodes jobs with the method's
runner from the registry, in-process or with the models on servers.

Admission (`api/serving.py`) puts a request's answers in the queue, all or none (a full queue: 429); the backend's
scheduler takes them, by priority then arrival, when it has room:
- `ContinuousBackend` (in-process, WSD and the base alone, unless `--batching static`, `--speculate K` or
  `--batch-size 1`: `methods.continuous_batching`): one engine thread steps the running answers
  (`wsd_inference.continuous`); the answers at the head of the queue join at the next step whenever fewer than
  `capacity` run, whatever their settings, and each leaves when it is done (continuous batching).
- `LocalBackend` (in-process otherwise, and every other method): one engine thread decodes a batch at a
  time: the answer at the head of the queue and those right behind it that share its decoding settings, up to
  `batch_size` (dynamic batching; a batch runs until its last row is done). The pilot speculates for the base here.
  An answer's random stream is seeded by its own key, so it does not depend on its batch, in either.
- `ServedBackend`: the model that writes is on a server (vLLM); up to `max_running` answers at once, each its own
  requests there, and the servers batch them; a streamed answer streams the base's continuation.

A job whose client went away (or whose time ran out) is cancelled: waiting, it leaves the queue; in-process its
rows stop at the next token; over HTTP the requests to the model servers are aborted.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pilot_core.method_record import MethodRecord
from pilot_core.models.sampling import Stream, Watch
from pilot_core.models.templates import base_prompt
from pilot_core.prompts import PromptRecord
from wsd_inference.config import WSDConfig
from wsd_inference.continuous import Answer, ContinuousEngine
from wsd_inference.methods import LocalModels, Method, ServedModels


class JobCancelled(Exception):
    """The job's client went away (or its time ran out) before the answer was finished."""


class QueueFull(Exception):
    """The queue has no room for all of a request's answers (the server answers 429)."""


@dataclass(eq=False)
class Job:
    """One answer to decode: the prompt (its id keys the answer's random stream) and its length in the base's
    tokens, the request's settings and priority, and, when the client streams, a callback given the answer's text
    so far (from the engine's thread). `future` gets the record; `queued_at` / `started_at` (monotonic seconds)
    say how long it waited."""

    rec: PromptRecord
    cfg: WSDConfig
    stop: tuple[str, ...] = ()
    on_text: Callable[[str], None] | None = None
    priority: int = 0  # lower runs first (vLLM's `priority`)
    prompt_tokens: int = 0  # the base's prompt tokens (`prompt_tokens`): usage and metrics
    cancelled: threading.Event = field(default_factory=threading.Event)
    finish: str | None = None  # the decoder's own stop reason where it is known (in-process): "stop" or "length"
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float | None = None
    started_at: float | None = None

    @property
    def batch_key(self) -> tuple:
        """Jobs decoded in one batch share these (a batch has one sampling rule, one budget, one stop list)."""
        return self.cfg.temperature, self.cfg.top_p, self.cfg.max_new_tokens, self.stop

    def start(self) -> bool:
        """Mark it running (the scheduler took it); False if it was cancelled meanwhile."""
        if self.future.done() or not self.future.set_running_or_notify_cancel():
            return False  # its awaiting side was cancelled
        if self.cancelled.is_set():  # running now: nothing else sets its future
            self.future.set_exception(JobCancelled())
            return False
        self.started_at = time.monotonic()
        return True


class JobQueue:
    """The answers admitted and not yet running: taken by priority (lower first), first come first served within a
    priority; at most `bound` wait. Thread-safe: admission puts from the event loop, an in-process scheduler takes
    from its engine thread (a served one from the event loop)."""

    def __init__(self, bound: int = 1 << 30):
        self.bound = bound
        self._items: list[tuple[int, int, Job]] = []  # (priority, arrival, job), in the order they are taken
        self._arrivals = itertools.count()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def put(self, jobs: list[Job]) -> None:
        """All of `jobs`, or none (QueueFull)."""
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            if len(self._items) + len(jobs) > self.bound:
                raise QueueFull(f"{len(self._items)} answers are waiting (the queue holds {self.bound})")
            now = time.monotonic()
            for job in jobs:
                job.queued_at = now
                bisect.insort(self._items, (job.priority, next(self._arrivals), job))  # arrivals are unique
            self._cond.notify_all()

    def remove(self, job: Job) -> bool:
        """Take a waiting job out (its client went away); False if it is not waiting."""
        with self._cond:
            for i, (_, _, j) in enumerate(self._items):
                if j is job:
                    del self._items[i]
                    return True
        return False

    def wait(self) -> bool:
        """Until a job waits (True) or the queue is closed and empty (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._closed)
            return bool(self._items)

    def take(self, limit: int, key: Callable[[Job], object] | None = None) -> list[Job]:
        """The job at the head and those right behind it, in order, up to `limit` and while they have the head's
        `key` (none waiting: []): none is taken past one that waits, so the order holds across batches."""
        with self._cond:
            k = key(self._items[0][2]) if self._items and key is not None else None
            end = 0
            while end < min(limit, len(self._items)) and (key is None or key(self._items[end][2]) == k):
                end += 1
            batch, self._items = [job for _, _, job in self._items[:end]], self._items[end:]
            return batch

    def close(self) -> None:
        """No more puts; the scheduler takes what waits, then stops."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Backend:
    """What both backends share: the queue in front of the scheduler and a job's way through it. A subclass sets
    `queue`, `base_tokenizer`, `capacity` (answers that can run at once) and `running`, and schedules."""

    queue: JobQueue
    base_tokenizer: object  # the base's (its prompt tokens are what `usage` counts)
    capacity: int
    running: int

    def encode(self, text: str) -> list[int]:
        return self.base_tokenizer(text, add_special_tokens=False).input_ids

    def submit(self, jobs: list[Job]) -> None:
        """Into the queue, all or none (QueueFull)."""
        self.queue.put(jobs)

    def cancel(self, job: Job) -> None:
        job.cancelled.set()  # running in-process: its rows stop at their next token
        if self.queue.remove(job) and not job.future.done():  # out of the queue: no scheduler can take it now
            job.future.set_exception(JobCancelled())

    async def result(self, job: Job) -> MethodRecord:
        """The submitted job's record; cancelling the caller cancels the job."""
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            self.cancel(job)
            raise

    async def answer(self, job: Job) -> MethodRecord:
        self.submit([job])
        return await self.result(job)


class InProcess(Backend):
    """What both in-process backends share: one engine thread, the counts `stats` reports, and a job's callback
    per token (its text to a streaming client; a cancelled job's row stopped)."""

    def _start(self, models: LocalModels, queue: JobQueue | None, gather_s: float) -> None:
        self.models, self.gather_s = models, gather_s
        self.queue = queue if queue is not None else JobQueue()
        self.base_tokenizer = (models.base or models.pilot).tokenizer
        self.largest_batch = 0  # the most answers decoded together
        self.cancelled = 0  # answers stopped part-way because their client went away
        self._thread = threading.Thread(target=self._run, name="wsd-engine", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """After the jobs already queued are finished."""
        self.queue.close()
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        raise NotImplementedError

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


class LocalBackend(InProcess):
    """In-process models; one engine thread, dynamic batching."""

    def __init__(self, method: Method, models: LocalModels, batch_size: int, gather_s: float = 0.005,
                 queue: JobQueue | None = None, max_running: int | None = None):
        self.method = method
        self.capacity = min(batch_size, max_running or batch_size)  # answers in one batch
        self.batches = 0  # batches run
        self.running = 0  # answers in the batch being decoded
        self._start(models, queue, gather_s)

    def stats(self) -> dict:
        return {"batching": "static", "batches": self.batches, "largest_batch": self.largest_batch,
                "cancelled": self.cancelled, "running": self.running, "waiting": len(self.queue)}

    def _run(self) -> None:
        while self.queue.wait():
            time.sleep(self.gather_s)  # requests sent together arrive a little apart: let them join this batch
            batch = self.queue.take(self.capacity, key=lambda job: job.batch_key)
            if batch:
                self._decode(batch)

    def _decode(self, batch: list[Job]) -> None:
        jobs = [job for job in batch if job.start()]
        if not jobs:
            return
        self.batches, self.largest_batch = self.batches + 1, max(self.largest_batch, len(jobs))
        self.running = len(jobs)
        watch = Watch(jobs[0].stop, tuple(self._watcher(job) for job in jobs))
        try:
            records = self.method.watched(self.models, [j.rec for j in jobs], jobs[0].cfg, watch)
        except BaseException as e:  # noqa: BLE001 — handed to every waiting request, the engine goes on
            for job in jobs:
                job.future.set_exception(e)
            return
        finally:
            self.running = 0
        for job, record in zip(jobs, records):
            job.future.set_result(record)


class ContinuousBackend(InProcess):
    """In-process models, continuous batching: one engine thread steps a `ContinuousEngine`; waiting answers join
    at the next step while fewer than `capacity` run."""

    def __init__(self, engine: ContinuousEngine, models: LocalModels, capacity: int, gather_s: float = 0.005,
                 queue: JobQueue | None = None):
        self.engine, self.capacity = engine, capacity
        self._jobs: dict[Answer, Job] = {}  # the answers running, and whose they are
        self._start(models, queue, gather_s)

    @property
    def running(self) -> int:
        return len(self._jobs)

    def stats(self) -> dict:
        return {"batching": "continuous", "steps": self.engine.steps, "largest_batch": self.largest_batch,
                "cancelled": self.cancelled, "running": self.running, "waiting": len(self.queue)}

    def _run(self) -> None:
        while self._jobs or self.queue.wait():
            if not self._jobs:  # idle: requests sent together arrive a little apart; let them join one prefill
                time.sleep(self.gather_s)
            for job in self.queue.take(self.capacity - len(self._jobs)):
                if not job.start():
                    continue
                try:  # a prompt its template refuses fails its own request only
                    self._jobs[self.engine.add(job.rec, job.cfg, job.stop, self._watcher(job))] = job
                except Exception as e:  # noqa: BLE001 — the request's to report
                    job.future.set_exception(e)
            for answer, job in self._jobs.items():
                if job.cancelled.is_set() and answer.stream is None:  # drafting: no callback sees it
                    self.engine.drop(answer)  # it leaves at this step
                    self.cancelled += 1
            self.largest_batch = max(self.largest_batch, self.engine.running)
            try:
                done = self.engine.step()
            except BaseException as e:  # noqa: BLE001 — handed to every running request, the engine starts afresh
                for job in self._jobs.values():
                    job.future.set_exception(e)
                self._jobs.clear()
                self.engine = self.engine.fresh()
                continue
            for answer in done:
                job = self._jobs.pop(answer)
                if job.cancelled.is_set():
                    job.future.set_exception(JobCancelled())
                else:
                    job.future.set_result(answer.record)


class ServedBackend(Backend):
    """The model that writes on a server: up to `max_running` answers at once, each its own requests there (a
    stream that breaks part-way starts the job over, as in `pilot wsd generate`). Its scheduling runs on the event
    loop: an answer starts when it is admitted or when another ends. When WSD's base scores a draft: the job's
    `cfg.draft_scoring` (`remote_engine`)."""

    def __init__(self, method: Method, models: ServedModels, queue: JobQueue | None = None, max_running: int = 64):
        self.method, self.models = method, models
        self.queue = queue if queue is not None else JobQueue()
        self.capacity = max_running
        self.base_tokenizer = (models.base.tokenizer if models.base is not None else None)
        self.running = 0
        self._tasks: dict[Job, asyncio.Task] = {}  # the jobs running, each its own task

    def stats(self) -> dict:
        return {"running": self.running, "waiting": len(self.queue)}

    def submit(self, jobs: list[Job]) -> None:
        """Into the queue, all or none (QueueFull); on the event loop."""
        super().submit(jobs)
        self._start_waiting()

    def cancel(self, job: Job) -> None:
        super().cancel(job)
        task = self._tasks.get(job)
        if task is not None:  # running: its requests to the model servers are aborted
            task.cancel()

    def _start_waiting(self) -> None:
        """Start the jobs at the head of the queue while fewer than `capacity` run."""
        while self.running < self.capacity:
            taken = self.queue.take(1)
            if not taken:
                return
            job = taken[0]
            if not job.start():  # cancelled meanwhile
                continue
            self.running += 1
            self._tasks[job] = task = asyncio.ensure_future(self._run(job))
            task.add_done_callback(lambda _, job=job: self._ended(job))

    def _ended(self, job: Job) -> None:
        """A job's task is done, even one cancelled before its first step (its body, and a `finally` in it, never
        ran): its slot is freed and its answer settled here."""
        self.running -= 1
        self._tasks.pop(job, None)
        if not job.future.done():
            job.future.set_exception(JobCancelled())
        self._start_waiting()

    async def _run(self, job: Job) -> None:
        def call():
            return self.method.served(self.models, job.rec, job.cfg, job.stop, job.on_text)

        server = self.models.pilot if self.models.pilot is not None else self.models.base.server
        try:
            job.future.set_result(await server.retry_broken(call))
        except asyncio.CancelledError:
            job.future.set_exception(JobCancelled())
        except BaseException as e:  # noqa: BLE001 — the request's to report
            job.future.set_exception(e)

    async def close(self) -> None:
        """After the jobs already queued are finished."""
        self.queue.close()
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        for client in (self.models.base and self.models.base.server, self.models.pilot):
            if client is not None and hasattr(client, "close"):
                await client.close()


def prompt_tokens(backend: Backend, rec: PromptRecord) -> int:
    """The base's prompt tokens for a conversation (the role template it reads)."""
    return len(backend.encode(base_prompt(rec.messages, backend.base_tokenizer.bos_token)))


def request_config(cfg: WSDConfig, max_tokens: int | None, temperature: float | None, top_p: float | None) -> WSDConfig:
    """The server's settings with a request's own; max_tokens is WSD's total budget (kept draft + continuation)."""
    update = {k: v for k, v in (("max_new_tokens", max_tokens), ("temperature", temperature), ("top_p", top_p))
              if v is not None}
    return cfg.model_copy(update=update) if update else cfg


def make_backend(method_name: str, pilot, base, cfg: WSDConfig, compute=None, max_queue: int = 256,
                 max_running: int = 64) -> Backend:
    """Load (or reach) what a servable method uses, in-process or on servers, as `pilot wsd generate` does; its
    queue holds `max_queue` answers, and at most `max_running` run at once (in-process: at most `batch_size`
    together, batched continuously or batch by batch as `methods.continuous_batching` says)."""
    from pilot_core.errors import UserError
    from wsd_inference.methods import continuous_batching, get_method
    from wsd_inference.runner import ModelLoader, served_at_all

    method = get_method(method_name)
    if not method.servable:
        raise UserError(f"method {method_name} cannot be served (servable: wsd, base_only)")
    remote = served_at_all(method, pilot, base, None, cfg)
    continuous = continuous_batching(method, cfg, remote, serving=True)
    if continuous:
        cfg = cfg.without_speculation()
    loader, uses = ModelLoader(cfg, compute), method.models(cfg, in_process=not remote)
    queue = JobQueue(max_queue)
    if remote:
        return ServedBackend(method, loader.served(uses, pilot, base, None, method.pilot_ids), queue, max_running)
    models = loader.local(uses, pilot, base, None)
    if continuous:
        return ContinuousBackend(method.continuous(models), models, min(cfg.batch_size, max_running), queue=queue)
    return LocalBackend(method, models, cfg.batch_size, queue=queue, max_running=max_running)
