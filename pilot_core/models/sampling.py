"""Generating tokens in-process, batched: the one token-by-token loop every local decoding path runs (WSD's
drafts and continuations, the baselines, the searches, EFT, local chat).

A `Stream` is one row's output: its tokens so far, its budget and its own seeded random generator, so a sampled
answer does not depend on the batch it ran in. A `Generation` advances the live rows of a `RaggedBatch` one
token per step until each stops: at one of the model's stop tokens, at a stop string in its last tokens (a base
model starting a new turn), or at its budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.templates import chat_prompt, has_marker

MARKER_TAIL = 16  # tokens decoded to look for a stop string (the longest, "[Assistant]", is 11 characters)


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at temperature 0, else sampled after transformers' temperature,
    top-k (0: off) and top-p warpers."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0

    def generator(self, seed: int | None):
        """A row's own random stream for `seed` (None when greedy: nothing is drawn)."""
        if self.temperature == 0:
            return None
        import torch

        return torch.Generator().manual_seed(seed or 0)


def warped_probs(logits, sampling: Sampling):
    """The distribution a sampled token is drawn from: softmax after transformers' temperature, top-k and top-p
    warpers."""
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(sampling.temperature)])
    if sampling.top_k:
        warpers.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        warpers.append(TopPLogitsWarper(sampling.top_p))
    # drawn on the CPU, where the rows' generators are (CUDA's multinomial refuses a CPU generator); a row of
    # probabilities per sampled token crosses to the host, small beside a forward pass
    return torch.softmax(warpers(None, logits[None].float())[0], dim=-1).cpu()


def top1_prob(logits) -> float:
    """The model's own (unwarped) probability of its most likely next token: how sure it is (Nudging's test)."""
    import torch

    return float(torch.softmax(logits.float(), dim=-1).max())


def pick_token(logits, sampling: Sampling, generator) -> int:
    """The next token from one row's logits, drawn with the row's own generator."""
    import torch

    if sampling.temperature == 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(warped_probs(logits, sampling), 1, generator=generator))


@dataclass
class Stream:
    """One row's generated tokens; `done` once it stopped (a budget of 0 or less is done from the start)."""

    budget: int
    generator: object = None
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    on_token: Callable[["Stream"], None] | None = None  # called after each token (a server streams it; may end it)
    finish: str | None = None  # why it stopped: "stop" (EOS, a role marker, a stop string) or "length" (budget)
    top1: list[float] | None = None  # where a caller asks (a list given): the model's top-1 probability per token

    def __post_init__(self) -> None:
        self.done = self.done or self.budget <= 0

    def copy(self, generator=None) -> "Stream":
        """The same tokens so far, going on with another random stream (a search's successor)."""
        return Stream(self.budget, generator, list(self.tokens), self.done)


class Generation:
    """The rows of a RaggedBatch (their next-token logits already there) generating together, one token per
    live row per step. `stop_strings` end a row when one appears in its last tokens (role markers for a base)."""

    def __init__(self, batch: RaggedBatch, rows: list[Stream], sampling: Sampling, stop_strings: tuple[str, ...] = ()):
        self.batch, self.rows, self.sampling, self.stop_strings = batch, rows, sampling, stop_strings

    @property
    def live(self) -> bool:
        return any(not row.done for row in self.rows)

    def next_logits(self, r: int):
        return self.batch.next_logits[r]

    def feed(self, step: list[list[int]]) -> None:
        self.batch.feed(step)

    def step(self) -> None:
        """One token for every live row; the rows that did not stop are fed together."""
        step: list[list[int]] = [[] for _ in self.rows]
        for r, row in enumerate(self.rows):
            if not row.done and next_token(row, self.next_logits(r), self.batch.m, self.sampling, self.stop_strings):
                step[r] = [row.tokens[-1]]
        if any(step):
            self.feed(step)

    def run(self, steps: int | None = None) -> None:
        """Up to `steps` steps (None: until every row stopped)."""
        for _ in range(steps) if steps is not None else itertools.count():
            if not self.live:
                return
            self.step()

    def select(self, rows: list[int], generators: list) -> None:
        """Keep the given rows, in this order, repeats allowed, each with a fresh random stream."""
        self.batch.select(rows)
        self.rows = [self.rows[r].copy(g) for r, g in zip(rows, generators)]

    def _stops(self, row: Stream) -> bool:
        return stops(row, self.batch.m, self.stop_strings)


def stops(row: Stream, m: HFModel, stop_strings: tuple[str, ...]) -> bool:
    """Whether the row stops after its last token; `row.finish` says why (a stop wins over the budget)."""
    if row.tokens[-1] in m.stop_ids or stop_strings and has_marker(
            m.tokenizer.decode(row.tokens[-MARKER_TAIL:], skip_special_tokens=True), stop_strings):
        row.finish = "stop"
    elif len(row.tokens) >= row.budget:
        row.finish = "length"
    return row.finish is not None


def next_token(row: Stream, logits, m: HFModel, sampling: Sampling, stop_strings: tuple[str, ...] = ()) -> bool:
    """One token for a live row from its next-token logits (model `m`): picked with the row's own generator,
    recorded, checked for a stop, shown to the row's callback (which may end it). True if the row goes on: its new
    token is to be fed."""
    row.tokens.append(pick_token(logits, sampling, row.generator))
    if row.top1 is not None:
        row.top1.append(top1_prob(logits))
    if stops(row, m, stop_strings):
        row.done = True
    if row.on_token is not None:
        row.on_token(row)  # may end the row (a client that went away)
    return not row.done


@dataclass(frozen=True)
class Watch:
    """What a caller of a batch watches and steers (the WSD server): stop strings for the answers besides the
    method's own, and per row a callback after every token of the answer's generated part, given the answer's
    tokens before it (WSD's kept draft) and the row's Stream; it may end the row (`stream.done = True`)."""

    stop: tuple[str, ...] = ()
    on_token: tuple[Callable[[list[int], Stream], None] | None, ...] = ()

    def stream(self, r: int, budget: int, generator, before: list[int] | None = None) -> Stream:
        """Row r's Stream, wired to its callback (called once now, before any token: the kept part is known)."""
        watch = self.on_token[r] if r < len(self.on_token) else None
        if watch is None:
            return Stream(budget, generator)
        before = list(before or [])
        s = Stream(budget, generator, on_token=lambda row: watch(before, row))
        watch(before, s)
        return s


NO_WATCH = Watch()


def prefilled(model: HFModel, prompts: list[str]) -> RaggedBatch:
    """A batch holding each prompt's tokens, with their next-token logits."""
    batch = RaggedBatch(model, len(prompts))
    batch.feed([model.encode(p) for p in prompts])
    return batch


def chat_batch(model: HFModel, conversations: list, budget: int, sampling: Sampling,
               generators: list) -> list[list[int]]:
    """A chat model's whole answers to conversations (to its end-of-turn or EOS, or `budget` tokens), batched
    over one KV cache."""
    rows = [Stream(budget, g) for g in generators]
    if rows:
        Generation(prefilled(model, [chat_prompt(model.tokenizer, c) for c in conversations]), rows, sampling).run()
    return [row.tokens for row in rows]
