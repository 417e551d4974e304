"""The method record: what a decoding method returns for one prompt, and one line of `pilot wsd generate`'s output.

Every method fills the common fields; the method's own trace says how the answer was made (WSD: the kept draft
and the switch; Nudging: the turns; a search: its scores), `speculation` how the pilot sped the base up, and `calls`
(served models) the requests it took and the tokens each model prefilled and decoded for it. The
method registry names each method's trace type (`Method.trace`), which also reduces a set of records to the
report's diagnostics, so no code outside the registry tests a method's name.

On disk a record is one flat JSON object, the same keys for every method (README: the output format): WSD's
fields hold their empty values for the other methods, and a trace's own keys sit beside the common ones.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class SpeculationFigures:
    """One answer's speculation: the pilot's proposals and how many the base kept, the base tokens written while
    speculating (a search's rows, kept or not), the base's forward passes they took and the rounds among them that
    carried proposals (few where speculation stepped aside)."""

    proposed: int
    accepted: int
    tokens: int
    base_passes: int
    rounds: int = 0

    @property
    def acceptance_rate(self) -> float | None:
        return round(self.accepted / self.proposed, 4) if self.proposed else None

    @property
    def tokens_per_base_pass(self) -> float | None:
        return round(self.tokens / self.base_passes, 4) if self.base_passes else None

    def to_json(self) -> dict:
        return {"proposed": self.proposed, "accepted": self.accepted, "tokens": self.tokens,
                "acceptance_rate": self.acceptance_rate, "base_passes": self.base_passes,
                "tokens_per_base_pass": self.tokens_per_base_pass, "rounds": self.rounds}

    @classmethod
    def from_json(cls, d: dict) -> SpeculationFigures:
        return cls(d["proposed"], d["accepted"], d["tokens"], d["base_passes"], d.get("rounds", 0))  # 0: older

    def __add__(self, other: SpeculationFigures) -> SpeculationFigures:
        """One answer's figures over several generations (Nudging's base completions)."""
        return SpeculationFigures(self.proposed + other.proposed, self.accepted + other.accepted,
                                  self.tokens + other.tokens, self.base_passes + other.base_passes,
                                  self.rounds + other.rounds)

    @staticmethod
    def diagnostics(specs: list[SpeculationFigures]) -> dict:
        """The report's speculation figures over several answers (empty when none speculated)."""
        if not specs:
            return {}
        return {"speculation_acceptance_rate": sum(s.accepted for s in specs) / max(sum(s.proposed for s in specs), 1),
                "tokens_per_base_pass": sum(s.tokens for s in specs) / max(sum(s.base_passes for s in specs), 1)}


@dataclass(frozen=True)
class CallFigures:
    """One answer's work on model servers, counted by the served path as it asks (`remote_engine`): requests per
    model, the prompt tokens they sent (prefill) and the tokens generated (decode). A scoring request's one sampled
    token comes from its prefill and is not counted as decode. `*_reusable_tokens`: of a model's prefill, the
    tokens an earlier request of this answer had already computed (WSD: the continuation's prompt is a prefix of
    the scoring request's), which a server with automatic prefix caching does not prefill again, in whole KV blocks
    (a prompt-log-prob request reads no cache: none of its tokens count). `pilot_prefill_tokens`: a served pilot
    renders and tokenizes its chat template itself, so they are its server's count, from the usage event at the end
    of its stream (vLLM sends one); None where the server sent none, or where WSD closed the pilot's stream before
    its end (the draft cut at the switch, or at the answer's budget). Retries of a broken request are not
    counted."""

    pilot_requests: int = 0
    pilot_prefill_tokens: int | None = 0
    pilot_reusable_tokens: int = 0
    pilot_decode_tokens: int = 0
    base_requests: int = 0
    base_scoring_requests: int = 0
    base_prefill_tokens: int = 0
    base_reusable_tokens: int = 0
    base_decode_tokens: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> CallFigures:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


class Trace:
    """A method's own account of one answer: its fields are written beside the common ones."""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Trace:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @staticmethod
    def diagnostics(records: list[MethodRecord]) -> dict:
        """The `pilot_core.report.Diagnostics` fields this method adds, over one (base, eval set)'s records."""
        return {}


def pilot_token_share(records: list[MethodRecord], pilot_tokens) -> float:
    """The pilot's share of the answers' tokens (each model's tokens counted in its own tokenizer)."""
    pilot = sum(pilot_tokens(r) for r in records)
    return pilot / max(pilot + sum(r.base_tokens for r in records), 1)


