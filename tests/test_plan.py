"""The plan before spending (`pilot run --plan`) and the screened preference judge: a pointwise screen, then
pairwise judging (both orders) only where the screen cannot separate two responses. The screen makes fewer judge
calls than the round robin on the same prompts and builds the same pairs where the pointwise gap is large; the
plan's call counts equal the calls a run makes."""

import json
import subprocess
import sys

import httpx
import pyarrow.parquet as pq
import pytest

from data_curation.preferences import build_preferences
from data_curation.preferences_config import PreferencesConfig
from flows.cli import main
from flows.pipeline_config import PipelineConfig
from flows.plan import Assumptions, cron_period_h, plan, render

from .helpers import REPO, TINY
from .length_judge import LengthJudge


def prefs_cfg(cache, strategy: str, margin: float = 0.5) -> PreferencesConfig:
    return PreferencesConfig.model_validate({
        "cache": str(cache),
        "judge": {"name": "judge", "kind": "pairwise", "strategy": strategy, "margin": margin,
                  "model": {"name": "judge", "url": "http://judge.test/v1", "served_model": "judge"},
                  "price": {"input": 2.5, "output": 10.0}},
        "generators": [{"name": "warm", "model": TINY, "samples": 2, "temperature": 0.9, "max_tokens": 24},
                       {"name": "cold", "model": TINY, "samples": 1, "temperature": 0.0, "max_tokens": 24}]})


def pipeline_cfg(prefs: PreferencesConfig, prompts: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "small", "prompts": "unused.jsonl", "pilot": TINY, "bases": [{**TINY, "name": "base"}],
        "curation": {"sources": [{"name": "s", "path": "unused.jsonl"}], "mix": {"total": prompts}},
        "preferences": prefs.model_dump(mode="json", exclude_unset=True)})


@pytest.fixture(scope="module")
def runs(small_dataset, tmp_path_factory, tiny_cache):
    """The same prompts and responses (one shared cache for the generators) judged by each strategy."""
    d = tmp_path_factory.mktemp("strategies")
    out = {}
    for strategy in ("round_robin", "screened"):
        judge = LengthJudge()
        cfg = prefs_cfg(d / f"{strategy}.sqlite", strategy)
        s = build_preferences(small_dataset, cfg, d / strategy, progress=False,
                              http_client=httpx.AsyncClient(transport=judge))
        out[strategy] = (cfg, s, judge, d / strategy)
    return out


def test_screened_judging_asks_fewer_calls_and_keeps_the_clear_pairs(runs):
    (_, _, rr_judge, rr_dir), (_, sc, sc_judge, sc_dir) = runs["round_robin"], runs["screened"]
    assert rr_judge.calls == {"pointwise": 0, "pairwise": 4 * 3 * 2}  # 4 prompts x 3 pairs x both orders
    assert sc_judge.calls["pointwise"] == 4 * 3  # one a response
    total = sum(sc_judge.calls.values())
    assert total < sum(rr_judge.calls.values())
    m = json.loads((sc_dir / "manifest.json").read_text())["data"]["preferences"]["judging"]
    assert m["strategy"] == "screened" and m["judge_calls"] == total == sc.usage["judge"]["requests"]
    assert m["judge_calls_round_robin"] == 24 and m["calls_saved"] == 24 - total
    assert m["pairs_pairwise"] * 2 == sc_judge.calls["pairwise"]
    rows = pq.read_table(sc_dir / "screening.parquet").to_pylist()
    assert len(rows) == 4 and sum(len(r["pairs_pairwise"]) for r in rows) == m["pairs_pairwise"]
    assert "screening.parquet" in (sc_dir / "README.md").read_text() and f"({24 - total} saved)" in (
        sc_dir / "README.md").read_text()
    rr_m = json.loads((rr_dir / "manifest.json").read_text())["data"]["preferences"]["judging"]
    assert rr_m["calls_saved"] == 0 and rr_m["judge_calls"] == 24
    # where the screen separated the pair, the same chosen and rejected as the round robin
    screened = {r["id"]: r for r in pq.read_table(sc_dir / "dpo.parquet").to_pylist()}
    robin = {r["id"]: r for r in pq.read_table(rr_dir / "dpo.parquet").to_pylist()}
    judged = pq.read_table(sc_dir / "judgments.parquet").to_pylist()
    single = {(j["id"], j["a"]): float(j["verdict"]) for j in judged if j["order"] == "single"}
    responses = pq.read_table(sc_dir / "responses.parquet").to_pylist()
    k = {(r["id"], r["text"]): r["k"] for r in responses}
    clear = 0
    for pid, row in screened.items():
        gap = (single[(pid, k[(pid, row["chosen"][0]["content"])])]
               - single[(pid, k[(pid, row["rejected"][0]["content"])])])
        if gap > 0.5:
            clear += 1
            assert pid in robin and robin[pid]["chosen"] == row["chosen"] and robin[pid]["rejected"] == row["rejected"]
    assert clear >= 1
    assert any(j["order"] == "screened" and j["status"] == "pointwise" for j in judged)


