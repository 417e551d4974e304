"""The release gate is a pure function of (candidate report, champion report, thresholds): every rule, the base
quorum, the champion comparison and every input it must refuse."""

import copy

import pytest

from pilot_core.config import validate_config
from pilot_core.errors import UserError
from pilot_core.report import Stat, ValidationReport
from release.gate import GateConfig, decide

SETS = {"alignment": {"version": "v1", "sha256": "a" * 64, "kind": "alignment", "n": 10},
        "math": {"version": "v1", "sha256": "b" * 64, "kind": "math", "n": 10}}


def stat(mean, half=0.05, n=10):
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n, "confidence": 0.95}


def report(wsd=None, base=None, tax=None, fp="cand", bases=("b1", "b2")):
    """A report whose wsd/base_only reward and win rate per base come from the dicts (default 1.0 / 0.5)."""
    wsd, base, tax = wsd or {}, base or {}, tax or {}
    metrics, taxes = {}, {}
    for b in bases:
        metrics[b] = {"wsd": {"alignment": {"reward": stat(wsd.get(b, 1.0)), "win_rate": stat(0.6)}},
                      "base_only": {"alignment": {"reward": stat(base.get(b, 0.5))}}}
        taxes[b] = {"wsd": {"math": stat(tax.get(b, 0.0))}}
    return ValidationReport.model_validate({
        "kind": "validation_report", "schema": 1, "checkpoint": {"fingerprint": fp, "path": fp},
        "eval_sets": copy.deepcopy(SETS), "bases": {b: {} for b in bases}, "methods": ["wsd", "base_only"],
        "reference_method": "base_only", "metrics": metrics, "alignment_tax": taxes, "config_hash": "h"})


def gate(**kw) -> GateConfig:
    return validate_config(GateConfig, {"metrics": {"reward": {"min_gain": 0.0}}, **kw})


def failing(v):
    return [c for c in v.checks if not c.passed]


def test_passes_when_every_base_beats_base_only():
    v = decide(report(), None, gate())
    assert v.passed and v.passing_bases == ["b1", "b2"] and not failing(v)
    assert "no champion yet" in v.reasons[-1]


def test_min_gain_fails_one_base_and_names_it():
    v = decide(report(wsd={"b2": 0.4}), None, gate())
    assert not v.passed and v.failing_bases == ["b2"]
    (c,) = failing(v)
    assert (c.base, c.metric, c.check) == ("b2", "reward", "min_gain") and c.value == pytest.approx(-0.1)
    assert any(r.startswith("FAIL b2/alignment: reward") for r in v.reasons)


def test_k_of_n_bases():
    assert decide(report(wsd={"b2": 0.4}), None, gate(bases=1)).passed
    assert not decide(report(wsd={"b1": 0.4, "b2": 0.4}), None, gate(bases=1)).passed
    with pytest.raises(UserError, match="need 3 passing bases but the report has 2"):
        decide(report(), None, gate(bases=3))


def test_floor_on_mean_or_lower_bound():
    assert decide(report(), None, gate(metrics={"win_rate": {"floor": 0.58}})).passed  # mean 0.6
    v = decide(report(), None, gate(metrics={"win_rate": {"floor": 0.58, "use": "ci_low"}}))  # ci_low 0.55
    assert not v.passed and all(c.check == "floor" for c in failing(v))


def test_regression_against_the_champion():
    champ = report(wsd={"b1": 1.2, "b2": 1.0}, fp="champ")
    rule = gate(metrics={"reward": {"max_regression": 0.1}})
    v = decide(report(), champ, rule)  # b1 dropped 0.2, b2 none
    assert not v.passed and [c.base for c in failing(v)] == ["b1"]
    assert failing(v)[0].value == pytest.approx(0.2)
    assert decide(report(), None, rule).passed  # no champion: the rule has nothing to compare with


