"""Emulated fine-tuning / proxy-tuning (Mitchell et al. 2024; Liu et al. 2024) on the transformers backend.

Per token: log p_base + beta * (log p_tuned - log p_untuned), with the base reading the plain role template,
the tuned pilot its chat template and the untuned reference its own format. The three models must share one
vocabulary (the token -> id maps are compared, not their sizes); otherwise a clear error.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pilot_core.errors import UserError
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Generation, Sampling, Stream, prefilled
from pilot_core.models.templates import STOP_STRINGS, base_prompt, cut_at_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.implicit_reward import small_prompt
from wsd_inference.records import method_record

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


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


class _Ensemble(Generation):
    """The base's rows, each token picked from the three models' combined log-probabilities and fed to all."""

    def __init__(self, batches: list[RaggedBatch], rows: list[Stream], sampling: Sampling, beta: float, vocab: int):
        super().__init__(batches[0], rows, sampling, STOP_STRINGS)
        self.batches, self.beta, self.vocab = batches, beta, vocab

    def next_logits(self, r: int):
        import torch

        # embedding matrices may be padded past the vocabulary: compare the real tokens only
        base, tuned, untuned = (torch.log_softmax(b.next_logits[r][: self.vocab], -1) for b in self.batches)
        return base + self.beta * (tuned - untuned)

    def feed(self, step: list[list[int]]) -> None:
        for b in self.batches:
            b.feed(step)


def eft_batch(base: HFModel, tuned: HFModel, untuned: HFModel, recs: list[PromptRecord],
              cfg: WSDConfig) -> list[dict]:
    t0 = time.perf_counter()
    vocab = check_same_vocabulary(base, tuned, untuned)
    batches = [prefilled(base, [base_prompt(r.messages, base.tokenizer.bos_token) for r in recs]),
               prefilled(tuned, [small_prompt(tuned, r.messages) for r in recs]),
               prefilled(untuned, [small_prompt(untuned, r.messages) for r in recs])]
    rows = [Stream(cfg.max_new_tokens, g) for g in cfg.generators([r.id for r in recs])]
    _Ensemble(batches, rows, cfg.sampling(), cfg.eft.beta, vocab).run()
    total = time.perf_counter() - t0
    return [method_record(rec.id, "eft", cut_at_markers(base.decode(row.tokens)), base_tokens=len(row.tokens),
                          time_s=total / len(recs), timing={"batch_s": round(total, 4), "batch_size": len(recs)})
            for rec, row in zip(recs, rows)]
