"""Iteration-level (continuous) batching, in-process, as vLLM schedules: an answer joins the running batch at the
next step and leaves it when it is done, its rows and their KV cache dropped at once, so a short answer never waits
for a long one and a new request never waits for a batch to end. For WSD and the baselines where one model writes
alone (`baselines.ALONE`: base_only, urial, pilot_only); `pilot wsd serve` batches them so, and `pilot wsd generate
--batching continuous` (`methods.continuous_batching`).

One step (`ContinuousEngine.step`):
1. the answers added since the last step are prefilled, in passes of their own (a new draft gets its first LEAD
   tokens there), and join the running batches (`RaggedBatch.extend`);
2. the pilot writes one token for every answer still drafting (one pass over the drafting rows only);
3. the base (a baseline's writer) runs one pass over its rows: a continuing answer's new token is fed (one whose
   switch was just decided first re-reads its kept context), a drafting answer's next final draft token is scored,
   and the switch rule runs on what was scored (where no answer continues, the pass waits until a draft has a
   chunk to score: `_ready`);
4. answers that are done leave, with their records.

The answers are the batch engine's (`engine.wsd_batch`, the `baselines` batch functions), greedy and sampled, up to
float rounding (rows run beside others, padded otherwise; a near tie could differ, as between any two batch shapes):
each row draws with its own seeded generator, in the same order. A draft is scored as its tokens become final
instead of every `chunk_size` tokens; no decision changes (the first window that reaches γ is the same whenever it
is read: `switch.decide` over final tokens only), only how far the pilot drafts past the switch point (a sampled
draft draws exactly the batch engine's chunks: `Answer.decided`). Each answer has its own settings (temperature,
budget, stop strings): rows need not share them.

Not here: speculation (the pilot proposing the base's tokens): the batch engine does it (`batching: static`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch, common_prefix
from pilot_core.models.sampling import Stream, Watch, next_token, prefilled
from pilot_core.models.templates import STOP_STRINGS, chat_prompt
from pilot_core.prompts import PromptRecord
from wsd_inference.baselines import ALONE
from wsd_inference.engine import DraftView, WSDRow, wsd_rows

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig

MAX_BEHIND = 8  # a drafting answer's pilot waits while this many of its final draft tokens are not scored yet
LEAD = MAX_BEHIND  # tokens a new draft is given when it joins: its first base tokens are final after a word or so
# answers join and leave at different times, leaving holes in the caches' rows: compacted sooner than a batch's
# (every pass copies the whole cache: transformers' DynamicLayer.update)
COMPACT = {"factor": 1.25, "slack": 8}
WatchFn = Callable[[list[int], Stream], None]  # `Watch`'s callback: the answer's tokens before a Stream, the Stream


@dataclass(eq=False)
class Answer:
    """One answer's way through the engine, all its state on one object (vLLM's `Request`): its prompt and
    settings, WSD's row while the pilot drafts (None for the base alone), the context the base continues from and
    the continuation, once known, and the record when done."""

    rec: PromptRecord
    cfg: WSDConfig
    stop: tuple[str, ...] = ()  # the request's own stop strings, besides the role markers
    watch: WatchFn | None = None
    wsd: WSDRow | None = None
    pilot_prompt: str = ""  # WSD: the pilot's chat prompt
    context: list[int] | None = None
    stream: Stream | None = None
    synced: bool = False  # the base's row holds context + stream's tokens, with the logits after them
    owed: int = 0  # pilot draws still owed before the continuation draws (sampled WSD: see `decided`)
    caught_up: bool = False  # the base scored every final token of the draft so far
    behind: int = 0  # final draft tokens the base has not scored yet
    record: MethodRecord | None = None
    share: float = 0.0  # its share of the steps' wall time (a step's time split among the answers in it)
    t0: float = field(default_factory=time.perf_counter)
    t_draft: float = 0.0

    @property
    def drafting(self) -> bool:
        return self.wsd is not None and not self.wsd.decided

    @property
    def waits_for_scoring(self) -> bool:
        """A sampled draft at the end of a chunk waits until the base scored all of it that is final: the batch
        engine decides there before it draws on, and the draws must be the same (see `decided`)."""
        n = len(self.wsd.draft.tokens)
        return (self.drafting and self.wsd.generator is not None and n > 0 and n % self.cfg.chunk_size == 0
                and not self.caught_up)

    @property
    def in_pilot(self) -> bool:
        """Whether its row is among the pilot's: drafting, or drawing what it owes."""
        return self.drafting or self.owed > 0

    @property
    def done(self) -> bool:
        return self.stream is not None and self.stream.done

    def decided(self, scored: list[int], stopped: bool) -> None:
        """The switch is decided over the base's `scored` tokens (`stopped`: the pilot had finished its draft).
        A sampled draft and its continuation draw from one generator, and the batch engine drafts in chunks of
        `chunk_size` tokens before it scores: so that the continuation's draws are the ones it makes there, a
        sampled row first drafts on to the end of its chunk (the tokens are not in the answer, only in its
        pilot_tokens, as the batch engine's are; the pilot's are the cheap ones). A greedy one draws nothing and
        goes on at once."""
        w = self.wsd
        w.keep(scored, self.cfg)
        if w.generator is not None and not stopped:
            self.owed = -len(w.draft.tokens) % self.cfg.chunk_size
        if self.owed:
            w.draft.done = False
        else:
            self.continue_from(w.context, w.budget, w.kept_ids)

    def drew(self) -> None:
        """The pilot drew one token it owed; once it owes none (or its draft stopped), the base continues."""
        w = self.wsd
        self.owed = 0 if w.draft.done else self.owed - 1
        if not self.owed:
            w.draft.done = True
            self.continue_from(w.context, w.budget, w.kept_ids)

    def continue_from(self, context: list[int], budget: int, before: list[int]) -> None:
        """The base continues from `context` with `budget` tokens; `before`: the answer's tokens ahead of them."""
        self.context, self.t_draft = context, time.perf_counter() - self.t0
        self.stream = Watch(self.stop, (self.watch,)).stream(0, budget, self.wsd.generator if self.wsd else
                                                              self.cfg.generators([self.rec.id])[0], before)


