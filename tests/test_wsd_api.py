"""`pilot wsd serve` driven as a user drives it: the `openai` SDK on loopback against the real server process.

The answers equal `pilot wsd generate`'s (greedy), also when requests arrive together and are batched; streaming,
completions, n, seeds, stop, max_tokens; bad requests get a 400 in OpenAI's error shape; the API key; a client
that goes away mid-stream stops its answer; SIGTERM lets the requests in flight finish."""

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from wsd_inference.server_process import WSDServer

from .helpers import pilot

KEY_ENV, KEY = "PILOT_TEST_SERVER_KEY", "sk-test-4f1c9e"
DECODING = ["--max-draft-tokens", "16", "--window", "3", "--threshold", "0.05"]
PROMPTS = [f"Question number {i}: what is {i} plus {i}?" for i in range(6)]
FIELDS = ("switched", "switch_index", "kept_draft_tokens", "base_tokens", "draft_text")
LONG = "Question number 22: what is 22 plus 22?"  # the tiny pair's greedy answer runs to any budget (3000 here)


@pytest.fixture(scope="module")
def server(pair_same):
    env = {**os.environ, KEY_ENV: KEY}
    with WSDServer(["--pilot", str(pair_same[0]), "--base", str(pair_same[1]), *DECODING, "--max-new-tokens", "3000",
                    "--batch-size", "4", "--server-api-key-env", KEY_ENV, "--max-n", "4"], env=env) as s:
        yield s
    assert KEY not in s.log.read_text()  # the key is never logged


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def generated(pair_same, tmp_path_factory):
    """`pilot wsd generate` on the same prompts and settings (24 base tokens)."""
    d = tmp_path_factory.mktemp("generate")
    (d / "in.jsonl").write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(PROMPTS))
                                + json.dumps({"id": "multi", "messages": MULTI}) + "\n")
    r = pilot("wsd", "generate", "--pilot", str(pair_same[0]), "--base", str(pair_same[1]), *DECODING,
              "--max-new-tokens", "24", "--input", str(d / "in.jsonl"), "--output", str(d / "out.jsonl"))
    assert r.returncode == 0, r.stderr
    return {json.loads(x)["id"]: json.loads(x) for x in (d / "out.jsonl").read_text().splitlines()}


MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour."}]


def chat(client, content, **kw):
    messages = content if isinstance(content, list) else [{"role": "user", "content": content}]
    return client.chat.completions.create(model="wsd", messages=messages, **{"max_tokens": 24, "temperature": 0, **kw})


def test_answers_equal_wsd_generate_also_when_batched(server, generated):
    async def all_at_once():
        c = openai.AsyncOpenAI(base_url=server.url, api_key=KEY, max_retries=0)
        async with c:
            return await asyncio.gather(*(c.chat.completions.create(
                model="wsd", messages=[{"role": "user", "content": p}], max_tokens=24, temperature=0) for p in PROMPTS))

    answers = asyncio.run(all_at_once())
    after = server.health()
    assert after["batching"] == "continuous" and after["largest_batch"] > 1  # they ran together
    for i, r in enumerate(answers):
        want, c = generated[f"q{i}"], r.choices[0]
        assert c.message.content == want["response"]
        got = c.model_extra["wsd"]
        assert {k: got[k] for k in FIELDS} == {k: want[k] for k in FIELDS}
        # scored as it becomes final (continuous batching), a greedy draft stops within a chunk (8) of where
        # the batch engine's does
        assert abs(got["pilot_tokens"] - want["pilot_tokens"]) <= 8
        assert r.usage.completion_tokens == want["kept_draft_tokens"] + want["base_tokens"] <= 24
        assert c.finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")
        assert r.usage.prompt_tokens > 5 and r.model == "wsd"


