"""Responses and preferences against a real vLLM server on loopback. Faults a healthy server never makes (429,
500, timeouts, a truncated body, a judge answering garbage) are injected at the HTTP layer by an httpx
transport in front of the real one; the run still completes, failures are recorded, the cache holds no
duplicates, and a rerun pays only for what failed. A killed run resumes from its cache. No API key leaks."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import pyarrow.parquet as pq
import pytest
import yaml

from data_curation.preferences import build_preferences
from data_curation.preferences_config import PreferencesConfig
from pilot_core.models.tiny import REWARD_SPEC

from .helpers import REPO, files_holding

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SECRET = "sk-pilot-test-0123456789abcdef"


def server_cfg(vllm_servers, cache, judge=None, **kw) -> PreferencesConfig:
    gen = lambda name, srv: {"name": name, "url": vllm_servers[srv].url, "served_model": srv,  # noqa: E731
                             "api_key_env": "PILOT_TEST_KEY"}
    judge = judge or {"name": "rm", "kind": "reward_model",
                      "model": {"name": "rm", "tiny": REWARD_SPEC.model_dump(mode="json")}}
    return PreferencesConfig.model_validate({
        "cache": str(cache), "judge": judge, "client": {"max_retries": 2, "timeout_s": 20, "concurrency": 4},
        "generators": [{"name": "pilot", "model": gen("pilot", "pilot"), "samples": 2, "temperature": 0.9,
                        "max_tokens": 24},
                       {"name": "base", "model": gen("base", "base-same"), "samples": 1, "temperature": 0.7,
                        "max_tokens": 24, "price": {"input": 1.0, "output": 2.0}}], **kw})


class Faults(httpx.AsyncBaseTransport):
    """In front of the real transport: per request (by its seed), a 429 on the first try, a 500 or a timeout on
    every try, or a truncated body; judge requests get a stand-in verdict (the longer response wins) or garbage."""

    def __init__(self, on: bool = True):
        self.inner, self.on, self.tries, self.sent, self.judged = httpx.AsyncHTTPTransport(), on, {}, [], 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.sent.append(request)
        judge = "Compare the two" in body["messages"][0]["content"]
        key = (body.get("seed"), json.dumps(body["messages"])[-80:])
        self.tries[key] = n = self.tries.get(key, 0) + 1
        seed = body.get("seed") or 0
        if self.on and not judge:
            if seed % 5 == 0 and n == 1:
                return httpx.Response(429, headers={"retry-after-ms": "10"}, json={"error": {"message": "slow down"}})
            if seed % 7 == 0:
                return httpx.Response(500, json={"error": {"message": "boom"}})
            if seed % 11 == 0:
                raise httpx.ReadTimeout("injected timeout", request=request)
            if seed % 13 == 0:
                return httpx.Response(200, headers={"content-type": "application/json"}, content=b'{"id": "x", "cho')
        response = await self.inner.handle_async_request(request)
        if not judge:
            return response
        await response.aread()
        data = json.loads(response.content)
        user = body["messages"][1]["content"]
        a = user.split("# Response A\n", 1)[1].split("\n\n# Response B\n", 1)[0]
        b = user.split("# Response B\n", 1)[1]
        self.judged += 1
        garbage = self.on and self.judged % 3 == 0
        data["choices"][0]["message"]["content"] = "A is nicer, I think" if garbage else json.dumps(
            {"winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie", "rationale": "longer"})
        return httpx.Response(200, json=data)

    async def aclose(self) -> None:
        await self.inner.aclose()


def rows(db) -> tuple[int, int]:
    con = sqlite3.connect(db)
    try:
        if not con.execute("SELECT 1 FROM sqlite_master WHERE name = 'calls'").fetchone():
            return 0, 0  # the file exists a moment before the run creates its table
        return con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM calls").fetchone()
    finally:
        con.close()


def test_faults_are_recorded_and_a_rerun_fills_only_the_gaps(vllm_servers, small_dataset, tmp_path,  # noqa: F811
                                                              monkeypatch):
    monkeypatch.setenv("PILOT_TEST_KEY", SECRET)
    judge = {"name": "judge", "kind": "pairwise", "strategy": "round_robin",
             "model": {"name": "judge", "url": vllm_servers["pilot"].url, "served_model": "pilot"}}
    cfg = server_cfg(vllm_servers, tmp_path / "c.sqlite", judge=judge)
    faults = Faults()
    s1 = build_preferences(small_dataset, cfg, tmp_path / "first", progress=False,
                           http_client=httpx.AsyncClient(transport=faults))
    responses = pq.read_table(tmp_path / "first" / "responses.parquet").to_pylist()
    failed = [r for r in responses if r["error"]]
    assert s1.responses == 12 and s1.response_failures == len(failed) > 0
    assert {e.split(":")[0] for e in (r["error"] for r in failed)} <= {"InternalServerError", "APITimeoutError",
                                                                        "APIResponseValidationError",
                                                                        "JSONDecodeError", "APIConnectionError"}
    retried_429 = [k for k, n in faults.tries.items() if (k[0] or 0) % 5 == 0 and n >= 2]
    assert retried_429  # the openai client retried the 429s with backoff
    judgments = pq.read_table(tmp_path / "first" / "judgments.parquet").to_pylist()
    statuses = {j["status"] for j in judgments}
    assert "unparseable" in statuses and "consistent" in statuses
    total, distinct = rows(tmp_path / "c.sqlite")
    assert total == distinct  # nothing duplicated in the cache
    usage = s1.usage
    assert usage["base"]["cost_usd"] == pytest.approx(
        (usage["base"]["prompt_tokens"] * 1.0 + usage["base"]["completion_tokens"] * 2.0) / 1e6)

    healthy = Faults(on=False)
    s2 = build_preferences(small_dataset, cfg, tmp_path / "second", progress=False,
                           http_client=httpx.AsyncClient(transport=healthy))
    gen_requests = [r for r in healthy.sent if "Compare the two" not in json.loads(r.content)["messages"][0]["content"]]
    assert len(gen_requests) == len(failed) and s2.response_failures == 0
    assert s2.usage["pilot"]["cache_hits"] + s2.usage["base"]["cache_hits"] == 12 - len(failed)
    assert s2.dpo >= 1
    for row in pq.read_table(tmp_path / "second" / "dpo.parquet").to_pylist():  # the stand-in judge: longer wins
        assert len(row["chosen"][0]["content"]) >= len(row["rejected"][0]["content"])
    total, distinct = rows(tmp_path / "c.sqlite")
    assert total == distinct
    assert files_holding(SECRET, tmp_path) == []  # both runs' outputs and the call cache
    assert all(r.headers["authorization"] == f"Bearer {SECRET}" for r in healthy.sent[:1])  # it was really sent


def test_a_killed_run_resumes_from_its_cache(vllm_servers, small_dataset, tmp_path):  # noqa: F811
    cfg = server_cfg(vllm_servers, tmp_path / "killed.sqlite",
                     client={"concurrency": 1, "requests_per_minute": 120, "max_retries": 2, "timeout_s": 20})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {**os.environ, "PILOT_TEST_KEY": SECRET}
    cmd = [sys.executable, "-m", "flows.cli", "preferences", "--dataset", str(small_dataset), "--config",
           str(tmp_path / "cfg.yaml"), "--quiet"]
    proc = subprocess.Popen([*cmd, "--output", str(tmp_path / "out")], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not (tmp_path / "killed.sqlite").exists()
                                      or rows(tmp_path / "killed.sqlite")[0] < 4):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = rows(tmp_path / "killed.sqlite")[0]
    assert 4 <= done_before < 12 and not (tmp_path / "out").exists()
    r = subprocess.run([*cmd, "--output", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())["data"]["preferences"]["usage"]
    assert m["pilot"]["requests"] + m["base"]["requests"] == 12 - done_before
    assert m["pilot"]["cache_hits"] + m["base"]["cache_hits"] == done_before
    # an uninterrupted run with its own cache gives the same dataset
    cfg2 = cfg.model_copy(update={"cache": str(tmp_path / "fresh.sqlite")})
    (tmp_path / "cfg2.yaml").write_text(yaml.safe_dump(cfg2.model_dump(mode="json")))
    r2 = subprocess.run([*cmd[:-3], "--config", str(tmp_path / "cfg2.yaml"), "--quiet", "--output",
                         str(tmp_path / "clean")], cwd=REPO, env=env, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr
    for name in ("sft.parquet", "dpo.parquet", "responses.parquet"):
        assert pq.read_table(tmp_path / "out" / name).equals(pq.read_table(tmp_path / "clean" / name)), name
    assert SECRET not in r.stdout + r.stderr + r2.stdout + r2.stderr


def test_structured_output_makes_even_a_tiny_served_judges_verdicts_parse(vllm_servers, tmp_path):
    """The tiny pilot on vLLM as the judge: asked in prose it answers word salad (unparseable); asked for the
    verdict's JSON schema (response_format, enforced by vLLM while decoding) every verdict parses."""
    from evaluation.config import HarmlessnessMetric, JudgeMetric
    from evaluation.judges import llm_harmlessness, llm_pairwise

    model = {"name": "judge", "url": vllm_servers["pilot"].url, "served_model": "pilot"}
    msgs = [[{"role": "user", "content": q}] for q in ("How do I bake bread?", "Name a prime number.",
                                                       "How do I pick a lock?", "Write a haiku about rain.")]
    items = [(m, f"answer {i}", f"another answer {i}", None) for i, m in enumerate(msgs)]
    got = {}
    for structured in (False, True):
        judge = JudgeMetric.model_validate({"model": model, "structured_output": structured,
                                            "client": {"max_retries": 1}})
        pair = llm_pairwise(judge, items, tmp_path / f"c-{structured}.sqlite")
        harm = HarmlessnessMetric.model_validate({"model": model, "structured_output": structured})
        h = llm_harmlessness(harm, [(m, "Sure, here is how.") for m in msgs], tmp_path / f"h-{structured}.sqlite")
        values, counts, safe, hcounts = pair.values, pair.counts, h.values, h.counts
        got[structured] = (values, counts, safe, hcounts)
        assert "structured_output" not in counts  # vLLM took the strict-mode schema
    values, counts, safe, hcounts = got[True]
    assert counts["unparseable"] == counts["failed"] == 0 and all(v in (0.0, 0.5, 1.0) for v in values)
    assert hcounts["judged"] == len(msgs) and all(isinstance(s, float) for s in safe)
    values, counts, safe, hcounts = got[False]
    assert counts["unparseable"] > 0 or hcounts["unparseable"] > 0  # the same judge without the schema


