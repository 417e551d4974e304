"""Online Weak-to-Strong Decoding on transformers models, batched.

Same answers as the authors' staged pipeline (draft everything, score everything, re-prefill the base), but:
- the base scores the draft in chunks while the pilot writes it, and drafting stops at the switch point;
- a draft token is scored only once its base tokenisation is final (see `switch.stable_token_count`);
- the base continues from its own KV cache: no second prefill;
- prompts are batched; each row has its own switch point (`hf_backend.RaggedBatch`).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

from wsd_inference.config import WSDConfig
from wsd_inference.hf_backend import HFModel, RaggedBatch, common_prefix, advance, pick_token
from wsd_inference.prompts import (STOP_STRINGS, PromptRecord, base_prompt, base_text, cut_at_markers, has_marker,
                                   pilot_prompt)
from wsd_inference.records import method_record
from wsd_inference.switch import first_switch, stable_token_count, window_scores

MARKER_TAIL = 16  # tokens decoded to look for a stop string (the longest, "[Assistant]", is 11 characters)


def prompt_seed(cfg: WSDConfig, rid: str) -> int:
    """The seed of one prompt's sampling: a sampled answer does not depend on the batch it ran in."""
    return int.from_bytes(hashlib.sha256(f"{cfg.seed}:{rid}".encode()).digest()[:4], "little")


def prompt_generators(cfg: WSDConfig, ids: list[str]):
    """One seeded torch generator per prompt (None when decoding greedily)."""
    if cfg.temperature == 0:
        return [None] * len(ids)
    import torch

    return [torch.Generator().manual_seed(prompt_seed(cfg, rid)) for rid in ids]


def base_stops(base: HFModel, cont: list[int], budget: int, stop: tuple[str, ...] = STOP_STRINGS) -> bool:
    """Whether the base is done after `cont`: EOS, the budget, or a stop string in its last tokens."""
    return (cont[-1] in base.stop_ids or len(cont) >= budget
            or has_marker(base.tokenizer.decode(cont[-MARKER_TAIL:], skip_special_tokens=True), stop))


def continue_base(base: HFModel, batch: RaggedBatch, contexts: list[list[int]], budgets: list[int],
                  cfg: WSDConfig, gens, stop: tuple[str, ...] = STOP_STRINGS) -> list[list[int]]:
    """Greedy (or sampled) continuation of each row from `contexts[r]`, reusing whatever prefix of it the
    row's cache already holds. Stops at EOS, at a stop string (role markers by default), or after budgets[r]
    tokens."""
    rows = len(contexts)
    new = []
    for r, ctx in enumerate(contexts):
        # keep the cached prefix, re-feed at least the last context token to get the next-token logits
        keep = min(common_prefix(batch.tokens[r], ctx), len(ctx) - 1)
        batch.truncate(r, keep)
        new.append(ctx[keep:] if budgets[r] > 0 else [])
    batch.compact()  # continuation steps then attend over live tokens only
    out = batch.feed(new)
    nxt = [o[-1] if o is not None else None for o in out]
    cont: list[list[int]] = [[] for _ in range(rows)]
    sample_steps(base, batch, nxt, cont, [b <= 0 for b in budgets], gens, max(budgets, default=0), budgets,
                 cfg.temperature, cfg.top_p, stop=stop)
    return cont


def sample_steps(base: HFModel, batch: RaggedBatch, nxt, resp, finished, gens, steps: int, budgets: list[int],
                 temperature: float, top_p: float, top_k: int = 0, stop: tuple[str, ...] = STOP_STRINGS) -> None:
    """Up to `steps` tokens (greedy or sampled) for every unfinished row, in place: resp[r] grows, finished[r]
    turns True at EOS, a stop string or budgets[r] tokens, nxt[r] holds the logits after the last token."""
    for _ in range(steps):
        step = [[] for _ in resp]
        for r in range(len(resp)):
            if finished[r]:
                continue
            resp[r].append(pick_token(nxt[r], temperature, top_p, gens[r], top_k))
            if base_stops(base, resp[r], budgets[r], stop):
                finished[r] = True
            else:
                step[r] = [resp[r][-1]]
        if not any(step):
            return
        out = batch.feed(step)
        for r, o in enumerate(out):
            if o is not None:
                nxt[r] = o[-1]