def test_multi_turn_and_completions_endpoint(client, generated):
    assert chat(client, MULTI).choices[0].message.content == generated["multi"]["response"]
    r = client.completions.create(model="wsd", prompt=PROMPTS[:3], max_tokens=24, temperature=0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert [c.text for c in r.choices] == [generated[f"q{i}"]["response"] for i in range(3)]
    assert r.object == "text_completion" and r.usage.completion_tokens == sum(
        generated[f"q{i}"]["kept_draft_tokens"] + generated[f"q{i}"]["base_tokens"] for i in range(3))


def test_streaming_sends_the_same_answer_piece_by_piece(client):
    want = chat(client, LONG, max_tokens=200).choices[0].message.content
    chunks = list(chat(client, LONG, max_tokens=200, stream=True, stream_options={"include_usage": True}))
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) > 10 and "".join(content) == want  # token by token after the switch, not one lump
    last = [c for c in chunks if c.choices][-1].choices[0]
    assert last.finish_reason == "length" and last.model_extra["wsd"]["kept_draft_tokens"] >= 1
    assert chunks[-1].usage.completion_tokens == 200 and not chunks[-1].choices
    done = list(client.completions.create(model="wsd", prompt=PROMPTS[0], max_tokens=24, stream=True, temperature=0))
    assert "".join(c.choices[0].text for c in done) == chat(client, PROMPTS[0]).choices[0].message.content


