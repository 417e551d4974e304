"""Speculative decoding for the base's continuation: a small draft model (WSD's pilot) proposes k tokens per row,
the base checks them all in one forward pass over its KV cache and keeps the longest prefix it agrees with, plus
one token of its own. The answer does not change, token for token, greedy or sampled: the draft proposes its
greedy tokens (across tokenizers, its greedy text re-tokenized by the base: transformers' universal assisted
decoding), and the base picks its own token at each position, the argmax or a draw with the row's generator, the
same draws in the same order as a plain step would make; a proposal is kept while it equals that pick.

We do not use speculative sampling (Leviathan et al. 2023: keep a token drawn from the draft's q with probability
min(1, p/q)). It keeps more proposals at high temperature, but its random draws depend on which rounds ran, so a
seeded answer would move with the pace (which follows measured timings) and with what ran before in the process;
with the base's own draws the answer is the one without speculation, whatever the pace decides.

Across tokenizers only the stable part of the proposal is checked (tokens no appended text can change, the rule
the switch uses: `pilot_core.models.tokenization.stable_token_count`). Each row adapts its k (transformers'
heuristic: +2 after a round that kept every proposal, -1 otherwise) and stops speculating when its acceptance rate
says it does not pay. Whether a round runs at all, and how many proposals it takes, is decided from what was
measured (`Pacing`): the tokens the rows are expected to keep, given their acceptance so far, against what a round
costs relative to a plain step for this batch size on this device (`PassCosts`: timed as passes run, up to
SAMPLES of each kind, then fixed). Where a round does not pay the base steps alone; a new row still runs one round
before it is judged. Rows of a batch keep
different lengths: rejected proposals are masked out of the cache (`RaggedBatch.drop`) and the row's last token is
fed with the next round's proposals.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import astuple, dataclass, field, replace
from typing import Literal

from pilot_core.method_record import SpeculationFigures
from pilot_core.models.loading import HFModel
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Generation, Sampling, Stream, pick_token, top1_prob
from pilot_core.models.tokenization import splits_at_whitespace, stable_token_count, vocabulary


@dataclass(frozen=True)
class Speculation:
    """How the draft model speculates: `tokens` proposed per row in its first round (0: off), adapted within
    [1, max_tokens]; a row stops after `min_rounds` rounds if fewer than `min_acceptance` of its proposals were
    kept. `pace`: "measured" runs a round only where the rows' expected kept tokens beat its measured cost by
    `margin` (a round widens every row's base pass, which costs on a CPU or a busy GPU); "always" runs every round
    (benchmarks of the mechanism, tests)."""

    tokens: int = 0
    max_tokens: int = 16
    min_acceptance: float = 0.3
    min_rounds: int = 4
    margin: float = 0.1
    pace: Literal["measured", "always"] = "measured"

    @property
    def enabled(self) -> bool:
        return self.tokens > 0


@dataclass
class SpecStats:
    """One row's speculation: proposals made and kept, and the base's forward passes its continuation took."""

    rounds: int = 0  # rounds with proposals
    full_rounds: int = 0  # ... that kept every proposal
    empty_rounds: int = 0  # ... that kept none
    proposed: int = 0
    accepted: int = 0
    base_passes: int = 0

    def __add__(self, other: SpecStats) -> SpecStats:
        return SpecStats(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __sub__(self, other: SpecStats) -> SpecStats:
        return SpecStats(*(a - b for a, b in zip(astuple(self), astuple(other))))

    def record(self, tokens: int) -> SpeculationFigures:
        """The figures a record carries; `tokens`: the base tokens written in those passes (a search's rows,
        kept or not)."""
        return SpeculationFigures(self.proposed, self.accepted, tokens, self.base_passes, self.rounds)


@dataclass
class Proposal:
    """Proposed base tokens for one row (the draft's greedy ones), kept while each equals the base's own pick."""

    ids: list[int] = field(default_factory=list)


def same_vocabulary(a: HFModel, b: HFModel) -> bool:
    return a.tokenizer is b.tokenizer or vocabulary(a.tokenizer) == vocabulary(b.tokenizer)


@dataclass(frozen=True)
class DraftRow:
    """The draft model's row: its prompt (its own chat template), and a prefix of the answer's text whose draft
    tokens are final with prompt + those tokens (across tokenizers, `Drafter.windowed`; None until one is)."""

    prompt: str
    prompt_ids: list[int]
    mark: tuple[str, list[int]] | None = None


@dataclass
class _Drafting:
    """One row's proposal in the making: `n` draft tokens at most, after `target` (the draft model's tokens of
    the answer so far; `text`: the answer's text, across tokenizers)."""

    n: int
    target: list[int] | None = None
    text: str = ""
    ids: list[int] = field(default_factory=list)
    live: bool = False


CROSS_HOLD = 4  # draft tokens drafted beyond k across tokenizers (the text's last word is not proposed)
DECODE_TAIL = 32  # draft tokens decoded before a proposal to get the text it adds (decoding is local)
WINDOW_CHARS = 256  # at least this much of the answer's text is re-tokenized with a crossing proposal


class Drafter:
    """The draft model beside a base batch: row r reads `prompts[r]` (its own chat template) and then the answer
    so far, which it gets as base tokens each round. Its cache is kept in step with the answer by `advance`
    (common prefix kept, the rest fed), so a round costs it k passes of one token per row; what it holds past the
    answer (WSD's draft beyond the switch) is proposed first.

    Across tokenizers the answer crosses as text. Where both tokenizers split at whitespace
    (`splits_at_whitespace`), a round re-tokenizes only the answer's tail (`windowed`): the draft's tokens of the
    text up to its last final word are kept per row, and the base re-tokenizes a window of the answer from a word
    start; elsewhere the whole text, each round."""

    def __init__(self, draft: HFModel, base: HFModel, prompts: list[str], batch: RaggedBatch | None = None):
        self.m, self.base = draft, base
        self.same_vocab = same_vocabulary(draft, base)
        self.rows = [DraftRow(p, draft.encode(p)) for p in prompts]
        self.batch = batch if batch is not None else RaggedBatch(draft, len(prompts))  # may hold a prefix already
        self.windowed = not self.same_vocab and all(splits_at_whitespace(m.tokenizer) for m in (draft, base))
        self.passes = 0  # forward passes the last `propose` made (what a round's draft time is divided by)

    def select(self, rows: list[int]) -> None:
        """Follow the base batch's `select` (a search keeping some rows)."""
        self.batch.select(rows)
        self.rows = [self.rows[r] for r in rows]  # a row's state is replaced, never changed in place

    def _target(self, r: int, answer: list[int]) -> tuple[list[int], str]:
        """Row r's draft-model tokens for the answer so far (and that answer's text, across tokenizers)."""
        row = self.rows[r]
        if self.same_vocab:
            return row.prompt_ids + answer, ""
        text = self.base.decode(answer)
        if not self.windowed:
            return self.m.encode(row.prompt + text), text
        done, ids = row.mark if row.mark is not None else ("", row.prompt_ids)
        if not text.startswith(done):
            done, ids = "", row.prompt_ids
        tail = text[len(done):]
        enc = self.m.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        final = stable_token_count(enc.offset_mapping, tail, 0)
        if final:  # the next round tokenizes from there
            self.rows[r] = replace(row, mark=(done + tail[: enc.offset_mapping[final - 1][1]],
                                              ids + enc.input_ids[:final]))
        return ids + enc.input_ids, text

    def propose(self, answers: list[list[int] | None], ks: list[int]) -> list[Proposal]:
        """Up to ks[r] base tokens proposed after `answers[r]` (None: row r does not speculate this round)."""
        import torch

        rounds = []
        for r, (answer, k) in enumerate(zip(answers, ks)):
            # across tokenizers the last word of the draft's text is held back, so a few more tokens are drafted
            d = _Drafting(k if self.same_vocab else (k + CROSS_HOLD if k else 0))
            if answer is not None and k > 0:
                d.target, d.text = self._target(r, answer)
                # tokens the cache holds past the answer (WSD's draft past the switch) are proposed first, with
                # no pass
                d.ids = self._ahead(r, d.target)[: d.n]
                d.live = len(d.ids) < d.n
            rounds.append(d)
        syncs = [d.target + d.ids if d.live else None for d in rounds]  # what the cache must hold first
        self.batch.advance(syncs, [len(t) if t is not None else 0 for t in syncs])
        self.passes = int(any(t is not None for t in syncs))
        for i in range(max((d.n for d in rounds), default=0)):
            step: list[list[int]] = [[] for _ in rounds]
            for r, d in enumerate(rounds):
                if not d.live or i < len(d.ids) or i >= d.n:
                    continue
                tok = int(torch.argmax(self.batch.next_logits[r]))
                d.ids.append(tok)
                if tok in self.m.stop_ids:  # the draft ends its turn: nothing more to propose
                    d.live = False
                    if not self.same_vocab:
                        d.ids.pop()  # an end of turn has no text to cross with
                elif i + 1 < d.n:
                    step[r] = [tok]
            if any(step):
                self.batch.feed(step)
                self.passes += 1
            elif not any(d.live and i + 1 < d.n for d in rounds):
                break
        if self.same_vocab:
            return [Proposal(d.ids) for d in rounds]
        return [Proposal(self._cross(answers[r], d.text, d.target, d.ids)[: ks[r]]) if d.ids else Proposal()
                for r, d in enumerate(rounds)]

    def _ahead(self, r: int, target: list[int]) -> list[int]:
        """The tokens row r's cache holds after `target`, if it holds `target` (else none)."""
        fed = self.batch.tokens[r]
        return fed[len(target):] if len(fed) > len(target) and fed[: len(target)] == target else []

    def _cross(self, answer: list[int], answer_text: str, target: list[int], draft: list[int]) -> list[int]:
        """The draft's new text as base tokens after `answer`: its stable part, and only where the base's
        tokens of the text start with the answer's own (else the boundary would change them). The text is the
        answer's (its tail from a word start, where `windowed`) and the draft's."""
        before = target[-DECODE_TAIL:]
        old = self.m.tokenizer.decode(before, skip_special_tokens=False)
        new = self.m.tokenizer.decode(before + draft, skip_special_tokens=False)
        if not new.startswith(old):
            return []
        cut = 0
        if self.windowed and len(answer_text) > WINDOW_CHARS:
            cut = len(answer_text) - WINDOW_CHARS
            while cut > 0 and not answer_text[cut].isspace():
                cut -= 1
        head = len(answer_text) - cut  # the answer's characters in the text
        text = answer_text[cut:] + new[len(old):]
        enc = self.base.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        n = sum(1 for start, _ in enc.offset_mapping if start < head)  # the answer's tokens
        if n > len(answer) or enc.input_ids[:n] != answer[len(answer) - n:]:
            return []
        return enc.input_ids[n: stable_token_count(enc.offset_mapping, text, head)]


@dataclass
class SpecRow:
    """One row's speculation, all its state on one object (as vLLM's `Request`): how many tokens it proposes
    next round (k; 0 once it does not pay), its figures, the answer's base tokens ahead of its Stream (WSD's
    kept draft), the token the base emitted last (fed with the next proposals), where this run stops."""

    k: int
    stats: SpecStats = field(default_factory=SpecStats)
    before: list[int] = field(default_factory=list)
    pending: int | None = None
    cap: int | None = None

    def successor(self) -> SpecRow:
        """A copy that goes on with this row's k, figures and pending token (a search's successor)."""
        return replace(self, stats=replace(self.stats))


PROBE_PLAIN = 2  # plain base passes timed before the first round of a batch shape not measured yet
PROBE_ROUNDS = 2  # then rounds timed (at the rows' first k) before the pace decides
SAMPLES = 8  # passes of each kind (plain, round) timed as they come; the costs are fixed after that many
EXPLORE_ROUNDS = 1  # rounds a new row runs at its k before the pace judges it, while the costs or the prior are thin
SETTLED = 64  # proposals the pair's acceptance (the prior) rests on before a new row is judged by it at once


@dataclass
class PassCosts:
    """What speculating costs for one draft/base pair at one batch size on this device: seconds of a plain base
    pass (one token per row), of a base pass k + 1 tokens wide (`base_pass_s`), of one pass of the draft model.
    The first generation of that shape starts with a probe (PROBE_PLAIN plain passes, then PROBE_ROUNDS rounds);
    after it the passes are timed as they run, up to SAMPLES of each kind, and the costs are then fixed. Each cost
    is the least of its samples: a pass disturbed by another process only ever takes longer, and on a shared
    machine a few are (one disturbed round among two samples made rounds look 4x dearer, and the pace never tried
    again). Also the acceptance of every round run with these costs, the prior of a new row's."""

    plain: list[float] = field(default_factory=list)
    verify: list[tuple[int, float]] = field(default_factory=list)  # (widest row's tokens, seconds) of a round's pass
    draft: list[float] = field(default_factory=list)  # seconds per pass of the draft model in a round
    proposed: int = 0
    accepted: int = 0

    @property
    def measuring(self) -> Literal["plain", "round"] | None:
        """What the probe makes the next step (None: the probe is done)."""
        if len(self.plain) < PROBE_PLAIN:
            return "plain"
        return "round" if len(self.verify) < PROBE_ROUNDS else None

    def timing(self, round_: bool) -> bool:
        """Whether a pass of this kind (a round, else a plain step) is still timed: the clock syncs a GPU, so a step
        whose time would be thrown away is not timed."""
        return min(len(self.verify), len(self.draft)) < SAMPLES if round_ else len(self.plain) < SAMPLES

    def timed_plain(self, seconds: float) -> None:
        if len(self.plain) < SAMPLES:
            self.plain.append(seconds)

    def timed_round(self, width: int, draft_passes: int, propose_s: float, verify_s: float) -> None:
        """A round's base pass, `width` tokens for its widest row, after `draft_passes` of the draft model (none
        where the proposals were in its cache already: WSD's draft past the switch)."""
        if len(self.verify) < SAMPLES and width > 1:  # a pass one token wide says nothing of the width's cost
            self.verify.append((width, verify_s))
        if len(self.draft) < SAMPLES and draft_passes:
            self.draft.append(propose_s / draft_passes)

    @property
    def t_plain(self) -> float:
        return min(self.plain)

    def round_s(self, k: int, draft_extra: int = 0) -> float:
        """A round at k proposals per row: k + `draft_extra` passes of the draft model (across tokenizers it drafts
        CROSS_HOLD more), and a base pass k + 1 tokens wide (the pending token and the proposals)."""
        return self.base_pass_s(k + 1) + min(self.draft, default=0.0) * (k + draft_extra)

    def base_pass_s(self, width: int) -> float:
        """A base pass `width` tokens wide per row: the least time timed at each width, a plain pass at 1, read
        between two widths on the line through them (beyond the widest, on the last two's). Not one cost per extra
        token: a pass's fixed part weighs less the wider it is, so a wide pass's cost per token would make a narrow
        round look cheaper than it is."""
        least: dict[int, float] = {1: self.t_plain}
        for w, t in self.verify:
            least[w] = min(least.get(w, t), t)
        if width in least:
            return least[width]
        widths = sorted(least)
        hi = next((w for w in widths if w > width), widths[-1])
        lo = max([w for w in widths if w < hi and w <= width] or [w for w in widths if w < hi])
        return max(least[1], least[lo] + (least[hi] - least[lo]) * (width - lo) / (hi - lo))

    @property
    def prior(self) -> float:
        """The acceptance of the proposals made so far (1/2 before any)."""
        return (self.accepted + 1) / (self.proposed + 2)


# draft model -> base model -> {(batch kind, rows): costs}; weak both ways, so a base loaded where a freed one was
# (validation's bases, one after another) never inherits its costs
_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def pass_costs(draft: HFModel, base: HFModel, kind: str, rows: int) -> PassCosts:
    """The costs measured in this process for this pair and batch shape (`kind`: the batch's class, a RaggedBatch
    or EFT's three models; `rows`); new, to be measured, if none yet."""
    per_base = _COSTS.setdefault(draft.model, weakref.WeakKeyDictionary()).setdefault(base.model, {})
    return per_base.setdefault((kind, rows), PassCosts())


def timed(device: str):
    """A clock for a pass: waits for the device first (CUDA runs asynchronously)."""
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    return time.perf_counter()


class Pacing:
    """How much each row speculates: its k (transformers' heuristic: +2 after a round that kept every proposal,
    -1 otherwise, within [1, max_tokens]; 0 once its acceptance rate says it does not pay), and, with the
    "measured" pace, whether the batch runs a round at all and up to which k: the one that writes the most tokens
    per second, given the rows' acceptance and the measured `PassCosts`, if that beats a plain step by `margin`.
    A new row runs its first EXPLORE_ROUNDS at its k whatever the costs say while they are thin: the acceptance of
    the rows before it is only a prior, costs measured on a busy machine may be too high, and a row that never
    proposes could never show either wrong (the price: one round per row). Once every round sample is in and the
    prior rests on SETTLED proposals, a new row is judged by them from its first step (short answers on a pair
    where rounds do not pay lost a few percent to those rounds: issue #43)."""

    def __init__(self, spec: Speculation, costs: PassCosts | None = None, draft_extra: int = 0):
        self.spec, self.costs = spec, costs
        self.draft_extra = draft_extra  # draft passes a round makes beyond its k (across tokenizers)

    def row(self, before: list[int] | None = None) -> SpecRow:
        return SpecRow(self.spec.tokens, before=before or [])

    def round_ks(self, rows: list[SpecRow], rooms: list[int | None]) -> list[int]:
        """Each row's k for this round (`rooms[r]`: the most proposals row r can take; None: not live); all 0
        for a plain step."""
        caps = [0 if room is None else max(0, min(row.k, room)) for row, room in zip(rows, rooms)]
        costs = self.costs
        if self.spec.pace == "always" or costs is None or not any(caps):
            return caps
        if costs.measuring is not None:
            return caps if costs.measuring == "round" else [0] * len(caps)
        live = [r for r, room in enumerate(rooms) if room is not None]
        kept = [self._acceptance(rows[r].stats, costs.prior) for r in live]
        best, best_k = (1 + self.spec.margin) / costs.t_plain, 0  # tokens per row per second, plain
        for k in range(1, max(caps) + 1):
            tokens = sum(1 + self._expected_kept(a, min(caps[r], k)) for a, r in zip(kept, live)) / len(live)
            rate = tokens / costs.round_s(k, self.draft_extra)
            if rate > best:
                best, best_k = rate, k
        # not `timing(True)`: a pilot that proposes from its cache (WSD's draft past the switch) times no draft pass
        settled = costs.proposed >= SETTLED and len(costs.verify) >= SAMPLES
        return [cap if not settled and rows[r].stats.rounds < EXPLORE_ROUNDS else min(cap, best_k)
                for r, cap in enumerate(caps)]

    @staticmethod
    def _acceptance(st: SpecStats, prior: float) -> float:
        """A row's acceptance rate: its own proposals, starting from the pair's rate (worth two proposals)."""
        return (st.accepted + 2 * prior) / (st.proposed + 2)

    @staticmethod
    def _expected_kept(a: float, k: int) -> float:
        """Proposals a row is expected to keep out of k: a + a^2 + ... + a^k for its acceptance rate a."""
        return k if a >= 1 else a * (1 - a**k) / (1 - a)

    def base_pass(self, row: SpecRow, asked: int, proposed: int, kept: int) -> None:
        """The row took part in a base pass that checked `proposed` of the `asked` proposals and kept `kept`. A
        round asked for and given nothing (a draft whose text crossed to no stable base token) counts as a round
        with none kept, so a row that never proposes stops like one whose proposals are refused."""
        st, spec = row.stats, self.spec
        st.base_passes += 1
        if not asked:
            return
        st.rounds += 1
        st.proposed += proposed
        st.accepted += kept
        if self.costs is not None:  # the prior of the rows to come
            self.costs.proposed += proposed
            self.costs.accepted += kept
        st.full_rounds += proposed > 0 and kept == proposed
        st.empty_rounds += kept == 0
        row.k = min(row.k + 2, spec.max_tokens) if proposed and kept == proposed else max(1, row.k - 1)
        if st.rounds >= spec.min_rounds and st.accepted < spec.min_acceptance * max(st.proposed, 1):
            row.k = 0  # it does not pay for this row


class SpeculativeGeneration(Generation):
    """A `Generation` of the base whose rows take proposals from a `Drafter`: each round feeds every live row its
    pending token (the last one it emitted) and its proposals in one base pass, then keeps per row what the base
    agrees with. `before[r]`: the answer's base tokens ahead of row r's Stream (WSD's kept draft). The batch is a
    `RaggedBatch` or reads like one (feed, next_logits, drop, compact_if_sparse: EFT's three models as one)."""

    def __init__(self, batch: RaggedBatch, rows: list[Stream], sampling: Sampling, stop_strings: tuple[str, ...],
                 drafter: Drafter, spec: Speculation, before: list[list[int]] | None = None):
        super().__init__(batch, rows, sampling, stop_strings)
        self.drafter = drafter
        self.pace = Pacing(spec, self._costs(spec), 0 if drafter.same_vocab else CROSS_HOLD)
        self.spec_rows = [self.pace.row(before[r] if before else None) for r in range(len(rows))]

    def _costs(self, spec: Speculation) -> PassCosts | None:
        """The measured costs for this batch's shape (none where every round runs)."""
        if spec.pace == "always":
            return None
        return pass_costs(self.drafter.m, self.drafter.base, type(self.batch).__name__, len(self.rows))

    @property
    def stats(self) -> list[SpecStats]:
        return [sr.stats for sr in self.spec_rows]

    def run(self, steps: int | None = None) -> None:
        """Until every row stopped, or each wrote up to `steps` more tokens (a round may write several: the cap
        is per token, as a plain Generation's steps are)."""
        for row, sr in zip(self.rows, self.spec_rows):
            sr.cap = len(row.tokens) + steps if steps is not None else None
        while any(self._live()):
            self.step()

    def _live(self) -> list[bool]:
        return [not row.done and (sr.cap is None or len(row.tokens) < sr.cap)
                for row, sr in zip(self.rows, self.spec_rows)]

    def select(self, rows: list[int], generators: list) -> None:
        """Keep the given rows, in this order, repeats allowed (a search's successors); a successor goes on with
        its parent's pending token, k and acceptance figures."""
        super().select(rows, generators)
        self.drafter.select(rows)
        self.spec_rows = [self.spec_rows[r].successor() for r in rows]
        self.pace.costs = self._costs(self.pace.spec)  # the shape may have changed

    def _room(self, r: int) -> int:
        """The most proposals row r can take: the base adds one token of its own within its budget (and cap)."""
        row, cap = self.rows[r], self.spec_rows[r].cap
        return (row.budget if cap is None else min(row.budget, cap)) - len(row.tokens) - 1

    def step(self) -> None:
        import torch

        live, srs = self._live(), self.spec_rows
        ks = self.pace.round_ks(srs, [self._room(r) if live[r] else None for r in range(len(self.rows))])
        answers = [srs[r].before + self.rows[r].tokens if ks[r] else None for r in range(len(self.rows))]
        # the clock (a device sync on CUDA) runs only while passes of this step's kind are timed
        probe, device = self.pace.costs is not None and self.pace.costs.timing(any(ks)), self.batch.m.device
        t0 = timed(device) if probe else 0.0
        props = (self.drafter.propose(answers, ks) if any(ks)
                 else [Proposal() for _ in self.rows])
        feed = [([srs[r].pending] if srs[r].pending is not None else []) + props[r].ids if live[r] else []
                for r in range(len(self.rows))]
        # the logits before a row's first fed token, where no pending token is fed first
        first = {r: self.batch.next_logits[r] for r in range(len(self.rows)) if live[r] and srs[r].pending is None}
        t1 = timed(device) if probe else 0.0
        out = self.batch.feed(feed)
        if probe:
            t2, width = timed(device), max(map(len, feed))
            if any(ks):
                self.pace.costs.timed_round(width, self.drafter.passes, t1 - t0, t2 - t1)
            elif width == 1:
                self.pace.costs.timed_plain(t2 - t1)
        for r, (row, sr) in enumerate(zip(self.rows, srs)):
            if not live[r]:
                continue
            p = props[r]
            fed = out[r]  # read once (an ensemble combines its models' logits when read)
            logits = fed if sr.pending is not None else (
                torch.cat([first[r][None], fed]) if fed is not None else first[r][None])
            tokens, kept = verify(logits, p, self.sampling, row.generator)
            self.pace.base_pass(sr, ks[r], len(p.ids), kept)
            for i, t in enumerate(tokens):
                row.tokens.append(t)
                if row.top1 is not None:
                    row.top1.append(top1_prob(logits[i]))
                if self._stops(row):
                    row.done = True
                if row.on_token is not None:
                    row.on_token(row)
                if row.done:
                    break
            if not row.done:  # mask the rejected proposals; the base's own token is fed next round
                self.batch.drop(r, len(p.ids) - kept)
                sr.pending = tokens[-1]
        self.batch.compact_if_sparse()  # rejected proposals left holes: attend over live tokens only


def verify(logits, proposal: Proposal, sampling: Sampling, generator) -> tuple[list[int], int]:
    """(the tokens the base emits, how many proposals it kept) given its logits before each proposed token and
    after the last (`logits[i]`, i = 0..len(proposal.ids)): at each position the base's own pick (greedy, or a
    draw with the row's generator, as a plain step draws), the proposals kept while they equal it."""
    for i, d in enumerate(proposal.ids):
        t = pick_token(logits[i], sampling, generator)
        if t != d:
            return proposal.ids[:i] + [t], i
    return proposal.ids + [pick_token(logits[len(proposal.ids)], sampling, generator)], len(proposal.ids)
