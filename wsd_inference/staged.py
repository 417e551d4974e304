"""The authors' three-stage WSD (draft everything, score everything, re-prefill and continue), batched and
KV-cached so it is a fair speed baseline for the online engine. It returns the same records."""

from __future__ import annotations

import time

from wsd_inference.config import WSDConfig
from wsd_inference.engine import continue_base, draft_batch, finish_records, prompt_generators
from wsd_inference.hf_backend import HFModel, RaggedBatch
from wsd_inference.prompts import PromptRecord, base_prompt, base_text
from wsd_inference.switch import accept_index


def staged_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[dict]:
    import torch

    t0 = time.perf_counter()
    gens = prompt_generators(cfg, [r.id for r in recs])
    drafts = draft_batch(pilot, recs, cfg, gens)  # stage 1: whole drafts
    prompts = [base_prompt(r.messages, base.tokenizer.bos_token) for r in recs]
    P = [len(base.encode(p)) for p in prompts]
    full = [base.encode(base_text(p, pilot.decode(d))) for p, d in zip(prompts, drafts)]
    scorer = RaggedBatch(base, len(recs))  # stage 2: one teacher-forced pass over prompt + whole draft
    out = scorer.feed(full)
    accept, switched, logps = [], [], []
    for r, ids in enumerate(full):
        n = len(ids) - P[r]
        lp = (torch.log_softmax(out[r][P[r] - 1 : -1], -1).gather(1, torch.tensor(ids[P[r]:])[:, None])[:, 0].tolist()
              if n > 0 else [])
        a, s = accept_index(lp, cfg.window, cfg.threshold)
        accept.append(a), switched.append(s), logps.append(lp)
    t_draft = time.perf_counter() - t0
    contexts, budgets = [], []
    for r in range(len(recs)):
        k = 0 if accept[r] is None else min(accept[r] + 1, cfg.max_new_tokens)
        contexts.append(full[r][: P[r] + k] if accept[r] is not None else full[r])
        budgets.append(cfg.max_new_tokens - k)
    cont = continue_base(base, RaggedBatch(base, len(recs)), contexts, budgets, cfg, gens)  # stage 3: re-prefill
    return finish_records(base, recs, cfg, P, contexts, accept, switched, logps, drafts, cont, t0, t_draft)
