"""Best-of-N and weak-to-strong search with the base model on an OpenAI-compatible server (vLLM).

The base samples on the server: whole responses (best-of-N) or L-token chunks continued from the exact token ids
sampled so far (CBS; vLLM returns them with `return_token_ids`, other servers' text is re-tokenized). The scorers
(the pilot and its untuned reference, or a reward model) stay in-process, as in `search`, and score every row of a
prompt group at once between rounds. Each row samples with its own seed, the same key as the local backend's
generator (`prompt_seed(rid#round#slot)`), so a rerun draws the same samples.
"""

from __future__ import annotations

import asyncio
import time

from wsd_inference.config import WSDConfig
from wsd_inference.engine import prompt_seed
from wsd_inference.implicit_reward import IncrementalScorer
from wsd_inference.prompts import STOP_STRINGS, PromptRecord, base_prompt
from wsd_inference.remote_engine import RemoteBase
from wsd_inference.search import best_of, search_record, scored_text


async def _sample(base: RemoteBase, context: list[int], max_tokens: int, seed: int, s) -> tuple[list[int], bool]:
    """(new token ids, finished) for one row: finished at EOS or a role marker, not at max_tokens."""
    c = await base.server.complete(context, max_tokens, list(STOP_STRINGS), s.temperature, s.top_p, seed, s.top_k)
    ids = c.token_ids if c.token_ids is not None else base.encode(c.text)
    return ids, c.finish_reason != "length"


class _Rows:
    """n sampled rows per prompt, sampling concurrently (at most `limit` requests in flight)."""

    def __init__(self, base: RemoteBase, recs: list[PromptRecord], n: int, cfg: WSDConfig, limit: int):
        self.base, self.cfg, self.n = base, cfg, n
        self.rows = [rec for rec in recs for _ in range(n)]
        self.prompts = [base.encode(base_prompt(rec.messages, base.tokenizer.bos_token)) for rec in recs]
        self.resp: list[list[int]] = [[] for _ in self.rows]
        self.finished = [False] * len(self.rows)
        self.sem = asyncio.Semaphore(limit)

    async def step(self, chunk: int, round_: int, s) -> None:
        async def one(i: int) -> None:
            if self.finished[i]:
                return
            budget = self.cfg.max_new_tokens - len(self.resp[i])
            seed = prompt_seed(self.cfg, f"{self.rows[i].id}#{round_}#{i % self.n}")
            async with self.sem:
                ids, done = await _sample(self.base, self.prompts[i // self.n] + self.resp[i], min(chunk, budget),
                                          seed, s)
            self.resp[i] = self.resp[i] + ids
            self.finished[i] = done or len(self.resp[i]) >= self.cfg.max_new_tokens

        await asyncio.gather(*(one(i) for i in range(len(self.rows))))

    def texts(self) -> list[str]:
        return [scored_text(self.base, r, f) for r, f in zip(self.resp, self.finished)]


async def bon_remote(base: RemoteBase, tuned, untuned, recs: list[PromptRecord], cfg: WSDConfig,
                     reward=None) -> list[dict]:
    t0, s = time.perf_counter(), cfg.bon
    rows = _Rows(base, recs, s.n, cfg, cfg.batch_size * s.n)
    await rows.step(cfg.max_new_tokens, 0, s)
    texts, n = rows.texts(), s.n

    def score():
        return [best_of(rec, base, rows.resp[g * n : (g + 1) * n], texts[g * n : (g + 1) * n],
                         rows.finished[g * n : (g + 1) * n], tuned, untuned, reward, t0, len(recs))
                for g, rec in enumerate(recs)]

    return await asyncio.to_thread(score)


async def cbs_remote(base: RemoteBase, tuned, untuned, recs: list[PromptRecord], cfg: WSDConfig) -> list[dict]:
    t0, s = time.perf_counter(), cfg.cbs
    W, K = s.beam_width, s.successors
    n = W * K
    chunk = s.chunk_length or cfg.max_new_tokens
    rows = _Rows(base, recs, n, cfg, cfg.batch_size * n)
    scorer = IncrementalScorer(tuned, untuned, [rec.messages for rec in rows.rows])
    round_ = 0
    while True:
        await rows.step(chunk, round_, s)
        scores = await asyncio.to_thread(scorer.score, rows.texts(), rows.finished)
        # the global top W of each prompt's rows (ties: the earlier row), as in `search.cbs_batch`
        tops = [sorted(range(g * n, (g + 1) * n), key=lambda r: (-scores[r], r))[:W] for g in range(len(recs))]
        if all(rows.finished):
            break
        round_ += 1
        order = [r for top in tops for r in top for _ in range(K)]
        scorer.select(order)
        rows.resp = [list(rows.resp[r]) for r in order]
        rows.finished = [rows.finished[r] for r in order]
    return [search_record(rec, "cbs", base, rows.resp[top[0]], scores[top[0]], n, t0, len(recs))
            for rec, top in zip(recs, tops)]
