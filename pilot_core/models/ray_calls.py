"""The calls the cache does not hold, sent by a Ray Data pipeline (`engine: ray`) instead of from this process: for
10^5-10^6 responses and verdicts over several replicas of each model, from more processes (or machines) than one.

`ray.data.from_items` (one row per call) -> `map_batches` on a fixed pool of actors (`_Sender`), each batch sent
through `calls.run_calls`, the local engine's own path: cache first, then the endpoint (its replicas, retries and
error rules). The per-request cache stays one SQLite file on the driver's machine, owned there by one actor
(`_Cache`): a batch reads what it already holds before sending (a batch retried after its actor died sends only
what the dead one had not finished) and commits each answer as it arrives. The driver reads the results as they
stream back; the output is built from them by key, so it is the local engine's, order included.

Backpressure, per model: each of the `actors` has at most ceil(client.concurrency / actors) requests in flight per
replica (its endpoint's semaphore, shared by all its batches; the `Replicas` transport spreads them, fewest
outstanding first), so a replica has at most actors x that (client.concurrency when actors divides it); the rate
limit is split evenly among the actors. Ray Data's streaming executor bounds what waits in front of them: an actor
runs at most `max_concurrent_calls_per_actor` tasks (a block of calls each) at once and is handed at most twice that
(Ray Data's default `max_tasks_in_flight_per_actor`); results stream back to the driver as tasks finish. A dead
actor is restarted and its task retried (Ray Data's defaults for actor pools).

Ray is the one in RAY_ADDRESS (a cluster, or `ray start --head` here); without it a local Ray is started for the
run, on loopback, and shut down after. API keys are read on the workers, from their own environment (the
variable `api_key_env` names must be set on the Ray nodes): a secret is never put into Ray's task or job specs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

from pilot_core import ray_connect
from pilot_core.config import BaseConfig
from pilot_core.errors import JobFailed, UserError
from pilot_core.models.calls import Call, ClientConfig, Done, Endpoint, run_calls
from pilot_core.models.source import ModelSource


class RayCallsConfig(BaseConfig):
    """How a stage's calls run on Ray (its `ray:` section, used with `engine: ray`). Changes no result."""

    actors: int = Field(2, ge=1, description="Ray Data actors sending requests (a fixed pool); `client.concurrency` "
                        "and `client.requests_per_minute` are shared out among them")
    batch_size: int = Field(16, ge=1, description="calls per Ray Data batch; each actor runs several batches at once, "
                            "so a batch's slowest call does not idle the actor")
    cpus_per_actor: float = Field(0.25, gt=0, description="CPUs Ray reserves per actor (they mostly wait on HTTP)")


class _Cache:
    """The call cache, as a Ray actor on the driver's node: the SQLite file stays where the driver reads it."""

    def __init__(self, path: str):
        from pilot_core.models.call_cache import ResponseCache

        self.cache = ResponseCache(path)

    def get_many(self, keys: list[str]) -> dict[str, dict]:
        return {k: r for k in keys if (r := self.cache.get(k)) is not None}

    def put(self, key: str, kind: str, who: str, result: dict) -> None:
        self.cache.put(key, kind, who, result)


class _Sink:
    """What a batch's `run_calls` sees as its cache: the answers the cache actor held when the batch started, and
    each new answer sent to the actor (awaited before the batch reports it)."""

    def __init__(self, held: dict[str, dict], actor):
        self.held, self.actor, self.pending = held, actor, []

    def get(self, key: str) -> dict | None:
        return self.held.get(key)

    def put(self, key: str, kind: str, who: str, result: dict) -> None:
        self.pending.append(self.actor.put.remote(key, kind, who, result))


class _Sender:
    """A Ray Data actor that sends batches of calls. Its endpoints are made on the actor's event loop at the first
    batch and shared by the batches it runs at once: so are their concurrency and rate limits."""

    def __init__(self, sources: dict[str, ModelSource], client: ClientConfig, cache):
        self.sources, self.client, self.cache = sources, client, cache
        self.endpoints: dict[str, Endpoint] | None = None

    async def __call__(self, batch: dict) -> dict:
        import asyncio

        if self.endpoints is None:
            self.endpoints = {n: Endpoint(s, self.client) for n, s in self.sources.items()}
        calls = [Call(str(kind), str(who), json.loads(m), json.loads(p), str(key)) for key, kind, who, m, p in
                 zip(batch["key"], batch["kind"], batch["who"], batch["messages"], batch["params"])]
        sink = _Sink(await self.cache.get_many.remote([c.key for c in calls]), self.cache)
        got = await run_calls(calls, self.endpoints, sink, {})
        await asyncio.gather(*sink.pending)  # committed before the driver hears of it
        return {"key": [c.key for c in calls], "result": [json.dumps(got[c.key]) for c in calls],
                "hit": [c.key in sink.held for c in calls]}


