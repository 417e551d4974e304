"""Single-model baselines on the transformers backend, in WSD's record format.

- base_only: the base model alone with the plain role template.
- pilot_only: the pilot alone with its chat template (it pays the alignment tax WSD avoids).
- urial: the base model with a fixed in-context alignment prefix (Lin et al. 2024), "# Query:/# Answer:" blocks;
  the default prefix (wsd_inference/data/urial_default.txt) was written for this project.
"""

from __future__ import annotations

import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pilot_core.inputs import read_text
from pilot_core.method_record import MethodRecord, SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import NO_WATCH, Watch, chat_batch
from pilot_core.models.templates import STOP_STRINGS, base_prompt, cut_at_markers
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


def _base_alone(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig, prompts: list[str], method: str,
                stop: tuple[str, ...] = STOP_STRINGS, watch: Watch = NO_WATCH,
                speculator: Speculator | None = None) -> list[MethodRecord]:
    """The base alone from each prompt, with the whole budget; the response cut at the first stop string."""
    t0 = time.perf_counter()
    stop = stop + watch.stop
    rows = [watch.stream(r, cfg.max_new_tokens, g) for r, g in enumerate(cfg.generators([r.id for r in recs]))]
    spec = continue_base(RaggedBatch(base, len(recs)), [base.encode(p) for p in prompts], rows, cfg.sampling(), stop,
                         speculator)
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "draft_and_score_s": 0.0, "batch_size": len(recs)}
    return [base_record(base, rec, row.tokens, method, stop, total / len(recs), timing, spec and spec[i])
            for i, (rec, row) in enumerate(zip(recs, rows))]


def base_record(base: HFModel, rec: PromptRecord, tokens: list[int], method: str, stop: tuple[str, ...],
                time_s: float, timing: dict, speculation: SpeculationFigures | None = None) -> MethodRecord:
    """The record of an answer the base wrote alone: its text cut at the first stop string."""
    return MethodRecord(rec.id, method, cut_at_markers(base.decode(tokens), stop), time_s=time_s, timing=timing,
                        base_tokens=len(tokens), speculation=speculation)


def base_only_batch(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig, watch: Watch = NO_WATCH,
                    pilot: HFModel | None = None) -> list[MethodRecord]:
    """The base model alone with the plain role template, same budget and stop rules as WSD; with speculation on
    and a pilot given, the pilot proposes the base's tokens (the answers are still the base's)."""
    return _base_alone(base, recs, cfg, [base_prompt(r.messages, base.tokenizer.bos_token) for r in recs],
                       "base_only", watch=watch, speculator=Speculator.of(pilot, base, recs, cfg))


def urial_batch(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig, prefix: str | None = None,
                pilot: HFModel | None = None) -> list[MethodRecord]:
    """The base after the URIAL prefix; with speculation on and a pilot given, the pilot (reading its own chat
    template, not the prefix) proposes the base's tokens."""
    prefix = urial_prefix(cfg.urial_prefix) if prefix is None else prefix
    out = _base_alone(base, recs, cfg, [urial_prompt(r.messages, prefix, base.tokenizer.bos_token) for r in recs],
                      "urial", stop=URIAL_STOP, speculator=Speculator.of(pilot, base, recs, cfg))
    return [replace(r, response=urial_answer(r.response)) for r in out]


def pilot_only_batch(pilot: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[MethodRecord]:
    """The pilot alone with its chat template, for the whole budget."""
    t0 = time.perf_counter()
    answers = chat_batch(pilot, [r.messages for r in recs], cfg.max_new_tokens, cfg.sampling(),
                         cfg.generators([r.id for r in recs]))
    total = time.perf_counter() - t0
    return [MethodRecord(rec.id, "pilot_only", pilot.decode(d).strip(), time_s=total / len(recs),
                         timing={"batch_s": round(total, 4), "batch_size": len(recs)}, pilot_tokens=len(d))
            for rec, d in zip(recs, answers)]
