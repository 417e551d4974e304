"""WSD's switch setting per base: the sweep's choice (the most aligned within the tax limit), the relative rule
(the base's confidence against the pilot's own), and the config rules that keep the calibration split apart.
The whole path (validate with a sweep, publish wsd.json, `pilot wsd generate` reading it) is in
tests/test_validate_release.py."""

import math

import pytest

from evaluation.config import EvalSpec
from evaluation.switch_sweep import choose
from pilot_core.errors import UserError
from pilot_core.report import SweepPoint
from wsd_inference.config import WSDConfig
from wsd_inference.switch import relative_logps

from .helpers import RECS, REPO


def _p(t, alignment, tax, share=0.3, window=4, rule="absolute", intervention=0.1) -> SweepPoint:
    return SweepPoint(rule=rule, window=window, threshold=t, alignment=alignment, tax=tax, switched_share=0.5,
                      drafted_share=share, intervention_rate=intervention)


def test_the_most_aligned_setting_within_the_tax_limit_wins():
    points = [_p(0.4, 0.90, 0.10), _p(0.6, 0.80, 0.01), _p(0.8, 0.70, 0.00)]
    c = choose(points, max_tax=0.02)  # 0.4 is the most aligned, but its tax is ruled out
    assert (c.threshold, c.within_limit, c.warnings) == (0.6, True, [])
    assert choose(points, max_tax=0.2).threshold == 0.4  # a looser limit admits it
    # ties in alignment: the cheaper (fewer pilot tokens: the earlier switch), then the lower threshold
    tied = [_p(0.4, 0.8, 0.0, share=0.5), _p(0.6, 0.8, 0.0, share=0.2), _p(0.8, 0.8, 0.0, share=0.2)]
    assert choose(tied, 0.02).threshold == 0.6
    # none within the limit: the lowest tax, said so
    c = choose([_p(0.4, 0.9, 0.3), _p(0.6, 0.8, 0.2)], 0.02)
    assert c.threshold == 0.6 and not c.within_limit and "no setting kept the alignment tax" in c.warnings[0]
    # BlendIn's failure mode: the pilot writes more than about a fifth of the tokens
    c = choose([_p(0.4, 0.9, 0.0, intervention=0.35)], 0.02)
    assert "the pilot writes 35% of the answers' tokens" in c.warnings[0]
    # a tax that was not measured is not within the limit
    assert choose([_p(0.4, 0.9, None), _p(0.6, 0.5, 0.0)], 0.02).threshold == 0.6


def test_alignment_is_the_mean_over_sets_not_over_figures():
    from evaluation.switch_sweep import point
    from pilot_core.report import Stat

    def stat(x):
        return Stat(mean=x, ci_low=x, ci_high=x, n=4)

    cells = {"harmful": {"harmlessness": stat(1.0), "win_rate": stat(0.6)}, "helpful": {"win_rate": stat(0.2)}}
    p = point("absolute", 4, 0.5, cells, {"arith": stat(0.05), "code": stat(0.1)}, [])
    assert p.alignment == pytest.approx((0.8 + 0.2) / 2) and p.tax == 0.1  # the harmful set counts once


def test_the_relative_rule_measures_the_base_against_the_pilot():
    lp = [math.log(0.5), math.log(0.9), math.log(0.2)]
    # one tokenizer: token j against the pilot's own top-1 at j
    got = relative_logps(lp, [3, 7, 12], [3, 7, 12], [0.5, 0.9, 0.4])
    assert got == pytest.approx([0.0, 0.0, math.log(0.5)])
    # another tokenizer: a base token is measured against the pilot token that writes its last character
    got = relative_logps(lp, [2, 7, 12], [5, 12], [0.25, 0.5])
    assert got == pytest.approx([math.log(2.0), math.log(1.8), math.log(0.4)])
    assert relative_logps(lp, [3, 7, 12], [3, 7, 12], [1.0, 1.0, 1.0]) == pytest.approx(lp)  # a sure pilot


