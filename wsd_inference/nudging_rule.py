"""Nudging's rule as its authors run it (fywalter/nudging, `utils.py`: `completion_with_nudging` and
`complete_with_base`), one prompt at a time, written once for every engine.

Each round opens with the nudging model (the pilot): it writes a completion of `completion_tokens` (16) tokens
after its prompt and the answer so far. If it finished within them, its completion ends the answer. Otherwise its
text is split into words at spaces; the first word is always taken, and for each later word the base is asked for
its next token after the answer, the words taken so far: if the word starts with that token (agreement) or the
base's top-1 probability reaches γ, the base takes over there. The words taken join the answer (all but the last
word when the base never took over, the last one maybe cut short). Then the base writes: its token that took over
first, and then chunk by chunk (the rest of that completion, then completions of 16 tokens), each chunk up to its
first token whose top-1 probability is below γ, until such a token, until the base finishes, or until a chunk
repeats what it wrote (the authors' two repetition checks). Then a new round.

The answer ends when the pilot finishes, when the same words open three rounds running, after `max_rounds`
rounds, or once it holds `max_new_tokens` tokens (the authors count GPT-3.5 tokens as a proxy; we count the base's
tokens, and also cut the answer at that many: their loop may run up to a chunk past it). At the end repeated
suffixes are removed (`remove_redundant_repetitions`) and, ours, the answer is cut at a role marker the base wrote
(the authors' base runs without stop strings; ours must not write the user's next turn).

One reading of theirs: the base's completion of a word is drawn past its first token only when the word hands
over (`Ask.more`); with greedy decoding (their setting) it is the same text as drawing all 16 tokens first.

The rule is a generator: it yields an `Ask` (which model continues which text, by how many tokens) and is sent
back a `Completion`; `nudging.py` answers the asks of a whole batch in-process, or of one prompt over servers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from pilot_core.models.templates import cut_before_markers


class Writer(enum.Enum):
    PILOT = "pilot"
    BASE = "base"


@dataclass(frozen=True)
class Ask:
    """A completion asked of `writer`: `n` tokens after its prompt and `text` (the answer so far, and what is
    taken of this round). `more`: the base goes on with the completion it was last asked for, n tokens more."""

    writer: Writer
    text: str
    n: int
    more: bool = False


@dataclass(frozen=True)
class Completion:
    """What a model wrote: each token's text (a stop token's is empty), the base's top-1 probability before each
    token, and whether it finished (a stop token or string) within the tokens asked for."""

    texts: list[str]
    top1: list[float] = field(default_factory=list)
    finished: bool = False

    @property
    def text(self) -> str:
        return "".join(self.texts)


NOTHING = Completion([], [], True)  # a completion that finished before its first token


@dataclass
class NudgingState:
    """One prompt's answer in the making: every field the rule keeps, on one object."""

    output: str = ""
    rounds: int = 0
    last_words: str = ""
    repeats: int = 0
    stop_reason: str | None = None
    segments: list[tuple[Writer, str]] = field(default_factory=list)  # who wrote which text, in order
    pilot_pieces: int = 0  # rounds whose words joined the answer
    base_tokens: int = 0  # base tokens that joined the answer

    def write(self, writer: Writer, text: str) -> None:
        if not text:
            return
        self.output += text
        if self.segments and self.segments[-1][0] is writer:
            self.segments[-1] = (writer, self.segments[-1][1] + text)
        else:
            self.segments.append((writer, text))

    @property
    def handoffs(self) -> int:
        return max(len(self.segments) - 1, 0)

    def pilot_text(self) -> str:
        return "".join(t for w, t in self.segments if w is Writer.PILOT)


@dataclass(frozen=True)
class Rule:
    """The rule's settings: γ, tokens per completion (both models), rounds, the budget and how a text's length
    is counted (the base's tokens)."""

    gamma: float
    completion_tokens: int
    max_rounds: int
    budget: int
    length: Callable[[str], int]


def find_longest_repeated_suffix(s: str) -> str | None:
    """The authors' helper, as written: the longest suffix of at least 30 characters that the text repeats right
    before it (a binary search over the length, as theirs)."""
    def has_repeated(length: int) -> bool:
        return length >= 30 and s[:-length].endswith(s[-length:])

    left, right, result = 0, len(s), 0
    while left <= right:
        mid = (left + right) // 2
        if has_repeated(mid):
            result, left = mid, mid + 1
        else:
            right = mid - 1
    return s[-result:] if result > 0 else None


