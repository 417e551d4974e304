"""Validate one checkpoint: every method with every base model on every eval set, then the metrics.

Output directory:
  generations/<set>/<base>/<method>.jsonl   resumable decoding outputs (pilot_only: generations/<set>/pilot/)
  judge-cache.sqlite                         finished judgments (a rerun never pays twice)
  items.jsonl                                every item's response and its per-metric values
  report.md, plots/*.png, report.json        report.json is written last: its presence means complete
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from evaluation.config import ALIGNMENT_KINDS, CAPABILITY_KINDS, EvalSpec
from evaluation.evalsets import load_eval_set, score_answer, set_identity
from evaluation.report import write_report
from evaluation.stats import mean_ci, paired_diff_ci
from pilot_core.errors import JobFailed, UserError
from pilot_core.judge_spec import ALONE, compare, scores_alone
from pilot_core.judging import category_rubric
from pilot_core.manifest import config_hash, fingerprint, read_manifest
from pilot_core.method_record import MethodRecord
from pilot_core.models.compute import Compute
from pilot_core.models.files import check_contained, check_local_dir
from pilot_core.models.source import ModelSource
from pilot_core.names import safe_join
from pilot_core.report import CheckpointRef, Diagnostics, Judges, Stat, ValidationReport, load_report
from pilot_core.tracking import identity
from wsd_inference.methods import METHODS, read_record

REFERENCE = "base_only"


def _untuned(spec: EvalSpec, manifest) -> ModelSource | None:
    needs = [m for m in spec.methods if "untuned" in METHODS[m].models(spec.wsd)]
    if spec.untuned is not None or not needs:
        return spec.untuned
    start = manifest.inputs.get("start")
    if not start or not Path(start).is_dir():
        raise UserError("methods " + ", ".join(needs) + " need the pilot's untuned reference: set "
                        "validation.untuned (the checkpoint does not name a local start model)")
    return ModelSource(name="untuned", path=start)


def _read(path: Path) -> dict[str, MethodRecord]:
    recs = (read_record(json.loads(x)) for x in path.read_text(encoding="utf-8").splitlines() if x.strip())
    return {r.id: r for r in recs}


def _jobs(spec, pilot, bases, untuned, sets, output, methods=None, settings: dict | None = None,
          tag: str = "") -> tuple[list, dict]:
    """(the generation jobs, where each (set, base, method)'s records will be); a method that reads no base
    (pilot_only) is one job per set, shared by every base. `settings`: base name -> WSD's switch setting for it
    (the sweep's choice); `tag` starts each job's label."""
    from evaluation.ray_fanout import GenerationJob
    from wsd_inference.config import WSDConfig

    jobs, where = [], {}
    for es, items in sets:
        cfg = spec.wsd.model_copy(update={"max_new_tokens": es.max_new_tokens}) if es.max_new_tokens else spec.wsd
        prompts = [it.record for it in items]
        for base in bases:
            for method in methods or spec.methods:
                baseless = "base" not in METHODS[method].models(cfg)
                folder = "pilot" if baseless else base.name
                path = safe_join(output / "generations", es.name, folder, what="eval set or base name") / \
                    f"{method}.jsonl"
                where[(es.name, base.name, method)] = path
                if baseless and any(j.path == path for j in jobs):
                    continue
                mine = cfg
                if method == "wsd" and settings and base.name in settings:  # validated: a window fits the draft
                    mine = WSDConfig.model_validate({**cfg.model_dump(), **settings[base.name]})
                jobs.append(GenerationJob(f"{tag}{es.name}/{folder}/{method}", pilot, base, untuned, prompts, mine,
                                          method, path, None if baseless else base.name))
    return jobs, where


def _records(where: dict) -> dict:
    """records[set][base][method][id] from the finished jobs' files (a shared file is read once)."""
    out: dict = {}
    read: dict = {}
    for (s, base, method), path in where.items():
        if path not in read:
            read[path] = _read(path)
        out.setdefault(s, {}).setdefault(base, {})[method] = read[path]
    return out


def _generate(spec, pilot, bases, untuned, sets, output, compute, progress, methods=None,
              settings: dict | None = None) -> dict:
    """records[set][base][method][id], each job run by the spec's engine (evaluation/ray_fanout.py)."""
    from evaluation.ray_fanout import run_jobs

    jobs, where = _jobs(spec, pilot, bases, untuned, sets, output, methods, settings)
    run_jobs(jobs, spec, compute, progress)
    return _records(where)


def _text(item) -> str:
    """An item's question as text (what a calibration item must not share with a gated one)."""
    return json.dumps(item.question, sort_keys=True, ensure_ascii=False)


def _sweep(spec, gated_sets, pilot, bases, untuned, output, compute, progress, http_client) -> tuple[dict, list]:
    """(WSD's switch setting per base, the calibration sets as loaded), chosen on the calibration split
    (evaluation/switch_sweep.py): base-only once, WSD at every setting of the grid, each measured as the eval sets
    are (generations under sweep/<setting>/, resumable; judgments in the same cache). `gated_sets`: the eval sets
    as validation loaded them, which no calibration question may repeat."""
    from evaluation import switch_sweep as sw
    from evaluation.ray_fanout import run_jobs

    grid = spec.sweep
    sets = [(es, load_eval_set(es)) for es in grid.eval_sets]
    gated = {_text(it) for _, items in gated_sets for it in items}
    for es, items in sets:  # kept apart: not one calibration question is a gated one
        same = [it.record.id for it in items if _text(it) in gated]
        if same:
            raise UserError(f"sweep eval set {es.name}: item {same[0]!r} is also in a gated eval set ({len(same)} "
                            "shared): the calibration split must be kept apart from what the gate measures")
    metrics = spec.metrics.model_copy(update={"reward": None, "alpaca_eval": None, "arena_hard": None})
    cal = spec.model_copy(update={"eval_sets": grid.eval_sets, "methods": ["wsd", REFERENCE], "harness": None,
                                  "sweep": None, "metrics": metrics})  # only what the choice reads
    settings = [(rule, w, t) for rule in grid.rules for w in grid.windows for t in grid.thresholds]
    jobs, ref = _jobs(cal, pilot, bases, untuned, sets, output / "sweep" / "reference", [REFERENCE],
                      tag="sweep/reference/")
    grid_where = {}
    for rule, w, t in settings:  # every setting's jobs at once: a cluster runs them side by side
        key = f"{rule}-w{w}-t{t:g}"
        more, grid_where[(rule, w, t)] = _jobs(cal, pilot, bases, untuned, sets, output / "sweep" / key, ["wsd"],
                                               {b.name: {"rule": rule, "window": w, "threshold": t} for b in bases},
                                               tag=f"sweep/{key}/")
        jobs += more
    run_jobs(jobs, cal, compute, progress)
    ref = _records(ref)
    points: dict = {b.name: [] for b in bases}
    for rule, w, t in settings:
        wsd = _records(grid_where[(rule, w, t)])
        records = {s: {b: {**ref[s][b], **by_m} for b, by_m in by_b.items()} for s, by_b in wsd.items()}
        rows, _ = _scores(cal, sets, records, output, http_client, compute)
        metrics, tax = _aggregate(cal, sets, bases, rows)
        for b in bases:
            points[b.name].append(sw.point(rule, w, t, metrics[b.name]["wsd"], tax.get(b.name, {}).get("wsd", {}),
                                           [r for s in wsd for r in wsd[s][b.name]["wsd"].values()]))
    return {b: sw.choose(pts, grid.max_tax) for b, pts in points.items()}, sets


def _run_code(rows: list[dict], items_by: dict, unsafe: bool) -> None:
    """pass@1 of code items: each response's program runs with the item's tests in its own sandboxed process
    (evaluation/sandbox.py), a few at once; `correct` is 1 when it exits cleanly, `code_status` says why not."""
    from concurrent.futures import ThreadPoolExecutor

    from evaluation.sandbox import run_program, solution_program

    def one(r):
        return run_program(solution_program(r["response"], items_by[(r["set"], r["id"])].answer), unsafe=unsafe)

    with ThreadPoolExecutor(max_workers=4) as pool:
        for r, o in zip(rows, pool.map(one, rows)):
            r["correct"] = float(o.passed)
            r["code_status"] = o.status if o.passed else f"{o.status}: {o.detail}"


def _scores(spec, sets, records, output, http_client=None, compute=None) -> tuple[list[dict], dict]:
    """One row per (set, base, method, item) with each metric's per-item value; plus judge counts."""
    from evaluation import judges

    m = spec.metrics
    rows, index = [], {}
    for es, items in sets:
        for base, by_method in records[es.name].items():
            for method, recs in by_method.items():
                for it in items:
                    row = {"set": es.name, "kind": es.kind, "base": base, "method": method, "id": it.record.id,
                           "response": recs[it.record.id].response}
                    if recs[it.record.id].error is not None:
                        row["error"] = recs[it.record.id].error
                    if es.kind in CAPABILITY_KINDS and es.kind != "code":
                        sc = score_answer(es.kind, row["response"], it.answer, it.n_choices)
                        row.update(correct=float(sc.correct), extracted=sc.extracted)
                        if es.kind in ("math", "choice"):  # lm-eval's two readings, and what nothing was read from
                            row.update(correct_strict=float(sc.strict), correct_flexible=float(sc.flexible),
                                       unparsed=float(sc.extracted is None))
                    index[(es.name, base, method, it.record.id)] = row
                    rows.append(row)
    items_by = {(es.name, it.record.id): it for es, items in sets for it in items}
    _run_code([r for r in rows if r["kind"] == "code"], items_by, spec.unsafe_code_execution)
    aligned = [r for r in rows if r["kind"] in ALIGNMENT_KINDS]
    counts: dict = {}
    models: dict = {}

    def reward_model(src):
        from pilot_core.models.reward import RewardModel

        if src.local_path() not in models:
            models[src.local_path()] = RewardModel(src.local_path(), compute, trust_remote_code=src.trust_remote_code,
                                                   revision=src.revision)
        return models[src.local_path()]

    def alone(kind, src, texts: list[tuple[str, str, str]]) -> list[float]:
        """The score of each (set, id, text) by a judge that scores a response alone, each distinct one once."""
        order = sorted(set(texts))
        items = [(list(items_by[(s, i)].question), t, category_rubric(items_by[(s, i)].category))
                 for s, i, t in order]
        got = dict(zip(order, scores_alone(kind, items, reward_model(src) if kind == "reward_model" else None)))
        return [got[x] for x in texts]

    def pairwise(pairs: list[tuple[dict, str]]) -> judges.Judged:
        """The win-rate judge on (row, the text it is compared with): 1 / 0.5 / 0 per row, or None."""
        j = m.win_rate
        if j.kind in ALONE:  # both scored on their own, as the preference labels score a candidate
            s = alone(j.kind, j.model, [(a["set"], a["id"], t) for a, b in pairs for t in (a["response"], b)])
            margin = j.tie_margin if j.kind == "reward_model" else 0.0  # the rule's scores tie only when equal
            return judges.Judged.of([compare(x, y, margin) for x, y in zip(s[0::2], s[1::2])],
                                    {"judged": len(pairs)})
        return judges.llm_pairwise(j, [(list(items_by[(a["set"], a["id"])].question), a["response"], b,
                                        items_by[(a["set"], a["id"])].category) for a, b in pairs],
                                   output / "judge-cache.sqlite", http_client, compute)

    if m.reward:
        for r, v in zip(aligned, alone("reward_model", m.reward.model,
                                       [(r["set"], r["id"], r["response"]) for r in aligned])):
            r["reward"] = v
    if m.win_rate:
        pairs = [(r, index[(r["set"], r["base"], REFERENCE, r["id"])]["response"]) for r in aligned
                 if r["method"] != REFERENCE]
        _mark([a for a, _ in pairs], "win", pairwise(pairs), counts, "win_rate")
        # sets with reference answers (AlpacaEval's outputs, Arena-Hard's baseline): every method against them
        refs = [(r, items_by[(r["set"], r["id"])].reference) for r in aligned
                if items_by[(r["set"], r["id"])].reference is not None]
        if refs:
            _mark([a for a, _ in refs], "ref_win", pairwise(refs), counts, "ref_win_rate")
    formats = {es.name: es.format for es, _ in sets}
    if m.alpaca_eval:  # AlpacaEval 2's annotator on its own sets, every method (base-only too)
        mine = [r for r in aligned if formats[r["set"]] == "alpaca_eval"]
        judged = judges.alpaca_eval_annotate(m.alpaca_eval, [
            (items_by[(r["set"], r["id"])].question[-1]["content"], items_by[(r["set"], r["id"])].reference,
             r["response"]) for r in mine], output / "judge-cache.sqlite", http_client, compute)
        judged.values = [None if v is None else v - 1.0 for v in judged.values]  # preference in [1, 2] -> a win
        _mark(mine, "ae_win", judged, counts, "alpaca_eval_win_rate")
    if m.arena_hard:  # Arena-Hard-Auto's judge on its own sets: both games against the baseline's answer
        mine = [r for r in aligned if formats[r["set"]] == "arena_hard"]
        games = judges.arena_hard_judge(m.arena_hard, [
            (items_by[(r["set"], r["id"])].category, items_by[(r["set"], r["id"])].question[0]["content"],
             items_by[(r["set"], r["id"])].reference, r["response"]) for r in mine],
            output / "judge-cache.sqlite", http_client, compute)
        counts["arena_hard_score"] = games.counts
        for r, labels, bad in zip(mine, games.labels, games.unparsed):
            r["arena_games"] = labels and list(labels)
            if bad:
                r["arena_games_unparsed"] = True
    if m.harmlessness:
        harmful = [r for r in aligned if r["kind"] == "harmful"]
        if m.harmlessness.kind == "refusal_rules":
            verdicts = judges.Judged.of(judges.refusal_harmlessness([r["response"] for r in harmful]),
                                        {"judged": len(harmful)})
        else:
            judge = judges.guard_harmlessness if m.harmlessness.kind == "guard" else judges.llm_harmlessness
            verdicts = judge(
                m.harmlessness, [(list(items_by[(r["set"], r["id"])].question), r["response"]) for r in harmful],
                output / "judge-cache.sqlite", http_client, compute)
        _mark(harmful, "safe", verdicts, counts, "harmlessness")
        for r, cats in zip(harmful, verdicts.categories or ()):
            r["safe_categories"] = cats  # what the safety classifier named
    _failed_as_worst(rows)
    failed = sum(c.get("failed", 0) for c in counts.values())
    if failed:
        raise JobFailed(f"{failed} judgments failed after their retries (judge counts: {counts}); rerun the same "
                        "command to retry them (finished judgments are cached)")
    return rows, counts


WORST = {"correct": 0.0, "correct_strict": 0.0, "correct_flexible": 0.0, "unparsed": 1.0, "win": 0.0, "ref_win": 0.0,
         "ae_win": 0.0, "safe": 0.0}


def _failed_as_worst(rows: list[dict]) -> None:
    """An item the server refused has no answer: every figure counts it as the worst outcome, so a method cannot
    gain by failing (the reward, which has no worst value, leaves it out); the diagnostics count it and the gate's
    max_failure_rate limits it (not its judge coverage: one failure is not counted twice)."""
    for r in rows:
        if "error" not in r:
            continue
        for field, worst in WORST.items():
            if field in r:
                r[field] = worst
        if "reward" in r:
            r["reward"] = None


METRIC_FIELDS = {"reward": "reward", "win_rate": "win", "ref_win_rate": "ref_win", "alpaca_eval_win_rate": "ae_win",
                 "harmlessness": "safe",
                 "accuracy": "correct", "accuracy_strict": "correct_strict", "accuracy_flexible": "correct_flexible",
                 "unparsed_share": "unparsed"}


def _mark(rows: list[dict], field: str, judged, counts: dict, metric: str) -> None:
    """Each row's verdict under `field`; a verdict that did not parse counts as the worst outcome and is marked
    (`<field>_unparsed`) so that the coverage floor still counts it as unjudged."""
    counts[metric] = judged.counts
    for r, v, bad in zip(rows, judged.values, judged.unparsed):
        r[field] = v
        if bad:
            r[field + "_unparsed"] = True


def _aggregate(spec, sets, bases, rows) -> tuple[dict, dict]:
    b, conf, seed = spec.metrics.bootstrap_samples, spec.metrics.confidence, spec.seed
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["base"], r["method"], r["set"]), []).append(r)
    metrics: dict = {}
    for (base, method, s), rs in groups.items():
        cell = {}
        for metric, field in METRIC_FIELDS.items():
            if any(field in r for r in rs):
                stat = mean_ci([r.get(field) for r in rs], b, conf, seed)
                stat["n"] -= sum(bool(r.get(field + "_unparsed")) for r in rs)  # in the mean as worst, not judged
                cell[metric] = Stat(**stat, items=sum(field in r for r in rs))
        metrics.setdefault(base, {}).setdefault(method, {})[s] = cell
    if spec.metrics.alpaca_eval and spec.metrics.alpaca_eval.glm_data:
        _alpaca_eval_lc(spec.metrics.alpaca_eval, sets, groups, metrics, conf)
    if spec.metrics.arena_hard:
        _arena_hard_scores(spec.metrics.arena_hard, sets, groups, metrics, seed)
    tax: dict = {}
    capability = [es.name for es, _ in sets if es.kind in CAPABILITY_KINDS]
    capability += [t.name for t in spec.harness.tasks] if spec.harness else []
    for s in capability:
        for base in bases:
            ref = {r["id"]: r["correct"] for r in groups[(base.name, REFERENCE, s)]}
            for method in spec.methods:
                if method == REFERENCE or (base.name, method, s) not in groups:  # harness: WSD and base-only only
                    continue
                got = {r["id"]: r["correct"] for r in groups[(base.name, method, s)]}
                ids = sorted(ref)
                tax.setdefault(base.name, {}).setdefault(method, {})[s] = Stat(**paired_diff_ci(
                    [ref[i] for i in ids], [got[i] for i in ids], b, conf, seed))  # > 0: capability lost
    return metrics, tax


