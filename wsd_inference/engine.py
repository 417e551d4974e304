"""Online Weak-to-Strong Decoding on transformers models, batched.

Same answers as the authors' staged pipeline (draft everything, score everything, re-prefill the base), but:
- the base scores the draft in chunks while the pilot writes it, and drafting stops at the switch point;
- a draft token is scored only once its base tokenisation is final (see `pilot_core.models.tokenization`);
- the base continues from its own KV cache: no second prefill;
- prompts are batched; each row has its own switch point (`pilot_core.models.ragged.RaggedBatch`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, SpeculationFigures, WSDTrace
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import NO_WATCH, Generation, Stream, Watch, prefilled
from pilot_core.models.templates import STOP_STRINGS, base_prompt, base_text, chat_prompt, cut_at_markers
from pilot_core.models.tokenization import stable_token_count
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator, continue_base
from wsd_inference.switch import decide, kept_context, relative_logps, window_scores

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig


@dataclass(frozen=True)
class DraftView:
    """The base's view of a draft so far: the base tokens of prompt + draft, how many of them can no longer
    change as the draft grows (all, once the pilot finished), and whether the finished draft is empty."""

    ids: list[int]
    final: int
    empty: bool
    ends: list[int] = field(default_factory=list)  # the relative rule: where each base draft token ends in the
    pilot_ends: list[int] = field(default_factory=list)  # pilot's draft text, and where each pilot token does


@dataclass
class WSDRow:
    """One prompt's way through WSD: the base's prompt, the pilot's draft, the switch decision, the context the
    base continues from."""

    rec: PromptRecord
    prompt: str  # the base's plain role template
    prompt_ids: list[int]  # its base tokens (P of them)
    draft: Stream  # the pilot's tokens (drafting stops once the row is decided)
    generator: object = None  # the prompt's random stream, for the pilot's draft and then the base's continuation
    decided: bool = False
    accept: int | None = None  # the last kept draft token (None: an empty draft)
    switched: bool = False
    final_ids: list[int] | None = None  # base tokenisation of the finished draft
    logps: list[float] = field(default_factory=list)  # the base's log-prob of each draft token it scored
    scores: list[float] = field(default_factory=list)  # what the switch rule reads per draft token (absolute: logps)
    pilot_ends: list[int] = field(default_factory=list)  # the relative rule: where each pilot token ends
    context: list[int] = field(default_factory=list)  # what the base continues from: prompt + kept draft
    budget: int = 0  # base tokens left for the continuation

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def view(self, pilot: HFModel, base: HFModel) -> DraftView:
        draft_text = pilot.decode(self.draft.tokens)
        text = base_text(self.prompt, draft_text)
        enc = base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        final = len(enc.input_ids) if self.draft.done else stable_token_count(enc.offset_mapping, text,
                                                                               len(self.prompt))
        ends: list[int] = []
        if self.draft.top1 is not None:  # the relative rule: where each model's tokens end in the draft's text
            shift = len(self.prompt) - (len(draft_text) - len(draft_text.lstrip()))  # the base reads it stripped
            ends = [e - shift for _, e in enc.offset_mapping[self.prompt_len:]]
            for k in range(len(self.pilot_ends), len(self.draft.tokens)):  # each new token once
                self.pilot_ends.append(len(pilot.decode(self.draft.tokens[: k + 1])))
        return DraftView(enc.input_ids, final, self.draft.done and not draft_text.strip(), ends,
                         list(self.pilot_ends))

    def rule_scores(self, view: DraftView) -> list[float]:
        """What the switch rule reads per scored draft token: the base's log-probabilities (absolute), or them
        against the pilot's own top-1 probabilities (relative)."""
        if self.draft.top1 is None:
            return self.logps
        return relative_logps(self.logps, view.ends, view.pilot_ends, self.draft.top1)

    def decide(self, view: DraftView, logps: list[float], changed: int, cfg: WSDConfig,
               finished: bool | None = None) -> None:
        """After the base scored `view` (`logps`: its log-prob per position): switch at the first window that
        reaches the threshold (only windows touching a changed position are new), or keep the whole draft once
        the pilot finished and all of it is scored (`finished`; default: the draft is done and `view` is all of
        it). An empty finished draft keeps nothing."""
        finished = self.draft.done if finished is None else finished
        if finished:
            self.final_ids = view.ids
        if view.empty:
            self.decided = True
            return
        self.logps = logps[self.prompt_len:]
        self.scores = self.rule_scores(view)
        d = decide(self.scores, finished, cfg.window, cfg.threshold, cfg.max_new_tokens,
                   start=max(0, changed - self.prompt_len))
        if d is not None:
            (self.accept, self.switched), self.decided = d, True
            self.draft.done = True  # drafting stops at the switch point

    def keep(self, scored_ids: list[int], cfg: WSDConfig) -> None:
        """Set the context the base continues from (prompt + draft tokens 0..accept of `scored_ids`) and its
        budget; an empty draft: the right-stripped prompt with the whole budget."""
        self.context, self.budget = kept_context(self.final_ids if self.accept is None else scored_ids,
                                                 self.prompt_len, self.accept, cfg.max_new_tokens)

    @property
    def kept_ids(self) -> list[int]:
        """The kept draft's base tokens (set by `keep`)."""
        return self.context[self.prompt_len:] if self.accept is not None else []

    def record(self, base: HFModel, cont: list[int], cfg: WSDConfig, time_s: float, timing: dict,
               method: str, stop: tuple[str, ...] = (), speculation: SpeculationFigures | None = None) -> MethodRecord:
        kept = self.kept_ids
        trace = WSDTrace(draft_text=base.decode(kept), switch_index=self.accept, switched=self.switched,
                         kept_draft_tokens=len(kept),
                         window_scores=window_scores(self.scores[: (self.accept or 0) + 1], cfg.window))
        return MethodRecord(self.rec.id, method, cut_at_markers(base.decode(kept + cont), STOP_STRINGS + stop),
                            time_s=time_s, timing=timing, pilot_tokens=len(self.draft.tokens), base_tokens=len(cont),
                            trace=trace, speculation=speculation)