def test_the_plans_call_counts_are_the_calls_made(runs):
    for strategy, (cfg, s, judge, out) in runs.items():
        m = json.loads((out / "manifest.json").read_text())["data"]["preferences"]["judging"]
        close = m["pairs_pairwise"] / m["pairs"]
        p = plan(pipeline_cfg(cfg, s.prompts), assumptions=Assumptions(close_fraction=close))
        by = {(x.who, x.what.split(" ")[0]): x.calls for x in p.lines if x.stage == "preferences"}
        assert by[("warm", "responses")] == s.usage["warm"]["requests"] + s.usage["warm"]["cache_hits"] == 8
        assert by[("cold", "responses")] == 4
        planned = sum(c for (who, _), c in by.items() if who == "judge")
        assert planned == sum(judge.calls.values()) == m["judge_calls"], strategy
        if strategy == "screened":
            assert by[("judge", "screen:")] == judge.calls["pointwise"]
    # the plan's round robin on the same recipe: the round robin's count
    cfg, s = runs["screened"][0], runs["screened"][1]
    rr = plan(pipeline_cfg(cfg, s.prompts), strategy="round_robin")
    assert sum(x.calls for x in rr.lines if x.who == "judge") == 24


def test_pilot_3b_plan_both_strategies_and_the_weekly_schedule():
    path = str(REPO / "configs/pipeline/pilot-3b.yaml")
    from pilot_core.config import load_config

    cfg = load_config(PipelineConfig, path, ())
    robin, screened = plan(cfg, path, strategy="round_robin"), plan(cfg, path)
    judge = lambda p: sum(x.calls for x in p.lines if x.who == "gpt-4o")  # noqa: E731
    assert judge(robin) == 80000 * 6 * 2 == 960000  # the count
    assert judge(screened) == 80000 * 4 + round(80000 * 6 * 0.25) * 2 < judge(robin)
    assert screened.schedule["deployment"] == "pilot-3b-weekly" and screened.schedule["period_h"] == 168
    assert screened.total["approval_waits_h"] == 120
    text = render(screened)
    assert "gpt-4o-mini" in text and "unknown" in text and "no price declared" in text


def test_cron_periods():
    assert cron_period_h("0 3 * * 1") == 168 and cron_period_h("0 2 * * *") == 24
    assert cron_period_h("*/15 * * * *") == 0.25 and cron_period_h("0 0 1 * *") == 31 * 24


def test_pilot_run_plan_starts_nothing(tmp_path):
    """Exit 0 with the plan; Prefect is never imported. A bad config: exit 2."""
    code = ("import sys, json; from flows.cli import main; rc = main(['run', '--plan', '--json', '--config', "
            "'configs/pipeline/pilot-3b.yaml']); assert rc == 0, rc; "
            "assert not [m for m in sys.modules if m.startswith('prefect')]")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["schedule"]["deployment"] == "pilot-3b-weekly" and data["stages"]["preferences"]["calls"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprompts: p.jsonl\n")
    assert main(["run", "--plan", "--config", str(bad)]) == 2


def test_a_model_with_replicas_is_planned_at_their_combined_concurrency():
    """Concurrency and the declared throughput are per replica: two replicas halve the hours; the rate limit is the
    model's, whatever its replicas."""
    from data_curation.preferences_config import Throughput
    from flows.plan import endpoint_hours
    from pilot_core.models.calls import ClientConfig

    client, tp = ClientConfig(concurrency=4), Throughput(output_tokens_per_s=20.0, first_token_s=0.5)
    one, _ = endpoint_hours(1000, 100, client, tp)
    two, _ = endpoint_hours(1000, 100, client, tp, replicas=2)
    assert one == pytest.approx(1000 * (0.5 + 100 / 20) / 4 / 3600) and two == pytest.approx(one / 2)
    limited = ClientConfig(concurrency=4, requests_per_minute=60)
    assert endpoint_hours(1000, 100, limited, tp, replicas=8)[0] == pytest.approx(1000 / 60 / 60)

    cfg = prefs_cfg("/tmp/unused.sqlite", "screened").model_dump()
    cfg["judge"]["model"]["url"] = ["http://judge-a.test/v1", "http://judge-b.test/v1"]
    cfg["judge"]["throughput"] = {"output_tokens_per_s": 20.0}
    from flows.plan import _preferences

    lines = _preferences(PreferencesConfig.model_validate(cfg), 100, Assumptions(), None)
    cfg["judge"]["model"]["url"] = "http://judge-a.test/v1"
    single = _preferences(PreferencesConfig.model_validate(cfg), 100, Assumptions(), None)
    judged = [(a.hours, b.hours) for a, b in zip(lines, single) if a.who == "judge"]
    assert judged and all(a == pytest.approx(b / 2) for a, b in judged)
