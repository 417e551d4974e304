"""Best-of-N and weak-to-strong search with the base model on an OpenAI-compatible server (vLLM).

The base samples on the server: whole responses (best-of-N) or L-token chunks continued from the exact token ids
sampled so far (CBS; vLLM returns them with `return_token_ids`, other servers' text is re-tokenized). The scorers
(the pilot and its untuned reference, or a reward model) stay in-process and score every row of a prompt group at
once between rounds. The search loops are `search.best_of_n` and `search.cbs`, the same as in-process; only the
rows that sample differ (`ServedRows`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord
from pilot_core.models.openai_server import ServedModel
from pilot_core.models.sampling import Sampling
from pilot_core.models.templates import STOP_STRINGS, base_prompt
from pilot_core.prompts import PromptRecord
from wsd_inference.search import best_of_n, cbs, row_seed

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


class ServedRows:
    """n sampled rows per prompt, sampling concurrently on the server (at most `limit` requests in flight)."""

    def __init__(self, base: ServedModel, recs: list[PromptRecord], n: int, cfg: WSDConfig, sampling: Sampling,
                 limit: int):
        self.base, self.cfg, self.n, self.sampling = base, cfg, n, sampling
        self.prompts = [rec for rec in recs for _ in range(n)]  # each row's prompt
        ids = [base.encode(base_prompt(rec.messages, base.tokenizer.bos_token)) for rec in recs]
        self.prompt_ids = [p for p in ids for _ in range(n)]  # its base tokens
        self.resp: list[list[int]] = [[] for _ in self.prompts]
        self.finished = [False] * len(self.prompts)
        self.sem = asyncio.Semaphore(limit)

    async def _sample(self, i: int, chunk: int, round_: int) -> None:
        """Up to `chunk` more tokens for row i: finished at EOS or a role marker (not at max_tokens), or at the
        budget."""
        budget = self.cfg.max_new_tokens - len(self.resp[i])
        seed = row_seed(self.cfg, self.prompts[i].id, round_, i % self.n)
        s = self.sampling
        async with self.sem:
            c = await self.base.server.complete(self.prompt_ids[i] + self.resp[i],
                                                min(chunk, budget), list(STOP_STRINGS), s.temperature, s.top_p, seed,
                                                s.top_k)
        self.resp[i] = self.resp[i] + (c.token_ids if c.token_ids is not None else self.base.encode(c.text))
        self.finished[i] = c.finish_reason != "length" or len(self.resp[i]) >= self.cfg.max_new_tokens

    async def sample(self, chunk: int, round_: int) -> None:
        await asyncio.gather(*(self._sample(i, chunk, round_) for i in range(len(self.prompts))
                               if not self.finished[i]))

    async def compute(self, fn, *args):
        """The in-process scorers' work between rounds, in a worker thread: the event loop stays free."""
        return await asyncio.to_thread(fn, *args)

    def speculation(self, rec: PromptRecord) -> None:
        """A served base speculates on its server (its metrics say how much); none here."""
        return None

    def select(self, order: list[int], round_: int) -> None:
        self.prompts = [self.prompts[r] for r in order]
        self.prompt_ids = [self.prompt_ids[r] for r in order]
        self.resp = [list(self.resp[r]) for r in order]
        self.finished = [self.finished[r] for r in order]


async def bon_remote(base: ServedModel, tuned, untuned, recs: list[PromptRecord], cfg: WSDConfig,
                     reward=None) -> list[MethodRecord]:
    t0 = time.perf_counter()
    rows = ServedRows(base, recs, cfg.bon.n, cfg, cfg.bon.sampling(), cfg.batch_size * cfg.bon.n)
    return await best_of_n(rows, recs, cfg, tuned, untuned, reward, t0)


async def cbs_remote(base: ServedModel, tuned, untuned, recs: list[PromptRecord], cfg: WSDConfig) -> list[MethodRecord]:
    t0 = time.perf_counter()
    n = cfg.cbs.beam_width * cfg.cbs.successors
    rows = ServedRows(base, recs, n, cfg, cfg.cbs.sampling(), cfg.batch_size * n)
    return await cbs(rows, recs, cfg, tuned, untuned, t0)
