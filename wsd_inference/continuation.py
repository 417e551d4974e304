"""What every method that decodes with an in-process base shares: continuing rows from their contexts on a
cache that may already hold part of them, and the pilot speculating for the base while it does (`--speculate`).
WSD, the baselines, the searches, EFT and Nudging import these from here, not from each other."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pilot_core.method_record import SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch, common_prefix
from pilot_core.models.sampling import Generation, Sampling, Stream
from pilot_core.models.speculative import Drafter, Speculation, SpeculativeGeneration
from pilot_core.models.templates import STOP_STRINGS, chat_prompt
from pilot_core.prompts import PromptRecord

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


@dataclass
class Speculator:
    """The draft model that speculates for a continuation (`pilot_core.models.speculative`), and how."""

    drafter: Drafter
    spec: Speculation
    before: list[list[int]] | None = None  # per row, the answer's base tokens ahead of the continuation

    @classmethod
    def of(cls, pilot: HFModel | None, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig,
           before: list[list[int]] | None = None, batch: RaggedBatch | None = None) -> Speculator | None:
        """The pilot speculating for `recs`, one row each (None when speculation is off or no pilot is at hand);
        `batch`: the pilot's cache of its chat prompts, to go on from (WSD's drafting batch)."""
        spec = cfg.speculation.settings()
        if pilot is None or not spec.enabled:
            return None
        prompts = [chat_prompt(pilot.tokenizer, r.messages) for r in recs]
        return cls(Drafter(pilot, base, prompts, batch), spec, before)

    def generation(self, batch, rows: list[Stream], sampling: Sampling,
                   stop: tuple[str, ...] = STOP_STRINGS) -> SpeculativeGeneration:
        return SpeculativeGeneration(batch, rows, sampling, stop, self.drafter, self.spec, self.before)


def run_generation(batch, rows: list[Stream], sampling: Sampling, stop: tuple[str, ...],
                   speculator: Speculator | None) -> list[SpeculationFigures] | None:
    """Generate `rows` to their end from `batch` (its next-token logits there), the pilot speculating if a
    speculator is given: then per row its speculation figures (`SpecStats.record`)."""
    if speculator is None:
        Generation(batch, rows, sampling, stop).run()
        return None
    gen = speculator.generation(batch, rows, sampling, stop)
    gen.run()
    return [st.record(len(row.tokens)) for st, row in zip(gen.stats, rows)]


def continue_base(batch: RaggedBatch, contexts: list[list[int] | None], rows: list[Stream], sampling: Sampling,
                  stop: tuple[str, ...] = STOP_STRINGS,
                  speculator: Speculator | None = None) -> list[SpeculationFigures] | None:
    """Continue row r from `contexts[r]` into `rows[r]`, reusing whatever prefix of it the row's cache already
    holds (None: the row is left alone; its Stream must be done). Stops at EOS, at a stop string (role markers by
    default), or at the row's budget. With a speculator, the pilot proposes tokens the base checks; returns then
    per row its speculation figures."""
    new = []
    for r, ctx in enumerate(contexts):
        if ctx is None:
            new.append([])
            continue
        # keep the cached prefix, re-feed at least the last context token to get the next-token logits
        keep = min(common_prefix(batch.tokens[r], ctx), len(ctx) - 1)
        batch.truncate(r, keep)
        new.append(ctx[keep:] if not rows[r].done else [])
    batch.compact()  # continuation steps then attend over live tokens only
    batch.feed(new)
    return run_generation(batch, rows, sampling, stop, speculator)