class RayCalls:
    """An engine for `calls.run_calls`: sends `todo` through the Ray Data pipeline and reports each call to `done` as
    its batch comes back. Use inside `ray_engine`."""

    def __init__(self, cfg: RayCallsConfig, sources: dict[str, ModelSource], client: ClientConfig, cache_actor):
        self.cfg, self.sources, self.cache = cfg, sources, cache_actor
        share = math.ceil(client.concurrency / cfg.actors)
        self.client = client.model_copy(update={
            "concurrency": share,
            "requests_per_minute": client.requests_per_minute / cfg.actors if client.requests_per_minute else None})
        # enough batches per actor to keep its requests in flight while a batch waits on its slowest call
        in_flight = share * max(len(s.urls) for s in sources.values())
        self.batches_per_actor = max(2, math.ceil(2 * in_flight / cfg.batch_size))

    async def __call__(self, todo: list[Call], endpoints, cache, done: Done) -> None:
        import ray

        served = {c.who for c in todo} - set(self.sources)
        if served:
            raise UserError(f"engine ray sends the calls of served models; {sorted(served)[0]} is not one")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the stage shows its own
        ctx.print_on_execution_start = False
        ctx.raise_original_map_exception = True  # a batch's UserError, not Ray Data's wrapper (_pilot_error)
        for h in logging.getLogger("ray.data").handlers:  # quiet on the console (a failure is raised here as one
            if isinstance(h, logging.StreamHandler):     # clear error); its log file keeps everything
                h.setLevel(logging.CRITICAL)
        rows = [{"key": c.key, "kind": c.kind, "who": c.who, "messages": json.dumps(c.messages),
                 "params": json.dumps(c.params)} for c in todo]
        # a block a batch, up to 2000 blocks (past that, a task runs several of a block's batches)
        ds = ray.data.from_items(rows, override_num_blocks=min(math.ceil(len(rows) / self.cfg.batch_size), 2000))
        ds = ds.map_batches(
            _Sender, fn_constructor_kwargs={"sources": self.sources, "client": self.client, "cache": self.cache},
            batch_size=self.cfg.batch_size, num_cpus=self.cfg.cpus_per_actor, udf_modifying_row_count=False,
            compute=ray.data.ActorPoolStrategy(size=self.cfg.actors,
                                               max_concurrent_calls_per_actor=self.batches_per_actor))
        waiting: dict[str, list[Call]] = {}
        for c in todo:
            waiting.setdefault(c.key, []).append(c)
        try:
            with warnings.catch_warnings():
                # a phase with fewer batches than actors is fine (Ray Data warns that some actors stay idle)
                warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
                for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for key, result, hit in zip(out["key"], out["result"], out["hit"]):
                        done(waiting[str(key)].pop(), json.loads(result), bool(hit))
        except Exception as e:  # noqa: BLE001 - one clear error, whatever Ray wrapped it in
            raise _pilot_error(e) from None
        left = sum(len(v) for v in waiting.values())
        if left:
            raise JobFailed(f"the Ray pipeline returned no result for {left} calls; rerun the same command to resume")


def _pilot_error(e: BaseException) -> Exception:
    """The UserError or JobFailed a batch raised (Ray's task error is an instance of it too, with the original as
    its `cause`), as itself; any other failure as JobFailed."""
    seen = e
    while seen is not None:
        cause = getattr(seen, "cause", None)
        if isinstance(seen, (UserError, JobFailed)) and cause is None:
            # its own line: Ray Data appends its retry advice to the message
            return (UserError if isinstance(seen, UserError) else JobFailed)(str(seen).splitlines()[0])
        seen = cause or seen.__cause__
    return JobFailed(f"the Ray pipeline failed ({type(e).__name__}: {str(e).splitlines()[0][:300]}); rerun the "
                     "same command to resume")


@contextlib.contextmanager
def ray_engine(cfg: RayCallsConfig, sources: dict[str, ModelSource], client: ClientConfig,
               cache_path: str | Path) -> Iterator[RayCalls]:
    """A `RayCalls` engine for the served models in `sources`, with the cache at `cache_path` (on this machine),
    for the time of the block."""
    with ray_connect.ray_session() as ray:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        actor = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)(_Cache).options(
            scheduling_strategy=here).remote(str(Path(cache_path).resolve()))
        try:
            yield RayCalls(cfg, sources, client, actor)
        finally:
            ray.kill(actor)