def remove_redundant_repetitions(s: str) -> str:
    s = s.strip()
    suffix = find_longest_repeated_suffix(s)
    while suffix:
        s = s[: -len(suffix)]
        suffix = find_longest_repeated_suffix(s)
    return s


def repetition_check(new_completion: str, full_prefix: str, subseq_len: int = 5) -> bool:
    """The authors' check: a completion of more than five words that the answer already holds."""
    return len(new_completion.split(" ")) > subseq_len and new_completion in full_prefix


def cut_at_marker(before: str, c: Completion) -> Completion:
    """The base's completion up to a role marker (one that may begin in `before`, the text it continues), as a
    stop string would end it; finished there."""
    tail = before[-16:]
    text = tail + c.text
    cut = len(cut_before_markers(text))
    if cut == len(text):
        return c
    keep, texts = max(cut - len(tail), 0), []
    for t in c.texts:
        if keep <= 0:
            break
        texts.append(t[:keep])
        keep -= len(t)
    return Completion(texts, c.top1[: len(texts)], True)


def nudging(rule: Rule, state: NudgingState) -> Generator[Ask, Completion, None]:
    """The authors' `completion_with_nudging` for one prompt (see the module's docstring); `state` holds the
    answer as it grows and, when the generator ends, the finished answer."""
    gamma, chunk = rule.gamma, rule.completion_tokens
    while rule.length(state.output) < rule.budget and state.rounds < rule.max_rounds:
        state.rounds += 1
        nudge = yield Ask(Writer.PILOT, state.output, chunk)
        if nudge.finished:
            state.stop_reason = "nudging_model_stop"
            state.write(Writer.PILOT, nudge.text)
            state.pilot_pieces += bool(nudge.text)
            break
        # stage 1: the first word the base takes over at
        text = nudge.text
        space = " " * (len(text) - len(text.lstrip(" ")))
        words = text.lstrip(" ").split(" ")
        wid = 0 if len(words) > 1 else 1  # one word only: taken whole, and the next round begins
        found, first = False, NOTHING
        while not found and wid < len(words) - 1:
            wid += 1  # the first word is always taken
            word = " " + words[wid]
            if word == " ":  # several spaces in a row
                continue
            first = yield Ask(Writer.BASE, state.output + space + " ".join(words[:wid]), 1)
            # a token with no text of its own (a byte of a character) agrees with nothing; a stop token's does
            agrees = (first.texts[0] != "" or first.finished) and word.startswith(first.texts[0])
            found = agrees or first.top1[0] >= gamma
        taken = space + " ".join(words[:wid])
        if taken == state.last_words:  # the same words three rounds running: the answer is stuck
            state.repeats += 1
            if state.repeats >= 3:
                state.stop_reason = "repeated_nudging_words"
                break
        else:
            state.last_words, state.repeats = taken, 0
        state.write(Writer.PILOT, taken)
        state.pilot_pieces += 1
        if not found or first.text == "":  # no hand-over, or the base would end here: the pilot goes on
            continue
        # stage 2: the base writes while it is confident (`complete_with_base`)
        max_completion = rule.budget - rule.length(state.output)
        written, tokens, first_chunk, unsure = first.texts[0], 1, True, False
        while rule.length(written) < max_completion and not unsure:
            if first_chunk:  # the rest of the completion whose first token took over
                c = yield Ask(Writer.BASE, "", chunk - 1, more=True)
            else:
                c = yield Ask(Writer.BASE, state.output + written, chunk)
            c = cut_at_marker(state.output + written, c)
            if c.text in written:  # the chunk repeats what the base wrote (or is empty)
                break
            pos = next((i for i, p in enumerate(c.top1) if p < gamma), None)
            unsure = pos is not None
            new = "".join(c.texts[:pos]) if unsure else c.text
            if repetition_check(new, state.output + written):
                break
            written += new
            tokens += pos if unsure else len(c.texts)
            if c.finished and not first_chunk:  # theirs: the first chunk's end is not checked
                break
            first_chunk = False
        state.write(Writer.BASE, written)
        state.base_tokens += tokens
    if state.stop_reason is None:
        state.stop_reason = "round" if state.rounds >= rule.max_rounds else "length"
