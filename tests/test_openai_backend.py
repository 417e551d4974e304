"""Faults a real vLLM will not produce on demand: a server without logprobs, a transient 503."""

import asyncio

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
