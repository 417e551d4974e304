"""Responses and preferences for a curated dataset: candidates from every generator, verdicts from the judge,
then SFT targets (`sft`: messages ending with the best response) and preference pairs (`dpo`: prompt / chosen /
rejected in TRL's conversational format). Every call goes through the persistent cache, so a rerun after a
crash or a failure pays only for what is missing; the output directory is written once, at the end. The calls
are sent from this process (`engine: local`) or by a Ray Data pipeline (`engine: ray`, `pilot_core.models.ray_calls`);
the output is the same."""

from __future__ import annotations

import asyncio
import functools
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

from data_curation.preferences_config import PreferencesConfig
from pilot_core.errors import UserError
from pilot_core.judge_spec import ALONE, pair_calls, scores_alone
from pilot_core.judging import (
    combine_orders,
    parse_pairwise,
    parse_pointwise,
    pointwise_messages,
    rubric,
    verdict_params,
    win_rates,
)
from pilot_core.manifest import Manifest, config_hash, read_manifest
from pilot_core.models.call_cache import ResponseCache
from pilot_core.models.calls import Call, CallStats, Endpoint, make_call, run_calls
from pilot_core.models.compute import Compute
from pilot_core.models.ray_calls import ray_engine


@dataclass(frozen=True)
class ResponseCall:
    """A candidate response asked of a generator."""

    prompt: int  # index of the prompt
    generator: str
    sample: int
    call: Call


@dataclass
class Candidate:
    """One generator's response to one prompt (the `responses` table's row, with its score added there)."""

    k: int  # its index among the prompt's candidates
    generator: str
    sample: int
    text: str
    error: str | None
    finish_reason: str | None
    completion_tokens: int | None


@dataclass(frozen=True)
class JudgeCall:
    """A judgment asked of the judge: one candidate (pointwise) or a pair in one order (pairwise)."""

    prompt: int
    a: int  # the candidate judged, or the pair's first
    b: int | None  # the pair's second (None: pointwise)
    order: str  # "AB" or "BA": which of the pair the judge reads first; "single" for pointwise
    call: Call


@dataclass
class Judgment:
    """A row of the `judgments` table: a verdict, or why there is none."""

    id: str
    a: int
    b: int | None
    order: str  # AB, BA, single, or combined (the pair's verdict from both orders)
    verdict: str | None  # "A" / "B" / "tie", or a score
    status: str  # ok, unparseable, error; consistent or inconsistent for a combined pair
    rationale: str = ""
    raw: str = ""


@dataclass(frozen=True)
class PreferencesSummary:
    """What build_preferences reports: the dataset directory, its counts and each model's usage (the manifest's
    data["preferences"] holds the same, so a finished directory reads back as one)."""

    output: str
    prompts: int
    responses: int
    response_failures: int
    sft: int
    dpo: int
    dpo_labelled: int  # of dpo: pairs the sources labelled
    skipped: dict[str, int]  # prompts without a pair, by reason
    judgments: dict[str, int]  # by status
    usage: dict[str, dict]  # per model: requests, cache hits, failures, tokens, cost_usd

    @classmethod
    def of(cls, output: str | Path, data: dict) -> PreferencesSummary:
        """From the counts and usage, or a finished directory's manifest data["preferences"]."""
        return cls(str(output), data["prompts"], data["responses"], data["response_failures"], data["sft"],
                   data["dpo"], data.get("dpo_labelled", 0), data.get("skipped", {}), data.get("judgments", {}),
                   data.get("usage", {}))  # the .get()s: directories written before those were recorded


def _seed(cfg: PreferencesConfig, *parts) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, (cfg.seed, *parts))).encode()).digest()[:4], "little")


def _response_calls(cfg, endpoints, prompts) -> list[ResponseCall]:
    out = []
    for p, row in enumerate(prompts):
        for g in cfg.generators:
            msgs = ([{"role": "system", "content": g.system_prompt}] if g.system_prompt else []) + row["messages"]
            for s in range(g.samples):
                params = {"max_tokens": g.max_tokens, "temperature": g.temperature, "top_p": g.top_p,
                          "seed": _seed(cfg, row["id"], g.name, s)}
                out.append(ResponseCall(p, g.name, s, make_call("response", g.name, endpoints[g.name], msgs, params)))
    return out


