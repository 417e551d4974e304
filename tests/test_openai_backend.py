"""Faults a real vLLM will not produce on demand: a server without logprobs, a transient 503; and the served WSD
path against the authors' reference with an in-process stand-in for the base's server (when the draft is
scored, and what each answer asks)."""

import asyncio
import json

import httpx
import pytest

from pilot_core.errors import UserError
from pilot_core.models.openai_server import OpenAIServer


def server_with(handler, **kw) -> OpenAIServer:
    from openai import AsyncOpenAI

    s = OpenAIServer("http://127.0.0.1:9/v1", "m", **kw)
    s.client = AsyncOpenAI(base_url=s.url, api_key="EMPTY", max_retries=s.client.max_retries,
                           http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return s


def completion(logprobs):
    return {"id": "x", "object": "text_completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "text": "", "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


def test_server_without_logprobs_is_a_clear_error():
    s = server_with(lambda req: httpx.Response(200, json=completion(None)))
    with pytest.raises(UserError, match="no prompt logprobs for echo=True"):
        asyncio.run(s.score([1, 2, 3]))


def test_transient_errors_are_retried():
    calls = []

    def handler(req):
        calls.append(req)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "overloaded"}})
        return httpx.Response(200, json=completion({"tokens": ["a", "b", "c", "d"], "top_logprobs": None,
                                                    "token_logprobs": [None, -1.0, -2.0, -0.5],
                                                    "text_offset": [0, 1, 2, 3]}))

    s = server_with(handler, max_retries=3)
    assert asyncio.run(s.score([1, 2, 3])) == [None, -1.0, -2.0]
    assert len(calls) == 3


def test_missing_api_key_env(monkeypatch):
    monkeypatch.delenv("PILOT_TEST_KEY", raising=False)
    with pytest.raises(UserError, match="PILOT_TEST_KEY"):
        OpenAIServer("http://127.0.0.1:9/v1", "m", api_key_env="PILOT_TEST_KEY")


def test_refused_request_is_a_user_error_and_a_dead_server_a_failed_job():
    from pilot_core.errors import JobFailed

    refused = server_with(lambda req: httpx.Response(400, json={"message": "prompt too long (1275 > 1024)"}))
    with pytest.raises(UserError, match=r"refused the request \(400\): prompt too long"):
        asyncio.run(refused.score([1, 2, 3]))
    down = server_with(lambda req: httpx.Response(503, json={"message": "overloaded"}), max_retries=1)
    with pytest.raises(JobFailed, match="failed after retries: overloaded; rerun the same command to resume"):
        asyncio.run(down.complete([1, 2], 4, ["[User]"], 0.0, 1.0, None))


def test_a_body_cut_short_is_retried_then_a_failed_job():
    """The openai client does not retry a 200 whose JSON is broken; Pilot does, then fails the job (exit 1)."""
    from pilot_core.errors import JobFailed

    good = completion({"tokens": ["a", "b", "c", "d"], "top_logprobs": None,
                       "token_logprobs": [None, -1.0, -2.0, -0.5], "text_offset": [0, 1, 2, 3]})
    calls = []

    def handler(req):
        calls.append(req)
        if len(calls) < 3:
            return httpx.Response(200, headers={"content-type": "application/json"}, content=b'{"id": "x", "cho')
        return httpx.Response(200, json=good)

    assert asyncio.run(server_with(handler, max_retries=3).score([1, 2, 3])) == [None, -1.0, -2.0]
    assert len(calls) == 3
    broken = server_with(lambda req: httpx.Response(200, headers={"content-type": "application/json"},
                                                    content=b'{"id": "x", "cho'), max_retries=1)
    with pytest.raises(JobFailed, match=r"broken responses after 2 tries \(JSONDecodeError"):
        asyncio.run(broken.score([1, 2, 3]))


