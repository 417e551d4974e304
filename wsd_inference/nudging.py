"""Nudging (Fei et al., "Nudging: Inference-time Alignment via Model Collaboration", ACL 2025): the base writes,
and wherever it is unsure the small aligned model (the pilot) writes a piece, until the base is confident again.

The rule, per prompt (the tests hold both implementations to a batch-1 reference written from this text):
- The answer is one text, written in turns. The base reads its plain role template + the answer; the pilot reads
  its chat template + the answer. A model that takes its turn after the other one wrote reads the answer
  re-tokenized (left-stripped, as WSD's base reads a draft); one that writes on after itself keeps its own tokens.
  So pilot and base may have different tokenizers: only text crosses.
- Before each base token: if the base's top-1 probability is at least γ (`nudging.threshold`, by default WSD's
  `--threshold`) the base writes that position (its token picked as usual: greedy, or sampled); otherwise the
  pilot writes one piece.
- A piece is a word (the authors' unit: the pilot's tokens up to, not including, the first token that starts a
  new word after some non-space text) or a chunk of `nudging.piece_tokens` tokens; a word is also cut at that
  many tokens.
- The answer ends at the base's or the pilot's stop token, at a role marker the base writes (in the run of tokens
  it wrote since it last took over; the answer is cut there, as base-only's is), or when the two together wrote
  `max_new_tokens` tokens (each counted in its own tokenizer).
So γ = 0 is the base alone, and γ = 1 is the pilot alone (a model is never certain to the last bit).

In-process, both models keep a KV cache per row (`RaggedBatch`); rows switch independently. With speculation on
(`--speculate`), in the base's turns a draft copy of the pilot proposes the base's next tokens and the base checks
them in its pass: it writes on while confident and while its own pick equals the proposal, so the answer is the
one written token by token, greedy or sampled. With a served base
(and a served or local pilot), the base writes up to `chunk_size` tokens per request with their top-1 log-probs
and the answer keeps the confident prefix.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, NudgingTrace, SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import MARKER_TAIL, Sampling, pick_token
from pilot_core.models.speculative import Drafter, Pacing, SpecRow
from pilot_core.models.templates import STOP_STRINGS, base_prompt, chat_prompt, cut_at_markers, has_marker
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig

BASE, PILOT = "base", "pilot"
CONTEXT_TAIL = 8  # tokens before a piece, decoded with it so its text keeps its leading space
COMPACT_SLACK = 64  # cache slots beyond twice the longest row before the holes are dropped


def text_after(model, before: list[int], ids: list[int]) -> str:
    """The text `ids` add after `before` (decoded together: a token's leading space survives)."""
    head, full = model.decode(before), model.decode(before + ids)
    return full[len(head):] if full.startswith(head) else model.decode(ids)


def starts_word(piece_text: str, token_text: str) -> bool:
    """Whether a token whose text is `token_text` starts a new word after `piece_text` (some non-space text
    written, then a token that begins with a space, or follows one)."""
    return bool(piece_text.strip()) and (token_text[:1].isspace() or piece_text[-1:].isspace())


def word_done(pilot, ids: list[int], piece: int, tok: int) -> bool:
    """Whether the pilot's word piece (the last `piece` tokens of its context `ids`) ends before `tok`."""
    return piece > 0 and starts_word(text_after(pilot, ids[-piece - CONTEXT_TAIL: -piece], ids[-piece:]),
                                     text_after(pilot, ids[-CONTEXT_TAIL:], [tok]))


@dataclass
class Segment:
    """A run of tokens one model wrote, and the writer's tokens just before it (to decode it in context)."""

    writer: str
    before: list[int]
    ids: list[int] = field(default_factory=list)


@dataclass
class Answer:
    """One prompt's answer, in turns: the segments each model wrote and their text."""

    budget: int
    segments: list[Segment] = field(default_factory=list)
    closed_text: str = ""  # the text of every segment but the last
    tokens: dict = field(default_factory=lambda: {BASE: 0, PILOT: 0})
    pieces: int = 0
    done: bool = False
    marker: bool = False  # ended at a role marker the base wrote

    def write(self, writer: str, tok: int, before: list[int], models: dict) -> None:
        """Commit one token (`before`: the writer's tokens before it); a change of writer closes the last
        segment."""
        if not self.segments or self.segments[-1].writer != writer:
            if self.segments:
                self.closed_text += self._text(self.segments[-1], models)
            self.segments.append(Segment(writer, before[-CONTEXT_TAIL:]))
        self.segments[-1].ids.append(tok)
        self.tokens[writer] += 1
        if sum(self.tokens.values()) >= self.budget:
            self.done = True

    @staticmethod
    def _text(seg: Segment, models: dict) -> str:
        return text_after(models[seg.writer], seg.before, seg.ids)

    def text(self, models: dict) -> str:
        return self.closed_text + (self._text(self.segments[-1], models) if self.segments else "")

    @property
    def left(self) -> int:
        return self.budget - sum(self.tokens.values())

    def base_wrote_marker(self, base) -> bool:
        """Whether the base's current run of tokens holds a role marker (its last tokens, as `Generation` checks
        a base alone)."""
        seg = self.segments[-1]
        text = base.decode(seg.ids[-MARKER_TAIL:]) if len(seg.ids) >= MARKER_TAIL else \
            text_after(base, seg.before, seg.ids)
        return has_marker(text)

    @property
    def handoffs(self) -> int:
        return max(len(self.segments) - 1, 0)

    def record(self, rec: PromptRecord, models: dict, time_s: float, timing: dict,
               speculation: SpeculationFigures | None = None) -> MethodRecord:
        text = self.text(models)
        return MethodRecord(rec.id, "nudging", cut_at_markers(text) if self.marker else text.strip(), time_s=time_s,
                            timing=timing, pilot_tokens=self.tokens[PILOT], base_tokens=self.tokens[BASE],
                            trace=NudgingTrace(self.handoffs, self.pieces), speculation=speculation)


def confident(logits, threshold: float) -> bool:
    import torch

    return float(torch.softmax(logits.float(), dim=-1).max()) >= threshold


@dataclass
class _Row:
    rec: PromptRecord
    answer: Answer
    generator: object
    base_prompt: str
    pilot_prompt_ids: list[int]
    turn: str = BASE
    stale: dict = field(default_factory=lambda: {BASE: False, PILOT: False})  # the other model wrote since
    unfed: dict = field(default_factory=lambda: {BASE: [], PILOT: []})  # tokens written, not yet in the cache
    piece: list[int] = field(default_factory=list)  # the pilot's current piece
    pending: int | None = None  # the pilot's token that starts its next word, picked but not written yet

    def wrote(self, who: str, tok: int, fed: bool = False) -> None:
        """`fed`: the token is in the writer's cache already (a proposal the base kept)."""
        if not fed:
            self.unfed[who].append(tok)
        self.stale[PILOT if who == BASE else BASE] = True
        if who == BASE:
            self.pending = None  # the pilot's next word was picked before the base wrote: void


def nudging_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[MethodRecord]:
    t0 = time.perf_counter()
    models, sampling, limit = {BASE: base, PILOT: pilot}, cfg.sampling(), cfg.nudging.piece_tokens
    rows = []
    for rec, gen in zip(recs, cfg.generators([r.id for r in recs])):
        rows.append(_Row(rec, Answer(cfg.max_new_tokens), gen, base_prompt(rec.messages, base.tokenizer.bos_token),
                         pilot.encode(chat_prompt(pilot.tokenizer, rec.messages))))
    b, p = RaggedBatch(base, len(rows)), RaggedBatch(pilot, len(rows))
    b.feed([base.encode(r.base_prompt) for r in rows])
    p.feed([r.pilot_prompt_ids for r in rows])
    base_prompt_lens = [len(t) for t in b.tokens]
    speculation = _BaseTurns.of(pilot, base, rows, cfg)
    base_context = lambda r: base.encode(r.base_prompt + r.answer.text(models).lstrip())  # noqa: E731
    pilot_context = lambda r: r.pilot_prompt_ids + pilot.encode(r.answer.text(models).lstrip())  # noqa: E731

    def pilot_writes(i: int, r: _Row, tok: int) -> None:
        r.answer.write(PILOT, tok, p.tokens[i] + r.unfed[PILOT], models)
        r.wrote(PILOT, tok)
        r.piece.append(tok)
        if tok in pilot.stop_ids:
            r.answer.done = True
        if r.answer.done or len(r.piece) >= limit:
            _end_piece(r)

    # Each round: one pilot pass and one base pass, each over the rows whose turn it is; a word the pilot ends
    # is judged by the base in the same round, and a row the base hands back goes on with the pilot's next word.
    while any(not r.answer.done for r in rows):
        # 1. one pilot pass: its last token where it writes on, the re-tokenized answer where the base wrote since
        _catch_up(p, rows, PILOT, pilot_context)
        # 2. the pilot writes one token of its piece, or finds that its word ended before the token it picked
        for i, r in enumerate(rows):
            if r.answer.done or r.turn != PILOT:
                continue
            tok = pick_token(p.next_logits[i], sampling, r.generator)
            if cfg.nudging.piece == "word" and word_done(pilot, p.tokens[i], len(r.piece), tok):
                r.pending = tok  # it opens the next piece if the pilot keeps the turn
                _end_piece(r)
            else:
                pilot_writes(i, r, tok)
        # 3. one base pass, the same way; the base writes where it is confident, elsewhere the pilot has the turn;
        # with speculation on, the pilot's proposals ride in the same pass and the base writes on through those
        # it is confident of and agrees with
        targets = _targets(b, rows, BASE, base_context, every=True)
        asked, props = (speculation.propose([t and t[n:] for t, n in zip(targets, base_prompt_lens)], rows)
                        if speculation is not None else ([0] * len(rows), [[] for _ in rows]))
        logits = b.sync([t and t + d for t, d in zip(targets, props)], [len(d) for d in props])
        for i, r in enumerate(rows):
            if logits[i] is None:
                continue
            kept = _base_writes(i, r, logits[i], props[i], b, cfg, models, pilot_writes)
            b.drop(i, len(props[i]) - kept)  # the proposals the base did not keep
            if speculation is not None:
                speculation.pace.base_pass(speculation.rows[i], asked[i], len(props[i]), kept)
        b.compact_if_sparse(COMPACT_SLACK)
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "batch_size": len(rows)}
    return [r.answer.record(r.rec, models, total / len(rows), timing,
                            speculation.rows[i].stats.record(r.answer.tokens[BASE]) if speculation else None)
            for i, r in enumerate(rows)]


