"""WSD against real vLLM servers on loopback: the server path equals the in-process path."""

import asyncio
import json
import subprocess
import sys

import httpx
import pytest
import torch

from pilot_core.models.loading import load_hf_model
from pilot_core.models.local_chat import LocalChat
from pilot_core.models.openai_server import OpenAIServer, ServedModel
from pilot_core.models.templates import base_prompt, base_text
from wsd_inference.config import WSDConfig
from wsd_inference.engine import wsd_generate
from wsd_inference.methods import METHODS, ServedModels
from wsd_inference.runner import served_group

from .helpers import RECS, REPO, median_max_window

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DECISIONS = ("switch_index", "switched", "kept_draft_tokens", "draft_text")


@pytest.fixture(scope="module")
def local(pair_same, pair_different):
    return {"pilot": load_hf_model(str(pair_same[0]), need_chat_template=True),
            "base-same": load_hf_model(str(pair_same[1])), "base-different": load_hf_model(str(pair_different[1]))}


def remote(coro_fn):
    return asyncio.run(coro_fn())


@pytest.mark.parametrize("base", ["base-same", "base-different"])
def test_server_logprobs_match_in_process(vllm_servers, local, base):
    m = local[base]
    texts = [base_text(base_prompt(r.messages, m.tokenizer.bos_token), d) for r, d in
             zip(RECS, ["Sure, here are the steps.", "I cannot help with that, sorry!", "17 x 3 = 51", "Hello", "",
                        "No: raw chicken can carry bacteria.", "Red."])]

    async def go():
        s = OpenAIServer(vllm_servers[base].url, base)
        try:
            return [await s.score(m.encode(t)) for t in texts]
        finally:
            await s.close()

    worst = 0.0
    for t, got in zip(texts, remote(go)):
        ids = m.encode(t)
        with torch.no_grad():
            lp = torch.log_softmax(m.model(torch.tensor([ids])).logits[0].double(), -1)
        ref = [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]
        assert got[0] is None and len(got) == len(ids)
        worst = max(worst, max(abs(a - b) for a, b in zip(got[1:], ref)))
    assert worst < 1e-3


@pytest.mark.parametrize("base", ["base-same", "base-different"])
@pytest.mark.parametrize("threshold", [0.8, "median", 0.0])
@pytest.mark.parametrize("pilot_on_server", [False, True])
def test_server_path_equals_in_process(vllm_servers, local, base, threshold, pilot_on_server):
    pilot, base_m = local["pilot"], local[base]
    if threshold == "median":
        threshold = median_max_window(pilot, base_m, 3)
    cfg = WSDConfig(window=3, threshold=threshold, max_draft_tokens=24, max_new_tokens=40, batch_size=4)
    want = list(wsd_generate(pilot, base_m, RECS, cfg))

    async def go():
        p = OpenAIServer(vllm_servers["pilot"].url, "pilot") if pilot_on_server else LocalChat(pilot)
        s = OpenAIServer(vllm_servers[base].url, base)
        try:
            return await served_group(METHODS["wsd"], ServedModels(ServedModel(s, base_m.tokenizer), p), RECS, cfg)
        finally:
            await s.close()
            if pilot_on_server:
                await p.close()

    got = remote(go)
    for w, g in zip(want, got):
        assert {k: g.to_json()[k] for k in DECISIONS} == {k: w.to_json()[k] for k in DECISIONS}, w.id
        assert g.wsd.kept_draft_tokens + g.base_tokens <= 40
    # one scoring request per drafted answer (the draft scored once, when finished or at the budget)
    assert all(g.calls.base_scoring_requests == (g.wsd.switch_index is not None) for g in got)