def test_alignment_tax_limit():
    rule = gate(alignment_tax={"max": 0.05})
    assert decide(report(tax={"b1": 0.05}), None, rule).passed
    v = decide(report(tax={"b1": 0.06}), None, rule)
    assert not v.passed and failing(v)[0].check == "alignment_tax"
    v = decide(report(tax={"b1": 0.02}), None, gate(alignment_tax={"max": 0.05, "use": "ci_high"}))  # 0.07
    assert not v.passed


def test_unmeasured_metric_fails_rather_than_passes():
    r = report()
    r.metrics["b1"]["wsd"]["alignment"]["reward"] = Stat(mean=None, ci_low=None, ci_high=None, n=0)
    v = decide(r, None, gate())
    assert not v.passed and failing(v)[0].check == "measured"


@pytest.mark.parametrize("bad,match", [
    ({"metrics": {"bleu": {"floor": 1}}}, "unknown metric 'bleu'"),
    ({"metrics": {}}, "the gate has no rules"),
    ({"bases": 0}, "positive number"),
])
def test_bad_thresholds_are_config_errors(bad, match):
    with pytest.raises(UserError, match=match):
        validate_config(GateConfig, {"metrics": {"reward": {"min_gain": 0}}, **bad}, source="gate.yaml")


def test_refuses_reports_it_cannot_compare():
    champ = report(fp="champ")
    champ.eval_sets["alignment"] = champ.eval_sets["alignment"].model_copy(update={"version": "v0",
                                                                                    "sha256": "c" * 64})
    with pytest.raises(UserError, match="different eval set versions"):
        decide(report(), champ, gate())
    with pytest.raises(UserError, match="thresholds are for eval set alignment v2"):
        decide(report(), None, gate(eval_sets={"alignment": "v2"}))
    with pytest.raises(UserError, match="no harmlessness figures"):
        decide(report(), None, gate(metrics={"harmlessness": {"floor": 0.9}}))
    with pytest.raises(UserError, match="no method 'cbs'"):
        decide(report(), None, gate(method="cbs"))


def test_pure_function():
    cand, champ, g = report(), report(fp="champ"), gate(metrics={"reward": {"min_gain": 0, "max_regression": 0.1}})
    before = copy.deepcopy((cand, champ))
    assert decide(cand, champ, g) == decide(cand, champ, g)
    assert (cand, champ) == before


def test_a_judge_whose_verdicts_do_not_parse_fails_the_gate_on_coverage():
    """Win rate 0.6 on the 3 of 20 items whose verdicts parsed is not a pass: the coverage is in the reasons."""
    r = report()
    for b in ("b1", "b2"):
        r.metrics[b]["wsd"]["alignment"]["win_rate"] = Stat(**stat(0.6, n=3), items=20)
    g = gate(metrics={"win_rate": {"floor": 0.5}})
    v = decide(r, None, g)
    assert not v.passed and {c.check for c in failing(v)} == {"judge_coverage"}
    assert "FAIL b1/alignment: win_rate: judged 3 of 20 items (15.0%) < coverage floor 95%" in v.reasons
    r.metrics["b1"]["wsd"]["alignment"]["win_rate"] = Stat(**stat(0.6, n=19), items=20)  # 95%: enough
    r.metrics["b2"]["wsd"]["alignment"]["win_rate"] = Stat(**stat(0.6, n=20), items=20)
    v = decide(r, None, g)
    assert v.passed and "ok   b1/alignment: win_rate: judged 19 of 20 items (95.0%) >= coverage floor 95%" in v.reasons
    # the base-only figure a gain is measured against needs its verdicts too
    r.metrics["b1"]["base_only"]["alignment"]["reward"] = Stat(**stat(0.5, n=10), items=20)
    v = decide(r, None, gate(min_judge_coverage=0.9))
    assert v.failing_bases == ["b1"] and "judged 10 of 20 items (50.0%) < coverage floor 90%" in " ".join(v.reasons)
    assert "reward of base_only" in " ".join(v.reasons)