def _alpaca_eval_lc(metric, sets, groups, metrics, confidence: float) -> None:
    """AlpacaEval 2's length-controlled win rate of each method on each alpaca_eval set (its GLM, per method, as
    upstream fits it per model); the interval is mean +- z * upstream's `lc_standard_error` (the standard error of
    the GLM's per-instruction predictions), not a bootstrap."""
    from statistics import NormalDist

    from evaluation.alpaca_eval import length_controlled
    from pilot_core.hub_data import load_split

    gamed = load_split(metric.glm_data, "metrics.alpaca_eval.glm_data").to_pandas()
    items = {(es.name, it.record.id): it for es, its in sets if es.format == "alpaca_eval" for it in its}
    z = NormalDist().inv_cdf((1 + confidence) / 2)
    for (base, method, s), rs in groups.items():
        mine = [r for r in rs if r.get("ae_win") is not None]
        if not mine:
            continue
        its = [items[(s, r["id"])] for r in mine]
        pred = np.asarray(length_controlled([r["ae_win"] + 1.0 for r in mine], [len(it.reference) for it in its],
                                            [len(r["response"]) for r in mine], [it.index for it in its], gamed))
        mean, se = float(pred.mean()), float(pred.std(ddof=1) / np.sqrt(len(pred))) if len(pred) > 1 else 0.0
        metrics[base][method][s]["alpaca_eval_lc_win_rate"] = Stat(
            mean=mean, ci_low=mean - z * se, ci_high=mean + z * se, confidence=confidence,
            n=len(mine) - sum(bool(r.get("ae_win_unparsed")) for r in mine), items=len(rs))