def test_n_seed_temperature_and_stop(client):
    a = chat(client, PROMPTS[1], n=3, temperature=1.0, seed=7, max_tokens=40)
    b = chat(client, PROMPTS[1], n=3, temperature=1.0, seed=7, max_tokens=40)
    texts = [c.message.content for c in a.choices]
    assert [c.index for c in a.choices] == [0, 1, 2] and texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # each choice has its own random stream
    other = chat(client, PROMPTS[1], n=3, temperature=1.0, seed=8, max_tokens=40)
    assert [c.message.content for c in other.choices] != texts
    # a seeded answer does not depend on what it was batched with
    alone = chat(client, PROMPTS[2], temperature=1.0, seed=5, max_tokens=40).choices[0].message.content
    results = {}

    def crowd(i):
        results[i] = chat(client, PROMPTS[i % 6], temperature=1.0, seed=i, max_tokens=40)

    threads = [threading.Thread(target=crowd, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    together = chat(client, PROMPTS[2], temperature=1.0, seed=5, max_tokens=40).choices[0].message.content
    for t in threads:
        t.join()
    assert together == alone
    greedy = chat(client, LONG, max_tokens=120).choices[0].message.content
    word = greedy.split()[len(greedy.split()) // 2]
    cut = chat(client, LONG, max_tokens=120, stop=[word])
    assert cut.choices[0].message.content == greedy[: greedy.index(word)].strip()
    assert cut.choices[0].finish_reason == "stop" and cut.usage.completion_tokens < 120
    short = chat(client, LONG, max_tokens=5)
    assert short.usage.completion_tokens == 5 and short.choices[0].finish_reason == "length"
    # the decoder's own reason: an answer whose stop string completes exactly at its budget stopped, not cut
    n = cut.usage.completion_tokens
    exact = chat(client, LONG, max_tokens=n, stop=[word])
    assert exact.choices[0].message.content == cut.choices[0].message.content
    assert exact.usage.completion_tokens == n and exact.choices[0].finish_reason == "stop"


def test_openai_defaults_and_vllm_extras(client):
    """A request without temperature samples at 1.0 (OpenAI's and vLLM's default), not greedily; vLLM's extra
    sampling fields are accepted at their neutral values; max_completion_tokens is read by both endpoints."""
    plain = client.chat.completions.create(model="wsd", messages=[{"role": "user", "content": LONG}], max_tokens=40,
                                           seed=3, n=3)
    at_one = chat(client, LONG, max_tokens=40, seed=3, n=3, temperature=1.0)
    greedy = chat(client, LONG, max_tokens=40, seed=3, n=3)
    texts = [c.message.content for c in plain.choices]
    assert texts == [c.message.content for c in at_one.choices] != [c.message.content for c in greedy.choices]
    neutral = chat(client, LONG, max_tokens=40, extra_body={"top_k": -1, "repetition_penalty": 1, "min_p": 0})
    assert neutral.choices[0].message.content == greedy.choices[0].message.content
    assert chat(client, LONG, extra_body={"top_k": 0}).choices[0].message.content
    r = client.completions.create(model="wsd", prompt=LONG, temperature=0, extra_body={"max_completion_tokens": 5})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="wsd", messages=[{"role": "user", "content": LONG}], temperature=0,
                                       max_completion_tokens=5)
    assert r.usage.completion_tokens == 5


@pytest.mark.parametrize("kw, param", [
    ({"temperature": 5}, "temperature"), ({"n": 9}, "n"), ({"max_tokens": 3001}, "max_tokens"),
    ({"logprobs": True}, "logprobs"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"top_p": 0}, "top_p"),
    ({"extra_body": {"top_k": 5}}, "top_k"), ({"extra_body": {"repetition_penalty": 1.2}}, "repetition_penalty"),
    ({"extra_body": {"frobnicate": 1}}, "frobnicate"), ({"tools": [{"type": "function", "function": {"name": "f"}}]},
                                                         "tools"),
    ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
])
def test_bad_requests_get_a_400_naming_the_parameter(client, kw, param):
    args = {"model": "wsd", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, **kw}
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(**args)
    assert e.value.status_code == 400 and e.value.body["param"] == param and e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


def test_errors_in_openai_shape_auth_limits_health(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="wrong", max_retries=0).models.list()
    r = httpx.post(f"{server.url}/chat/completions", json={"model": "wsd", "messages": [{"role": "user",
                                                                                         "content": "Hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert [m.id for m in client.models.list()] == ["wsd"]
    r = httpx.post(f"{server.url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   content=b'{"model": "wsd", "messages": [' + b" " * (1 << 20) + b"]}")
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, content=b"{nope")
    assert r.status_code == 400 and "not JSON" in r.json()["error"]["message"]
    assert httpx.get(f"{server.url}/nowhere").json()["error"]["type"] == "not_found_error"
    assert server.health()["status"] == "ok"


def test_metrics_count_what_was_served(server, client):
    """/metrics (Prometheus' text format, no key needed, as vLLM's): requests, answers, tokens and switches move by
    what the server answered, streamed or not; the queue and running gauges are back at 0."""
    from prometheus_client.parser import text_string_to_metric_families

    def scrape():
        text = httpx.get(server.url.removesuffix("/v1") + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    before = scrape()
    whole = chat(client, PROMPTS[1], n=2)
    streamed = list(chat(client, PROMPTS[2], stream=True, stream_options={"include_usage": True}))
    after = scrape()

    def moved(name, *labels):
        return after[(name, labels)] - before.get((name, labels), 0)

    assert moved("pilot:requests_total", ("outcome", "ok")) == 2
    assert moved("pilot:request_success_total", ("finished_reason", "stop")) + moved(
        "pilot:request_success_total", ("finished_reason", "length")) == 3
    usage = streamed[-1].usage
    assert moved("pilot:generation_tokens_total") == whole.usage.completion_tokens + usage.completion_tokens
    assert moved("pilot:prompt_tokens_total") == 2 * whole.usage.prompt_tokens + usage.prompt_tokens  # per answer
    switched = sum(bool(c.model_extra["wsd"]["switched"]) for c in whole.choices) + bool(
        [c for c in streamed if c.choices][-1].choices[0].model_extra["wsd"]["switched"])
    assert moved("pilot:wsd_answers_total") == 3 and moved("pilot:wsd_switched_total") == switched
    assert 0 <= after[("pilot:switch_rate", ())] <= 1
    assert after[("pilot:num_requests_waiting", ())] == after[("pilot:num_requests_running", ())] == 0


def test_a_client_that_goes_away_mid_stream_stops_its_answer(server, client):
    before = server.health()["cancelled"]
    with chat(client, LONG, max_tokens=3000, stream=True) as stream:
        got = 0
        for chunk in stream:
            got += bool(chunk.choices and chunk.choices[0].delta.content)
            if got >= 3:
                break  # closing the response drops the connection
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (server.health()["in_flight"] or server.health()["cancelled"] == before):
        time.sleep(0.05)
    h = server.health()
    assert h["cancelled"] == before + 1 and h["in_flight"] == 0  # stopped part-way, not run to 3000 tokens


def test_sigterm_finishes_the_requests_in_flight_and_the_limit_holds(pair_same):
    """Three long answers in flight, in batches of two, at least one waiting in a queue of three; SIGTERM lets
    all three finish."""
    with WSDServer(["--pilot", str(pair_same[0]), "--base", str(pair_same[1]), *DECODING, "--max-new-tokens",
                    "400", "--batch-size", "2", "--max-queue", "3"]) as s:
        c = openai.OpenAI(base_url=s.url, api_key="none", max_retries=0)
        results, errors = [], []

        def ask():
            try:
                results.append(chat(c, LONG, max_tokens=400))
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=ask) for _ in range(3)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while s.health()["in_flight"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert s.health()["in_flight"] == 3 and s.health()["waiting"] >= 1  # 1 or 2: the first batch may hold 1
        with pytest.raises(openai.RateLimitError) as full:  # 1 + 3 answers waiting: over the queue of 3; retry later
            chat(c, "Hi", n=3)
        assert int(full.value.response.headers["retry-after"]) >= 1
        with pytest.raises(openai.BadRequestError, match="over the server's queue of 3"):  # never admissible
            chat(c, "Hi", n=4)
        assert s.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        for t in threads:
            t.join()
        assert not errors and len(results) == 3
        assert all(r.usage.completion_tokens == 400 for r in results)  # finished, not cut
        with pytest.raises(openai.APIConnectionError):
            chat(c, "Hi")


# ------------------------------------------------------------------------------ admission (issue #44 item 3)
# The app in this process over an in-process backend whose method is a stand-in: its first batch holds the engine
# until released, so what waits, in which order it runs, what a full queue and a timeout answer are deterministic.
class Letters:
    """A tokenizer stand-in: one token per character."""

    bos_token = None

    def __call__(self, text, add_special_tokens=False):
        return type("Enc", (), {"input_ids": [ord(c) for c in text]})()

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


class Held:
    """A method stand-in: answers "answer to <prompt>", records the order it decoded prompts in, and holds the
    engine in its first batch until `release`."""

    def __init__(self):
        self.order, self.hold = [], threading.Event()

    def watched(self, models, recs, cfg, watch):
        from pilot_core.method_record import MethodRecord, WSDTrace

        first = not self.order
        self.order += [r.messages[-1]["content"] for r in recs]
        if first:
            self.hold.wait(30)
        return [MethodRecord(r.id, "wsd", f"answer to {r.messages[-1]['content']}", 0.0, {}, pilot_tokens=5,
                             base_tokens=2, trace=WSDTrace("ab", 1, True, 2, [0.9])) for r in recs]


def held_app(max_queue=4, timeout_s=30.0):
    from types import SimpleNamespace

    from wsd_inference.api.protocol import ServerLimits
    from wsd_inference.api.router import create_app
    from wsd_inference.config import WSDConfig
    from wsd_inference.serving import JobQueue, LocalBackend

    method = Held()
    backend = LocalBackend(method, SimpleNamespace(base=SimpleNamespace(tokenizer=Letters()), pilot=None), 1,
                           queue=JobQueue(max_queue))
    cfg = WSDConfig(max_new_tokens=8, temperature=0.0)
    app = create_app(backend, cfg, "wsd", ServerLimits(max_tokens=8, request_timeout_s=timeout_s,
                                                       default_temperature=0.0))
    return app, backend, method


async def _until(cond, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_priority_first_come_first_served_a_full_queue_429_and_metrics():
    """Held engine: six requests queue behind the one it decodes; released, they run by priority (lower first,
    vLLM's convention), in arrival order within a priority. A request that does not fit the queue gets a 429 with
    Retry-After (the openai SDK, not retrying, raises RateLimitError); one that could never fit, a 400. /metrics
    parses with Prometheus' own parser and counts what was served."""
    from prometheus_client.parser import text_string_to_metric_families

    app, backend, method = held_app(max_queue=5)

    async def go():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wsd")
        client = openai.AsyncOpenAI(base_url="http://wsd/v1", api_key="none", max_retries=0, http_client=http)

        def ask(text, priority=None):
            extra = {} if priority is None else {"extra_body": {"priority": priority}}
            return client.chat.completions.create(model="wsd", messages=[{"role": "user", "content": text}],
                                                  **extra)

        first = asyncio.ensure_future(ask("hold"))
        await _until(lambda: backend.running == 1)
        assert (await http.get("/health")).json()["running"] == 1
        waiting = []
        for text, priority in (("b", None), ("c", 1), ("d", -1), ("e", 0), ("f", 1)):
            waiting.append(asyncio.ensure_future(ask(text, priority)))
            await _until(lambda: len(backend.queue) == len(waiting))  # arrival order is send order
        with pytest.raises(openai.RateLimitError) as full:
            await ask("g")
        never = await http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "h"}],
                                                              "n": 6})
        metrics_held = (await http.get("/metrics")).text
        method.hold.set()
        answers = await asyncio.gather(first, *waiting)
        scraped = await http.get("/metrics")
        openmetrics = await http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
        await http.aclose()
        await backend.close()
        assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")  # Prometheus' text format
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")  # a scraper that asks for OpenMetrics gets it, as from vLLM
        return full.value, never, answers, metrics_held, scraped.text

    full, never, answers, metrics_held, metrics = asyncio.run(go())
    assert method.order == ["hold", "d", "b", "e", "c", "f"]
    assert full.status_code == 429 and int(full.response.headers["retry-after"]) >= 1
    assert full.body["code"] == "rate_limit_exceeded" and "5 answers are waiting" in full.body["message"]
    assert never.status_code == 400 and never.json()["error"]["param"] == "n"
    assert [a.choices[0].message.content for a in answers] == [f"answer to {t}" for t in "hold b c d e f".split()]

    def values(text):
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    held, m = values(metrics_held), values(metrics)
    assert held[("pilot:num_requests_waiting", ())] == 5 and held[("pilot:num_requests_running", ())] == 1
    assert held[("pilot:batch_occupancy", ())] == 1.0
    assert m[("pilot:requests_total", (("outcome", "ok"),))] == 6
    assert m[("pilot:requests_total", (("outcome", "rejected"),))] == 1
    assert m[("pilot:requests_total", (("outcome", "invalid"),))] == 1
    assert m[("pilot:num_requests_waiting", ())] == 0 and m[("pilot:num_requests_running", ())] == 0
    assert m[("pilot:generation_tokens_total", ())] == sum(a.usage.completion_tokens for a in answers) == 6 * 4
    assert m[("pilot:prompt_tokens_total", ())] == sum(a.usage.prompt_tokens for a in answers)
    assert m[("pilot:request_success_total", (("finished_reason", "stop"),))] == 6
    assert m[("pilot:wsd_answers_total", ())] == 6 and m[("pilot:switch_rate", ())] == 1.0
    assert m[("pilot:draft_tokens_total", ())] == 30 and m[("pilot:e2e_request_latency_seconds_count", ())] == 6


def test_a_request_that_outlives_its_timeout_gets_a_504_waiting_or_running():
    """The timeout counts from admission: a request still waiting behind a held engine is answered 504 and leaves
    the queue (it never runs); the one held past its time too."""
    app, backend, method = held_app(timeout_s=0.5)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://wsd") as http:
            def ask(text):
                return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]})

            held = asyncio.ensure_future(ask("hold"))
            await _until(lambda: backend.running == 1)
            waiting = await ask("late")
            assert len(backend.queue) == 0  # it left the queue
            running = await held
            method.hold.set()
            await backend.close()
            return waiting, running, (await http.get("/metrics")).text

    waiting, running, metrics = asyncio.run(go())
    for r in (waiting, running):
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert "still waiting in the queue" in waiting.json()["error"]["message"]
    assert method.order == ["hold"]  # the late one never ran
    assert 'pilot:requests_total{outcome="timeout"} 2.0' in metrics


