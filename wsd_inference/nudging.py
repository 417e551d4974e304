"""Nudging (Fei et al., "Nudging: Inference-time Alignment via Model Collaboration", ACL 2025), WSD's closest
rival: the rule as its authors run it is in `nudging_rule.py`; here it runs over a batch of prompts with
in-process models, or one prompt with the base (and maybe the pilot) on a server.

Both answer the rule's asks the same way: a model continues its own prompt (the pilot: its chat template; the
base: the plain role template) and the answer's text, re-tokenized, for the tokens asked, picking them as usual
(greedy, the authors' setting; or sampled with the prompt's own seeded stream). In-process each model keeps a KV
cache per row (`RaggedBatch`) and only what differs from it is fed; the rows' asks of one model run as one batch.
With speculation on (`--speculate`), a draft copy of the pilot proposes the base's tokens in its completions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from pilot_core.method_record import MethodRecord, NudgingTrace, SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Stream
from pilot_core.models.templates import base_prompt, chat_prompt, cut_at_markers
from pilot_core.prompts import PromptRecord
from wsd_inference.continuation import Speculator, continue_base
from wsd_inference.nudging_rule import (
    Ask,
    Completion,
    NudgingState,
    Rule,
    Writer,
    nudging,
    remove_redundant_repetitions,
)

if TYPE_CHECKING:  # annotations only, see methods.py
    from wsd_inference.config import WSDConfig

CONTEXT_TAIL = 8  # tokens before a completion, decoded with it so its first token keeps its leading space


def token_texts(model, before: list[int], ids: list[int]) -> list[str]:
    """Each token's text after `before` (decoded in context, so a leading space survives); joined, the
    completion's text. A stop token's text is empty, and so is a token that ends inside a character (a byte of
    an emoji or a CJK character): the character goes with the token that completes it."""
    out, acc = [], list(before[-CONTEXT_TAIL:])
    done = model.decode(acc)
    for t in ids:
        acc.append(t)
        now = model.decode(acc)
        if now.endswith("\ufffd"):  # an unfinished character: nothing of it yet
            out.append("")
            continue
        keep = len(done) if now.startswith(done) else next(
            (i for i, (a, b) in enumerate(zip(done, now)) if a != b), min(len(done), len(now)))
        out.append(now[keep:])
        done = now
    return out


def the_rule(cfg: WSDConfig, base) -> Rule:
    return Rule(gamma=cfg.nudging.threshold, completion_tokens=cfg.nudging.completion_tokens,
                max_rounds=cfg.nudging.max_rounds, budget=cfg.max_new_tokens,
                length=lambda text: len(base.encode(text)))


def record(rec: PromptRecord, state: NudgingState, pilot, base, cfg: WSDConfig, time_s: float, timing: dict,
           speculation: SpeculationFigures | None = None) -> MethodRecord:
    """The answer: repeated suffixes removed (theirs), then cut at a role marker and at the budget (ours)."""
    text = cut_at_markers(remove_redundant_repetitions(state.output))
    ids = base.encode(text)
    if len(ids) > cfg.max_new_tokens:
        text = base.decode(ids[: cfg.max_new_tokens]).strip()
    trace = NudgingTrace(state.handoffs, state.pilot_pieces, state.rounds, state.stop_reason)
    return MethodRecord(rec.id, "nudging", text, time_s=time_s, timing=timing,
                        pilot_tokens=len(pilot.encode(state.pilot_text())), base_tokens=state.base_tokens,
                        trace=trace, speculation=speculation)


@dataclass
class _Row:
    """One prompt in the batch: the rule running on its state, the ask it waits on, and what the base's last
    completion continued (for an `Ask.more`)."""

    rec: PromptRecord
    generator: object
    prompts: dict[Writer, str]
    state: NudgingState = field(default_factory=NudgingState)
    rule: Generator | None = None
    ask: Ask | None = None
    base_context: list[int] = field(default_factory=list)
    speculation: SpeculationFigures | None = None

    def answer(self, c: Completion | None) -> None:
        """Send the rule the completion it asked for (None: start it); `ask` becomes its next ask, or None."""
        try:
            self.ask = next(self.rule) if c is None else self.rule.send(c)
        except StopIteration:
            self.ask = None


def nudging_batch(pilot: HFModel, base: HFModel, recs: list[PromptRecord], cfg: WSDConfig) -> list[MethodRecord]:
    t0 = time.perf_counter()
    rule = the_rule(cfg, base)
    models = {Writer.PILOT: pilot, Writer.BASE: base}
    rows = [_Row(rec, gen, {Writer.PILOT: chat_prompt(pilot.tokenizer, rec.messages),
                            Writer.BASE: base_prompt(rec.messages, base.tokenizer.bos_token)})
            for rec, gen in zip(recs, cfg.generators([r.id for r in recs]))]
    for row in rows:
        row.rule = nudging(rule, row.state)
        row.answer(None)
    caches = {w: RaggedBatch(m, len(rows)) for w, m in models.items()}
    # the pilot proposing the base's tokens, greedily: the base checks each proposal by its own pick
    speculator = Speculator.of(pilot, base, recs, cfg)
    base_prompt_lens = [len(base.encode(row.prompts[Writer.BASE])) for row in rows]
    while any(row.ask is not None for row in rows):
        for writer in Writer:
            asking = [row.ask is not None and row.ask.writer is writer for row in rows]
            if not any(asking):
                continue
            contexts = [_context(models[writer], row) if a else None for row, a in zip(rows, asking)]
            streams = [Stream(row.ask.n if a else 0, row.generator, top1=[] if writer is Writer.BASE else None)
                       for row, a in zip(rows, asking)]
            spec = None
            if writer is Writer.BASE and speculator is not None:
                spec = replace(speculator, before=[c[n:] if c else [] for c, n in zip(contexts, base_prompt_lens)])
            figures = continue_base(caches[writer], contexts, streams, cfg.sampling(), (), spec)
            for r, (row, ctx, s) in enumerate(zip(rows, contexts, streams)):
                if ctx is None:
                    continue
                if writer is Writer.BASE:
                    row.base_context = ctx + s.tokens
                    if figures is not None:
                        row.speculation = figures[r] if row.speculation is None else row.speculation + figures[r]
                row.answer(Completion(token_texts(models[writer], ctx, s.tokens), s.top1 or [],
                                      s.finish == "stop"))
    total = time.perf_counter() - t0
    timing = {"batch_s": round(total, 4), "batch_size": len(rows)}
    return [record(row.rec, row.state, pilot, base, cfg, total / len(rows), timing, row.speculation)
            for row in rows]


def _context(model, row: _Row) -> list[int]:
    """The tokens the asked model continues: its prompt and the text asked about, re-tokenized; or, for more of
    the base's last completion, that completion's context and tokens."""
    if row.ask.more:
        return row.base_context
    return model.encode(row.prompts[row.ask.writer] + row.ask.text)


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
    state = NudgingState()
    run = nudging(the_rule(cfg, base), state)
    prompts = {Writer.PILOT: chat_prompt(pilot.tokenizer, rec.messages),
               Writer.BASE: base_prompt(rec.messages, base.tokenizer.bos_token)}
    base_context: list[int] = []
    calls, reply = 0, None
    try:
        while True:
            ask = run.send(reply) if calls else next(run)
            seed = cfg.served_seed(f"{rec.id}#{calls}")
            calls += 1
            if ask.writer is Writer.PILOT:
                ids = pilot.encode(prompts[Writer.PILOT] + ask.text)
                toks, reason = await pilot.continue_ids(rec.id, ids, ask.n, cfg.sampling(), seed)
                reply = Completion(token_texts(pilot, ids, toks), [], reason == "stop")
                continue
            ids = base_context if ask.more else base.encode(prompts[Writer.BASE] + ask.text)
            c = await base.server.complete(ids, ask.n, [], cfg.temperature, cfg.top_p, seed, top_logprobs=True)
            toks = c.token_ids if c.token_ids is not None else base.encode(c.text)
            base_context = ids + toks
            top1 = [math.exp(x) for x in c.top_logprobs]
            if not toks:  # a server that leaves the stop token out of what it returns
                toks, top1 = [base.tokenizer.eos_token_id], [1.0]
            reply = Completion(token_texts(base, ids, toks), top1[: len(toks)], c.finish_reason == "stop")
    except StopIteration:
        pass
    total = time.perf_counter() - t0
    return record(rec, state, pilot, base, cfg, total, {"prompt_s": round(total, 4)})
