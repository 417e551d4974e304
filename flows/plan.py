"""A plan before spending (`pilot run --plan`): from a validated pipeline config, without running anything, each
stage's calls, tokens, money and hours, and the whole run against the period of the schedule that runs it.

Counts follow the stages' own code (data_curation.preferences, evaluation.validate); tokens and hours rest on
stated assumptions (`Assumptions`): mean prompt length, responses as long as their budget (an upper bound), the
share of pairs a screened judge still judges pairwise. Money comes from the `price` of each endpoint (USD per
million tokens); an endpoint without one shows "?". Hours come from each endpoint's declared `throughput` and its
client's concurrency and requests_per_minute; without a throughput they are "unknown" (the rate limit alone gives
a floor). Nothing here imports Prefect or loads a model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from data_curation.preferences_config import PreferencesConfig, Throughput
from flows.pipeline_config import PipelineConfig
from pilot_core.judging import PAIRWISE, POINTWISE, rubric
from pilot_core.models.calls import ClientConfig

CHARS_PER_TOKEN = 4  # rubric and instruction text: ~4 characters a token (English, BPE tokenizers)
# published sizes of the benchmarks a recipe may read from the hub (the plan downloads nothing)
PUBLISHED_ITEMS = {"alpaca_eval": 805, "arena_hard": 500, "gsm8k": 1319, "mmlu": 14042, "humaneval": 164}


@dataclass(frozen=True)
class Assumptions:
    prompt_tokens: int = 256  # mean tokens of a curated prompt (its messages)
    response_fill: float = 1.0  # responses and verdicts use this share of their max_tokens (1.0: the upper bound)
    close_fraction: float = 0.25  # screened judge: share of pairs the pointwise screen cannot separate
    prompts: int | None = None  # prompts after the mix (None: curation.mix.total)


@dataclass
class Line:
    """One endpoint's share of a stage."""

    stage: str
    who: str
    what: str
    calls: int | None
    input_tokens: int | None
    output_tokens: int | None
    cost_usd: float | None  # None: no price declared
    hours: float | None  # None: unknown
    hours_floor: float = 0.0  # the rate limit alone
    note: str = ""