# ------------------------------------------------------------------------------ served WSD: when the draft is scored
class InProcessBase:
    """A base model's server in this process, by full forward passes (slow, obviously correct, as
    tests/wsd_reference.py): `score` and `stream_complete` answered as `OpenAIServer` answers them; each request's
    prompt is recorded. `written`: greedy continuations by prompt, shared by servers of the same model."""

    def __init__(self, model, written: dict | None = None):
        self.m, self.requests, self.written = model, [], {} if written is None else written  # (kind, prompt ids)

    async def score(self, ids):
        import torch

        self.requests.append(("score", list(ids)))
        with torch.no_grad():
            lp = torch.log_softmax(self.m.model(torch.tensor([ids])).logits[0].double(), -1)
        return [None] + [float(lp[i - 1, ids[i]]) for i in range(1, len(ids))]

    async def stream_complete(self, ids, max_tokens, stop, temperature, top_p, seed):
        from .wsd_reference import greedy

        self.requests.append(("complete", list(ids)))
        key = (tuple(ids), max_tokens)
        if key not in self.written:
            self.written[key] = greedy(self.m.model, ids, max_tokens, self.m.stop_ids, self.m.tokenizer,
                                       stop_on_marker=True)
        yield self.m.decode(self.written[key]), len(self.written[key])

    async def retry_broken(self, call):
        return await call()


FIELDS = ("response", "draft_text", "switch_index", "switched", "base_tokens", "kept_draft_tokens")


@pytest.mark.parametrize("pair", ["same", "different"])
@pytest.mark.parametrize("threshold,window,chunk,max_new", [
    (0.8, 6, 8, 40),       # the paper's setting: tiny models rarely reach it
    ("median", 3, 3, 40),  # about half the prompts switch, at different points
    (0.0, 6, 5, 40),       # switch at the first full window
    (1.0, 2, 2, 6),        # no switch: the draft fills the budget
])
def test_served_wsd_scores_the_draft_once_with_the_authors_answers(models, pair, threshold, window, chunk, max_new):
    """Issue #44 item 2. The served path scored the draft at 8, 16, 32, ... tokens, a full prefill each; now by
    default once, when the draft is finished or fills the budget, with the rule on the whole draft's scores. Both
    schedules give the authors' staged answers (tests/wsd_reference.py); `once` asks one scoring request per
    drafted answer and never more requests or base prefill than `doubling`; every request is counted in the record
    as the server saw it; the continuation's prompt is a prefix of the scoring request's (the server's prefix cache
    holds it)."""
    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.openai_server import ServedModel
    from pilot_core.models.templates import chat_prompt
    from wsd_inference.config import WSDConfig
    from wsd_inference.methods import read_record
    from wsd_inference.remote_engine import wsd_one

    from .helpers import RECS, median_max_window
    from .wsd_reference import staged_wsd

    pilot, base = models[pair]
    if threshold == "median":
        threshold = median_max_window(pilot, base, window)
    cfg = WSDConfig(window=window, threshold=threshold, max_draft_tokens=24, max_new_tokens=max_new, chunk_size=chunk)
    for rec in RECS:
        ref = staged_wsd(pilot, base, rec.messages, cfg)
        got, written = {}, {}
        for scoring in ("once", "doubling"):
            server = InProcessBase(base, written)
            got[scoring] = r = asyncio.run(wsd_one(LocalChat(pilot), ServedModel(server, base.tokenizer), rec,
                                                   cfg.model_copy(update={"draft_scoring": scoring})))
            assert {k: r.to_json()[k] for k in FIELDS} == {k: ref[k] for k in FIELDS}, (rec.id, scoring)
            c, asked = r.calls, server.requests
            scores = [ids for kind, ids in asked if kind == "score"]
            assert (c.base_requests, c.base_scoring_requests) == (len(asked), len(scores))
            assert c.base_prefill_tokens == sum(len(ids) for _, ids in asked)
            assert (c.pilot_requests, c.pilot_decode_tokens) == (1, r.pilot_tokens)
            assert c.pilot_prefill_tokens == len(pilot.encode(chat_prompt(pilot.tokenizer, rec.messages)))
            assert c.base_decode_tokens == r.base_tokens
            line = json.loads(json.dumps(r.to_json()))  # the record's `calls` read back; a line without reads None
            assert read_record(line) == r and read_record({**line, "calls": None}).calls is None
            if asked and asked[-1][0] == "complete" and scores:
                assert asked[-1][1] == scores[-1][: len(asked[-1][1])] and c.base_reusable_tokens == len(asked[-1][1])
        once, doubling = got["once"].calls, got["doubling"].calls
        assert once.base_scoring_requests == (ref["switch_index"] is not None)
        assert once.base_requests <= doubling.base_requests and once.base_prefill_tokens <= doubling.base_prefill_tokens
        # the price: drafting past the switch point, never past the staged pipeline's whole draft
        assert got["once"].pilot_tokens <= ref["pilot_tokens"] and got["doubling"].pilot_tokens <= ref["pilot_tokens"]
        if ref["switched"]:
            assert got["doubling"].pilot_tokens <= got["once"].pilot_tokens


