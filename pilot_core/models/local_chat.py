"""A chat model in-process, answering like an OpenAI-compatible server does (`OpenAIServer`), so a caller treats
a local model and a served one alike: `chat` and `chat_many` (calls answered in batches over one KV cache) for
the preference stage's writers and judges; `stream_chat` (one answer, token by token) for WSD with a local pilot
and a served base. Each call samples with its own seeded generator, so its answer does not depend on the batch
it ran in (nor on which calls a rerun still had to make)."""

from __future__ import annotations

import asyncio
import threading

from pilot_core.models.compute import Compute
from pilot_core.models.loading import HFModel, load_hf_model
from pilot_core.models.sampling import Generation, Sampling, Stream, prefilled
from pilot_core.models.source import ModelSource
from pilot_core.models.templates import chat_prompt


def _finish_reason(model: HFModel, ids: list[int]) -> str:
    return "stop" if ids and ids[-1] in model.stop_ids else "length"


class LocalChat:
    def __init__(self, model: HFModel, batch_size: int = 8):
        self.m, self.batch_size = model, batch_size
        self.lock = threading.Lock()  # one batch at a time on the model

    @classmethod
    def of(cls, src: ModelSource, batch_size: int = 8, compute: Compute | None = None) -> "LocalChat":
        return cls(load_hf_model(src.local_path(), f"model {src.name}", compute, src.trust_remote_code,
                                 need_chat_template=True, revision=src.revision), batch_size)

    def _generate(self, calls: list[tuple[list[dict], dict]]) -> list[dict]:
        """calls: (messages, {max_tokens, temperature, top_p, seed[, top_logprobs]}) -> one result per call,
        batched once per distinct set of sampling settings. With `top_logprobs` a result also holds the first
        generated token's most likely tokens, [{token, logprob}], as a server returns them."""
        import torch

        groups: dict[tuple, list[int]] = {}
        for i, (_, p) in enumerate(calls):
            groups.setdefault((p["max_tokens"], p["temperature"], p["top_p"], p.get("top_logprobs", 0)),
                              []).append(i)
        out: list[dict] = [{} for _ in calls]
        with self.lock:
            for (max_tokens, temperature, top_p, top_k), rows in groups.items():
                sampling = Sampling(temperature, top_p)
                prompts = [chat_prompt(self.m.tokenizer, calls[i][0]) for i in rows]
                batch = prefilled(self.m, prompts)
                firsts = [torch.log_softmax(batch.next_logits[r], -1).topk(top_k) if top_k else None
                          for r in range(len(rows))]
                streams = [Stream(max_tokens, sampling.generator(calls[i][1]["seed"])) for i in rows]
                Generation(batch, streams, sampling).run()
                for i, prompt, row, first in zip(rows, prompts, streams, firsts):
                    out[i] = {"text": self.m.decode(row.tokens).strip(), "prompt_tokens": len(self.m.encode(prompt)),
                              "completion_tokens": len(row.tokens), "finish_reason": _finish_reason(self.m, row.tokens)}
                    if first is not None:
                        out[i]["top_logprobs"] = [{"token": self.m.decode([int(t)]), "logprob": float(v)}
                                                  for v, t in zip(first.values, first.indices)]
        return out

    async def chat_many(self, calls: list[tuple[list[dict], dict]]) -> list[dict]:
        return await asyncio.to_thread(self._generate, calls)

    async def chat(self, messages, max_tokens, temperature, top_p, seed, response_format=None,
                   top_logprobs: int = 0) -> dict:
        """A chat completion in-process (a `response_format` is not enforced here: the verdict is parsed as it
        comes, as from a server without structured output)."""
        params = {"max_tokens": max_tokens, "temperature": temperature, "top_p": top_p, "seed": seed,
                  "top_logprobs": top_logprobs}
        return (await self.chat_many([(messages, params)]))[0]

    async def stream_chat(self, messages: list[dict], max_tokens: int, temperature: float, top_p: float,
                          seed: int | None, usage: dict | None = None):
        """Yield (text delta, finish_reason or "", 1) per generated token, as `OpenAIServer.stream_chat` does per
        chunk; each token is computed in a worker thread, so other requests go on meanwhile. `usage`, where
        given, gets the prompt's tokens (`prompt_tokens`) at once, as a server's usage event would."""
        sampling = Sampling(temperature, top_p)
        row = Stream(max_tokens, sampling.generator(seed))
        prompt = chat_prompt(self.m.tokenizer, messages)
        if usage is not None:
            usage["prompt_tokens"] = len(self.m.encode(prompt))
        batch = await asyncio.to_thread(prefilled, self.m, [prompt])
        gen, text = Generation(batch, [row], sampling), ""
        while gen.live:
            await asyncio.to_thread(gen.step)
            new_text = self.m.decode(row.tokens)
            yield new_text[len(text):], _finish_reason(self.m, row.tokens) if row.done else "", 1
            text = new_text

    async def retry_broken(self, call):
        """A local model's answers never arrive broken: call() once."""
        return await call()

    async def close(self) -> None:
        pass