def _pointwise_calls(cfg, endpoint, prompts, cands: list[list[Candidate]]) -> list[JudgeCall]:
    """One pointwise verdict per response (kind pointwise, or the screen of a screened pairwise judge)."""
    j, out = cfg.judge, []
    params = verdict_params(j, "pointwise")
    for p, row in enumerate(prompts):
        text = rubric(cfg.category_rubrics.get(row["category"], "helpful"), j.rubric_version)
        for c in (c for c in cands[p] if c.text):
            out.append(JudgeCall(p, c.k, None, "single", make_call(
                "judgment", j.name, endpoint, pointwise_messages(text, row["messages"], c.text), params)))
    return out


def _pair_calls(cfg, endpoint, prompts, cands: list[list[Candidate]],
                only: dict[int, set] | None = None) -> list[JudgeCall]:
    """Pairwise verdicts on every pair of a prompt's responses (in both orders where asked), or on the pairs in
    `only[prompt]` (the screen's close pairs)."""
    j, out = cfg.judge, []
    for p, row in enumerate(prompts):
        ok = [c for c in cands[p] if c.text]
        for x in range(len(ok)):
            for y in range(x + 1, len(ok)):
                a, b = ok[x], ok[y]
                if only is not None and (a.k, b.k) not in only.get(p, ()):
                    continue
                calls = pair_calls(j, endpoint, row["messages"], a.text, b.text,
                                   cfg.category_rubrics.get(row["category"], "helpful"), j.both_orders)
                out += [JudgeCall(p, a.k, b.k, name, c) for name, c in zip(("AB", "BA"), calls)]
    return out


def _judge_calls(cfg, endpoint, prompts, cands: list[list[Candidate]]) -> list[JudgeCall]:
    """Every call of a pointwise judge, or of a round-robin pairwise judge (a screened one: `_screen` between
    `_pointwise_calls` and `_pair_calls`)."""
    if cfg.judge.kind == "pointwise":
        return _pointwise_calls(cfg, endpoint, prompts, cands)
    return _pair_calls(cfg, endpoint, prompts, cands)


def _screen(cfg, cands: list[list[Candidate]], scalls: list[JudgeCall], got: dict) -> dict[int, set]:
    """Per prompt, the pairs the pointwise screen cannot separate: scores within judge.margin, or a side
    unscored (an error or an unparseable verdict)."""
    score: dict[tuple[int, int], float | None] = {}
    for jc in scalls:
        r = got[jc.call.key]
        score[(jc.prompt, jc.a)] = parse_pointwise(r.get("text", ""))[0] if "error" not in r else None
    close: dict[int, set] = {}
    for p, cs in enumerate(cands):
        ok = [c for c in cs if c.text]
        for x in range(len(ok)):
            for y in range(x + 1, len(ok)):
                sa, sb = score.get((p, ok[x].k)), score.get((p, ok[y].k))
                if sa is None or sb is None or abs(sa - sb) <= cfg.judge.margin:
                    close.setdefault(p, set()).add((ok[x].k, ok[y].k))
    return close


def screened(cfg: PreferencesConfig) -> bool:
    """The judge screens pointwise before judging pairwise (an LLM pairwise judge with strategy screened)."""
    return cfg.judge.kind == "pairwise" and cfg.judge.strategy == "screened"


def _verdict(v) -> str | None:
    return None if v is None else str(v)


