"""Best-of-N and weak-to-strong search (chunk-level beam search, Zhou et al. 2024).

Both sample from the base model with the plain role template and rank responses by the pilot's implicit reward
(log pi_pilot - log pi_untuned; `implicit_reward`); best-of-N can rank by a reward model instead
(`pilot_core.models.reward`). Best-of-N samples N whole responses and scores each once, from scratch. CBS keeps
W*K rows: it samples L tokens per row, scores every row with cached small-model states (only new tokens are fed),
keeps the global top W, and gives each K successors. CBS with W=1, K=N, L=None is best-of-N (a test holds it to
that).

The two searches are written once (`best_of_n`, `cbs`) over the rows that sample: `LocalRows` here (the base
in-process, one KV cache), `remote_search.ServedRows` (the base on a server). Every row samples with its own
seed, `prompt_seed(rid#round#slot)`, on both, so a rerun draws the same samples.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, SearchTrace, SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.sampling import Generation, Sampling, Stream, prefilled
from pilot_core.models.speculative import SpecStats
from pilot_core.models.templates import STOP_STRINGS, base_prompt, cut_at_markers, cut_before_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator
from wsd_inference.implicit_reward import IncrementalScorer, implicit_reward_from_scratch

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


def scored_text(base, ids: list[int], finished: bool) -> str:
    """The response as the scorers read it: decoded and, once finished, cut before the first role marker."""
    text = base.decode(ids)
    return cut_before_markers(text) if finished else text


def row_seed(cfg: WSDConfig, rid: str, round_: int, slot: int) -> int:
    return cfg.prompt_seed(f"{rid}#{round_}#{slot}")


class LocalRows:
    """n rows per prompt sampled from an in-process base over one KV cache, each row with its own random
    stream (renewed for every successor). With speculation on and a pilot given, the pilot proposes every row's
    next tokens (`Speculator`); the figures are summed per prompt over all its rows, kept or not."""

    def __init__(self, base: HFModel, recs: list[PromptRecord], n: int, cfg: WSDConfig, sampling: Sampling,
                 pilot: HFModel | None = None):
        self.base, self.cfg, self.n, self.sampling = base, cfg, n, sampling
        self.prompts = [rec for rec in recs for _ in range(n)]  # each row's prompt
        batch = prefilled(base, [base_prompt(rec.messages, base.tokenizer.bos_token) for rec in self.prompts])
        streams = [Stream(cfg.max_new_tokens, g) for g in self._generators(0)]
        speculator = Speculator.of(pilot, base, self.prompts, cfg)
        self.gen = (speculator.generation(batch, streams, sampling) if speculator is not None
                    else Generation(batch, streams, sampling, STOP_STRINGS))
        self.spec: dict[str, tuple[SpecStats, int]] | None = (  # per prompt: speculation figures, tokens sampled
            {rec.id: (SpecStats(), 0) for rec in recs} if speculator is not None else None)

    def _generators(self, round_: int) -> list:
        return [self.sampling.generator(row_seed(self.cfg, rec.id, round_, i % self.n))
                for i, rec in enumerate(self.prompts)]

    @property
    def resp(self) -> list[list[int]]:
        return [row.tokens for row in self.gen.rows]

    @property
    def finished(self) -> list[bool]:
        return [row.done for row in self.gen.rows]

    async def sample(self, chunk: int, round_: int) -> None:
        """Up to `chunk` more tokens for every unfinished row."""
        if self.spec is None:
            self.gen.run(chunk)
            return
        was = [(replace(st), len(row.tokens)) for st, row in zip(self.gen.stats, self.gen.rows)]
        self.gen.run(chunk)
        for rec, (st, n), now, row in zip(self.prompts, was, self.gen.stats, self.gen.rows):
            total, tokens = self.spec[rec.id]
            self.spec[rec.id] = (total + (now - st), tokens + len(row.tokens) - n)

    def speculation(self, rec: PromptRecord) -> SpeculationFigures | None:
        """The prompt's speculation figures over all its rows (None without speculation)."""
        if self.spec is None:
            return None
        total, tokens = self.spec[rec.id]
        return total.record(tokens)

    async def compute(self, fn, *args):
        """The scorers' work between rounds, here in this thread, like the sampling (torch in a worker thread
        runs ~15 % slower on CPU)."""
        return fn(*args)

    def select(self, order: list[int], round_: int) -> None:
        self.prompts = [self.prompts[r] for r in order]
        self.gen.select(order, self._generators(round_))


def search_record(rec, method, base, resp, score, n_rows, t0, rows_total, speculation=None,
                  candidate_scores=None) -> MethodRecord:
    total = time.perf_counter() - t0
    return MethodRecord(rec.id, method, cut_at_markers(base.decode(resp)), time_s=total / rows_total,
                        timing={"batch_s": round(total, 4)}, base_tokens=len(resp),
                        trace=SearchTrace(score, n_rows, candidate_scores), speculation=speculation)