def _vllm_prompt_tokens(url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with httpx.Client() as c:
        text = c.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(s.value for f in text_string_to_metric_families(text) if f.name == "vllm:prompt_tokens"
               for s in f.samples if s.name.endswith("_total"))


def test_a_draft_scored_once_asks_fewer_requests_with_the_same_answers(vllm_servers, local):
    """Issue #44 item 2 on real servers: the draft scored once (the default) and at 8, 16, 32, ... (before) give the
    in-process answers; once asks one scoring request per drafted answer and fewer requests and prompt tokens in
    all; each record's count is what reached the server: the requests a counting proxy in front of the vLLM base
    saw, the prompt tokens vLLM's own metrics counted; the continuation's prompt is reusable (a prefix of the
    scoring request's: vLLM's automatic prefix caching, on by default, keeps it in whole KV blocks)."""
    from .fault_proxy import FaultProxy

    pilot, base_m = local["pilot"], local["base-different"]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base_m, 3), max_draft_tokens=24, max_new_tokens=40,
                    batch_size=4)
    want = list(wsd_generate(pilot, base_m, RECS, cfg))
    url = vllm_servers["base-different"].url

    def run(scoring):
        async def go():
            p, s = OpenAIServer(vllm_servers["pilot"].url, "pilot"), OpenAIServer(proxy.url, "base-different")
            try:
                # the config key `pilot wsd serve --draft-scoring` sets
                return await served_group(METHODS["wsd"], ServedModels(ServedModel(s, base_m.tokenizer), p), RECS,
                                          cfg.model_copy(update={"draft_scoring": scoring}))
            finally:
                await s.close()
                await p.close()

        with FaultProxy(url.removesuffix("/v1"), rate=0.0) as proxy:
            before, pilot_before = _vllm_prompt_tokens(url), _vllm_prompt_tokens(vllm_servers["pilot"].url)
            got = remote(go)
            pilot_prompts[scoring] = _vllm_prompt_tokens(vllm_servers["pilot"].url) - pilot_before
            return got, proxy.requests, _vllm_prompt_tokens(url) - before

    figures, pilot_prompts = {}, {}
    for scoring in ("doubling", "once"):
        got, requests, prompt_tokens = run(scoring)
        for w, g in zip(want, got):
            assert {k: g.to_json()[k] for k in DECISIONS} == {k: w.to_json()[k] for k in DECISIONS}, (scoring, w.id)
        assert requests == sum(g.calls.base_requests for g in got)
        assert prompt_tokens == sum(g.calls.base_prefill_tokens for g in got)
        figures[scoring] = got, requests, prompt_tokens
    once, doubling = figures["once"][0], figures["doubling"][0]
    # the pilot's prompt tokens: its server's usage, as its own metrics count them (once, every draft streams to its
    # end; doubling closes a stream at the switch, before its usage: None there)
    assert pilot_prompts["once"] == sum(g.calls.pilot_prefill_tokens for g in once) > 0
    assert all(g.calls.pilot_prefill_tokens in (None, o.calls.pilot_prefill_tokens) for g, o in zip(doubling, once))
    assert all(g.calls.base_scoring_requests == (g.wsd.switch_index is not None) for g in once)
    for g in once:  # the continuation's prompt is all reusable, no longer than the scoring prompt it prefixes
        c = g.calls
        if c.base_scoring_requests and c.base_requests > c.base_scoring_requests:
            assert 0 < c.base_reusable_tokens <= c.base_prefill_tokens - c.base_reusable_tokens
    assert figures["once"][1] < figures["doubling"][1] and figures["once"][2] < figures["doubling"][2]
    assert sum(g.calls.base_scoring_requests for g in once) < sum(g.calls.base_scoring_requests for g in doubling)


