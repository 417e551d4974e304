"""Emulated fine-tuning / proxy-tuning (Mitchell et al. 2024; Liu et al. 2024) on the transformers backend.

Per token: log p_base + beta * (log p_tuned - log p_untuned), with the base reading the plain role template,
the tuned pilot its chat template and the untuned reference its own format. The three models must share one
vocabulary (the token -> id maps are compared, not their sizes). Releases of one family often differ only in
added special tokens (Llama 3 and 3.1 name their reserved tokens differently; a chat release appends a few):
those ids are left out of the combination, and only a difference in the regular vocabulary is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pilot_core.errors import UserError
from pilot_core.method_record import MethodRecord
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Stream, prefilled
from pilot_core.models.templates import STOP_STRINGS, base_prompt, cut_at_markers
from pilot_core.models.tokenization import vocabulary
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator, run_generation
from wsd_inference.implicit_reward import small_prompt

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


@dataclass(frozen=True)
class SharedVocabulary:
    size: int  # ids below it are combined
    excluded: tuple[int, ...]  # ids below `size` that do not name the same token in every model: never picked


def shared_vocabulary(*models: HFModel) -> SharedVocabulary:
    """The ids every model reads as the same token; a UserError naming the models if their regular (not added)
    vocabularies differ."""
    vocabs = [vocabulary(m.tokenizer) for m in models]
    added = [m.tokenizer.get_added_vocab() for m in models]  # once: it is built anew at every call
    regular = [{t: i for t, i in v.items() if t not in a} for v, a in zip(vocabs, added)]
    for m, r in zip(models[1:], regular[1:]):
        if r != regular[0]:
            diff = len(set(r.items()) ^ set(regular[0].items()))
            raise UserError(f"EFT needs one shared vocabulary: {m.path} and {models[0].path} differ in {diff} "
                            "regular token ids (use wsd, cbs or bon across tokenizer families)")
    shared = {i for t, i in vocabs[0].items() if all(v.get(t) == i for v in vocabs[1:])}
    size = max(shared) + 1
    return SharedVocabulary(size, tuple(sorted(set(range(size)) - shared)))


class EnsembleBatch:
    """The base, tuned and untuned models' batches (`RaggedBatch`), fed the same tokens and read as one batch
    whose logits are the combination: what a `Generation` (or the pilot speculating for it) decodes."""

    def __init__(self, batches: list[RaggedBatch], beta: float, vocab: SharedVocabulary):
        import torch

        self.batches, self.beta, self.vocab = batches, beta, vocab
        keep = sorted(set(range(vocab.size)) - set(vocab.excluded))
        self.keep = None if len(keep) == vocab.size else torch.tensor(keep, device=batches[0].m.device)
        self.next_logits = _Combined(self, lambda r: [b.next_logits[r] for b in self.batches])

    @property
    def m(self) -> HFModel:  # the model whose tokens these are (stop tokens, decoding)
        return self.batches[0].m

    def combine(self, base, tuned, untuned):
        """log p_base + beta * (log p_tuned - log p_untuned) over the last dimension, each model normalised over
        the shared ids only (embedding matrices may be padded past the vocabulary; ids that name different tokens
        are never picked)."""
        import torch

        base, tuned, untuned = (torch.log_softmax(self._shared(x), -1) for x in (base, tuned, untuned))
        combined = base + self.beta * (tuned - untuned)
        if self.keep is None:
            return combined
        out = torch.full((*combined.shape[:-1], self.vocab.size), float("-inf"), dtype=combined.dtype,
                         device=combined.device)
        return out.index_copy(out.dim() - 1, self.keep, combined)

    def _shared(self, logits):
        logits = logits[..., : self.vocab.size]
        return logits if self.keep is None else logits.index_select(logits.dim() - 1, self.keep.to(logits.device))

    def feed(self, new: list[list[int]]) -> _Combined:
        """Feed every model; per row the combined logits after each new token (computed when read)."""
        outs = [b.feed(new) for b in self.batches]
        return _Combined(self, lambda r: [o[r] for o in outs])

    def drop(self, r: int, n: int) -> None:  # the models read different prompts: rows differ in length
        for b in self.batches:
            b.drop(r, n)

    def compact_if_sparse(self) -> None:
        for b in self.batches:
            b.compact_if_sparse()


class _Combined:
    """Per row, the combination of the three models' logits (`per_model(r)`), computed when a row is read: a
    plain step reads each row's next-token logits once and never the outputs of a feed."""

    def __init__(self, ensemble: EnsembleBatch, per_model):
        self.ensemble, self.per_model = ensemble, per_model

    def __getitem__(self, r: int):
        logits = self.per_model(r)
        return None if any(x is None for x in logits) else self.ensemble.combine(*logits)


def eft_batch(base: HFModel, tuned: HFModel, untuned: HFModel, recs: list[PromptRecord],
              cfg: WSDConfig) -> list[MethodRecord]:
    t0 = time.perf_counter()
    vocab = shared_vocabulary(base, tuned, untuned)
    batches = [prefilled(base, [base_prompt(r.messages, base.tokenizer.bos_token) for r in recs]),
               prefilled(tuned, [small_prompt(tuned, r.messages) for r in recs]),
               prefilled(untuned, [small_prompt(untuned, r.messages) for r in recs])]
    rows = [Stream(cfg.max_new_tokens, g) for g in cfg.generators([r.id for r in recs])]
    ensemble = EnsembleBatch(batches, cfg.eft.beta, vocab)
    # with speculation on, the tuned pilot proposes the ensemble's next tokens; all three models check them
    speculator = Speculator.of(tuned, base, recs, cfg)
    spec = run_generation(ensemble, rows, cfg.sampling(), STOP_STRINGS, speculator)
    total = time.perf_counter() - t0
    return [MethodRecord(rec.id, "eft", cut_at_markers(base.decode(row.tokens)), time_s=total / len(recs),
                         timing={"batch_s": round(total, 4), "batch_size": len(recs)}, base_tokens=len(row.tokens),
                         speculation=spec and spec[i])
            for i, (rec, row) in enumerate(zip(recs, rows))]