@dataclass(frozen=True)
class WSDTrace(Trace):
    """Where the base took over: the kept draft (`switch_index` is the accept index in base tokens: the last
    draft token when no window qualified, None for an empty draft) and the windows' scores up to it."""

    draft_text: str = ""
    switch_index: int | None = None
    switched: bool = False
    kept_draft_tokens: int = 0
    window_scores: list[float] = field(default_factory=list)

    def __post_init__(self):
        object.__setattr__(self, "window_scores", [round(x, 6) for x in self.window_scores])

    @staticmethod
    def diagnostics(records: list[MethodRecord]) -> dict:
        n = len(records)
        switch = [r.wsd.switch_index for r in records if r.wsd.switched]
        return {"switched_share": len(switch) / n, "never_switched_share": 1 - len(switch) / n,
                "switch_indices": sorted(switch), "mean_draft_tokens": sum(r.pilot_tokens for r in records) / n,
                "mean_kept_draft_tokens": sum(r.wsd.kept_draft_tokens for r in records) / n,
                "mean_base_tokens": sum(r.base_tokens for r in records) / n,
                "pilot_token_share": pilot_token_share(records, lambda r: r.wsd.kept_draft_tokens)}


NO_DRAFT = WSDTrace()  # what a record of another method says of WSD's fields


@dataclass(frozen=True)
class NudgingTrace(Trace):
    """How the turns went: how often the writer changed, the rounds whose pilot words joined the answer, the rounds
    run, and why the answer ended (the authors' stop reasons: nudging_model_stop, repeated_nudging_words, round,
    length)."""

    handoffs: int = 0
    pilot_pieces: int = 0
    rounds: int = 0
    stop_reason: str | None = None

    @staticmethod
    def diagnostics(records: list[MethodRecord]) -> dict:
        return {"pilot_token_share": pilot_token_share(records, lambda r: r.pilot_tokens),
                "mean_handoffs": sum(r.nudging.handoffs for r in records) / len(records)}


@dataclass(frozen=True)
class SearchTrace(Trace):
    """The chosen answer's score, how many candidates it was chosen from, and (best-of-N) every candidate's."""

    score: float
    candidates: int
    candidate_scores: list[float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "score", round(self.score, 6))
        if self.candidate_scores is not None:
            object.__setattr__(self, "candidate_scores", [round(x, 6) for x in self.candidate_scores])

    def to_json(self) -> dict:
        out = {"score": self.score, "candidates": self.candidates}
        return out if self.candidate_scores is None else {**out, "candidate_scores": self.candidate_scores}


@dataclass(frozen=True)
class MethodRecord:
    id: str
    method: str
    response: str
    time_s: float  # this answer's share of its batch's wall time (batched continuously: of the steps it ran in)
    timing: dict[str, float]  # how the batch's time was spent (clock readings, for people)
    pilot_tokens: int = 0  # tokens the pilot wrote (WSD: drafted, kept or not)
    base_tokens: int = 0  # tokens the base wrote
    trace: Trace | None = None
    speculation: SpeculationFigures | None = None
    calls: CallFigures | None = None  # served models: requests and tokens per model (None: not counted)
    error: str | None = None  # the item could not run (the server refused it): no answer, counted as failed

    def __post_init__(self):
        object.__setattr__(self, "time_s", round(self.time_s, 4))

    @property
    def wsd(self) -> WSDTrace:
        """WSD's fields (their empty values for a method without a draft)."""
        return self.trace if isinstance(self.trace, WSDTrace) else NO_DRAFT

    @property
    def nudging(self) -> NudgingTrace | None:
        return self.trace if isinstance(self.trace, NudgingTrace) else None

    @property
    def search(self) -> SearchTrace | None:
        return self.trace if isinstance(self.trace, SearchTrace) else None

    @property
    def completion_tokens(self) -> int:
        """The answer's length in base tokens: the kept draft and the base's continuation."""
        return self.wsd.kept_draft_tokens + self.base_tokens

    def to_json(self) -> dict:
        wsd = self.wsd.to_json()
        out = {"id": self.id, "method": self.method, "response": self.response, "draft_text": wsd["draft_text"],
               "switch_index": wsd["switch_index"], "switched": wsd["switched"], "pilot_tokens": self.pilot_tokens,
               "kept_draft_tokens": wsd["kept_draft_tokens"], "base_tokens": self.base_tokens,
               "window_scores": wsd["window_scores"]}
        if self.trace is not None and not isinstance(self.trace, WSDTrace):
            out.update(self.trace.to_json())
        if self.speculation is not None:
            out["speculation"] = self.speculation.to_json()
        if self.calls is not None:
            out["calls"] = self.calls.to_json()
        if self.error is not None:
            out["error"] = self.error
        return {**out, "time_s": self.time_s, "timing": self.timing}

    @classmethod
    def from_json(cls, d: dict, trace: type[Trace] | None) -> MethodRecord:
        """A record as `to_json` wrote it; `trace`: the writing method's trace type (`Method.trace`)."""
        spec, calls = d.get("speculation"), d.get("calls")
        return cls(id=str(d["id"]), method=d["method"], response=d["response"], time_s=d["time_s"],
                   timing=d.get("timing") or {}, pilot_tokens=d.get("pilot_tokens", 0),
                   base_tokens=d.get("base_tokens", 0), trace=trace.from_json(d) if trace else None,
                   speculation=SpeculationFigures.from_json(spec) if spec else None,
                   calls=CallFigures.from_json(calls) if calls else None, error=d.get("error"))