@pytest.mark.parametrize("pair", ["same", "different"])
def test_the_relative_rule_online_equals_staged_and_differs_from_the_absolute(models, pair):
    from wsd_inference.engine import wsd_generate
    from wsd_inference.staged import staged_batch

    pilot, base = models[pair]
    fields = ("response", "switch_index", "switched", "kept_draft_tokens")
    decisions = {}
    for rule in ("absolute", "relative"):
        for t in (0.2, 0.5, 0.8):
            cfg = WSDConfig(window=3, threshold=t, rule=rule, max_draft_tokens=24, max_new_tokens=40, chunk_size=3)
            online, staged = list(wsd_generate(pilot, base, RECS, cfg)), staged_batch(pilot, base, RECS, cfg)
            for o, s in zip(online, staged):
                assert {k: o.to_json()[k] for k in fields} == {k: s.to_json()[k] for k in fields}, (rule, t, o.id)
                assert o.wsd.window_scores == pytest.approx(s.wsd.window_scores, abs=1e-5)
            decisions[rule, t] = [(o.wsd.switched, o.wsd.switch_index) for o in online]
    assert any(decisions["relative", t] != decisions["absolute", t] for t in (0.2, 0.5, 0.8))
    assert any(len({d[0] for d in decisions["relative", t]}) == 2 for t in (0.2, 0.5, 0.8))  # a mix somewhere


def test_a_served_base_refuses_the_relative_rule():
    from pilot_core.models.source import ModelSource
    from wsd_inference.methods import get_method
    from wsd_inference.runner import served_at_all

    pilot = ModelSource(name="pilot", path="p")
    base = ModelSource(name="base", url="http://127.0.0.1:1/v1", served_model="b")
    with pytest.raises(UserError, match="wsd.rule relative reads the pilot's own top-1"):
        served_at_all(get_method("wsd"), pilot, base, None, WSDConfig(rule="relative"))


SETS = [{"name": "harmful", "version": "v2", "kind": "harmful", "path": "data/demo/eval/harmful.v2.jsonl"},
        {"name": "arith", "version": "v1", "kind": "math", "path": "data/demo/eval/arith.v1.jsonl"}]
CAL = [{"name": "cal-harmful", "version": "v1", "kind": "harmful", "path": "data/demo/calibration/harmful.v1.jsonl"},
       {"name": "cal-arith", "version": "v1", "kind": "math", "path": "data/demo/calibration/arith.v1.jsonl"}]


def test_the_calibration_split_is_kept_apart_and_measures_both_sides():
    ok = {"eval_sets": SETS, "metrics": {"harmlessness": {"kind": "refusal_rules"}},
          "sweep": {"eval_sets": CAL, "thresholds": [0.8, 0.4, 0.4]}}
    assert EvalSpec.model_validate(ok).sweep.thresholds == [0.4, 0.8]
    for change, why in (
            ({"sweep": {"eval_sets": [CAL[0], {**SETS[1], "name": "cal-arith"}], "thresholds": [0.5]}},
             "reads a gated eval set's data"),
            ({"sweep": {"eval_sets": [CAL[0], {**CAL[0], "name": "cal-2"}], "thresholds": [0.5]}},
             "needs an alignment or harmful set .* and a capability set"),
            ({"sweep": {"eval_sets": [CAL[0], {**SETS[1], "name": "cal-arith",
                                               "path": str(REPO / "data/demo/eval/arith.v1.jsonl")}],
                        "thresholds": [0.5]}}, "reads a gated eval set's data"),  # the same file, named otherwise
            ({"metrics": {}}, "configure metrics.win_rate, or metrics.harmlessness with a harmful"),
            ({"sweep": {"eval_sets": [{**CAL[0], "kind": "alignment"}, CAL[1]], "thresholds": [0.5]}},
             "metrics.harmlessness with a harmful calibration set"),
            ({"sweep": {"eval_sets": CAL, "thresholds": [0.5], "windows": [4, 64]}, "wsd": {"max_draft_tokens": 32}},
             "sweep window 64 is longer than wsd.max_draft_tokens 32"),
            ({"methods": ["base_only", "nudging"]}, "methods must include wsd")):
        with pytest.raises(ValueError, match=why):
            EvalSpec.model_validate({**ok, **change})
    spec = EvalSpec.model_validate({**ok, "wsd": {"rule": "relative", "window": 5}})
    assert spec.sweep.rules == ["relative"] and spec.sweep.windows == [5]  # the defaults: wsd's own
    from evaluation.config import ValidationConfig

    served = [{"name": "big", "url": "http://127.0.0.1:1/v1", "served_model": "big"}]
    with pytest.raises(ValueError, match="wsd.rule relative runs with in-process models; base big is on a server"):
        ValidationConfig.model_validate({**ok, "name": "v", "bases": served,
                                         "sweep": {**ok["sweep"], "rules": ["absolute", "relative"]}})


def test_a_pipeline_chooses_within_its_gates_tax_limit():
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config

    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml")
    assert cfg.validation.sweep.max_tax == cfg.release.gate.alignment_tax.max == 0.15
    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml", ["validation.sweep.max_tax=0.05"])
    assert cfg.validation.sweep.max_tax == 0.05  # said in the config: kept