def test_a_served_pilots_prompt_tokens_are_its_servers_usage():
    """A served pilot renders its chat template unseen: its prefill in a WSD record is the count its server sent in
    the stream's usage event (vLLM sends it after the finish, as asked with `stream_options.include_usage`). A
    stream WSD closes before its end (the draft cut at the switch) or a server that sends no usage leaves None."""
    from bench.cost_model import ScriptedBase, WordTokenizer
    from pilot_core.models.openai_server import ServedModel
    from pilot_core.models.templates import base_prompt
    from pilot_core.prompts import PromptRecord
    from wsd_inference.config import WSDConfig
    from wsd_inference.remote_engine import pilot_only_one, wsd_one

    def chunk(choices, **kw):
        return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m", "choices": choices, **kw}

    def pilot(draft, usage):
        def handler(req):
            assert json.loads(req.content)["stream_options"] == {"include_usage": True}
            events = [chunk([{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": "stop" if i == draft - 1
                              else None, "logprobs": {"content": [{"token": f" w{i}", "logprob": -0.1,
                                                                   "top_logprobs": []}]}}]) for i in range(draft)]
            if usage:
                events.append(chunk([], usage={"prompt_tokens": 17, "completion_tokens": draft,
                                               "total_tokens": 17 + draft}))
            body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())

        return server_with(handler)

    rec = PromptRecord("q", ({"role": "user", "content": "one two three"},))
    P = len(WordTokenizer()(base_prompt(rec.messages, None)).input_ids)
    cfg = WSDConfig(window=3, threshold=0.5, max_draft_tokens=16, max_new_tokens=40, chunk_size=4)

    def run(draft, usage, switch, scoring="once"):
        base = ServedModel(ScriptedBase(P, switch, 3), WordTokenizer())
        c = cfg.model_copy(update={"draft_scoring": scoring})
        return asyncio.run(wsd_one(pilot(draft, usage), base, rec, c)).calls

    once = run(10, True, 5)  # the whole draft streamed, then scored once
    assert (once.pilot_requests, once.pilot_prefill_tokens, once.pilot_decode_tokens) == (1, 17, 10)
    assert once.base_scoring_requests == 1
    assert run(10, False, 5).pilot_prefill_tokens is None  # a server that sends no usage
    cut = run(12, True, 2, "doubling")  # switched at the first check: the pilot's stream closed before its end
    assert cut.pilot_prefill_tokens is None and cut.pilot_decode_tokens == 4
    alone = asyncio.run(pilot_only_one(pilot(6, True), rec, cfg)).calls
    assert (alone.pilot_prefill_tokens, alone.pilot_decode_tokens) == (17, 6)