def wsd_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[dict]:
    t0 = time.perf_counter()
    rows = len(recs)
    gens = prompt_generators(cfg, [r.id for r in recs])
    b_prompts = [base_prompt(r.messages, base.tokenizer.bos_token) for r in recs]
    b_prompt_ids = [base.encode(s) for s in b_prompts]
    P = [len(x) for x in b_prompt_ids]

    pb, bb = RaggedBatch(pilot, rows), RaggedBatch(base, rows)
    p_next = [o[-1] for o in pb.feed([pilot.encode(pilot_prompt(pilot.tokenizer, r.messages)) for r in recs])]
    b_last: list = [None] * rows
    pos_logps: list[list[float]] = [[] for _ in range(rows)]  # base log-prob of the token at each position
    advance(bb, b_prompt_ids, b_last, pos_logps, P)

    draft: list[list[int]] = [[] for _ in range(rows)]
    pilot_done = [cfg.max_draft_tokens == 0] * rows
    decided, accept, switched = [False] * rows, [None] * rows, [False] * rows
    final_ids: list[list[int] | None] = [None] * rows  # base tokenisation of the finished draft
    w, gamma = cfg.window, cfg.threshold

    while not all(decided):
        # 1. the pilot drafts up to chunk_size more tokens for every undecided row
        for _ in range(cfg.chunk_size):
            if not pilot_step(pilot, pb, p_next, draft, pilot_done, decided, cfg, gens):
                break

        # 2. the base scores every draft token whose tokenisation is final
        targets: list[list[int] | None] = [None] * rows
        for r in range(rows):
            if decided[r]:
                continue
            draft_text = pilot.decode(draft[r])
            text = base_text(b_prompts[r], draft_text)
            enc = base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            if pilot_done[r] and not draft_text.strip():  # empty draft: nothing to score or keep
                decided[r], final_ids[r] = True, enc.input_ids
                continue
            if pilot_done[r]:
                final_ids[r] = targets[r] = enc.input_ids
            else:
                targets[r] = enc.input_ids[: stable_token_count(enc.offset_mapping, text, len(b_prompts[r]))]
        changed = advance(bb, targets, b_last, pos_logps, P)
        for r in range(rows):
            if targets[r] is None:
                continue
            a = first_switch(pos_logps[r][P[r]:], w, gamma, start=max(0, changed[r] - P[r]))
            if a is not None:
                decided[r], accept[r], switched[r] = True, a, True
            elif pilot_done[r]:
                n = len(final_ids[r]) - P[r]
                decided[r], accept[r] = True, (n - 1 if n > 0 else None)
    t_draft = time.perf_counter() - t0

    # 3. the base continues from prompt + kept draft, within the total budget
    contexts, budgets = [], []
    for r in range(rows):
        if accept[r] is None:  # empty draft: the authors' base input is the right-stripped prompt
            contexts.append(final_ids[r])
            budgets.append(cfg.max_new_tokens)
        else:
            k = min(accept[r] + 1, cfg.max_new_tokens)
            contexts.append(bb.tokens[r][: P[r] + k])
            budgets.append(cfg.max_new_tokens - k)
    cont = continue_base(base, bb, contexts, budgets, cfg, gens)
    draft_logps = [pl[P[r]:] for r, pl in enumerate(pos_logps)]
    return finish_records(base, recs, cfg, P, contexts, accept, switched, draft_logps, draft, cont, t0, t_draft)


def finish_records(base: HFModel, recs, cfg: WSDConfig, P, contexts, accept, switched, logps, drafts, cont,
                   t0: float, t_draft: float, method: str = "wsd", stop: tuple[str, ...] = STOP_STRINGS) -> list[dict]:
    total = time.perf_counter() - t0
    rows, results = len(recs), []
    for r, rec in enumerate(recs):
        kept = contexts[r][P[r]:] if accept[r] is not None else []
        results.append(method_record(
            rec.id, method, cut_at_markers(base.decode(kept + cont[r]), stop), draft_text=base.decode(kept),
            switch_index=accept[r], switched=switched[r], pilot_tokens=len(drafts[r]), kept_draft_tokens=len(kept),
            base_tokens=len(cont[r]), window_scores=window_scores(logps[r][: (accept[r] or 0) + 1], cfg.window),
            time_s=total / rows,
            timing={"batch_s": round(total, 4), "draft_and_score_s": round(t_draft, 4), "batch_size": rows}))
    return results


def draft_batch(pilot: HFModel, recs: list[PromptRecord], cfg: WSDConfig, gens) -> list[list[int]]:
    """Whole pilot drafts (to EOS / end-of-turn or max_draft_tokens), batched with one KV cache."""
    rows = len(recs)
    pb = RaggedBatch(pilot, rows)
    nxt = [o[-1] for o in pb.feed([pilot.encode(pilot_prompt(pilot.tokenizer, r.messages)) for r in recs])]
    drafts: list[list[int]] = [[] for _ in range(rows)]
    done = [cfg.max_draft_tokens == 0] * rows
    while pilot_step(pilot, pb, nxt, drafts, done, [False] * rows, cfg, gens):
        pass
    return drafts


def pilot_step(pilot: HFModel, pb: RaggedBatch, nxt, drafts, done, skip, cfg: WSDConfig, gens) -> bool:
    """One pilot token for every row not done or skipped; False when no row advanced."""
    step = [[] for _ in drafts]
    for r in range(len(drafts)):
        if done[r] or skip[r]:
            continue
        t = pick_token(nxt[r], cfg.temperature, cfg.top_p, gens[r])
        drafts[r].append(t)
        if t in pilot.stop_ids or len(drafts[r]) >= cfg.max_draft_tokens:
            done[r] = True
        else:
            step[r] = [t]
    if not any(step):
        return False
    out = pb.feed(step)
    for r in range(len(drafts)):
        if out[r] is not None:
            nxt[r] = out[r][-1]
    return True


def wsd_generate(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> Iterator[dict]:
    """Yield one record per prompt, in input order, `cfg.batch_size` prompts at a time."""
    for i in range(0, len(recs), cfg.batch_size):
        yield from wsd_batch(pilot, base, recs[i : i + cfg.batch_size], cfg)