def _end_piece(r: _Row) -> None:
    r.answer.pieces += 1
    r.piece, r.turn = [], BASE


def _base_writes(i: int, r: _Row, logits, proposed: list[int], b: RaggedBatch, cfg: WSDConfig, models: dict,
                 pilot_writes) -> int:
    """Row i's base turn, given the base's logits before each proposed token and after the last (one row
    without proposals): the base writes while confident, a proposal kept while it equals the base's own pick (so
    the answer is that of writing token by token); returns how many proposals it kept."""
    base, start = models[BASE], len(b.tokens[i]) - len(proposed)
    for j, lg in enumerate(logits):
        if not confident(lg, cfg.nudging_gamma):
            r.turn = PILOT
            if r.pending is not None:  # the pilot's next word has begun: write its first token now
                tok, r.pending = r.pending, None
                pilot_writes(i, r, tok)
            return j
        tok = pick_token(lg, cfg.sampling(), r.generator)
        kept = j < len(proposed) and tok == proposed[j]
        r.answer.write(BASE, tok, b.tokens[i][: start + j], models)
        r.wrote(BASE, tok, fed=kept)
        if tok in base.stop_ids:
            r.answer.done = True
        elif r.answer.base_wrote_marker(base):
            r.answer.done = r.answer.marker = True
        if r.answer.done or not kept:
            return j + kept
    return len(proposed)