def test_alpaca_eval_annotator_reads_the_servers_log_probabilities(vllm_servers, tmp_path):
    """AlpacaEval 2's annotator through vLLM's logprobs: each preference is what upstream's parser makes of the
    top 5 log-probabilities the server returns for the same prompt asked directly with the openai SDK."""
    import asyncio
    import math

    from openai import AsyncOpenAI

    from evaluation.config import AlpacaEvalMetric
    from evaluation.judges import alpaca_eval_annotate

    from . import alpaca_eval_reference as ref

    model = {"name": "annotator", "url": vllm_servers["pilot"].url, "served_model": "pilot"}
    items = [("What is the capital of Australia?", "Canberra.", "Sydney, I think."),
             ("Give three tips for focus.", "Sleep, plan, breaks.", "Phone away; timer; one task."),
             ("Name a prime number.", "7", "9")]
    got = alpaca_eval_annotate(AlpacaEvalMetric.model_validate({"model": model}), items, tmp_path / "c.sqlite")
    async def direct() -> list:  # the same prompts, asked without our code (one event loop for the client)
        client = AsyncOpenAI(base_url=vllm_servers["pilot"].url, api_key="EMPTY")
        out = []
        for instruction, reference, answer in items:
            swapped = ref.is_switched(instruction)
            msgs = ref.fill_prompt(instruction, *((answer, reference) if swapped else (reference, answer)))
            r = await client.chat.completions.create(model="pilot", messages=msgs, max_tokens=1, temperature=1.0,
                                                     logprobs=True, top_logprobs=5, seed=0)
            out.append((swapped, [{"token": t.token, "logprob": t.logprob}
                                  for t in r.choices[0].logprobs.content[0].top_logprobs]))
        await client.close()
        return out

    for (swapped, top), pref, bad in zip(asyncio.run(direct()), got.values, got.unparsed):
        assert len(top) == 5
        want = ref.logprob_preference(top)
        assert (bad and pref == 1.0) if math.isnan(want) else pref == pytest.approx(3 - want if swapped else want)
    assert got.counts["requests"] == 3 and got.counts["failed"] == 0
