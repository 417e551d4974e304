"""Responses and preferences for a curated dataset: candidates from every generator, verdicts from the judge,
then SFT targets (`sft`: messages ending with the best response) and preference pairs (`dpo`: prompt / chosen /
rejected in TRL's conversational format). Every call goes through the persistent cache, so a rerun after a
crash or a failure pays only for what is missing; the output directory is written once, at the end."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from data_curation.judge import (combine_orders, pairwise_messages, parse_pairwise, parse_pointwise,
                                 pointwise_messages, rubric, rule_score, win_rates)
from data_curation.llm_calls import CallStats, Endpoint, make_call, run_calls
from data_curation.preferences_config import PreferencesConfig
from data_curation.response_cache import ResponseCache
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, config_hash, read_manifest


def _seed(cfg: PreferencesConfig, *parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, (cfg.seed, *parts))).encode()).digest()[:4], "little")


def _response_calls(cfg, endpoints, prompts):
    out = []  # (prompt index, generator, sample, call)
    for p, row in enumerate(prompts):
        for g in cfg.generators:
            msgs = ([{"role": "system", "content": g.system_prompt}] if g.system_prompt else []) + row["messages"]
            for s in range(g.samples):
                params = {"max_tokens": g.max_tokens, "temperature": g.temperature, "top_p": g.top_p,
                          "seed": _seed(cfg, row["id"], g.name, s)}
                out.append((p, g.name, s, make_call("response", g.name, endpoints[g.name], msgs, params)))
    return out


def _judge_calls(cfg, endpoint, prompts, cands):
    j = cfg.judge
    params = {"max_tokens": j.max_tokens, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    out = []  # (prompt index, (i, j) or i, order, call)
    for p, row in enumerate(prompts):
        text = rubric(cfg.category_rubrics.get(row["category"], "helpful"), j.rubric_version)
        ok = [c for c in cands[p] if c["text"]]
        if j.kind == "pointwise":
            for c in ok:
                out.append((p, c["k"], "single", make_call("judgment", j.name, endpoint,
                                                           pointwise_messages(text, row["messages"], c["text"]),
                                                           params)))
            continue
        for x in range(len(ok)):
            for y in range(x + 1, len(ok)):
                a, b = ok[x], ok[y]
                orders = [("AB", a, b), ("BA", b, a)] if j.both_orders else [("AB", a, b)]
                for name, first, second in orders:
                    msgs = pairwise_messages(text, row["messages"], first["text"], second["text"])
                    out.append((p, (a["k"], b["k"]), name, make_call("judgment", j.name, endpoint, msgs, params)))
    return out


def _scores(cfg, prompts, cands, judged, reward) -> tuple[list[list], list[dict]]:
    """Per prompt, each candidate's score (None: unjudged); and the judgment records."""
    scores, records = [], []
    by_prompt: dict[int, list] = {}
    for x in judged:  # grouped once: a scan per prompt would be quadratic in the dataset size
        by_prompt.setdefault(x[0], []).append(x)
    for p, row in enumerate(prompts):
        n = len(cands[p])
        if cfg.judge.kind == "rules":
            name = cfg.category_rubrics.get(row["category"], "helpful")
            s = [None if not c["text"] else rule_score(name, c["text"]) for c in cands[p]]
            records += [{"id": row["id"], "a": c["k"], "b": None, "order": "single", "verdict": str(v),
                         "status": "ok", "rationale": f"rule ({name})", "raw": ""}
                        for c, v in zip(cands[p], s) if v is not None]
            scores.append(s)
            continue
        if cfg.judge.kind == "reward_model":
            ok = [c for c in cands[p] if c["text"]]
            vals = reward.score([(row["messages"], c["text"]) for c in ok]) if ok else []
            s = [None] * n
            for c, v in zip(ok, vals):
                s[c["k"]] = v
                records.append({"id": row["id"], "a": c["k"], "b": None, "order": "single", "verdict": str(v),
                                "status": "ok", "rationale": "", "raw": ""})
            scores.append(s)
            continue
        mine = by_prompt.get(p, [])
        if cfg.judge.kind == "pointwise":
            s = [None] * n
            for _, k, _, r in mine:
                score, why = parse_pointwise(r.get("text", "")) if "error" not in r else (None, "")
                s[k] = score
                records.append({"id": row["id"], "a": k, "b": None, "order": "single", "verdict": score,
                                "status": "error" if "error" in r else "ok" if score is not None else "unparseable",
                                "rationale": why, "raw": r.get("text", r.get("error", ""))})
            scores.append(s)
            continue
        by_pair: dict = {}
        for _, pair, order, r in mine:
            w, why = parse_pairwise(r.get("text", "")) if "error" not in r else (None, "")
            by_pair.setdefault(pair, {})[order] = w
            records.append({"id": row["id"], "a": pair[0], "b": pair[1], "order": order, "verdict": w,
                            "status": "error" if "error" in r else "ok" if w is not None else "unparseable",
                            "rationale": why, "raw": r.get("text", r.get("error", ""))})
        verdicts = {}
        for pair, v in by_pair.items():
            if cfg.judge.both_orders:
                w, status = combine_orders(v.get("AB"), v.get("BA"))
                records.append({"id": row["id"], "a": pair[0], "b": pair[1], "order": "combined", "verdict": w,
                                "status": status, "rationale": "", "raw": ""})
            else:
                w = v.get("AB")
            verdicts[pair] = w
        scores.append(win_rates(n, verdicts))
    return scores, records