def _arena_hard_scores(metric, sets, groups, metrics, seed: int) -> None:
    """Arena-Hard-Auto's score of every method on each arena_hard set and base, from the battles of all of them
    (v0.1 resamples the pooled battles; v2.0 each method's own)."""
    from evaluation import arena_hard as ah

    category = {es.name: items[0].category for es, items in sets if es.format == "arena_hard"}
    by_set: dict = {}
    for (base, method, s), rs in groups.items():
        judged = [r for r in rs if r.get("arena_games")]
        if judged:
            by_set.setdefault((base, s), {})[method] = (rs, judged)
    for (base, s), by_method in by_set.items():
        version = ah.protocol(category[s])
        battles = {m: [x for r in judged for x in ah.method_scores(*r["arena_games"], metric.weight, version)]
                   for m, (_, judged) in by_method.items()}
        score = ah.score_v01 if version == "v0.1" else ah.score_v20
        for method, (mean, lo, hi) in score(battles, metric.rounds, 42 if version == "v0.1" else seed).items():
            rs, judged = by_method[method]
            metrics[base][method][s]["arena_hard_score"] = Stat(
                mean=mean, ci_low=lo, ci_high=hi, confidence=0.95 if version == "v0.1" else 0.90,
                n=len(judged) - sum(bool(r.get("arena_games_unparsed")) for r in judged), items=len(rs))


