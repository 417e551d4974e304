"""The validation report and the gate's verdict: the contract between validation and release.

`pilot validate` writes a `ValidationReport` (report.json, schema 1); the release gate reads it and writes its
`GateVerdict` beside it (gate.json); the report page, the model card and the flows read both. Figures are
nested by base model, method, eval set and metric: `report.metrics[base][method][eval_set][metric]` is a
`Stat` (a mean with its bootstrap interval and number of items).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_serializer

from pilot_core.errors import JobFailed, UserError

METRIC_TITLES = {"reward": "Reward-model score", "win_rate": "Win rate vs base-only (ties = 1/2)",
                 "ref_win_rate": "Win rate vs the set's reference answers by our rubric judge (ties = 1/2; not "
                                 "AlpacaEval's or Arena-Hard's figure)",
                 "alpaca_eval_win_rate": "AlpacaEval 2 win rate vs GPT-4 Turbo's references (its annotator, "
                                         "weighted by log-probabilities)",
                 "alpaca_eval_lc_win_rate": "AlpacaEval 2 length-controlled win rate (its GLM; interval: +- z x "
                                            "its standard error)",
                 "arena_hard_score": "Arena-Hard-Auto score vs its baseline (v0.1: Bradley-Terry, 95% bootstrap; "
                                     "v2.0: bootstrap mean, 90%)",
                 "harmlessness": "Harmlessness rate (harmful prompts)",
                 "accuracy": "Accuracy (capability sets; code: pass@1)",
                 "accuracy_strict": "Accuracy, lm-eval's strict-match reading (the answer after the task's marker)",
                 "accuracy_flexible": "Accuracy, lm-eval's flexible-extract reading (GSM8K: the last number)",
                 "unparsed_share": "Answers nothing could be read from (GSM8K, MMLU)"}


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Stat(_Record):
    """A mean with its percentile-bootstrap interval; None values when nothing was measured (n = 0)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int  # judge metrics: the items whose verdict parsed (the mean counts the others as the worst outcome)
    confidence: float | None = None
    # the items the metric was asked of: n / items is the judged coverage (a verdict that failed or did not parse
    # leaves an item unjudged); None in reports written before it was recorded
    items: int | None = None


class CheckpointRef(_Record):
    path: str
    fingerprint: str  # sha256 of the checkpoint directory: what the gate and the registry compare
    config_hash: str | None = None
    dataset: str | None = None
    stage: str | None = None
    # what the data team's pair review found in the training pairs (pairs_reviewed, judge_wrong,
    # judge_disagreement); None when they were not reviewed
    pair_review: dict[str, Any] | None = None


class EvalSetIdentity(_Record):
    """What a report records about an eval set; equal identities mean the same items were measured."""

    version: str
    kind: str
    path: str | None = None
    sha256: str
    n: int
    few_shot: int = 0
    few_shot_sha256: str | None = None
    limit: int | None = None