def _spec_metrics(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()
    keys = ("num_draft_tokens_total", "num_accepted_tokens_total")
    return {k: float(line.split()[-1]) for line in lines for k in keys if line.startswith(f"vllm:spec_decode_{k}{{")}


def test_a_base_server_speculating_with_the_pilot_gives_the_same_answers(vllm_servers, local):
    """The served path needs no change for speculation: a vLLM base started with the pilot as its draft model
    (--speculative-config, method draft_model) answers WSD's and base-only's requests as the plain server does,
    and its metrics show the pilot's proposals checked and kept."""
    cfg = WSDConfig(window=3, threshold=median_max_window(local["pilot"], local["base-same"], 3),
                    max_draft_tokens=24, max_new_tokens=40)
    before = _spec_metrics(vllm_servers["base-same-spec"].url)

    async def go(name, method):
        s = OpenAIServer(vllm_servers[name].url, "base-same" if name == "base-same" else name)
        try:
            return await served_group(METHODS[method], ServedModels(ServedModel(s, local["base-same"].tokenizer),
                                                                    LocalChat(local["pilot"])), RECS, cfg)
        finally:
            await s.close()

    for method in ("wsd", "base_only"):
        plain, spec = remote(lambda: go("base-same", method)), remote(lambda: go("base-same-spec", method))
        for p, s in zip(plain, spec):
            assert {k: s.to_json()[k] for k in ("response", *DECISIONS)} == \
                {k: p.to_json()[k] for k in ("response", *DECISIONS)}
    after = _spec_metrics(vllm_servers["base-same-spec"].url)
    assert after["num_draft_tokens_total"] > before.get("num_draft_tokens_total", 0)
    assert after["num_accepted_tokens_total"] > before.get("num_accepted_tokens_total", 0)


def test_streamed_drafts_count_tokens_not_chunks(vllm_servers):
    """32 drafts at once: vLLM merges the deltas it has not sent yet into one chunk, and pilot_tokens (the cost
    of a draft in the validation report) must still count tokens: the streamed count equals the completion
    tokens of the same request unstreamed."""
    prompts = [[{"role": "user", "content": f"Question {i}: tell me about rivers."}] for i in range(32)]

    async def go():
        s = OpenAIServer(vllm_servers["pilot"].url, "pilot")

        async def one(messages):
            chunks, tokens, text = 0, 0, ""
            async for delta, _, n in s.stream_chat(messages, 16, 0.0, 1.0, None):
                chunks, tokens, text = chunks + 1, tokens + n, text + delta
            return chunks, tokens, text, await s.chat(messages, 16, 0.0, 1.0, None)

        try:
            return await asyncio.gather(*(one(m) for m in prompts))
        finally:
            await s.close()

    for chunks, tokens, text, whole in remote(go):
        assert (tokens, text) == (whole["completion_tokens"], whole["text"])
        assert chunks <= tokens + 1  # + the finish chunk


def test_cli_with_servers(vllm_servers, pair_same, pair_different, tmp_path):
    """`pilot wsd generate` with served pilot and base equals the local run; `pilot wsd serve` in front of the
    same servers answers as generate did."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": r.id, "messages": list(r.messages)}) + "\n" for r in RECS))
    common = ["--input", str(prompts), "--max-draft-tokens", "16", "--max-new-tokens", "24", "--window", "3",
              "--threshold", "0.05"]
    cli = [sys.executable, "-m", "flows.cli", "wsd", "generate"]
    r1 = subprocess.run([*cli, "--pilot", str(pair_same[0]), "--base", str(pair_different[1]), *common,
                         "--output", str(tmp_path / "local.jsonl")], cwd=REPO, capture_output=True, text=True)
    r2 = subprocess.run([*cli, "--pilot", vllm_servers["pilot"].url, "--pilot-model", "pilot",
                         "--base", vllm_servers["base-different"].url, "--base-model", "base-different",
                         "--base-tokenizer", str(pair_different[1]), *common, "--output", str(tmp_path / "srv.jsonl")],
                        cwd=REPO, capture_output=True, text=True)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    a = [json.loads(x) for x in open(tmp_path / "local.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "srv.jsonl")]
    assert [{k: x[k] for k in DECISIONS} for x in a] == [{k: x[k] for k in DECISIONS} for x in b]

    # `pilot wsd serve` in front of the same servers answers as `pilot wsd generate` did: concurrent chat
    # requests, and one streamed (the base's continuation streams in)
    import openai

    from wsd_inference.server_process import WSDServer

    async def ask(url):
        async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0) as c:
            whole = await asyncio.gather(*(c.chat.completions.create(model="wsd", messages=list(rec.messages),
                                                                     max_tokens=24, temperature=0) for rec in RECS))
            stream = await c.chat.completions.create(model="wsd", messages=list(RECS[0].messages), max_tokens=24,
                                                     stream=True, temperature=0)
            return whole, [ch.choices[0].delta.content async for ch in stream if ch.choices and
                           ch.choices[0].delta.content]

    served = ["--pilot", vllm_servers["pilot"].url, "--pilot-model", "pilot", "--base",
              vllm_servers["base-different"].url, "--base-model", "base-different", "--base-tokenizer",
              str(pair_different[1]), *common[2:]]
    with WSDServer(served) as s:
        whole, streamed = asyncio.run(ask(s.url))
    assert [w.choices[0].message.content for w in whole] == [x["response"] for x in b]
    assert [{k: w.choices[0].model_extra["wsd"][k] for k in DECISIONS} for w in whole] == \
        [{k: x[k] for k in DECISIONS} for x in b]
    assert "".join(streamed) == b[0]["response"]
    assert len(streamed) > 1 or b[0]["base_tokens"] < 3
    # each answer's requests and tokens, as the server counted them, are generate's: one scoring request per draft
    assert [w.choices[0].model_extra["wsd"]["calls"] for w in whole] == [x["calls"] for x in b]
    assert all(x["calls"]["base_scoring_requests"] == (x["switch_index"] is not None) for x in b)


@pytest.mark.parametrize("method", ["base_only", "urial"])
def test_single_model_methods_over_a_server_equal_in_process(vllm_servers, local, method):
    from wsd_inference.baselines import base_only_batch, urial_batch

    base = local["base-different"]
    cfg = WSDConfig(max_new_tokens=30)
    want = (base_only_batch if method == "base_only" else urial_batch)(base, RECS, cfg)

    async def go():
        s = OpenAIServer(vllm_servers["base-different"].url, "base-different")
        try:
            return await served_group(METHODS[method], ServedModels(ServedModel(s, base.tokenizer)), RECS, cfg)
        finally:
            await s.close()

    got = remote(go)
    same = sum(w.response == g.response for w, g in zip(want, got))
    assert all(g.method == method and g.base_tokens <= 30 for g in got)
    assert same >= len(RECS) - 1  # greedy text across backends: equal up to a rare near-tie


def test_pilot_only_over_a_server(vllm_servers, local):
    from wsd_inference.baselines import pilot_only_batch

    cfg = WSDConfig(max_new_tokens=30)
    want = pilot_only_batch(local["pilot"], RECS, cfg)

    async def go():
        p = OpenAIServer(vllm_servers["pilot"].url, "pilot")
        try:
            return await served_group(METHODS["pilot_only"], ServedModels(pilot=p), RECS, cfg)
        finally:
            await p.close()

    got = remote(go)
    assert sum(w.response == g.response for w, g in zip(want, got)) >= len(RECS) - 1


def _search(vllm_servers, local, untuned, base: str, method: str, cfg: WSDConfig, reward=None):
    from wsd_inference.remote_search import bon_remote, cbs_remote

    async def go():
        s = OpenAIServer(vllm_servers[base].url, base)
        try:
            b = ServedModel(s, local[base].tokenizer)
            if method == "bon":
                return await bon_remote(b, local["pilot"], untuned, RECS, cfg, reward)
            return await cbs_remote(b, local["pilot"], untuned, RECS, cfg)
        finally:
            await s.close()

    return remote(go)


@pytest.fixture(scope="module")
def untuned(untuned_path):
    return load_hf_model(str(untuned_path))


@pytest.mark.parametrize("base", ["base-same", "base-different"])
def test_search_with_the_base_on_a_server(vllm_servers, local, untuned, base):
    """CBS and best-of-N sample on the server (seeded per row) and score in-process: CBS with one beam and
    whole responses is best-of-N; chunked CBS continues from the exact sampled ids, is repeatable, and beats a
    single sample on its own metric."""
    cfg = WSDConfig(max_new_tokens=24, seed=5, batch_size=4)
    whole = cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"beam_width": 1, "successors": 4,
                                                                        "chunk_length": None})})
    bon = _search(vllm_servers, local, untuned, base, "bon", whole)
    cbs_whole = _search(vllm_servers, local, untuned, base, "cbs", whole)
    for b, c in zip(bon, cbs_whole):
        assert b.response == c.response and b.search.score == pytest.approx(c.search.score, abs=1e-3)
        assert b.search.score == max(b.search.candidate_scores) and len(b.search.candidate_scores) == 4
        assert 0 < b.base_tokens <= 24
    assert len({b.response for b in bon}) > 1

    chunked = cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"chunk_length": 5})})
    a = _search(vllm_servers, local, untuned, base, "cbs", chunked)
    again = _search(vllm_servers, local, untuned, base, "cbs", chunked)
    assert [x.response for x in a] == [x.response for x in again]
    single = _search(vllm_servers, local, untuned, base, "bon",
                     cfg.model_copy(update={"bon": cfg.bon.model_copy(update={"n": 1})}))
    assert sum(x.search.score for x in a) > sum(x.search.score for x in single)


def test_search_cli_with_a_served_base(vllm_servers, pair_same, pair_different, untuned_path, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": r.id, "messages": list(r.messages)}) + "\n" for r in RECS))
    cli = [sys.executable, "-m", "flows.cli", "wsd", "generate", "--input", str(prompts), "--max-new-tokens", "20",
           "--method", "cbs", "--untuned", str(untuned_path), "--base", vllm_servers["base-different"].url,
           "--base-model", "base-different", "--base-tokenizer", str(pair_different[1])]
    ok = subprocess.run([*cli, "--pilot", str(pair_same[0]), "--output", str(tmp_path / "cbs.jsonl")], cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    rows = [json.loads(x) for x in open(tmp_path / "cbs.jsonl")]
    assert [r["id"] for r in rows] == [r.id for r in RECS] and all(r["method"] == "cbs" for r in rows)
    served_pilot = subprocess.run([*cli, "--pilot", vllm_servers["pilot"].url, "--pilot-model", "pilot",
                                   "--output", str(tmp_path / "no.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert served_pilot.returncode == 2 and "give both as local models" in served_pilot.stderr
    assert not (tmp_path / "no.jsonl").exists()


@pytest.mark.parametrize("base,gamma,pilot_on_server", [("base-different", 0.15, False)])
def test_nudging_over_servers_equals_in_process(vllm_servers, local, base, gamma, pilot_on_server):
    """Nudging with the base on vLLM (its top-1 log-probs decide) and the pilot in-process (or on vLLM: the same
    test with pilot_on_server; CI runs the CLI test below for that, with both models served), text handed
    between them: the same answers, token counts and hand-offs as the in-process engine (which equals the
    batch-1 reference, test_nudging.py)."""
    from pilot_core.models.completions import LocalCompletions, ServedCompletions
    from wsd_inference.config import NudgingConfig
    from wsd_inference.nudging import nudging_batch

    pilot, base_m = local["pilot"], local[base]
    cfg = WSDConfig(max_new_tokens=32, batch_size=8, nudging=NudgingConfig(threshold=gamma))
    want = nudging_batch(pilot, base_m, RECS, cfg)

    async def go():
        p = OpenAIServer(vllm_servers["pilot"].url, "pilot")
        s = OpenAIServer(vllm_servers[base].url, base)
        lm = ServedCompletions(ServedModel(p, pilot.tokenizer)) if pilot_on_server else LocalCompletions(pilot)
        try:
            return await served_group(METHODS["nudging"], ServedModels(ServedModel(s, base_m.tokenizer),
                                                                       pilot_lm=lm), RECS, cfg)
        finally:
            await s.close()
            await p.close()

    got = remote(go)
    keys = ("response", "pilot_tokens", "base_tokens", "handoffs", "pilot_pieces", "rounds", "stop_reason")
    same = sum({k: g.to_json()[k] for k in keys} == {k: w.to_json()[k] for k in keys} for w, g in zip(want, got))
    assert same >= len(RECS) - 1, [(w, g) for w, g in zip(want, got) if w.response != g.response]
    assert sum(g.nudging.handoffs for g in got) > len(RECS)  # the turns went back and forth


def test_nudging_cli_with_servers(vllm_servers, pair_same, pair_different, tmp_path):
    """`pilot wsd generate --method nudging` with pilot and base on servers (the pilot's tokenizer named, since it
    is handed token ids) answers as the same command with local models."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": r.id, "messages": list(r.messages)}) + "\n" for r in RECS))
    common = ["--method", "nudging", "--input", str(prompts), "--max-new-tokens", "20", "--set",
              "nudging.threshold=0.15"]
    cli = [sys.executable, "-m", "flows.cli", "wsd", "generate"]
    r1 = subprocess.run([*cli, "--pilot", str(pair_same[0]), "--base", str(pair_different[1]), *common,
                         "--output", str(tmp_path / "local.jsonl")], cwd=REPO, capture_output=True, text=True)
    r2 = subprocess.run([*cli, "--pilot", vllm_servers["pilot"].url, "--pilot-model", "pilot",
                         "--pilot-tokenizer", str(pair_same[0]), "--base", vllm_servers["base-different"].url,
                         "--base-model", "base-different", "--base-tokenizer", str(pair_different[1]), *common,
                         "--output", str(tmp_path / "srv.jsonl")], cwd=REPO, capture_output=True, text=True)
    assert r1.returncode == 0 and r2.returncode == 0, (r1.stderr, r2.stderr)
    a = [json.loads(x) for x in open(tmp_path / "local.jsonl")]
    b = [json.loads(x) for x in open(tmp_path / "srv.jsonl")]
    assert {x["method"] for x in a + b} == {"nudging"} and sum(x["handoffs"] for x in b) > 0
    assert sum(x["response"] == y["response"] for x, y in zip(a, b)) >= len(RECS) - 1