def _targets(batch: RaggedBatch, rows: list[_Row], who: str, context, every: bool = False) -> list:
    """Per row where model `who` has the turn, the tokens its cache should hold: the tokens it wrote itself
    added, or (the other model wrote since) the whole answer re-tokenized, `context(row)`; None where it has not
    the turn, or (unless `every`) where its cache holds them already."""
    targets = [None] * len(rows)
    for i, r in enumerate(rows):
        if r.answer.done or r.turn != who:
            continue
        if r.stale[who]:
            targets[i], r.stale[who] = context(r), False
        elif r.unfed[who] or every:
            targets[i] = batch.tokens[i] + r.unfed[who]
        r.unfed[who] = []
    return targets


def _catch_up(batch: RaggedBatch, rows: list[_Row], who: str, context) -> None:
    """One batched pass of model `who` over what its cache lacks, in the rows where it has the turn (only what
    differs from its cache is fed)."""
    targets = _targets(batch, rows, who, context)
    if any(t is not None for t in targets):
        batch.sync(targets)
        # holes (rows given nothing in a pass) widen every later pass: drop them once they outnumber live tokens
        batch.compact_if_sparse(COMPACT_SLACK)


@dataclass
class _BaseTurns:
    """The pilot speculating for the base's turns: a `Drafter` (its own cache of the pilot's chat prompt + the
    answer) proposing greedily, whatever the sampling, since the base checks each proposal by its own pick."""

    drafter: Drafter
    pace: Pacing
    rows: list[SpecRow]

    @classmethod
    def of(cls, pilot: HFModel, base: HFModel, rows: list[_Row], cfg: WSDConfig) -> _BaseTurns | None:
        speculator = Speculator.of(pilot, base, [r.rec for r in rows], cfg, sampling=Sampling())
        if speculator is None:
            return None
        pace = Pacing(speculator.spec)
        return cls(speculator.drafter, pace, [pace.row() for _ in rows])

    def propose(self, answers: list[list[int] | None], rows: list[_Row]) -> tuple[list[int], list[list[int]]]:
        """Per row the k asked for and up to k base tokens after its answer (None: not the base's turn); the
        base adds one of its own."""
        ks = self.pace.round_ks(self.rows, [None if a is None else r.answer.left - 1 for a, r in zip(answers, rows)])
        if not any(ks):
            return ks, [[] for _ in rows]
        return ks, [p.ids for p in self.drafter.propose([a if k else None for a, k in zip(answers, ks)], ks,
                                                         [None] * len(rows))]