@dataclass
class Plan:
    config: str
    assumptions: dict
    lines: list[Line] = field(default_factory=list)
    stages: dict[str, dict] = field(default_factory=dict)  # stage -> calls, tokens, cost, hours, notes
    waits_h: float = 0.0  # approvals' timeouts, worst case
    total: dict = field(default_factory=dict)
    schedule: dict | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _tok(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def endpoint_hours(calls: int, out_tokens_per_call: float, client: ClientConfig,
                   tp: Throughput | None, replicas: int = 1) -> tuple[float | None, float]:
    """(hours, the rate limit's floor): calls at `concurrency` at a time on each of the model's `replicas` (the
    throughput is one replica's), each first_token_s + output tokens / output_tokens_per_s, and never faster than
    requests_per_minute (the model's, over all its replicas). Without a throughput: (None, floor)."""
    floor = calls / client.requests_per_minute / 60 if client.requests_per_minute else 0.0
    if tp is None:
        return None, floor
    per_call = tp.first_token_s + out_tokens_per_call / tp.output_tokens_per_s
    return max(calls * per_call / (client.concurrency * replicas) / 3600, floor), floor


def _cost(price, declared: bool, tin: int, tout: int) -> float | None:
    return round(tin * price.input / 1e6 + tout * price.output / 1e6, 2) if declared else None


def judge_calls(cfg: PreferencesConfig, prompts: int, responses: int, strategy: str | None = None,
                close_fraction: float = 0.25) -> dict[str, int]:
    """The judge's calls for `prompts` prompts of `responses` responses each: {pointwise, pairwise}. Round robin:
    every pair (both orders where asked); screened: one pointwise call a response, then the close pairs
    (`close_fraction` of them; the plan's assumption) pairwise."""
    j = cfg.judge
    pairs, orders = responses * (responses - 1) // 2, 2 if j.both_orders else 1
    if j.kind == "pointwise":
        return {"pointwise": prompts * responses, "pairwise": 0}
    if j.kind != "pairwise":
        return {"pointwise": 0, "pairwise": 0}
    if (strategy or j.strategy) == "round_robin":
        return {"pointwise": 0, "pairwise": prompts * pairs * orders}
    return {"pointwise": prompts * responses, "pairwise": round(prompts * pairs * close_fraction) * orders}


def _preferences(cfg: PreferencesConfig, n: int, a: Assumptions, strategy: str | None) -> list[Line]:
    lines, resp_tokens = [], []
    for g in cfg.generators:
        calls, out = n * g.samples, g.max_tokens * a.response_fill
        sys_tokens = _tok(g.system_prompt) if g.system_prompt else 0
        tin, tout = calls * (a.prompt_tokens + sys_tokens), round(calls * out)
        hours, floor = endpoint_hours(calls, out, cfg.client, g.throughput, max(1, len(g.model.urls)))
        priced = "price" in g.model_fields_set
        lines.append(Line("preferences", g.name, f"responses ({g.samples} per prompt)", calls, tin, tout,
                          _cost(g.price, priced, tin, tout), hours, floor,
                          "" if priced else "no price declared"))
        resp_tokens += [out] * g.samples
    j, k = cfg.judge, len(resp_tokens)
    if j.kind in ("rules", "reward_model"):
        lines.append(Line("preferences", j.name, f"{j.kind} scores (local, no calls)", 0, 0, 0, 0.0, None, 0.0,
                          "scored in-process"))
        return lines
    mean_resp = sum(resp_tokens) / k
    rub = max(_tok(rubric(r, j.rubric_version)) for r in ("harmless", "helpful", "honest"))
    jc = judge_calls(cfg, n, k, strategy, a.close_fraction)
    out = j.max_tokens * a.response_fill
    priced = "price" in j.model_fields_set
    steps = [("pointwise", jc["pointwise"], rub + _tok(POINTWISE) + a.prompt_tokens + mean_resp),
             ("pairwise", jc["pairwise"], rub + _tok(PAIRWISE) + a.prompt_tokens + 2 * mean_resp)]
    for what, calls, tin_per in steps:
        if not calls:
            continue
        tin, tout = round(calls * tin_per), round(calls * out)
        hours, floor = endpoint_hours(calls, out, cfg.client, j.throughput,
                                      max(1, len(j.model.urls)) if j.model is not None else 1)
        label = ("screen: pointwise, each response" if what == "pointwise" and j.kind == "pairwise" else
                 f"{what} verdicts" + (f" (close pairs, {a.close_fraction:.0%} assumed)"
                                       if what == "pairwise" and (strategy or j.strategy) == "screened" else ""))
        lines.append(Line("preferences", j.name, label, calls, tin, tout, _cost(j.price, priced, tin, tout), hours,
                          floor, "" if priced else "no price declared"))
    return lines


def _training(cfg: PipelineConfig, n: int) -> tuple[list[Line], list[str]]:
    t, lines = cfg.training, []
    for stage in t.stages:
        args = getattr(t, stage)
        batch = (args.get("per_device_train_batch_size", 8) * args.get("gradient_accumulation_steps", 1)
                 * (t.nproc if t.distributed else 1))
        if args.get("max_steps", -1) > 0:
            steps, how = args["max_steps"], "max_steps"
        else:
            epochs = args.get("num_train_epochs", 3)
            steps, how = math.ceil(n / batch) * math.ceil(epochs), f"{n} rows x {epochs} epochs / {batch} a step"
        lines.append(Line("training", stage, f"{steps} optimizer steps ({how})", None, None, None, None, None, 0.0,
                          "GPU hours: no throughput declared for training"))
    return lines, [f"training rows assumed: one sft row and at most one dpo pair per prompt ({n}); the sources' "
                   "labelled pairs add to dpo"]


def _items(es) -> tuple[int | None, str]:
    if es.limit:
        return es.limit, "limit"
    if es.path and Path(es.path).is_file() and es.path.endswith(".jsonl"):
        with open(es.path, encoding="utf-8") as f:
            n = sum(1 for line in f if line.strip())
        return (min(n, es.limit) if es.limit else n), "file"
    if es.format in PUBLISHED_ITEMS:
        return PUBLISHED_ITEMS[es.format], "published size"
    return None, "unknown"


def _validation(cfg: PipelineConfig) -> tuple[list[Line], list[str]]:
    from evaluation.config import ALIGNMENT_KINDS

    v, lines, notes = cfg.validation, [], []
    methods, bases = list(dict.fromkeys([*v.methods, "base_only"])), len(cfg.bases)
    rows = {"aligned": 0, "harmful": 0, "ref": 0, "alpaca_eval": 0, "arena_hard": 0}
    gen_calls, gen_out, unknown = 0, 0, []
    for es in v.eval_sets:
        n, how = _items(es)
        if n is None:
            unknown.append(es.name)
            continue
        per = n * bases * len(methods)
        gen_calls += per
        gen_out += per * (es.max_new_tokens or v.wsd.max_new_tokens)
        if es.kind in ALIGNMENT_KINDS:
            rows["aligned"] += per
            rows["harmful"] += per if es.kind == "harmful" else 0
            rows["ref"] += per if es.format in ("alpaca_eval", "arena_hard") else 0
            rows[es.format or ""] = rows.get(es.format or "", 0) + per
        notes.append(f"validation set {es.name}: {n} items ({how})")
    lines.append(Line("validation", "bases", f"generations: {bases} bases x {len(methods)} methods x items",
                      gen_calls, None, round(gen_out * 1.0), None, None, 0.0,
                      "self-hosted; WSD's rounds split each generation between pilot and base"))
    if v.sweep:
        sw = v.sweep
        combos = len(sw.thresholds) * len(sw.windows or [v.wsd.window]) * len(sw.rules or ["absolute"])
        n_cal = sum((_items(es)[0] or 0) for es in sw.eval_sets)
        if any(_items(es)[0] is None for es in sw.eval_sets):
            notes.append("sweep sets of unknown size (not counted): "
                         + ", ".join(es.name for es in sw.eval_sets if _items(es)[0] is None))
        lines.append(Line("validation", "bases", f"switch sweep: {combos} settings x {bases} bases x {n_cal} items",
                          combos * bases * n_cal, None, None, None, None, 0.0, "self-hosted"))
    m, aligned_other = v.metrics, rows["aligned"] - rows["aligned"] // len(methods)  # every method but base-only
    judged = []
    if m.win_rate and m.win_rate.kind == "llm":
        judged.append((m.win_rate.name, "win rate against base-only, both orders", 2 * aligned_other,
                       m.win_rate.client))
        if rows["ref"]:
            judged.append((m.win_rate.name, "win rate against the sets' references, both orders", 2 * rows["ref"],
                           m.win_rate.client))
    if m.harmlessness and m.harmlessness.kind in ("llm", "guard"):
        judged.append((m.harmlessness.name, "harmlessness, one verdict a harmful item", rows["harmful"],
                       m.harmlessness.client))
    if m.alpaca_eval:
        judged.append((m.alpaca_eval.name, "AlpacaEval annotator", rows.get("alpaca_eval", 0), m.alpaca_eval.client))
    if m.arena_hard:
        judged.append((m.arena_hard.name, "Arena-Hard judge, both games", 2 * rows.get("arena_hard", 0),
                       m.arena_hard.client))
    for who, what, calls, client in judged:
        floor = calls / client.requests_per_minute / 60 if client.requests_per_minute else 0.0
        lines.append(Line("validation", who, what, calls, None, None, None, None, floor,
                          "no price or throughput field on validation judges"))
    if unknown:
        notes.append(f"validation sets of unknown size (not counted): {', '.join(unknown)}")
    return lines, notes


def _sum(xs) -> float | None:
    xs = list(xs)
    return None if any(x is None for x in xs) else sum(xs)


def _stage_hours(stage: str, lines: list[Line]) -> tuple[float | None, float]:
    """Generators run side by side (the slowest sets the time); the judge's phases follow one another."""
    if stage != "preferences":
        hs = [x.hours for x in lines if x.calls]
        return (_sum(hs) if hs else None), sum(x.hours_floor for x in lines)
    gens = [x for x in lines if x.what.startswith("responses")]
    judge = [x for x in lines if not x.what.startswith("responses") and x.calls]
    g = None if any(x.hours is None for x in gens) else max((x.hours for x in gens), default=0.0)
    j = _sum(x.hours for x in judge)
    floor = max((x.hours_floor for x in gens), default=0.0) + sum(x.hours_floor for x in judge)
    return (None if g is None or j is None else g + j), floor


# ---------------------------------------------------------------------------------------------- schedule
def _cron_field(spec: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        rng, _, step = part.partition("/")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = map(int, rng.split("-"))
        else:
            a = b = int(rng)
            if step:
                b = hi
        out |= set(range(a, b + 1, int(step) if step else 1))
    return out


def cron_period_h(cron: str) -> float | None:
    """The longest gap between two firings of a 5-field cron schedule (checked over 8 weeks from a Monday)."""
    f = cron.split()
    if len(f) != 5:
        return None
    mins, hours, dom, mon, dow = (_cron_field(f[0], 0, 59), _cron_field(f[1], 0, 23), _cron_field(f[2], 1, 31),
                                  _cron_field(f[3], 1, 12), {d % 7 for d in _cron_field(f[4], 0, 7)})
    t, end, fires = datetime(2024, 1, 1), datetime(2024, 2, 26), []
    while t < end:  # cron: a restricted day-of-month and a restricted day-of-week fire on either
        in_dom, in_dow = t.day in dom, (t.weekday() + 1) % 7 in dow
        day_ok = (in_dom or in_dow) if f[2] != "*" and f[4] != "*" else (in_dom and in_dow)
        if t.month in mon and t.hour in hours and day_ok:
            fires += [t + timedelta(minutes=m) for m in sorted(mins)]
        t += timedelta(hours=1)
    gaps = [(b - a).total_seconds() / 3600 for a, b in zip(fires, fires[1:])]
    return max(gaps) if gaps else None


def schedule_of(config_path: str, prefect_yaml: str | Path = "prefect.yaml") -> dict | None:
    """The deployment in prefect.yaml that runs this recipe: {deployment, cron or interval, period_h}."""
    import yaml

    p = Path(prefect_yaml)
    if not p.is_file():
        return None
    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    want = Path(config_path).resolve()
    for d in doc.get("deployments") or []:
        conf = (d.get("parameters") or {}).get("config")
        if not conf or (p.parent / conf).resolve() != want:
            continue
        for s in d.get("schedules") or []:
            if s.get("cron"):
                return {"deployment": d.get("name"), "cron": s["cron"], "period_h": cron_period_h(s["cron"])}
            if s.get("interval"):
                return {"deployment": d.get("name"), "interval_s": s["interval"], "period_h": s["interval"] / 3600}
    return None


# ---------------------------------------------------------------------------------------------- the plan
def plan(cfg: PipelineConfig, config_path: str = "", assumptions: Assumptions = Assumptions(),
         strategy: str | None = None, prefect_yaml: str | Path | None = None) -> Plan:
    """The plan of `cfg`; `strategy` overrides the preference judge's (to compare screened with round_robin)."""
    a = assumptions
    n = a.prompts if a.prompts is not None else (cfg.curation.mix.total if cfg.curation else None)
    pj = cfg.preferences and cfg.preferences.judge
    out = Plan(config_path, asdict(a) | {"prompts": n, "chars_per_token": CHARS_PER_TOKEN, "judge_strategy": (
        strategy or pj.strategy) if pj and pj.kind == "pairwise" else None})
    if cfg.curation:
        out.lines.append(Line("curation", "local", f"prompts after the mix: {n if n is not None else 'all that pass'}",
                              0, 0, 0, 0.0, None, 0.0, "CPU; no model calls"))
        if n is None:
            out.notes.append("curation.mix.total is not set: the prompt count is unknown until curation runs "
                             "(give --prompts N)")
    if cfg.preferences and n is not None:
        out.lines += _preferences(cfg.preferences, n, a, strategy)
        out.notes.append(f"tokens: prompts {a.prompt_tokens} tokens on average (assumed); responses and verdicts "
                         f"{a.response_fill:.0%} of their max_tokens (an upper bound at 100%); rubric text at "
                         f"{CHARS_PER_TOKEN} characters a token; no failed responses")
    if cfg.training and n is not None:
        lines, notes = _training(cfg, n)
        out.lines += lines
        out.notes += notes
    if cfg.validation:
        lines, notes = _validation(cfg)
        out.lines += lines
        out.notes += notes
    waits = [(k, getattr(cfg.approvals, k)) for k in ("curation", "preferences", "release")]
    out.waits_h = sum(w.timeout_s for _, w in waits if w) / 3600
    for stage in dict.fromkeys(x.stage for x in out.lines):
        mine = [x for x in out.lines if x.stage == stage]
        hours, floor = _stage_hours(stage, mine)
        counted = [x for x in mine if x.calls is not None]
        out.stages[stage] = {"calls": sum(x.calls for x in counted) if counted else None,
                             "input_tokens": _sum(x.input_tokens for x in counted) if counted else None,
                             "output_tokens": _sum(x.output_tokens for x in counted) if counted else None,
                             "cost_usd": _sum(x.cost_usd for x in mine if x.calls),
                             "cost_usd_known": round(sum(x.cost_usd or 0 for x in mine), 2),
                             "hours": hours, "hours_floor": floor}
    st = out.stages.values()
    known_h = sum(s["hours"] or s["hours_floor"] for s in st)
    unknown = [k for k, s in out.stages.items() if s["hours"] is None and (s["calls"] or k == "training")]
    out.total = {"calls": sum(s["calls"] or 0 for s in st),
                 "cost_usd_known": round(sum(s["cost_usd_known"] for s in st), 2),
                 "cost_complete": all(s["cost_usd"] is not None for s in st),
                 "hours_known_or_floor": round(known_h, 2), "hours_unknown_in": unknown,
                 "approval_waits_h": out.waits_h, "worst_case_h": round(known_h + out.waits_h, 2)}
    if prefect_yaml is None and config_path:  # the project's, above the recipe
        prefect_yaml = next((d / "prefect.yaml" for d in Path(config_path).resolve().parents
                             if (d / "prefect.yaml").is_file()), None)
    sched = schedule_of(config_path, prefect_yaml) if config_path and prefect_yaml else None
    if sched and sched.get("period_h"):
        worst, period = out.total["worst_case_h"], sched["period_h"]
        sched["fits"] = ("no" if worst > period else "yes" if not unknown else
                         f"unknown (hours unknown in {', '.join(unknown)}; the rest takes {worst:.1f} h of "
                         f"{period:g})")
    out.schedule = sched
    return out


def _n(x, unit="") -> str:
    if x is None:
        return "?"
    if isinstance(x, float):
        return f"{x:,.2f}{unit}"
    return f"{x:,}{unit}"


def _h(hours, floor) -> str:
    if hours is not None:
        return f"{hours:,.1f}"
    return f"unknown (>= {floor:,.1f})" if floor else "unknown"


def render(p: Plan) -> str:
    """The plan as a table, per endpoint and per stage, then the total against the schedule."""
    head = (f"{'stage':<12} {'who':<18} {'calls':>11} {'input tok':>15} {'output tok':>15} {'USD':>12} "
            f"{'hours':>20}  what")
    rows = [f"plan for {p.config} (judge strategy: {p.assumptions.get('judge_strategy') or 'n/a'})", "", head,
            "-" * len(head)]
    for x in p.lines:
        rows.append(f"{x.stage:<12} {x.who[:18]:<18} {_n(x.calls):>11} {_n(x.input_tokens):>15} "
                    f"{_n(x.output_tokens):>15} {_n(x.cost_usd):>12} {_h(x.hours, x.hours_floor):>20}  {x.what}"
                    + (f" [{x.note}]" if x.note else ""))
    rows += ["-" * len(head)]
    for k, s in p.stages.items():
        cost = _n(s["cost_usd"]) if s["cost_usd"] is not None else f"{s['cost_usd_known']:,.2f}+?"
        rows.append(f"{k:<12} {'(stage)':<18} {_n(s['calls']):>11} {_n(s['input_tokens']):>15} "
                    f"{_n(s['output_tokens']):>15} {cost:>12} {_h(s['hours'], s['hours_floor']):>20}")
    t = p.total
    rows += ["", f"total: {t['calls']:,} calls, USD {t['cost_usd_known']:,.2f}"
             + ("" if t["cost_complete"] else " + unpriced endpoints (?)")
             + f"; {t['hours_known_or_floor']:,.1f} h of work known or floored"
             + (f" (unknown hours in: {', '.join(t['hours_unknown_in'])})" if t["hours_unknown_in"] else "")
             + f"; approval waits up to {t['approval_waits_h']:,.0f} h; worst case {t['worst_case_h']:,.1f} h"]
    s = p.schedule
    if s:
        every = f"cron '{s['cron']}'" if "cron" in s else f"every {s['interval_s']} s"
        rows.append(f"schedule: deployment {s['deployment']} ({every}), period {s['period_h']:g} h: fits: "
                    f"{s.get('fits', 'unknown')}")
    else:
        rows.append("schedule: no deployment in prefect.yaml runs this recipe")
    rows += ["", "notes:", *(f"  - {n}" for n in p.notes)]
    return "\n".join(rows)
