"""Emulated fine-tuning / proxy-tuning (Mitchell et al. 2024; Liu et al. 2024) on the transformers backend.

Per token: log p_base + beta * (log p_tuned - log p_untuned), with the base reading the plain role template,
the tuned pilot its chat template and the untuned reference its own format. The three models must share one
vocabulary (the token -> id maps are compared, not their sizes); otherwise a clear error.
"""

from __future__ import annotations

import time

from pilot_core.errors import UserError
from wsd_inference.config import WSDConfig
from wsd_inference.engine import base_stops, prompt_generators
from wsd_inference.hf_backend import HFModel, RaggedBatch, pick_token
from wsd_inference.implicit_reward import small_prompt
from wsd_inference.prompts import PromptRecord, base_prompt, cut_at_markers
from wsd_inference.records import method_record


def check_same_vocabulary(*models: HFModel) -> int:
    """The shared vocabulary size; a UserError naming the models if their vocabularies differ."""
    first = models[0].tokenizer.get_vocab()
    for m in models[1:]:
        vocab = m.tokenizer.get_vocab()
        if vocab != first:
            diff = len(set(vocab.items()) ^ set(first.items()))
            raise UserError(f"EFT needs one shared vocabulary: {m.path} and {models[0].path} differ in {diff} "
                            "token ids (use wsd, cbs or bon across tokenizer families)")
    return len(first)


def eft_batch(base: HFModel, tuned: HFModel, untuned: HFModel, recs: list[PromptRecord],
              cfg: WSDConfig) -> list[dict]:
    import torch

    t0 = time.perf_counter()
    vocab = check_same_vocabulary(base, tuned, untuned)
    beta, rows = cfg.eft.beta, len(recs)
    batches = [RaggedBatch(m, rows) for m in (base, tuned, untuned)]
    prompts = ([base_prompt(r.messages, base.tokenizer.bos_token) for r in recs],
               [small_prompt(tuned, r.messages) for r in recs], [small_prompt(untuned, r.messages) for r in recs])
    last = [[o[-1] for o in b.feed([m.encode(p) for p in ps])]
            for b, m, ps in zip(batches, (base, tuned, untuned), prompts)]
    gens = prompt_generators(cfg, [r.id for r in recs])
    resp, done = [[] for _ in range(rows)], [False] * rows
    while not all(done):
        step = [[] for _ in range(rows)]
        for r in range(rows):
            if done[r]:
                continue
            # embedding matrices may be padded past the vocabulary: compare the real tokens only
            lp = [torch.log_softmax(last[i][r][:vocab], -1) for i in range(3)]
            t = pick_token(lp[0] + beta * (lp[1] - lp[2]), cfg.temperature, cfg.top_p, gens[r])
            resp[r].append(t)
            if base_stops(base, resp[r], cfg.max_new_tokens):
                done[r] = True
            else:
                step[r] = [t]
        if any(step):
            for i, b in enumerate(batches):
                out = b.feed(step)
                for r, o in enumerate(out):
                    if o is not None:
                        last[i][r] = o[-1]
    total = time.perf_counter() - t0
    return [method_record(rec.id, "eft", cut_at_markers(base.decode(x)), base_tokens=len(x), time_s=total / rows,
                          timing={"batch_s": round(total, 4), "batch_size": rows}) for rec, x in zip(recs, resp)]