def test_the_queue_takes_by_priority_then_arrival_and_no_batch_passes_a_waiting_answer():
    """A batch is the head of the queue (lowest priority number, then the earliest) and the answers right behind
    it that share its settings: one with other settings is not passed by later ones, so it runs next. A request's
    answers go in all or none."""
    from pilot_core.prompts import PromptRecord
    from wsd_inference.config import WSDConfig
    from wsd_inference.serving import Job, JobQueue, QueueFull

    short, long = WSDConfig(max_new_tokens=8), WSDConfig(max_new_tokens=16)
    q = JobQueue(6)

    def job(name, cfg=short, priority=0):
        return Job(PromptRecord(name, ({"role": "user", "content": name},)), cfg, priority=priority)

    q.put([job("a"), job("b", long), job("c")])
    q.put([job("d", priority=1), job("e", priority=-1)])
    with pytest.raises(QueueFull):
        q.put([job("f"), job("g")])  # 5 + 2 over the bound of 6: neither goes in
    assert len(q) == 5

    def names(batch):
        return [j.rec.id for j in batch]

    def key(j):
        return j.batch_key

    assert names(q.take(4, key)) == ["e", "a"]  # b (other settings) stops the batch: c does not pass it
    assert names(q.take(4, key)) == ["b"]
    assert names(q.take(1, key)) == ["c"] and names(q.take(4, key)) == ["d"] and q.take(4, key) == []
