"""The preference judge's strategies, measured and planned (#40 item 4): judge calls with `round_robin` (every
pair, both orders) and `screened` (a pointwise score per response, then both orders only for the pairs within
`margin`) on the same prompts and responses, and the plan's figures for configs/pipeline/pilot-3b.yaml with both.

The demo's preference judge is the refusal rule (no LLM calls: both strategies are the same there), so the
measurement runs a small recipe instead: prompts from the demo's GenerAlign source, the tiny pilot as the writer
(4 responses a prompt, as pilot-3b's generators give), and a stand-in LLM judge served over the OpenAI API in
process (an httpx transport: the longer response wins; pointwise, a score growing with the length). The tiny
pilot is no usable judge (its verdicts do not parse, so every pair would stay close). Prints one table.

    .venv/bin/python bench/judge_strategies.py [--prompts 40] [--margin 1.0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.length_judge import LengthJudge  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=40)
    ap.add_argument("--margin", type=float, default=1.0)
    args = ap.parse_args()
    from data_curation.config import CurationConfig, SourceConfig
    from data_curation.preferences import build_preferences
    from data_curation.preferences_config import PreferencesConfig
    from data_curation.run import curate
    from flows.pipeline_config import PipelineConfig
    from flows.plan import Assumptions, plan
    from pilot_core.config import load_config
    from pilot_core.models.tiny import PILOT_SPEC

    tiny = {"name": "pilot", "tiny": PILOT_SPEC.model_dump(mode="json")}
    d = Path(tempfile.mkdtemp(prefix="judge-strategies-"))
    rows = [json.loads(x) for x in (ROOT / "data/demo/generalign/world.jsonl").read_text().splitlines()[:args.prompts]]
    (d / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curate(CurationConfig(sources=[SourceConfig(name="world", path=str(d / "in.jsonl"),
                                                columns={"prompt": "prompt", "category": "category"})]),
           output=str(d / "cur"), progress=False)
    print("| recipe | strategy | prompts | judge calls (pointwise + pairwise) | round robin's | saved | "
          "pairs judged pairwise | dpo pairs | same chosen/rejected as round robin |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    got = {}
    for strategy in ("round_robin", "screened"):
        judge = LengthJudge(lambda text: min(10, 1 + len(text) // 12))
        cfg = PreferencesConfig.model_validate({
            "cache": str(d / f"{strategy}.sqlite"),
            "judge": {"name": "judge", "kind": "pairwise", "strategy": strategy, "margin": args.margin,
                      "model": {"name": "judge", "url": "http://judge.test/v1", "served_model": "judge"}},
            "generators": [{"name": "warm", "model": tiny, "samples": 3, "temperature": 0.9, "max_tokens": 32},
                           {"name": "cold", "model": tiny, "samples": 1, "temperature": 0.0, "max_tokens": 32}]})
        s = build_preferences(d / "cur", cfg, d / strategy, progress=False,
                              http_client=httpx.AsyncClient(transport=judge))
        j = json.loads((d / strategy / "manifest.json").read_text())["data"]["preferences"]["judging"]
        import pyarrow.parquet as pq

        dpo = {r["id"]: (r["chosen"], r["rejected"]) for r in pq.read_table(d / strategy / "dpo.parquet").to_pylist()}
        got[strategy] = dpo
        same = "" if strategy == "round_robin" else \
            f"{sum(1 for k, v in dpo.items() if got['round_robin'].get(k) == v)} of {len(dpo)}"
        print(f"| small (tiny writers, stand-in judge) | {strategy} | {s.prompts} | {j['judge_calls']} "
              f"({judge.calls['pointwise']} + {judge.calls['pairwise']}) | {j['judge_calls_round_robin']} | "
              f"{j['calls_saved']} ({j['calls_saved'] / j['judge_calls_round_robin']:.0%}) | "
              f"{j['pairs_pairwise']} of {j['pairs']} | {s.dpo} | {same} |")
        if strategy == "screened":
            close = j["pairs_pairwise"] / j["pairs"]
    path = ROOT / "configs/pipeline/pilot-3b.yaml"
    pcfg = load_config(PipelineConfig, path, ())
    print()
    print("| recipe | strategy | close pairs | judge calls | judge input tokens | judge USD | "
          "judge hours (rate-limit floor) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for strategy, fr in (("round_robin", None), ("screened", 0.25), ("screened", close), ("screened", 1.0)):
        p = plan(pcfg, str(path), Assumptions(close_fraction=fr if fr is not None else 0.25), strategy)
        lines = [x for x in p.lines if x.who == "gpt-4o"]
        print(f"| pilot-3b | {strategy} | {'all' if fr is None else f'{fr:.0%}'} | {sum(x.calls for x in lines):,} | "
              f"{sum(x.input_tokens for x in lines):,} | {sum(x.cost_usd for x in lines):,.0f} | "
              f">= {sum(x.hours_floor for x in lines):,.1f} |")


if __name__ == "__main__":
    main()
