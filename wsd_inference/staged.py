"""The authors' three-stage WSD (draft everything, score everything, re-prefill and continue), batched and
KV-cached so it is a fair speed baseline for the online engine. It returns the same records."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Generation, prefilled
from pilot_core.models.templates import base_text, chat_prompt
from pilot_core.prompts import PromptRecord
from wsd_inference.engine import finish_batch, wsd_rows
from wsd_inference.switch import accept_index

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


def staged_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig,
                 method: str = "wsd_staged") -> list[MethodRecord]:
    import torch

    t0 = time.perf_counter()
    rows = wsd_rows(base, recs, cfg)
    Generation(prefilled(pilot, [chat_prompt(pilot.tokenizer, r.messages) for r in recs]),
               [row.draft for row in rows], cfg.sampling()).run()  # stage 1: whole drafts
    full = [base.encode(base_text(row.prompt, pilot.decode(row.draft.tokens))) for row in rows]
    out = RaggedBatch(base, len(rows)).feed(full)  # stage 2: one teacher-forced pass over prompt + whole draft
    for row, ids, logits in zip(rows, full, out):
        P = row.prompt_len
        targets = torch.tensor(ids[P:], device=logits.device)
        row.logps = (torch.log_softmax(logits[P - 1 : -1], -1).gather(1, targets[:, None])[:, 0].tolist()
                     if len(ids) > P else [])
        row.scores = row.rule_scores(row.view(pilot, base)) if cfg.rule == "relative" else row.logps
        row.accept, row.switched = accept_index(row.scores, cfg.window, cfg.threshold, cfg.max_new_tokens)
        row.final_ids = ids
        row.keep(ids, cfg)
    t_draft = time.perf_counter() - t0
    return finish_batch(base, rows, RaggedBatch(base, len(rows)), cfg, t0, t_draft, method)  # stage 3: re-prefill
