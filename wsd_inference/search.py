"""Best-of-N and weak-to-strong search (chunk-level beam search, Zhou et al. 2024) on the transformers backend.

Both sample from the base model with the plain role template and rank responses by the pilot's implicit reward
(log pi_pilot - log pi_untuned; `implicit_reward`); best-of-N can rank by a reward model instead
(`pilot_core.reward_model`). Best-of-N samples N whole responses and scores each once,
from scratch. CBS keeps W*K rows: it samples L tokens per row, scores every row with cached small-model states
(only new tokens are fed), keeps the global top W, and gives each K successors. CBS with W=1, K=N, L=None is
best-of-N (a test holds it to that).
"""

from __future__ import annotations

import time

from wsd_inference.config import WSDConfig
from wsd_inference.engine import prompt_seed, sample_steps
from wsd_inference.hf_backend import HFModel, RaggedBatch
from wsd_inference.implicit_reward import IncrementalScorer, implicit_reward_from_scratch
from wsd_inference.prompts import PromptRecord, base_prompt, cut_at_markers, cut_before_markers
from wsd_inference.records import method_record


def _generator(cfg: WSDConfig, rid: str, round_: int, slot: int):
    import torch

    return torch.Generator().manual_seed(prompt_seed(cfg, f"{rid}#{round_}#{slot}"))


def _start(base: HFModel, recs: list[PromptRecord], n: int, cfg: WSDConfig):
    """n rows per prompt, each prefilled with the base prompt and given its own random stream."""
    rows = [rec for rec in recs for _ in range(n)]
    batch = RaggedBatch(base, len(rows))
    out = batch.feed([base.encode(base_prompt(rec.messages, base.tokenizer.bos_token)) for rec in rows])
    gens = [_generator(cfg, rec.id, 0, i % n) for i, rec in enumerate(rows)]
    return rows, batch, [o[-1] for o in out], gens


def scored_text(base: HFModel, ids: list[int], finished: bool) -> str:
    """The response as the scorers read it: decoded and, once finished, cut before the first role marker."""
    text = base.decode(ids)
    return cut_before_markers(text) if finished else text


def search_record(rec, method, base, resp, score, n_rows, t0, rows_total, **extra) -> dict:
    total = time.perf_counter() - t0
    return method_record(rec.id, method, cut_at_markers(base.decode(resp)), base_tokens=len(resp),
                         score=round(score, 6), candidates=n_rows, time_s=total / rows_total,
                         timing={"batch_s": round(total, 4)}, **extra)


def bon_batch(base: HFModel, tuned: HFModel | None, untuned: HFModel | None, recs: list[PromptRecord],
              cfg: WSDConfig, reward=None) -> list[dict]:
    """N samples per prompt, the best by the implicit reward (or by a `RewardModel` if given)."""
    t0, s = time.perf_counter(), cfg.bon
    rows, batch, nxt, gens = _start(base, recs, s.n, cfg)
    resp, finished = [[] for _ in rows], [False] * len(rows)
    sample_steps(base, batch, nxt, resp, finished, gens, cfg.max_new_tokens, [cfg.max_new_tokens] * len(rows),
                 s.temperature, s.top_p, s.top_k)
    texts = [scored_text(base, resp[r], finished[r]) for r in range(len(rows))]
    return [best_of(rec, base, resp[g * s.n : (g + 1) * s.n], texts[g * s.n : (g + 1) * s.n],
                     finished[g * s.n : (g + 1) * s.n], tuned, untuned, reward, t0, len(recs))
            for g, rec in enumerate(recs)]


def best_of(rec, base, resp, texts, finished, tuned, untuned, reward, t0, n_prompts) -> dict:
    """The record of the best of one prompt's candidates (ties: the earlier sample)."""
    if reward is not None:
        scores = reward.score([(rec.messages, t) for t in texts])
    else:
        scores = [implicit_reward_from_scratch(tuned, untuned, rec.messages, t, f) for t, f in zip(texts, finished)]
    best = max(range(len(texts)), key=lambda r: (scores[r], -r))
    return search_record(rec, "bon", base, resp[best], scores[best], len(texts), t0, n_prompts,
                   candidate_scores=[round(x, 6) for x in scores])


def cbs_batch(base: HFModel, tuned: HFModel, untuned: HFModel, recs: list[PromptRecord],
              cfg: WSDConfig) -> list[dict]:
    t0, s = time.perf_counter(), cfg.cbs
    W, K = s.beam_width, s.successors
    n = W * K
    chunk = s.chunk_length or cfg.max_new_tokens
    rows, batch, nxt, gens = _start(base, recs, n, cfg)
    resp, finished = [[] for _ in rows], [False] * len(rows)
    scorer = IncrementalScorer(tuned, untuned, [rec.messages for rec in rows])
    round_ = 0
    while True:
        sample_steps(base, batch, nxt, resp, finished, gens, chunk, [cfg.max_new_tokens] * len(rows),
                     s.temperature, s.top_p, s.top_k)
        scores = scorer.score([scored_text(base, resp[r], finished[r]) for r in range(len(rows))], finished)
        # the global top W of each prompt's rows (ties: the earlier row)
        tops = [sorted(range(g * n, (g + 1) * n), key=lambda r: (-scores[r], r))[:W] for g in range(len(recs))]
        if all(finished):
            break
        round_ += 1
        order = [r for top in tops for r in top for _ in range(K)]
        batch.select(order)
        scorer.select(order)
        resp = [list(resp[r]) for r in order]
        finished = [finished[r] for r in order]
        nxt = [nxt[r] for r in order]
        gens = [_generator(cfg, rows[i].id, round_, i % n) for i in range(len(rows))]  # fresh streams per copy
    return [search_record(rec, "cbs", base, resp[top[0]], scores[top[0]], n, t0, len(recs))
            for rec, top in zip(recs, tops)]