def _scores(cfg, prompts, cands: list[list[Candidate]], jcalls: list[JudgeCall], got: dict,
            reward) -> tuple[list[list], list[Judgment]]:
    """Per prompt, each candidate's score (None: unjudged); and the judgments."""
    scores, records = [], []
    by_prompt: dict[int, list[JudgeCall]] = {}
    for jc in jcalls:  # grouped once: a scan per prompt would be quadratic in the dataset size
        by_prompt.setdefault(jc.prompt, []).append(jc)
    for p, row in enumerate(prompts):
        n = len(cands[p])
        if cfg.judge.kind in ALONE:  # each candidate scored on its own, as validation scores a response
            name = cfg.category_rubrics.get(row["category"], "helpful")
            ok = [c for c in cands[p] if c.text]
            vals = scores_alone(cfg.judge.kind, [(row["messages"], c.text, name) for c in ok], reward)
            s = [None] * n
            for c, v in zip(ok, vals):
                s[c.k] = v
                records.append(Judgment(row["id"], c.k, None, "single", _verdict(v), "ok",
                                        f"rule ({name})" if cfg.judge.kind == "rules" else ""))
            scores.append(s)
            continue
        mine = by_prompt.get(p, [])
        if cfg.judge.kind == "pointwise":
            s = [None] * n
            for jc in mine:
                r = got[jc.call.key]
                score, why = parse_pointwise(r.get("text", "")) if "error" not in r else (None, "")
                s[jc.a] = score
                records.append(Judgment(row["id"], jc.a, None, "single", _verdict(score),
                                        "error" if "error" in r else "ok" if score is not None else "unparseable",
                                        why, r.get("text", r.get("error", ""))))
            scores.append(s)
            continue
        by_pair: dict = {}
        screen: dict[int, float | None] = {}
        for jc in mine:
            r = got[jc.call.key]
            if jc.order == "single":  # the screen's pointwise verdict
                score, why = parse_pointwise(r.get("text", "")) if "error" not in r else (None, "")
                screen[jc.a] = score
                records.append(Judgment(row["id"], jc.a, None, "single", _verdict(score),
                                        "error" if "error" in r else "ok" if score is not None else "unparseable",
                                        why, r.get("text", r.get("error", ""))))
                continue
            w, why = parse_pairwise(r.get("text", "")) if "error" not in r else (None, "")
            by_pair.setdefault((jc.a, jc.b), {})[jc.order] = w
            records.append(Judgment(row["id"], jc.a, jc.b, jc.order, w,
                                    "error" if "error" in r else "ok" if w is not None else "unparseable",
                                    why, r.get("text", r.get("error", ""))))
        verdicts = {}
        for pair, v in by_pair.items():
            if cfg.judge.both_orders:
                w, status = combine_orders(v.get("AB"), v.get("BA"))
                records.append(Judgment(row["id"], pair[0], pair[1], "combined", w, status))
            else:
                w = v.get("AB")
            verdicts[pair] = w
        if screen:  # the pairs the screen separated: the higher pointwise score wins
            ok = [c.k for c in cands[p] if c.text]
            for x in range(len(ok)):
                for y in range(x + 1, len(ok)):
                    pair = (ok[x], ok[y])
                    if pair in by_pair or screen.get(pair[0]) is None or screen.get(pair[1]) is None:
                        continue
                    w = "A" if screen[pair[0]] > screen[pair[1]] else "B"
                    verdicts[pair] = w
                    records.append(Judgment(row["id"], pair[0], pair[1], "screened", w, "pointwise",
                                            f"pointwise {screen[pair[0]]:g} against {screen[pair[1]]:g}"))
        scores.append(win_rates(n, verdicts))
    return scores, records


def _pairs(cfg, prompts, cands: list[list[Candidate]], scores):
    """The SFT rows (the best response), the DPO pairs (best against worst, or second best) and the prompts
    that yield no pair, with why."""
    sft, dpo, skipped = [], [], []
    for p, row in enumerate(prompts):
        score = scores[p]
        ok = [c for c in cands[p] if c.text and len(c.text) <= cfg.pairs.max_response_chars and score[c.k] is not None]
        ranked = sorted(ok, key=lambda c: (-score[c.k], c.k))
        if not ranked:
            skipped.append({"id": row["id"], "reason": "no_scored_response"})
            continue
        best = ranked[0]
        sft.append({"id": row["id"], "messages": row["messages"] + [{"role": "assistant", "content": best.text}],
                    "generator": best.generator, "score": score[best.k]})
        if len(ranked) < 2:
            skipped.append({"id": row["id"], "reason": "too_few_scored_responses"})
            continue
        worst = ranked[1] if cfg.pairs.rejected == "second_best" else ranked[-1]
        margin = score[best.k] - score[worst.k]
        if margin <= cfg.pairs.min_margin:
            skipped.append({"id": row["id"], "reason": "margin_too_small"})
            continue
        dpo.append({"id": row["id"], "category": row["category"], "prompt": row["messages"],
                    "chosen": [{"role": "assistant", "content": best.text}],
                    "rejected": [{"role": "assistant", "content": worst.text}],
                    "score_chosen": score[best.k], "score_rejected": score[worst.k],
                    "margin": margin, "generator_chosen": best.generator, "generator_rejected": worst.generator,
                    "origin": "generated"})
    return sft, dpo, skipped