def _pairs(cfg, prompts, cands, scores):
    sft, dpo, skipped = [], [], []
    for p, row in enumerate(prompts):
        ok = [c for c in cands[p] if c["text"] and len(c["text"]) <= cfg.pairs.max_response_chars
              and scores[p][c["k"]] is not None]
        ranked = sorted(ok, key=lambda c: (-scores[p][c["k"]], c["k"]))
        if not ranked:
            skipped.append({"id": row["id"], "reason": "no_scored_response"})
            continue
        best = ranked[0]
        sft.append({"id": row["id"], "messages": row["messages"] + [{"role": "assistant", "content": best["text"]}],
                    "generator": best["generator"], "score": scores[p][best["k"]]})
        if len(ranked) < 2:
            skipped.append({"id": row["id"], "reason": "too_few_scored_responses"})
            continue
        worst = ranked[1] if cfg.pairs.rejected == "second_best" else ranked[-1]
        margin = scores[p][best["k"]] - scores[p][worst["k"]]
        if margin <= cfg.pairs.min_margin:
            skipped.append({"id": row["id"], "reason": "margin_too_small"})
            continue
        dpo.append({"id": row["id"], "category": row["category"], "prompt": row["messages"],
                    "chosen": [{"role": "assistant", "content": best["text"]}],
                    "rejected": [{"role": "assistant", "content": worst["text"]}],
                    "score_chosen": scores[p][best["k"]], "score_rejected": scores[p][worst["k"]],
                    "margin": margin, "generator_chosen": best["generator"], "generator_rejected": worst["generator"]})
    return sft, dpo, skipped