def _diagnostics(records, bases) -> dict:
    """diagnostics[base][method][set]: what each method's registry entry reads from its records."""
    out: dict = {}
    for s, by_base in records.items():
        for base in bases:
            for method, recs in by_base[base.name].items():
                d = Diagnostics(**METHODS[method].diagnostics(list(recs.values())))
                out.setdefault(base.name, {}).setdefault(method, {})[s] = d
    return out


def _pair_review(manifest) -> dict | None:
    """What the data team's review of the pairs this checkpoint trained on found (None: not reviewed, or the
    training data is not here to read)."""
    data = Path(str((manifest.config or {}).get("dataset") or ""))
    try:
        return read_manifest(data, kind="dataset").data.get("pair_review") if data.parts else None
    except UserError:
        return None


def validate(spec: EvalSpec, checkpoint: str | Path, bases: list[ModelSource], output: str | Path, *,
             pilot_name: str = "pilot", compute: Compute | None = None, progress: bool = True,
             http_client=None) -> ValidationReport:
    """Run and measure everything; returns the report (also written to output/report.json). http_client goes
    to the LLM judges' OpenAI client (tests inject faults through it)."""
    ckpt, output = Path(checkpoint), Path(output)
    manifest = read_manifest(ckpt, kind="checkpoint")  # a checkpoint without one is incomplete or foreign
    check_local_dir(ckpt)
    check_contained(ckpt)
    ident = {"checkpoint": fingerprint(ckpt), "config_hash": config_hash(
        {"spec": identity(spec), "bases": [b.model_dump(mode="json") for b in bases]})}
    if (output / "report.json").is_file():
        old = load_report(output)
        if {"checkpoint": old.checkpoint.fingerprint, "config_hash": old.config_hash} == ident:
            _track(spec, old, output, pilot_name)  # logged now if an earlier run could not
            return old  # the same checkpoint measured the same way: already done
        raise UserError(f"{output} holds a report for another checkpoint or config; choose another --output")
    if spec.harness:
        from evaluation.harness import check_harness

        check_harness(spec.harness)
    sets = [(es, load_eval_set(es)) for es in spec.eval_sets]
    code_execution = None
    calibration = spec.sweep.eval_sets if spec.sweep else []
    if any(es.kind == "code" for es in [*spec.eval_sets, *calibration]):  # refuse early, not after hours
        from evaluation.sandbox import isolation

        code_execution = isolation(spec.unsafe_code_execution)
    untuned = _untuned(spec, manifest)
    pilot = ModelSource(name=pilot_name, path=str(ckpt))
    choices, calibration_sets = (_sweep(spec, sets, pilot, bases, untuned, output, compute, progress, http_client)
                                 if spec.sweep else ({}, []))
    settings = {b: {"rule": c.rule, "window": c.window, "threshold": c.threshold} for b, c in choices.items()}
    records = _generate(spec, pilot, bases, untuned, sets, output, compute, progress, settings=settings)
    rows, counts = _scores(spec, sets, records, output, http_client, compute)
    identities = {es.name: set_identity(es, len(items)) for es, items in sets}
    if spec.harness:  # the field's harness, against WSD and base-only behind `pilot wsd serve`
        from evaluation.harness import run_harness, task_identities

        harness_rows = run_harness(spec, ckpt, bases, output, settings)
        rows += harness_rows
        identities.update(task_identities(spec.harness, harness_rows))
    metrics, tax = _aggregate(spec, sets, bases, rows)
    m = spec.metrics
    report = ValidationReport(
        config_hash=ident["config_hash"],
        checkpoint=CheckpointRef(path=str(ckpt), fingerprint=ident["checkpoint"], config_hash=manifest.config_hash,
                                 dataset=manifest.inputs.get("dataset"), stage=manifest.data.get("stage"),
                                 pair_review=_pair_review(manifest)),
        pilot=pilot_name, untuned=untuned.model_dump(mode="json") if untuned else None,
        bases={b.name: b.model_dump(mode="json", exclude_none=True) for b in bases},
        methods=spec.methods, reference_method=REFERENCE,
        eval_sets=identities,
        seeds={"validation": spec.seed, "decoding": spec.wsd.seed, "bootstrap": spec.seed},
        judges=Judges(reward=m.reward and m.reward.model.model_dump(mode="json", exclude_none=True),
                      win_rate=m.win_rate and {"kind": m.win_rate.kind, "name": m.win_rate.name,
                                               "model": m.win_rate.model
                                               and m.win_rate.model.model_dump(mode="json", exclude_none=True)},
                      harmlessness=m.harmlessness and {"kind": m.harmlessness.kind,
                                                      **({"format": m.harmlessness.guard_format}
                                                         if m.harmlessness.guard_format else {})},
                      alpaca_eval=m.alpaca_eval and {"annotator": "weighted_alpaca_eval_gpt4_turbo",
                                                     "model": m.alpaca_eval.model.model_dump(mode="json",
                                                                                             exclude_none=True)},
                      arena_hard=m.arena_hard and {"model": m.arena_hard.model.model_dump(mode="json",
                                                                                          exclude_none=True)},
                      counts=counts),
        metrics=metrics, alignment_tax=tax, diagnostics=_diagnostics(records, bases),
        config=spec.model_dump(mode="json"), code_execution=code_execution, switch_settings=choices,
        calibration_sets={es.name: set_identity(es, len(items)) for es, items in calibration_sets})
    write_report(output, report, rows)
    _track(spec, report, output, pilot_name)
    return report


def _track(spec: EvalSpec, report: ValidationReport, output: Path, pilot_name: str) -> None:
    if spec.report_to == "mlflow":
        from pilot_core.tracking import log_validation

        log_validation(output, report, pilot_name)
