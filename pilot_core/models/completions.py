"""A model that continues token ids, on an OpenAI-compatible server or in-process, behind one interface: what a
method needs when it hands text between two models and each continues its own tokenization (Nudging's pilot).

`continue_ids(prompt_id, ids, max_tokens, sampling, seed)` returns (new token ids, finish reason: "stop" at a stop
token, else "length"). In-process, each prompt keeps its KV cache between calls (a call feeds only what differs
from the last one's tokens) until `done(prompt_id)`.
"""

from __future__ import annotations

import asyncio
import threading

from pilot_core.models.loading import HFModel, stop_ids
from pilot_core.models.openai_server import ServedModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Generation, Sampling, Stream


class LocalCompletions:
    def __init__(self, model: HFModel):
        self.m, self.tokenizer, self.stop_ids = model, model.tokenizer, model.stop_ids
        self.caches: dict[str, RaggedBatch] = {}
        self.lock = threading.Lock()  # one forward pass at a time on the model

    def encode(self, text: str) -> list[int]:
        return self.m.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.m.decode(ids)

    async def continue_ids(self, prompt_id: str, ids: list[int], max_tokens: int, sampling: Sampling,
                           seed: int | None) -> tuple[list[int], str]:
        def run() -> list[int]:
            with self.lock:
                batch = self.caches.setdefault(prompt_id, RaggedBatch(self.m, 1))
                batch.advance([ids], [len(ids)])
                row = Stream(max_tokens, sampling.generator(seed))
                Generation(batch, [row], sampling).run()
                return row.tokens

        toks = await asyncio.to_thread(run)
        return toks, "stop" if toks and toks[-1] in self.stop_ids else "length"

    def done(self, prompt_id: str) -> None:
        self.caches.pop(prompt_id, None)


class ServedCompletions:
    """A chat model on its server continuing token ids rendered here (its tokenizer loaded locally)."""

    def __init__(self, served: ServedModel):
        self.served, self.tokenizer = served, served.tokenizer
        self.stop_ids = stop_ids(self.tokenizer, chat=True)  # as an in-process chat pilot's (load_hf_model)

    def encode(self, text: str) -> list[int]:
        return self.served.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.served.decode(ids)

    async def continue_ids(self, prompt_id: str, ids: list[int], max_tokens: int, sampling: Sampling,
                           seed: int | None) -> tuple[list[int], str]:
        c = await self.served.server.complete(ids, max_tokens, [], sampling.temperature, sampling.top_p, seed)
        return (c.token_ids if c.token_ids is not None else self.served.encode(c.text)), c.finish_reason

    def done(self, prompt_id: str) -> None:
        pass