def labelled_pairs(prompts: list[dict], max_chars: int) -> tuple[list[dict], list[dict]]:
    """The pairs the sources labelled (curation's `labelled_pair`), as dpo rows (id `<prompt id>:labelled`, so a
    prompt may have a generated pair beside it), and those left out, with why: an empty side, the same answer on
    both sides, a side over `max_chars` (the generated pairs' limit)."""
    out, skipped = [], []
    for row in prompts:
        p = row.get("labelled_pair")
        if not p:
            continue
        chosen, rejected = (p.get("chosen") or "").strip(), (p.get("rejected") or "").strip()
        why = ("labelled_pair_empty" if not chosen or not rejected else
               "labelled_pair_identical" if chosen == rejected else
               "labelled_pair_too_long" if max(len(p["chosen"]), len(p["rejected"])) > max_chars else None)
        if why:
            skipped.append({"id": f"{row['id']}:labelled", "reason": why})
            continue
        sc, sr = p.get("score_chosen"), p.get("score_rejected")
        out.append({"id": f"{row['id']}:labelled", "category": row["category"], "prompt": row["messages"],
                    "chosen": [{"role": "assistant", "content": p["chosen"]}],
                    "rejected": [{"role": "assistant", "content": p["rejected"]}], "score_chosen": sc,
                    "score_rejected": sr, "margin": None if sc is None or sr is None else sc - sr,
                    "generator_chosen": row["source"], "generator_rejected": row["source"], "origin": "labelled"})
    return out, skipped