# ------------------------------------------------------------------------------------------ served
async def nudging_one(pilot, base, rec: PromptRecord, cfg: WSDConfig) -> MethodRecord:
    """Nudging for one prompt with the base on a server (`ServedModel`) and the pilot continuing token ids on its
    server or in-process (`pilot_core.models.completions`)."""
    try:
        return await _nudging_one(pilot, base, rec, cfg)
    finally:
        pilot.done(rec.id)  # an in-process pilot drops the prompt's cache


async def _nudging_one(pilot, base, rec: PromptRecord, cfg: WSDConfig) -> MethodRecord:
    t0 = time.perf_counter()
    models, limit = {BASE: base, PILOT: pilot}, cfg.nudging.piece_tokens
    answer = Answer(cfg.max_new_tokens)
    prompt = base_prompt(rec.messages, base.tokenizer.bos_token)
    pilot_prompt = pilot.encode(chat_prompt(pilot.tokenizer, rec.messages))
    base_ids, pilot_ids = base.encode(prompt), list(pilot_prompt)
    base_fresh = pilot_fresh = True
    calls = 0
    while not answer.done:
        # the base: up to chunk_size tokens, kept while it is confident
        if not base_fresh:
            base_ids, base_fresh = base.encode(prompt + answer.text(models).lstrip()), True
        c = await base.server.complete(base_ids, min(cfg.chunk_size, answer.left), list(STOP_STRINGS),
                                       cfg.temperature, cfg.top_p, cfg.served_seed(f"{rec.id}#{calls}"),
                                       top_logprobs=True)
        calls += 1
        toks = c.token_ids if c.token_ids is not None else base.encode(c.text)
        unsure = False
        for tok, top in zip(toks, c.top_logprobs):
            if math.exp(top) < cfg.nudging_gamma:
                unsure = True
                break
            answer.write(BASE, tok, base_ids, models)
            base_ids.append(tok)
            pilot_fresh = False
            if tok == base.tokenizer.eos_token_id:
                answer.done = True
            elif answer.base_wrote_marker(base):
                answer.done = answer.marker = True
            if answer.done:
                break
        if answer.done or not unsure and c.finish_reason == "stop":
            answer.done = True
            break
        if not unsure:
            continue
        # the pilot: one piece
        if not pilot_fresh:
            pilot_ids, pilot_fresh = pilot_prompt + pilot.encode(answer.text(models).lstrip()), True
        toks, reason = await pilot.continue_ids(rec.id, pilot_ids, min(limit, answer.left), cfg.sampling(),
                                                cfg.served_seed(f"{rec.id}#{calls}"))
        calls += 1
        piece: list[int] = []
        for tok in toks:
            if cfg.nudging.piece == "word" and word_done(pilot, pilot_ids, len(piece), tok):
                break
            answer.write(PILOT, tok, pilot_ids, models)
            pilot_ids.append(tok)
            piece.append(tok)
            base_fresh = False
            if tok in pilot.stop_ids:
                answer.done = True
            if answer.done or len(piece) >= limit:
                break
        else:
            if reason == "stop" or not toks:  # a server that leaves the stop token out of the ids it returns
                answer.done = True
        answer.pieces += 1
    total = time.perf_counter() - t0
    return answer.record(rec, models, total, {"prompt_s": round(total, 4)})
