"""A served LLM judge stand-in that prefers the longer response, as an httpx transport behind the openai client:
pairwise, the longer one in either order; pointwise, `score(text)` (by default growing with the length, 1-10).
Counts its calls by kind. Used by tests/test_plan.py and bench/judge_strategies.py."""

import json

import httpx


def by_length(text: str) -> float:
    return round(1 + 9 * min(len(text), 120) / 120, 2)


class LengthJudge(httpx.AsyncBaseTransport):
    def __init__(self, score=by_length):
        self.score = score
        self.calls = {"pointwise": 0, "pairwise": 0}

    async def handle_async_request(self, request):
        body = json.loads(request.content)
        user = body["messages"][-1]["content"]
        if "# Response A\n" in user:
            self.calls["pairwise"] += 1
            a = user.split("# Response A\n", 1)[1].split("\n\n# Response B\n", 1)[0]
            b = user.split("\n\n# Response B\n", 1)[1]
            answer = {"winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie", "rationale": "length"}
        else:
            self.calls["pointwise"] += 1
            answer = {"score": self.score(user.split("# Response\n", 1)[1]), "rationale": "length"}
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": json.dumps(answer)}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})