def wsd_rows(base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[WSDRow]:
    """A row per prompt, its base prompt tokenized and its draft not started."""
    rows = []
    for rec, gen in zip(recs, cfg.generators([r.id for r in recs])):
        prompt = base_prompt(rec.messages, base.tokenizer.bos_token)
        draft = Stream(cfg.max_draft_tokens, gen, top1=[] if cfg.rule == "relative" else None)
        rows.append(WSDRow(rec, prompt, base.encode(prompt), draft, gen))
    return rows


def finish_batch(base: HFModel, rows: list[WSDRow], batch: RaggedBatch, cfg: WSDConfig, t0: float,
                 t_draft: float, method: str = "wsd", watch: Watch = NO_WATCH,
                 speculator: Speculator | None = None) -> list[MethodRecord]:
    """The base continues every row from its kept context (reusing what `batch` holds); one record per row."""
    conts = [watch.stream(r, row.budget, row.generator, row.kept_ids) for r, row in enumerate(rows)]
    spec = continue_base(batch, [row.context for row in rows], conts, cfg.sampling(), STOP_STRINGS + watch.stop,
                         speculator)
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "draft_and_score_s": round(t_draft, 4), "batch_size": len(rows)}
    return [row.record(base, c.tokens, cfg, total / len(rows), timing, method, watch.stop, spec and spec[r])
            for r, (row, c) in enumerate(zip(rows, conts))]


def wsd_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig,
              watch: Watch = NO_WATCH) -> list[MethodRecord]:
    t0 = time.perf_counter()
    rows = wsd_rows(base, recs, cfg)
    drafting = Generation(prefilled(pilot, [chat_prompt(pilot.tokenizer, r.messages) for r in recs]),
                          [row.draft for row in rows], cfg.sampling())
    scoring = RaggedBatch(base, len(rows))
    scoring.advance([row.prompt_ids for row in rows], [row.prompt_len for row in rows])

    while not all(row.decided for row in rows):
        drafting.run(cfg.chunk_size)  # 1. the pilot drafts up to chunk_size more tokens for every undecided row
        views = [None if row.decided else row.view(pilot, base) for row in rows]
        # 2. the base scores every draft token whose tokenisation is final (one batched pass)
        changed = scoring.advance([None if v is None or v.empty else v.ids[: v.final] for v in views],
                                  [row.prompt_len for row in rows])
        for r, row in enumerate(rows):
            if views[r] is not None:
                row.decide(views[r], scoring.logps[r], changed[r], cfg)
    t_draft = time.perf_counter() - t0

    for r, row in enumerate(rows):  # 3. the base continues from prompt + kept draft, within the total budget
        row.keep(scoring.tokens[r], cfg)
    # with speculation, the pilot proposes the base's next tokens, going on from its drafting cache
    speculator = Speculator.of(pilot, base, recs, cfg, [row.kept_ids for row in rows], drafting.batch)
    return finish_batch(base, rows, scoring, cfg, t0, t_draft, watch=watch, speculator=speculator)


def wsd_generate(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> Iterator[MethodRecord]:
    """Yield one record per prompt, in input order, `cfg.batch_size` prompts at a time."""
    for i in range(0, len(recs), cfg.batch_size):
        yield from wsd_batch(pilot, base, recs[i : i + cfg.batch_size], cfg)