class ContinuousEngine:
    """The running answers of one method over one KV cache per model: WSD (`model` the base, with its `pilot`) or
    a baseline where `model` writes alone (`baselines.ALONE`). `add` queues an answer to join at the next `step`;
    `step` returns the answers it finished; `drop` takes one out (a client that went away). Not thread-safe: one
    thread steps it."""

    def __init__(self, method: str, model: HFModel, pilot: HFModel | None = None):
        if not (method == "wsd" and pilot is not None or method in ALONE and pilot is None):
            raise ValueError(f"continuous batching runs wsd (with a pilot) or one of {', '.join(ALONE)}, "
                             f"not {method}")
        self.method, self.model, self.pilot = method, model, pilot
        self.alone = ALONE.get(method)
        self.stop = STOP_STRINGS if self.alone is None else self.alone.stop  # where the writer's answer ends
        self.answers: list[Answer] = []  # row r of `rows`
        self.drafters: list[Answer] = []  # row r of `pilot_rows`: the answers still drafting
        self.rows, self.pilot_rows = RaggedBatch(model, 0), RaggedBatch(pilot, 0) if pilot else None
        self.joining: list[Answer] = []
        self.steps = 0

    @property
    def running(self) -> int:
        return len(self.answers) + len(self.joining)

    def fresh(self) -> ContinuousEngine:
        """The same models, nothing running (after a step failed)."""
        return ContinuousEngine(self.method, self.model, self.pilot)

    def add(self, rec: PromptRecord, cfg: WSDConfig, stop: tuple[str, ...] = (), watch: WatchFn | None = None,
            ) -> Answer:
        """An answer to join at the next step. Its prompts are rendered here, so a conversation a chat template
        refuses fails its own request (raised here), not the step of every running answer."""
        a = Answer(rec, cfg, stop, watch)
        if self.method == "wsd":
            a.wsd = wsd_rows(self.model, [rec], cfg)[0]
            a.pilot_prompt = chat_prompt(self.pilot.tokenizer, rec.messages)
        else:
            a.context = self.model.encode(self.alone.prompt(self.model, rec.messages, cfg))
        self.joining.append(a)
        return a

    def drop(self, answer: Answer) -> None:
        """End an answer before it is done: the next step returns it, its rows gone."""
        if answer.stream is None:
            if answer.wsd is not None:
                answer.wsd.decided, answer.wsd.draft.done, answer.owed = True, True, 0  # out of the drafting rows
            answer.stream = Stream(0)
        else:
            answer.stream.done = True

    def step(self) -> list[Answer]:
        t0, self.steps = time.perf_counter(), self.steps + 1
        dropped = [a for a in self.joining if a.done]
        self._join()
        self._draft()
        self._base_pass()
        took = time.perf_counter() - t0
        for a in self.answers:
            a.share += took / len(self.answers)
        for a in dropped:
            a.record = self._record(a, len(self.answers))
        return dropped + self._leave()

    def _join(self) -> None:
        """The new answers' prompts, prefilled together, join the running batches."""
        new, self.joining = [a for a in self.joining if not a.done], []
        if not new:
            return
        rows = RaggedBatch(self.model, len(new))
        if self.method == "wsd":
            drafts = prefilled(self.pilot, [a.pilot_prompt for a in new])
            for _ in range(LEAD):  # the new drafts' first tokens, on their own rows: scoring starts at once
                self._draft(drafts, new)
            self.pilot_rows.extend(drafts)
            self.drafters += new
            rows.advance([a.wsd.prompt_ids for a in new], [a.wsd.prompt_len for a in new])
        else:
            for a in new:
                a.continue_from(a.context, a.cfg.max_new_tokens, [])
            rows.feed([a.context for a in new])
            for a in new:
                a.synced = True
        self.rows.extend(rows)
        self.answers += new

    def _draft(self, rows: RaggedBatch | None = None, answers: list[Answer] | None = None) -> None:
        """One pilot token for every drafting answer (`answers` on `rows`: by default the running ones); WSD's
        draft: no stop strings, the pilot's own stop tokens."""
        rows, answers = (self.pilot_rows, self.drafters) if rows is None else (rows, answers)
        feed = [[] for _ in answers]
        for r, a in enumerate(answers):
            draft = a.wsd.draft
            if a.drafting and (a.waits_for_scoring or a.behind >= MAX_BEHIND):
                continue  # an answer that owes draws (`Answer.decided`) draws them whatever scoring waits
            if not draft.done:
                a.caught_up = False  # a new token: the base has not scored this draft yet
                if next_token(draft, rows.next_logits[r], self.pilot, a.cfg.sampling()):
                    feed[r] = [draft.tokens[-1]]
            if a.owed:
                a.drew()
        if any(feed):
            rows.feed(feed)

    def _base_pass(self) -> None:
        """One base pass: continuations one token further, drafts scored as far as they are final (see
        `_scoring`); then the switch rule on what was scored. With no continuation to write, the pass waits until
        a draft has a chunk to score."""
        targets: list[list[int] | None] = [None] * len(self.answers)
        score_from = [0] * len(self.answers)
        writing = [r for r, a in enumerate(self.answers) if not a.drafting and a.stream is not None
                   and not a.stream.done]
        drafts = self._drafts()
        if not writing and not any(self._ready(self.answers[r], *d) for r, d in drafts.items()):
            return
        views = self._scoring(drafts, targets, score_from, 1 if writing else None)
        for r in writing:
            a = self.answers[r]
            if a.synced and not next_token(a.stream, self.rows.next_logits[r], self.model, a.cfg.sampling(),
                                           self.stop + a.stop):
                continue  # it stopped: nothing to feed
            targets[r] = a.context + a.stream.tokens
            score_from[r] = len(targets[r])  # no log-probs wanted
            a.synced = True  # once this pass ran (`advance` leaves the logits after the target)
        changed = self.rows.advance(targets, score_from)
        for r, view in views.items():
            a, stopped = self.answers[r], self.answers[r].wsd.draft.done
            a.wsd.decide(view, self.rows.logps[r], changed[r], a.cfg, finished=stopped and a.caught_up)
            if a.wsd.decided:
                a.decided(self.rows.tokens[r], stopped)
                # where the switch is the last token scored, the logits after the kept context are at hand
                a.synced = self.rows.tokens[r] == a.context and self.rows.next_logits[r] is not None
        self.rows.compact_if_sparse(**COMPACT)

    def _drafts(self) -> dict[int, tuple[DraftView, list[int], int]]:
        """Per drafting row: the base's view of its draft, the draft's final base tokens, how many of them the row
        holds (scored)."""
        out = {}
        for r, a in enumerate(self.answers):
            if a.drafting:
                view = a.wsd.view(self.pilot, self.model)
                final = [] if view.empty else view.ids[: view.final]
                out[r] = view, final, common_prefix(self.rows.tokens[r], final)
                a.behind = len(final) - out[r][2]
        return out

    @staticmethod
    def _ready(a: Answer, view: DraftView, final: list[int], held: int) -> bool:
        """Whether a draft is worth a base pass of its own: a chunk to score (or as much as its pilot may run
        ahead), a finished draft, or a sampled one at the end of its chunk (it draws on only once scored)."""
        return (a.wsd.draft.done or len(final) - held >= min(a.cfg.chunk_size, MAX_BEHIND)
                or a.waits_for_scoring)

    def _scoring(self, drafts: dict, targets: list, score_from: list[int], width: int | None) -> dict[int, DraftView]:
        """What each drafting answer's base row is to hold after this pass, in `targets`, at most `width` more
        final tokens (None: all); per row the view of the draft as far as it will be scored.

        While other answers write, a draft is scored one final token per pass: a pass is as wide as its widest row,
        and a narrower row is padded (on a CPU padding costs as much as tokens), so scoring more at once would widen
        every row's pass. A scored draft token is an answer token, so the draft goes at the base's pace, one token
        per step, as a continuation does; its pilot waits while MAX_BEHIND final tokens are not scored yet (a
        word's tokens become final together). Where every answer drafts (at low load, say), the pilot writes
        ahead and the base scores a chunk at a time, as the batch engine does. Scoring later changes no decision
        (`switch.decide`)."""
        views = {}
        for r, (view, final, held) in drafts.items():
            a = self.answers[r]
            if view.empty:
                views[r], a.caught_up = view, True
                continue
            targets[r], score_from[r] = final[: held + width] if width else final, a.wsd.prompt_len
            views[r] = replace(view, ids=targets[r], final=len(targets[r]))
            a.behind = len(final) - len(targets[r])
            a.caught_up = not a.behind
        return views

    def _leave(self) -> list[Answer]:
        """Done answers leave both batches (their cache is freed) with their records."""
        if self.pilot_rows is not None:
            kept = [r for r, a in enumerate(self.drafters) if a.in_pilot]
            self.pilot_rows.keep_rows(kept)
            self.drafters = [self.drafters[r] for r in kept]
            self.pilot_rows.compact_if_sparse(**COMPACT)
        done = [a for a in self.answers if a.done]
        if done:
            running = len(self.answers)
            kept = [r for r, a in enumerate(self.answers) if not a.done]
            self.rows.keep_rows(kept)
            self.answers = [self.answers[r] for r in kept]
            for a in done:
                a.record = self._record(a, running)
        return done

    def _record(self, a: Answer, running: int) -> MethodRecord:
        """Its time_s: its share of the steps it ran in (as a batch's records share the batch's time); its
        latency, from `add` to done, in the timing."""
        timing = {"answer_s": round(time.perf_counter() - a.t0, 4), "draft_and_score_s": round(a.t_draft, 4),
                  "running": running}
        if self.alone is not None:
            return self.alone.record(self.model, a.rec, a.stream.tokens, a.share, timing, a.stop)
        return a.wsd.record(self.model, a.stream.tokens, a.cfg, a.share, timing, "wsd", a.stop)
