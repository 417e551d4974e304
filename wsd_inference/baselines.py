"""Single-model baselines on the transformers backend, in WSD's record format.

- base_only: the base model alone with the plain role template.
- pilot_only: the pilot alone with its chat template (it pays the alignment tax WSD avoids).
- urial: the base model with a fixed in-context alignment prefix (Lin et al. 2024), "# Query:/# Answer:" blocks;
  the default prefix (wsd_inference/data/urial_default.txt) was written for this project.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pilot_core.inputs import read_text
from pilot_core.method_record import MethodRecord, SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import NO_WATCH, Watch, chat_batch
from pilot_core.models.templates import STOP_STRINGS, base_prompt, chat_prompt, cut_at_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator, continue_base

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig

URIAL_STOP = ("# Query",)


def urial_prefix(path: str | Path | None = None) -> str:
    if path is None:
        return resources.files("wsd_inference").joinpath("data/urial_default.txt").read_text(encoding="utf-8")
    return read_text(path, "URIAL prefix file")


def urial_prompt(messages, prefix: str, bos_token: str | None) -> str:
    """The URIAL prefix, then the conversation as Query/Answer blocks, ending inside an open Answer block."""
    parts = [bos_token or "", prefix.rstrip()]
    for m in messages:
        if m["role"] == "system":
            parts.append(f"\n\n# System:\n```\n{m['content'].strip()}\n```")
        else:
            tag = "Query" if m["role"] == "user" else "Answer"
            parts.append(f"\n\n# {tag}:\n```\n{m['content'].strip()}\n```")
    parts.append("\n\n# Answer:\n```\n")
    return "".join(parts)


def urial_answer(response: str) -> str:
    """The answer block closes with ``` before the next "# Query": drop the fence."""
    return response.removesuffix("```").strip()


@dataclass(frozen=True)
class Alone:
    """One model writing the answer by itself (a baseline): the rule every path reads (the batch functions here,
    continuous batching): the prompt it reads, where its answer ends, the answer from its text, its record."""

    method: str
    writer: str  # "base" or "pilot": the model that writes, whose tokens the record counts
    prompt: Callable[[HFModel, list[dict], WSDConfig], str]
    stop: tuple[str, ...]  # stop strings, besides the writer's own end tokens
    answer: Callable[[str], str] = str.strip  # the answer from the text cut at the first stop string

    def record(self, model: HFModel, rec: PromptRecord, tokens: list[int], time_s: float, timing: dict,
               stop: tuple[str, ...] = (), speculation: SpeculationFigures | None = None) -> MethodRecord:
        """The record of an answer it wrote (`stop`: a request's own stop strings, besides the method's)."""
        text = self.answer(cut_at_markers(model.decode(tokens), self.stop + stop))
        count = {"pilot_tokens" if self.writer == "pilot" else "base_tokens": len(tokens)}
        return MethodRecord(rec.id, self.method, text, time_s=time_s, timing=timing, speculation=speculation, **count)


ALONE = {a.method: a for a in (
    Alone("base_only", "base", lambda m, messages, cfg: base_prompt(messages, m.tokenizer.bos_token), STOP_STRINGS),
    Alone("urial", "base", lambda m, messages, cfg: urial_prompt(messages, urial_prefix(cfg.urial_prefix),
                                                                 m.tokenizer.bos_token), URIAL_STOP, urial_answer),
    Alone("pilot_only", "pilot", lambda m, messages, cfg: chat_prompt(m.tokenizer, messages), ()),
)}


def _base_alone(alone: Alone, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig, watch: Watch = NO_WATCH,
                speculator: Speculator | None = None) -> list[MethodRecord]:
    """The base alone from each prompt, with the whole budget; the response cut at the first stop string."""
    t0 = time.perf_counter()
    stop = alone.stop + watch.stop
    rows = [watch.stream(r, cfg.max_new_tokens, g) for r, g in enumerate(cfg.generators([r.id for r in recs]))]
    prompts = [base.encode(alone.prompt(base, r.messages, cfg)) for r in recs]
    spec = continue_base(RaggedBatch(base, len(recs)), prompts, rows, cfg.sampling(), stop, speculator)
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "draft_and_score_s": 0.0, "batch_size": len(recs)}
    return [alone.record(base, rec, row.tokens, total / len(recs), timing, watch.stop, spec and spec[i])
            for i, (rec, row) in enumerate(zip(recs, rows))]


def base_only_batch(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig, watch: Watch = NO_WATCH,
                    pilot: HFModel | None = None) -> list[MethodRecord]:
    """The base model alone with the plain role template, same budget and stop rules as WSD; with speculation on
    and a pilot given, the pilot proposes the base's tokens (the answers are still the base's)."""
    return _base_alone(ALONE["base_only"], base, recs, cfg, watch, Speculator.of(pilot, base, recs, cfg))


def urial_batch(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig,
                pilot: HFModel | None = None) -> list[MethodRecord]:
    """The base after the URIAL prefix; with speculation on and a pilot given, the pilot (reading its own chat
    template, not the prefix) proposes the base's tokens."""
    return _base_alone(ALONE["urial"], base, recs, cfg, speculator=Speculator.of(pilot, base, recs, cfg))


def pilot_only_batch(pilot: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[MethodRecord]:
    """The pilot alone with its chat template, for the whole budget."""
    t0 = time.perf_counter()
    answers = chat_batch(pilot, [r.messages for r in recs], cfg.max_new_tokens, cfg.sampling(),
                         cfg.generators([r.id for r in recs]))
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "batch_size": len(recs)}
    return [ALONE["pilot_only"].record(pilot, rec, d, total / len(recs), timing) for rec, d in zip(recs, answers)]