def build_preferences(dataset: str | Path, cfg: PreferencesConfig, output: str | Path, overwrite: bool = False,
                      progress: bool = True, http_client=None,
                      compute: Compute | None = None) -> PreferencesSummary:
    """Candidates, verdicts and the sft/dpo splits of `dataset`, written to `output`. `http_client` (e.g. one that
    injects faults) is the local engine's: with `engine: ray` the calls leave from the Ray workers."""
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
    labelled, labelled_skipped = labelled_pairs(
        kept_t.select(["id", "messages", "category", "source", "labelled_pair"]).to_pylist(),
        cfg.pairs.max_response_chars) if cfg.labelled_pairs and "labelled_pair" in kept_t.column_names else ([], [])
    cache = ResponseCache(cfg.cache or output.with_name(output.name + ".cache.sqlite"))
    reward = None
    if cfg.judge.kind == "reward_model":
        from pilot_core.models.reward import RewardModel

        reward = RewardModel(cfg.judge.model.local_path(), compute, trust_remote_code=cfg.judge.model.trust_remote_code,
                             revision=cfg.judge.model.revision)
    stats: dict[str, CallStats] = {}
    sources = {g.name: g.model for g in cfg.generators} | (
        {cfg.judge.name: cfg.judge.model} if cfg.judge.kind in ("pairwise", "pointwise") else {})

    async def main(engine):
        endpoints = {name: Endpoint(src, cfg.client, http_client, compute) for name, src in sources.items()}
        send = functools.partial(run_calls, endpoints=endpoints, cache=cache, stats=stats, engine=engine)
        try:
            rcalls = _response_calls(cfg, endpoints, prompts)
            with tqdm(total=len(rcalls), desc="responses", unit="call", disable=not progress) as bar:
                got = await send([rc.call for rc in rcalls], progress=bar)
            cands: list[list[Candidate]] = [[] for _ in prompts]
            for rc in rcalls:
                r = got[rc.call.key]
                cands[rc.prompt].append(Candidate(len(cands[rc.prompt]), rc.generator, rc.sample,
                                                  r.get("text", "").strip(), r.get("error"), r.get("finish_reason"),
                                                  r.get("completion_tokens")))
            jcalls, jgot, close = [], {}, None
            if screened(cfg):
                ep = endpoints[cfg.judge.name]
                scalls = _pointwise_calls(cfg, ep, prompts, cands)
                with tqdm(total=len(scalls), desc="screen", unit="call", disable=not progress) as bar:
                    jgot = await send([jc.call for jc in scalls], progress=bar)
                close = _screen(cfg, cands, scalls, jgot)
                pcalls = _pair_calls(cfg, ep, prompts, cands, only=close)
                with tqdm(total=len(pcalls), desc="judgments", unit="call", disable=not progress) as bar:
                    jgot |= await send([jc.call for jc in pcalls], progress=bar)
                jcalls = scalls + pcalls
            elif cfg.judge.kind in ("pairwise", "pointwise"):
                jcalls = _judge_calls(cfg, endpoints[cfg.judge.name], prompts, cands)
                with tqdm(total=len(jcalls), desc="judgments", unit="call", disable=not progress) as bar:
                    jgot = await send([jc.call for jc in jcalls], progress=bar)
            return cands, jcalls, jgot, close
        finally:
            for ep in endpoints.values():
                await ep.backend.close()

    try:
        if cfg.engine == "ray":
            with ray_engine(cfg.ray, sources, cfg.client, cache.path) as engine:
                cands, jcalls, jgot, close = asyncio.run(main(engine))
        else:
            cands, jcalls, jgot, close = asyncio.run(main(None))
    finally:
        cache.close()
    scores, judgments = _scores(cfg, prompts, cands, jcalls, jgot, reward)
    sft, dpo, skipped = _pairs(cfg, prompts, cands, scores)
    dpo += labelled
    responses = [{"id": row["id"], **asdict(c), "score": scores[p][c.k]}
                 for p, row in enumerate(prompts) for c in cands[p]]
    prices = {g.name: g.price for g in cfg.generators} | {cfg.judge.name: cfg.judge.price}
    usage = {who: {**st.__dict__, "cost_usd": round(st.prompt_tokens * prices[who].input / 1e6
                                                    + st.completion_tokens * prices[who].output / 1e6, 6)}
             for who, st in stats.items()}
    counts = {"prompts": len(prompts), "responses": len(responses),
              "response_failures": sum(1 for r in responses if r["error"]), "sft": len(sft), "dpo": len(dpo),
              "dpo_labelled": len(labelled),
              "skipped": {r: sum(1 for x in skipped if x["reason"] == r) for r in {x["reason"] for x in skipped}},
              "labelled_skipped": {r: sum(1 for x in labelled_skipped if x["reason"] == r)
                                   for r in {x["reason"] for x in labelled_skipped}},
              "judgments": {s: sum(1 for j in judgments if j.status == s) for s in {j.status for j in judgments}}}
    screening = []
    if cfg.judge.kind == "pairwise":  # which pairs were judged pairwise, and the calls the screen saved
        counts["judging"], screening = _judging(cfg, prompts, cands, jcalls, close)
    manifest = Manifest(kind="dataset", config_hash=config_hash(cfg), config=cfg.model_dump(mode="json"),
                        inputs={**source.inputs, "curated": source.config_hash or ""},
                        data={**source.data, "preferences": {**counts, "usage": usage}}, hub=source.hub)
    card = (dataset / "README.md").read_text(encoding="utf-8") + _card(cfg, counts, usage)
    extra = {"sft": _table(sft, pa), "dpo": _table(dpo, pa), "responses": _table(responses, pa),
             "judgments": _table([asdict(j) for j in judgments], pa),
             "pairs_skipped": _table(skipped + labelled_skipped, pa)}
    if screening:
        extra["screening"] = _table(screening, pa)
    write_dataset(output, kept_t, excl_t, manifest, card, overwrite, extra=extra, splits=("sft", "dpo"))
    return PreferencesSummary.of(output, {**counts, "usage": usage})


