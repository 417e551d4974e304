"""The release gate: a pure function of (candidate report, champion report or None, thresholds).

Per base model, every rule of every metric must hold on every eval set that measured it:
  floor            the method's value >= floor
  min_gain         the method's value - base-only's value on the same base >= min_gain
  max_regression   the champion's value - the candidate's value <= max_regression (same base, method, set)
  alignment_tax    base-only accuracy - the method's accuracy <= max, on every capability set
A base passes when all its checks pass; the gate passes when enough bases pass (all, or at least k).
`use: ci_low` judges the lower end of the confidence interval instead of the mean (a stricter gate).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pilot_core.config import BaseConfig
from pilot_core.errors import UserError
from pilot_core.report import GateCheck, GateVerdict, Stat, ValidationReport

METRICS = ("reward", "win_rate", "ref_win_rate", "alpaca_eval_win_rate", "alpaca_eval_lc_win_rate", "arena_hard_score",
           "harmlessness", "accuracy")


class MetricRule(BaseConfig):
    floor: float | None = None
    min_gain: float | None = Field(None, description="over base-only on the same base model")
    max_regression: float | None = Field(None, ge=0, description="against the champion (ignored without one)")
    use: Literal["mean", "ci_low"] = "mean"


class TaxRule(BaseConfig):
    max: float = Field(description="largest allowed base-only accuracy minus the method's (0.02 = 2 points)")
    use: Literal["mean", "ci_high"] = "mean"


class GateConfig(BaseConfig):
    method: str = Field("wsd", description="the method whose figures are gated")
    bases: Literal["all"] | int = Field("all", description="bases that must pass: all, or at least k")
    metrics: dict[str, MetricRule] = Field(default_factory=dict)
    alignment_tax: TaxRule | None = None
    eval_sets: dict[str, str] = Field(default_factory=dict, description="eval set -> the version the thresholds "
                                      "were set for; a report on another version is refused")
    max_failure_rate: float = Field(0.01, ge=0, le=1, description="the share of an eval set's items that may fail "
                                    "to run (the server refused them: too long for the base's context...) for the "
                                    "gated method and for base-only; they count as the worst outcome in the figures")
    min_judge_coverage: float = Field(0.95, ge=0, le=1, description="a gated figure (and the base-only figure it "
                                      "is compared with) must have a verdict for at least this share of its items: "
                                      "a judge whose verdicts fail or do not parse cannot pass the gate on the rest")

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r}; the gate knows {', '.join(METRICS)}")
        return v

    @model_validator(mode="after")
    def _rules(self) -> "GateConfig":
        if isinstance(self.bases, int) and self.bases < 1:
            raise ValueError("bases must be 'all' or a positive number")
        if not self.metrics and self.alignment_tax is None:
            raise ValueError("the gate has no rules: give metrics and/or alignment_tax")
        return self


def _check_inputs(cand: ValidationReport, champ: ValidationReport | None, gate: GateConfig) -> None:
    if gate.method not in cand.methods:
        raise UserError(f"the report has no method {gate.method!r} (it has {', '.join(cand.methods)})")
    for name, version in gate.eval_sets.items():
        got = cand.eval_sets[name].version if name in cand.eval_sets else None
        if got != version:
            raise UserError(f"the thresholds are for eval set {name} {version}, the report measured "
                            f"{name} {got or '(absent)'}")
    for metric in gate.metrics:
        if not any(metric in cell for b in cand.metrics for cell in cand.cells(b, gate.method).values()):
            raise UserError(f"the thresholds name metric {metric!r} but the report has no {metric} figures for "
                            f"{gate.method} (configure it in the validation metrics)")
    if gate.alignment_tax and not any(gate.method in t for t in cand.alignment_tax.values()):
        raise UserError("the thresholds limit the alignment tax but the report has no capability sets")
    if champ is not None:
        for name, ident in cand.eval_sets.items():
            old = champ.eval_sets.get(name)
            if old is not None and (old.version, old.sha256) != (ident.version, ident.sha256):
                raise UserError(f"the champion's report measured eval set {name} {old.version} "
                                f"(sha256 {old.sha256[:12]}), the candidate's {ident.version} "
                                f"(sha256 {ident.sha256[:12]}): reports from different eval set versions "
                                "cannot be compared")


def _value(stat: Stat | None, on: str) -> float | None:
    return None if not stat else getattr(stat, on)


def _check(base, metric, s, kind, value, limit, ok, text) -> GateCheck:
    return GateCheck(base=base, metric=metric, set=s, check=kind, value=value, limit=limit, passed=ok, reason=text)


def _coverage(base: str, metric: str, s: str, stat: Stat, floor: float, label: str) -> GateCheck | None:
    """A check where some items of a figure went unjudged (None when all were, or the report predates items)."""
    if not stat.items or stat.n >= stat.items:
        return None
    cov = stat.n / stat.items
    return _check(base, metric, s, "judge_coverage", cov, floor, cov >= floor,
                  f"{label}: judged {stat.n} of {stat.items} items ({cov:.1%}) {'>=' if cov >= floor else '<'} "
                  f"coverage floor {floor:.0%}")


def _base_checks(base: str, cand: ValidationReport, champ: ValidationReport | None, gate: GateConfig) -> list:
    m = gate.method
    mine = cand.cells(base, m)
    ref = cand.cells(base, cand.reference_method)
    old = champ.cells(base, m) if champ is not None else {}
    out = []
    for metric, rule in gate.metrics.items():
        for s, cell in sorted(mine.items()):
            if metric not in cell:
                continue
            v = _value(cell[metric], rule.use)
            label = f"{base}/{s}: {metric} ({rule.use})"
            ref_stat = ref.get(s, {}).get(metric) if rule.min_gain is not None else None
            for who, st in ((f"{base}/{s}: {metric}", cell[metric]),
                            (f"{base}/{s}: {metric} of {cand.reference_method}", ref_stat)):
                c = st and _coverage(base, metric, s, st, gate.min_judge_coverage, who)
                if c is not None:
                    out.append(c)
            if v is None:
                out.append(_check(base, metric, s, "measured", None, None, False, f"{label} was not measured "
                                  "(no judged items)"))
                continue
            if rule.floor is not None:
                out.append(_check(base, metric, s, "floor", v, rule.floor, v >= rule.floor,
                                  f"{label} {v:.4f} {'>=' if v >= rule.floor else '<'} floor {rule.floor}"))
            r = _value(ref.get(s, {}).get(metric), "mean")
            if rule.min_gain is not None and r is not None:
                gain = v - r
                out.append(_check(base, metric, s, "min_gain", gain, rule.min_gain, gain >= rule.min_gain,
                                  f"{label} gain over base-only {gain:+.4f} {'>=' if gain >= rule.min_gain else '<'} "
                                  f"{rule.min_gain}"))
            c = _value(old.get(s, {}).get(metric), rule.use)
            if rule.max_regression is not None and c is not None:
                drop = c - v
                ok = drop <= rule.max_regression
                out.append(_check(base, metric, s, "max_regression", drop, rule.max_regression, ok,
                                  f"{label} {v:.4f} vs champion {c:.4f}: regression {drop:+.4f} "
                                  f"{'<=' if ok else '>'} {rule.max_regression}"))
    for method in (m, cand.reference_method):
        for s, d in sorted(cand.diagnostics.get(base, {}).get(method, {}).items()):
            if d.failed:
                rate, limit = d.failed / d.n, gate.max_failure_rate
                out.append(_check(base, "failure_rate", s, "max_failure_rate", rate, limit, rate <= limit,
                                  f"{base}/{s}: {method} failed on {d.failed} of {d.n} items ({rate:.1%}) "
                                  f"{'<=' if rate <= limit else '>'} {limit:.1%}"))
    if gate.alignment_tax:
        t = gate.alignment_tax
        for s, stat in sorted(cand.alignment_tax.get(base, {}).get(m, {}).items()):
            v = _value(stat, t.use)
            ok = v is not None and v <= t.max
            out.append(_check(base, "accuracy", s, "alignment_tax", v, t.max, ok,
                              f"{base}/{s}: alignment tax ({t.use}) "
                              + (f"{v:+.4f} {'<=' if ok else '>'} {t.max}" if v is not None else "not measured")))
    return out


def decide(candidate: ValidationReport, champion: ValidationReport | None, gate: GateConfig) -> GateVerdict:
    """The verdict: which bases pass, every check with its value and limit, and a line per check."""
    _check_inputs(candidate, champion, gate)
    bases = list(candidate.metrics)
    need = len(bases) if gate.bases == "all" else gate.bases
    if need > len(bases):
        raise UserError(f"the thresholds need {need} passing bases but the report has {len(bases)}")
    checks = [c for b in bases for c in _base_checks(b, candidate, champion, gate)]
    passing = [b for b in bases if all(c.passed for c in checks if c.base == b)]
    passed = len(passing) >= need
    reasons = [f"{len(passing)} of {len(bases)} base models pass, {need} required"]
    reasons += [("FAIL " if not c.passed else "ok   ") + c.reason for c in checks]
    if champion is None:
        reasons.append("no champion yet: regression checks skipped")
    return GateVerdict(passed=passed, method=gate.method, required_bases=need, passing_bases=passing,
                       failing_bases=[b for b in bases if b not in passing], checks=checks, reasons=reasons,
                       champion=champion.checkpoint.fingerprint if champion else None,
                       candidate=candidate.checkpoint.fingerprint)