def best_of(rec, base, resp, texts, finished, tuned, untuned, reward, t0, n_prompts, speculation=None) -> MethodRecord:
    """The record of the best of one prompt's candidates (ties: the earlier sample)."""
    if reward is not None:
        scores = reward.score([(rec.messages, t) for t in texts])
    else:
        scores = [implicit_reward_from_scratch(tuned, untuned, rec.messages, t, f) for t, f in zip(texts, finished)]
    best = max(range(len(texts)), key=lambda r: (scores[r], -r))
    return search_record(rec, "bon", base, resp[best], scores[best], len(texts), t0, n_prompts, speculation,
                         candidate_scores=scores)


async def best_of_n(rows, recs: list[PromptRecord], cfg: WSDConfig, tuned, untuned, reward,
                    t0: float) -> list[MethodRecord]:
    """N whole samples per prompt, the best by the implicit reward (or by a `RewardModel` if given)."""
    n = cfg.bon.n
    await rows.sample(cfg.max_new_tokens, 0)
    texts = [scored_text(rows.base, r, f) for r, f in zip(rows.resp, rows.finished)]
    resp, finished = rows.resp, rows.finished

    def pick() -> list[MethodRecord]:
        return [best_of(rec, rows.base, resp[g * n : (g + 1) * n], texts[g * n : (g + 1) * n],
                        finished[g * n : (g + 1) * n], tuned, untuned, reward, t0, len(recs), rows.speculation(rec))
                for g, rec in enumerate(recs)]

    return await rows.compute(pick)


def top_beams(scores: list[float], resp: list[list[int]], finished: list[bool], n: int, W: int) -> list[list[int]]:
    """Each prompt's (rows g*n .. g*n+n-1) global top W rows by score (ties: the earlier row), every hypothesis
    counted once: a finished beam, carried into the next round as K identical copies, holds one slot, not
    several (they would collapse the beam onto one answer)."""
    tops = []
    for g in range(len(scores) // n):
        seen, top = set(), []
        for r in sorted(range(g * n, (g + 1) * n), key=lambda r: (-scores[r], r)):
            key = (tuple(resp[r]), finished[r])
            if key not in seen:
                seen.add(key)
                top.append(r)
            if len(top) == W:
                break
        tops.append(top)
    return tops


async def cbs(rows, recs: list[PromptRecord], cfg: WSDConfig, tuned: HFModel, untuned: HFModel,
              t0: float) -> list[MethodRecord]:
    """Chunk-level beam search: sample a chunk, score every row, keep each prompt's global top W, give each K
    successors; until every row finished."""
    s = cfg.cbs
    W, K = s.beam_width, s.successors
    n = W * K
    chunk = s.chunk_length or cfg.max_new_tokens
    scorer = IncrementalScorer(tuned, untuned, [rec.messages for rec in recs for _ in range(n)])
    round_ = 0
    while True:
        await rows.sample(chunk, round_)
        texts = [scored_text(rows.base, r, f) for r, f in zip(rows.resp, rows.finished)]
        scores = await rows.compute(scorer.score, texts, rows.finished)
        tops = top_beams(scores, rows.resp, rows.finished, n, W)
        if all(rows.finished):
            break
        round_ += 1
        # K successors per kept beam; a prompt with fewer than W distinct beams fills its slots by repeating them
        order = [top[i % len(top)] for top in tops for i in range(W) for _ in range(K)]
        scorer.select(order)
        rows.select(order, round_)
    return [search_record(rec, "cbs", rows.base, rows.resp[top[0]], scores[top[0]], n, t0, len(recs),
                          rows.speculation(rec)) for rec, top in zip(recs, tops)]


def bon_batch(base: HFModel, tuned: HFModel | None, untuned: HFModel | None, recs: list[PromptRecord],
              cfg: WSDConfig, reward=None) -> list[MethodRecord]:
    t0 = time.perf_counter()
    rows = LocalRows(base, recs, cfg.bon.n, cfg, cfg.bon.sampling(), tuned)
    return asyncio.run(best_of_n(rows, recs, cfg, tuned, untuned, reward, t0))


def cbs_batch(base: HFModel, tuned: HFModel, untuned: HFModel, recs: list[PromptRecord],
              cfg: WSDConfig) -> list[MethodRecord]:
    t0 = time.perf_counter()
    rows = LocalRows(base, recs, cfg.cbs.beam_width * cfg.cbs.successors, cfg, cfg.cbs.sampling(), tuned)
    return asyncio.run(cbs(rows, recs, cfg, tuned, untuned, t0))