def build_preferences(dataset: str | Path, cfg: PreferencesConfig, output: str | Path, overwrite: bool = False,
                      progress: bool = True, http_client=None) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm import tqdm

    from data_curation.writer import write_dataset

    dataset, output = Path(dataset), Path(output)
    source = read_manifest(dataset, kind="dataset")
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; choose another --output")
    kept_t, excl_t = pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet")
    prompts = kept_t.select(["id", "messages", "category"]).to_pylist()
    cache = ResponseCache(cfg.cache or output.with_name(output.name + ".cache.sqlite"))
    reward = None
    if cfg.judge.kind == "reward_model":
        from pilot_core.reward_model import RewardModel

        reward = RewardModel(cfg.judge.model.local_path(), trust_remote_code=cfg.judge.model.trust_remote_code)
    stats: dict[str, CallStats] = {}

    async def main():
        endpoints = {g.name: Endpoint(g.model, cfg.client, http_client) for g in cfg.generators}
        if cfg.judge.kind in ("pairwise", "pointwise"):
            endpoints[cfg.judge.name] = Endpoint(cfg.judge.model, cfg.client, http_client)
        try:
            rcalls = _response_calls(cfg, endpoints, prompts)
            with tqdm(total=len(rcalls), desc="responses", unit="call", disable=not progress) as bar:
                got = await run_calls([c for *_, c in rcalls], endpoints, cache, stats, bar)
            cands = [[] for _ in prompts]
            for p, g, s, c in rcalls:
                r = got[c.key]
                cands[p].append({"k": len(cands[p]), "generator": g, "sample": s, "text": r.get("text", "").strip(),
                                 "error": r.get("error"), "finish_reason": r.get("finish_reason"),
                                 "completion_tokens": r.get("completion_tokens")})
            judged = []
            if cfg.judge.kind in ("pairwise", "pointwise"):
                jcalls = _judge_calls(cfg, endpoints[cfg.judge.name], prompts, cands)
                with tqdm(total=len(jcalls), desc="judgments", unit="call", disable=not progress) as bar:
                    jgot = await run_calls([c for *_, c in jcalls], endpoints, cache, stats, bar)
                judged = [(p, k, o, jgot[c.key]) for p, k, o, c in jcalls]
            return cands, judged
        finally:
            for ep in endpoints.values():
                await ep.backend.close()

    try:
        cands, judged = asyncio.run(main())
    finally:
        cache.close()
    scores, judgments = _scores(cfg, prompts, cands, judged, reward)
    sft, dpo, skipped = _pairs(cfg, prompts, cands, scores)
    responses = [{"id": row["id"], **{k: c[k] for k in ("k", "generator", "sample", "text", "error", "finish_reason",
                                                          "completion_tokens")}, "score": scores[p][c["k"]]}
                 for p, row in enumerate(prompts) for c in cands[p]]
    prices = {g.name: g.price for g in cfg.generators} | {cfg.judge.name: cfg.judge.price}
    usage = {who: {**st.__dict__, "cost_usd": round(st.prompt_tokens * prices[who].input / 1e6
                                                    + st.completion_tokens * prices[who].output / 1e6, 6)}
             for who, st in stats.items()}
    counts = {"prompts": len(prompts), "responses": len(responses),
              "response_failures": sum(1 for r in responses if r["error"]), "sft": len(sft), "dpo": len(dpo),
              "skipped": {r: sum(1 for x in skipped if x["reason"] == r) for r in {x["reason"] for x in skipped}},
              "judgments": {s: sum(1 for j in judgments if j["status"] == s) for s in {j["status"] for j in judgments}}}
    manifest = Manifest(kind="dataset", config_hash=config_hash(cfg), config=cfg.model_dump(mode="json"),
                        inputs={**source.inputs, "curated": source.config_hash or ""},
                        data={**source.data, "preferences": {**counts, "usage": usage}})
    card = (dataset / "README.md").read_text(encoding="utf-8") + _card(cfg, counts, usage)
    extra = {"sft": _table(sft, pa), "dpo": _table(dpo, pa), "responses": _table(responses, pa),
             "judgments": _table([{**j, "verdict": None if j["verdict"] is None else str(j["verdict"])}
                                  for j in judgments], pa), "pairs_skipped": _table(skipped, pa)}
    write_dataset(output, kept_t, excl_t, manifest, card, overwrite, extra=extra, splits=("sft", "dpo"))
    return {"output": str(output), **counts, "usage": usage}


def _table(rows: list[dict], pa):
    return pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})


def _card(cfg: PreferencesConfig, counts: dict, usage: dict) -> str:
    lines = ["", "## Responses and preferences", "",
             f"Generators: {', '.join(f'{g.name} ({g.samples} per prompt, T={g.temperature})' for g in cfg.generators)}"
             f". Judge: {cfg.judge.name} ({cfg.judge.kind}, rubric {cfg.judge.rubric_version}"
             f"{', both orders' if cfg.judge.kind == 'pairwise' and cfg.judge.both_orders else ''}).", "",
             f"{counts['sft']} SFT rows and {counts['dpo']} preference pairs from {counts['prompts']} prompts; "
             f"{counts['response_failures']} failed responses; judgments by status: {counts['judgments']}; "
             f"prompts without a pair: {counts['skipped']}.", "",
             "| model | requests | cache hits | failures | prompt tokens | completion tokens | cost (USD) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             *(f"| {w} | {u['requests']} | {u['cache_hits']} | {u['failures']} | {u['prompt_tokens']} | "
               f"{u['completion_tokens']} | {u['cost_usd']} |" for w, u in sorted(usage.items())), ""]
    return "\n".join(lines)