def _judging(cfg: PreferencesConfig, prompts, cands: list[list[Candidate]], jcalls: list[JudgeCall],
             close: dict[int, set] | None) -> tuple[dict, list[dict]]:
    """A pairwise judge's calls against the round robin's (every pair, in both orders where asked): the totals
    (the manifest's data["preferences"]["judging"]) and a row per prompt (screening.parquet: the pairs judged
    pairwise, as "a-b" of the responses' k)."""
    orders = 2 if cfg.judge.both_orders else 1
    per: dict[int, int] = {}
    for jc in jcalls:
        per[jc.prompt] = per.get(jc.prompt, 0) + 1
    rows = []
    for p, row in enumerate(prompts):
        ok = [c.k for c in cands[p] if c.text]
        pairs = [(a, b) for i, a in enumerate(ok) for b in ok[i + 1:]]
        judged = pairs if close is None else sorted(close.get(p, ()))
        rows.append({"id": row["id"], "responses": len(ok), "pairs": len(pairs),
                     "pairs_pairwise": [f"{a}-{b}" for a, b in judged], "judge_calls": per.get(p, 0),
                     "judge_calls_round_robin": len(pairs) * orders})
    calls, rr = sum(r["judge_calls"] for r in rows), sum(r["judge_calls_round_robin"] for r in rows)
    total = {"strategy": cfg.judge.strategy, "margin": cfg.judge.margin if close is not None else None,
             "pairs": sum(r["pairs"] for r in rows), "pairs_pairwise": sum(len(r["pairs_pairwise"]) for r in rows),
             "judge_calls": calls, "judge_calls_round_robin": rr, "calls_saved": rr - calls}
    return total, rows


def _table(rows: list[dict], pa):
    return pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})


def _judging_lines(j: dict | None) -> list[str]:
    if not j:
        return []
    how = (f"screened: each response scored pointwise, then {j['pairs_pairwise']} of {j['pairs']} pairs (scores "
           f"within {j['margin']:g}, or unscored) judged pairwise" if j["strategy"] == "screened" else
           f"round robin: all {j['pairs']} pairs judged pairwise")
    return [f"Judging ({how}): {j['judge_calls']} judge calls, against {j['judge_calls_round_robin']} for the "
            f"round robin ({j['calls_saved']} saved); the pairs judged pairwise per prompt: screening.parquet.", ""]


def _card(cfg: PreferencesConfig, counts: dict, usage: dict) -> str:
    lines = ["", "## Responses and preferences", "",
             f"Generators: {', '.join(f'{g.name} ({g.samples} per prompt, T={g.temperature})' for g in cfg.generators)}"
             f". Judge: {cfg.judge.name} ({cfg.judge.kind}, rubric {cfg.judge.rubric_version}"
             f"{', both orders' if cfg.judge.kind == 'pairwise' and cfg.judge.both_orders else ''}).", "",
             f"{counts['sft']} SFT rows and {counts['dpo']} preference pairs ({counts['dpo_labelled']} of them "
             f"labelled by the sources) from {counts['prompts']} prompts; "
             f"{counts['response_failures']} failed responses; judgments by status: {counts['judgments']}; "
             f"prompts without a pair: {counts['skipped']}; sources' pairs left out: "
             f"{counts.get('labelled_skipped') or 'none'}.", "",
             *_judging_lines(counts.get("judging")),
             "| model | requests | cache hits | failures | prompt tokens | completion tokens | cost (USD) |",
             "|---|---:|---:|---:|---:|---:|---:|",
             *(f"| {w} | {u['requests']} | {u['cache_hits']} | {u['failures']} | {u['prompt_tokens']} | "
               f"{u['completion_tokens']} | {u['cost_usd']} |" for w, u in sorted(usage.items())), ""]
    return "\n".join(lines)