def _fmt_share(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"  # reports written before the share was recorded have none


class Diagnostics(_Record):
    """Per (base, method, eval set): items and time; for WSD also where the base took over; for WSD and Nudging
    the share of the answers' tokens the pilot wrote (Nudging: and how often the turn changed hands)."""

    n: int
    mean_time_s: float
    failed: int | None = None  # items the server refused (a 400: too long for the base's context...): no answer
    switched_share: float | None = None
    never_switched_share: float | None = None
    switch_indices: list[int] | None = None
    mean_draft_tokens: float | None = None
    mean_kept_draft_tokens: float | None = None
    mean_base_tokens: float | None = None
    pilot_token_share: float | None = None
    mean_handoffs: float | None = None
    speculation_acceptance_rate: float | None = None  # of the pilot's proposals for the base (--speculate)
    tokens_per_base_pass: float | None = None  # base tokens per base forward pass while speculating

    @model_serializer(mode="wrap")
    def _only_measured(self, handler):  # the WSD fields appear only where they were measured
        return {k: v for k, v in handler(self).items() if v is not None}


class Judges(_Record):
    """Who judged (the configured judges, as configured) and how the judgments ended, per metric."""

    reward: dict[str, Any] | None = None
    win_rate: dict[str, Any] | None = None
    harmlessness: dict[str, Any] | None = None
    alpaca_eval: dict[str, Any] | None = None  # AlpacaEval 2's annotator (its model)
    arena_hard: dict[str, Any] | None = None  # Arena-Hard-Auto's judge (its model)
    counts: dict[str, dict[str, int | str]] = {}  # str: a note, e.g. "structured_output": "refused by the server"


Cell = dict[str, Stat]  # metric -> figure, for one base, method and eval set


# BlendIn (ACL 2026): pairings where the aligned model writes more than about this share of the tokens tend to fail
INTERVENTION_WARNING = 0.2


def intervention_warning(share: float) -> str | None:
    """The warning for a pilot that writes `share` of the answers' tokens (None below BlendIn's threshold)."""
    if share <= INTERVENTION_WARNING:
        return None
    return (f"the pilot writes {100 * share:.0f}% of the answers' tokens: pairings where the aligned model "
            f"intervenes in more than about {100 * INTERVENTION_WARNING:.0f}% tend to fail (BlendIn, ACL 2026)")


class SweepPoint(_Record):
    """One switch setting on the calibration split, for one base."""

    rule: str
    window: int
    threshold: float
    alignment: float | None  # the mean of the alignment figures (win rate vs base-only, harmlessness)
    tax: float | None  # the largest alignment tax on the calibration's capability sets
    switched_share: float  # answers the base took over
    drafted_share: float  # tokens the pilot drafted, of all the tokens generated (its cost)
    intervention_rate: float  # tokens of the answers the pilot wrote (its kept drafts)
    switch_index_quantiles: dict[str, float] = {}  # p10 / p50 / p90 of where the base took over (switched answers)


class SwitchChoice(_Record):
    """The switch setting chosen for one base (what wsd.json ships), with the sweep it was chosen from."""

    rule: str
    window: int
    threshold: float
    max_tax: float
    within_limit: bool  # False: no setting kept the tax within max_tax; the one with the lowest tax was taken
    chosen: SweepPoint
    sweep: list[SweepPoint]
    warnings: list[str] = []


class ValidationReport(_Record):
    kind: Literal["validation_report"] = "validation_report"
    schema_version: Literal[1] = Field(1, alias="schema")
    config_hash: str  # of the validation spec and the bases: the same checkpoint measured the same way
    checkpoint: CheckpointRef
    pilot: str = "pilot"
    untuned: dict[str, Any] | None = None
    bases: dict[str, dict[str, Any]]  # name -> the model source, as configured
    methods: list[str]
    reference_method: str = "base_only"
    eval_sets: dict[str, EvalSetIdentity]
    seeds: dict[str, int] = {}
    judges: Judges = Judges()
    metrics: dict[str, dict[str, dict[str, Cell]]]  # base -> method -> eval set -> metric -> figure
    alignment_tax: dict[str, dict[str, dict[str, Stat]]]  # base -> method -> capability set -> accuracy lost
    diagnostics: dict[str, dict[str, dict[str, Diagnostics]]] = {}  # base -> method -> eval set
    config: dict[str, Any] = {}  # the validation spec
    code_execution: str | None = None  # how the code sets' programs ran: "bubblewrap <version>" or "unsafe: ..."
    switch_settings: dict[str, SwitchChoice] = {}  # base -> WSD's setting chosen on the calibration split (sweep)
    calibration_sets: dict[str, EvalSetIdentity] = {}  # what the setting was chosen on

    def cells(self, base: str, method: str) -> dict[str, Cell]:
        """eval set -> cell of one base and method ({} when not measured)."""
        return self.metrics.get(base, {}).get(method, {})

    def sets_with(self, metric: str) -> list[str]:
        """The eval sets on which any base and method has `metric`."""
        return sorted({s for by_m in self.metrics.values() for by_s in by_m.values()
                       for s, cell in by_s.items() if metric in cell})

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


class GateCheck(_Record):
    base: str
    metric: str
    set: str
    check: Literal["measured", "floor", "min_gain", "max_regression", "alignment_tax", "judge_coverage",
                   "max_failure_rate"]
    value: float | None
    limit: float | None
    passed: bool
    reason: str


class GateVerdict(_Record):
    passed: bool
    method: str
    required_bases: int
    passing_bases: list[str]
    failing_bases: list[str]
    checks: list[GateCheck]
    reasons: list[str]  # one line per check, "ok   ..." or "FAIL ...", after a summary line
    champion: str | None  # the champion's checkpoint fingerprint (None: no champion yet)
    candidate: str

    def failure(self, report_dir: str | Path) -> JobFailed:
        """The error a failed gate ends a release with: every failed check, and where the verdict is."""
        return JobFailed("gate failed; nothing published:\n  " + "\n  ".join(
            r for r in self.reasons if not r.startswith("ok ")) + f"\n  (verdict: {Path(report_dir) / 'gate.json'})")


def _read_json(p: Path, what: str):
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a readable {what}: {str(e).splitlines()[0]}") from None


def _invalid(p: Path, e: ValidationError) -> UserError:
    err = e.errors()[0]
    where = ".".join(str(x) for x in err["loc"])
    missing = [".".join(str(x) for x in x["loc"]) for x in e.errors() if x["type"] == "missing"]
    if missing:
        return UserError(f"{p}: malformed report: missing {', '.join(missing)}")
    return UserError(f"{p}: malformed report: {where}: {err['msg']}")


def load_report(path: str | Path) -> ValidationReport:
    """A report directory (or its report.json), checked against the contract."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"{path}: no validation report (report.json); run `pilot validate` first")
    rep = _read_json(p, "report")
    if not isinstance(rep, dict) or rep.get("kind") != "validation_report":
        raise UserError(f"{p}: not a validation report (kind is not 'validation_report')")
    if rep.get("schema", 1) != 1:
        raise UserError(f"{p}: report schema {rep['schema']!r} is not supported (expected 1)")
    try:
        return ValidationReport.model_validate(rep)
    except ValidationError as e:
        raise _invalid(p, e) from None


def load_verdict(path: str | Path) -> GateVerdict:
    """A gate.json written beside a report."""
    p = Path(path)
    try:
        return GateVerdict.model_validate(_read_json(p, "gate verdict"))
    except ValidationError as e:
        raise UserError(f"{p}: malformed gate verdict: {e.errors()[0]['msg']}") from None


# ------------------------------------------------------------------------------------------------ report.md
def _fmt(stat: Stat | None, pct: bool = False) -> str:
    if not stat or stat.mean is None:
        return "–"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(stat.mean)} [{f(stat.ci_low)}, {f(stat.ci_high)}] (n={stat.n})"


def switch_settings_md(choices: dict[str, SwitchChoice], plot: str = "plots/switch_sweep.png") -> list[str]:
    """The switch setting per base (the report's and the model card's section), with the sweep's curve."""
    if not choices:
        return []
    out = ["## WSD's switch setting per base (chosen on the calibration split)", "",
           "| base | rule | window | gamma | alignment | tax (limit) | switched | switch index p10 / p50 / p90 "
           "| pilot's drafted share | intervention rate |", "|---|---|---|---|---|---|---|---|---|---|"]
    for base, c in choices.items():
        p, q = c.chosen, c.chosen.switch_index_quantiles
        where = " / ".join(f"{q[k]:g}" for k in ("p10", "p50", "p90")) if q else "-"
        out.append(f"| {base} | {c.rule} | {c.window} | {c.threshold:g} | {_fmt_share(p.alignment)} | "
                   f"{_fmt_share(p.tax)} ({_fmt_share(c.max_tax)}{'' if c.within_limit else ', exceeded'}) | "
                   f"{p.switched_share:.0%} | {where} | {p.drafted_share:.0%} | {p.intervention_rate:.0%} |")
    out += [""] + [f"- **{base}**: {w}" for base, c in choices.items() for w in c.warnings]
    out += ["", "Drafted share: the tokens the pilot drafted, of all generated (its cost); intervention rate: the "
            "answers' tokens it wrote (its kept drafts; the WSD diagnostics' \"pilot's share of tokens\"). "
            "`pilot wsd generate` and `pilot wsd serve` with the published version as the pilot use the setting of "
            "the base validated as their `--base` (or named by `--base-name`), from its `wsd.json`.", "",
            f"![switch sweep]({plot})", ""]
    return out


def markdown(report: ValidationReport, verdict: GateVerdict | None = None) -> str:
    """report.md: the tables a release owner reads (and the gate's checks, once it decided)."""
    ck = report.checkpoint
    confidence = next((c.confidence for by_m in report.metrics.values() for by_s in by_m.values()
                       for cell in by_s.values() for c in cell.values()), 0.95) or 0.95
    out = [f"# Validation report: {report.pilot}", "",
           f"Checkpoint `{ck.path}` (sha256 `{ck.fingerprint[:16]}`), bases: "
           + ", ".join(f"`{b}`" for b in report.bases) + f"; methods: {', '.join(report.methods)}. "
           f"Figures are means with {int(round(100 * confidence))}% bootstrap intervals and the number of items.", ""]
    if ck.pair_review and ck.pair_review.get("pairs_reviewed"):
        r = ck.pair_review
        out += [f"Training pairs reviewed by the data team: {r['pairs_reviewed']}; they found the preference judge "
                f"wrong on {r['judge_wrong']} ({r['judge_disagreement']:.0%} judge disagreement).", ""]
    if verdict is not None:
        out += [f"## Gate: {'PASSED' if verdict.passed else 'FAILED'}", ""]
        out += [f"- {r}" for r in verdict.reasons] + [""]
    if report.code_execution:
        how = "WITHOUT a kernel boundary" if report.code_execution.startswith("unsafe") else "in a sandbox"
        out += [f"Code benchmarks' programs ran {how}: {report.code_execution}.", ""]
    out += switch_settings_md(report.switch_settings)
    out += ["## Eval sets", "", "| set | kind | version | items | sha256 |", "|---|---|---|---|---|"]
    out += [f"| {n} | {s.kind} | {s.version} | {s.n} | `{s.sha256[:12]}` |"
            for n, s in report.eval_sets.items()] + [""]
    for metric, title in METRIC_TITLES.items():
        sets = report.sets_with(metric)
        if not sets:
            continue
        pct = metric != "reward"
        out += [f"## {title}", "", "| base | method | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for base, by_m in report.metrics.items():
            for method, by_s in by_m.items():
                if any(metric in by_s.get(s, {}) for s in sets):
                    out.append(f"| {base} | {method} | " + " | ".join(_fmt(by_s.get(s, {}).get(metric), pct)
                                                                  for s in sets) + " |")
        out += ["", f"![{metric}](plots/{metric}.png)", ""]
    if report.alignment_tax:
        out += ["## Alignment tax (base-only accuracy minus the method's; > 0 is capability lost)", "",
                "| base | method | set | tax |", "|---|---|---|---|"]
        out += [f"| {b} | {m} | {s} | {_fmt(t, pct=True)} |" for b, by_m in report.alignment_tax.items()
                for m, by_s in by_m.items() for s, t in by_s.items()] + [""]
    failed = [(b, m, s, d) for b, by_m in report.diagnostics.items() for m, by_s in by_m.items()
              for s, d in by_s.items() if d.failed]
    if failed:
        out += ["## Items that could not run (the server refused them; each counts as the worst outcome above)", "",
                "| base | method | set | failed |", "|---|---|---|---|"]
        out += [f"| {b} | {m} | {s} | {d.failed} of {d.n} |" for b, m, s, d in failed] + [""]
    wsd = [(b, s, d) for b, by_m in report.diagnostics.items() for by_s in by_m.values() for s, d in by_s.items()
           if d.switched_share is not None]  # where a draft was handed to the base
    if wsd:
        out += ["## WSD diagnostics", "", "| base | set | switched | never switched | mean draft | mean kept draft "
                "| mean base tokens | pilot's share of tokens | time/item |", "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {b} | {s} | {d.switched_share:.0%} | {d.never_switched_share:.0%} | "
                f"{d.mean_draft_tokens:.1f} | {d.mean_kept_draft_tokens:.1f} | {d.mean_base_tokens:.1f} | "
                f"{_fmt_share(d.pilot_token_share)} | {d.mean_time_s:.2f} s |" for b, s, d in wsd]
        out += [""] + [f"- **{b}/{s}**: {intervention_warning(d.pilot_token_share)}" for b, s, d in wsd
                       if d.pilot_token_share is not None and intervention_warning(d.pilot_token_share)]
        out += ["", "![switch index](plots/switch_index.png)", ""]
    nudging = [(b, s, d) for b, by_m in report.diagnostics.items() for by_s in by_m.values()
               for s, d in by_s.items() if d.mean_handoffs is not None]  # where the turn changed hands
    if nudging:
        out += ["## Nudging diagnostics", "", "| base | set | pilot's share of tokens | mean hand-offs | time/item |",
                "|---|---|---|---|---|"]
        out += [f"| {b} | {s} | {_fmt_share(d.pilot_token_share)} | {d.mean_handoffs:.1f} | {d.mean_time_s:.2f} s |"
                for b, s, d in nudging] + [""]
    spec = [(b, m, s, d) for b, by_m in report.diagnostics.items() for m, by_s in by_m.items()
            for s, d in by_s.items() if d.speculation_acceptance_rate is not None]
    if spec:
        out += ["## Speculation (the pilot proposed the base's tokens; the answers are the base's own)", "",
                "| base | method | set | proposals kept | base tokens per base pass |", "|---|---|---|---|---|"]
        out += [f"| {b} | {m} | {s} | {d.speculation_acceptance_rate:.0%} | {d.tokens_per_base_pass:.2f} |"
                for b, m, s, d in spec] + [""]
    j = report.judges
    notes = []
    if j.win_rate and j.win_rate.get("kind") == "reward_model":
        notes.append("Win rates come from a reward-model comparison, a stand-in for an LLM judge.")
    if j.win_rate and j.win_rate.get("kind") == "rules":
        notes.append("Win rates come from the demo's refusal rule (a refusal wins on a harmful prompt, an answer "
                     "wins elsewhere; equal verdicts tie), a stand-in for an LLM judge that ignores quality.")
    if j.harmlessness and j.harmlessness.get("kind") == "guard":
        notes.append(f"Harmlessness comes from a safety classifier ({j.harmlessness.get('format')}): its verdict on "
                     "each response, its categories in items.jsonl.")
    if any(c.get("unparseable") for c in j.counts.values()):
        notes.append("Verdicts that did not parse (or where the judge refused to judge) count as the worst outcome "
                     "in the means, and as unjudged in the coverage the gate checks.")
    if j.harmlessness and j.harmlessness.get("kind") == "refusal_rules":
        notes.append("Harmlessness comes from refusal phrases (a strict stand-in: a safe answer that does not "
                     "refuse counts as unsafe).")
    out += ["## Judges", "", *notes, "", f"Judge counts: `{json.dumps(j.counts)}`", ""]
    return "\n".join(out)
