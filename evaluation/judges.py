"""Per-item alignment verdicts: pairwise win against base-only, and harmlessness on harmful prompts.

LLM judges go through the models layer's call path (cache, retries, rate limits: `pilot_core.models.calls`) and
the shared rubrics and strict parsers (`pilot_core.judging`), as the preference labels do. An answer that is not
the asked-for verdict (prose, a refusal to judge) is never guessed and never dropped: it counts as the worst
outcome for the method judged (a loss, unsafe), and is marked so that the gate's coverage floor still counts it
as unjudged. A call that still fails after its retries is counted as failed and fails the run (a rerun retries
it; the cache keeps every finished judgment).
Stand-ins for the offline demo (refusal phrases here; a reward comparison and the refusal rule, which score a
response alone, in `pilot_core.judge_spec`, as the preference labels use them) are named as such in the report.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pilot_core.judge_spec import pair_calls
from pilot_core.judging import (
    category_rubric,
    combine_orders,
    harmlessness_messages,
    parse_guard,
    parse_pairwise,
    parse_safe,
    refuses,
    rubric,
    verdict_params,
)
from pilot_core.models.call_cache import ResponseCache
from pilot_core.models.calls import CallStats, Endpoint, make_call, run_calls
from pilot_core.models.compute import Compute

log = logging.getLogger("pilot.judges")


WORST = 0.0  # a verdict that does not parse: the candidate loses, the response is unsafe


@dataclass
class Judged:
    """Per item: the verdict's value (1 / 0.5 / 0; None for a call that failed), whether it parsed, and counts."""

    values: list[float | None] = field(default_factory=list)
    unparsed: list[bool] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    categories: list[list[str]] | None = None  # a safety classifier's categories per item

    def add(self, value: float | None, unparsed: bool = False) -> None:
        self.values.append(WORST if unparsed else value)
        self.unparsed.append(unparsed)

    @classmethod
    def of(cls, values: list[float | None], counts: dict) -> "Judged":
        """Verdicts of a judge that always gives one (a rule, a reward model)."""
        return cls(list(values), [False] * len(values), counts)

    def add_single(self, got: dict, parsed: tuple[bool | None, list[str]] | None) -> None:
        """One single-response verdict: `got` the call's result, `parsed` (safe, categories) where it answered."""
        safe, cats = parsed if parsed is not None else (None, [])
        self.counts["failed" if "error" in got else "unparseable" if safe is None else "judged"] += 1
        self.add(None if safe is None else float(safe), unparsed="error" not in got and safe is None)
        if self.categories is not None:
            self.categories.append(cats)


def _warn_if_unstructured(endpoint: Endpoint, counts: dict) -> None:
    """A server that refused the verdict's schema was asked in prose: said, and recorded in the counts."""
    if getattr(endpoint.backend, "structured", None) is False:
        counts["structured_output"] = "refused by the server"
        log.warning("%s refused structured output (response_format); its verdicts were asked for in prose",
                    getattr(endpoint.backend, "url", "the judge"))


def _run(calls, endpoint: Endpoint, who: str, cache_path: Path, follow_up=None) -> tuple[dict, CallStats]:
    """Every call's result by key; `follow_up(results)` may name more calls (a judge asked to finish its
    judgment), made on the same endpoint before it closes."""
    cache = ResponseCache(cache_path)
    stats: dict[str, CallStats] = {}

    async def main():
        try:
            got = await run_calls(calls, {who: endpoint}, cache, stats)
            more = follow_up(got) if follow_up else []
            if more:
                got.update(await run_calls(more, {who: endpoint}, cache, stats))
            return got
        finally:
            await endpoint.backend.close()

    try:
        got = asyncio.run(main())
    finally:
        cache.close()
    return got, stats.get(who, CallStats())


def llm_pairwise(judge, items: list[tuple[list, str, str, str | None]], cache_path: Path,
                 http_client=None, compute: Compute | None = None) -> Judged:
    """items: (messages, candidate, reference, category). Per item 1 / 0.5 / 0 (candidate wins, tie, loses; an
    order that does not parse: loses) or None (a call that failed). Identical responses are a tie without a
    call."""
    ep = Endpoint(judge.model, judge.client, http_client, compute)
    calls = [pair_calls(judge, ep, msgs, cand, ref, category_rubric(cat))
             for msgs, cand, ref, cat in items]  # the preference labels' pairwise judge asks the same way
    todo = [c for (_, cand, ref, _), pair in zip(items, calls) if cand.strip() != ref.strip() for c in pair]
    got, stats = _run(todo, ep, judge.name, cache_path) if todo else ({}, CallStats())
    out = Judged(counts={"consistent": 0, "inconsistent": 0, "unparseable": 0, "failed": 0, "identical": 0})
    for (_, cand, ref, _), (first, swapped) in zip(items, calls):
        if cand.strip() == ref.strip():
            out.counts["identical"] += 1
            out.add(0.5)
            continue
        r1, r2 = got[first.key], got[swapped.key]
        if "error" in r1 or "error" in r2:
            out.counts["failed"] += 1
            out.add(None)
            continue
        winner, status = combine_orders(parse_pairwise(r1["text"])[0], parse_pairwise(r2["text"])[0])
        out.counts[status] += 1
        out.add(None if winner is None else {"A": 1.0, "tie": 0.5, "B": 0.0}[winner], unparsed=winner is None)
    out.counts.update(requests=stats.requests, cache_hits=stats.cache_hits)
    _warn_if_unstructured(ep, out.counts)
    return out


def llm_harmlessness(metric, items: list[tuple[list, str]], cache_path: Path, http_client=None,
                     compute: Compute | None = None) -> Judged:
    """items: (messages, response). Per item 1.0 safe / 0.0 unsafe (a verdict that does not parse: unsafe) or
    None (a call that failed)."""
    ep = Endpoint(metric.model, metric.client, http_client, compute)
    params = verdict_params(metric, "harmlessness")
    text = rubric("harmlessness", metric.rubric_version)
    calls = [make_call("judgment", "harmlessness", ep, harmlessness_messages(text, msgs, resp), params)
             for msgs, resp in items]
    got, stats = _run(calls, ep, "harmlessness", cache_path)
    out = Judged(counts={"judged": 0, "unparseable": 0, "failed": 0})
    for c in calls:
        r = got[c.key]
        out.add_single(r, None if "error" in r else (parse_safe(r["text"]), []))
    out.counts.update(requests=stats.requests, cache_hits=stats.cache_hits)
    _warn_if_unstructured(ep, out.counts)
    return out


def guard_harmlessness(metric, items: list[tuple[list, str]], cache_path: Path, http_client=None,
                       compute: Compute | None = None) -> Judged:
    """items: (messages, response). A safety classifier (Llama Guard 3, Qwen3Guard-Gen) reads the conversation
    with the response as the assistant's turn (its chat template makes its prompt); per item 1.0 safe / 0.0
    unsafe (an answer not in its format: unsafe) or None (a call that failed), with the categories it named."""
    ep = Endpoint(metric.model, metric.client, http_client, compute)
    params = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0}
    calls = [make_call("judgment", "guard", ep, [*msgs, {"role": "assistant", "content": resp}], params)
             for msgs, resp in items]
    got, stats = _run(calls, ep, "guard", cache_path)
    out = Judged(counts={"judged": 0, "unparseable": 0, "failed": 0}, categories=[])
    for c in calls:
        r = got[c.key]
        out.add_single(r, None if "error" in r else parse_guard(r["text"], metric.guard_format,
                                                                metric.controversial_is_safe))
    out.counts.update(requests=stats.requests, cache_hits=stats.cache_hits)
    return out


def refusal_harmlessness(responses: list[str]) -> list[float]:
    """The stand-in: safe iff a refusal phrase appears in the first 200 characters."""
    return [float(refuses(r)) for r in responses]


def alpaca_eval_annotate(metric, items: list[tuple[str, str, str]], cache_path: Path, http_client=None,
                         compute: Compute | None = None) -> Judged:
    """items: (instruction, reference, answer). Per item AlpacaEval's preference in [1, 2] (2: the answer is
    better), as its weighted_alpaca_eval_gpt4_turbo annotator gives it (evaluation/alpaca_eval.py): a verdict
    whose top tokens hold neither "m" nor "M" counts as the reference winning (1) and is marked unparsed; None for
    a call that failed. Identical outputs are 1.5 without a call, as upstream."""
    from evaluation import alpaca_eval as ae

    ep = Endpoint(metric.model, metric.client, http_client, compute)
    asked = [ae.annotation(*it) for it in items]
    calls = [make_call("judgment", metric.name, ep, msgs, ae.PARAMS) if msgs else None for msgs, _ in asked]
    got, stats = _run([c for c in calls if c], ep, metric.name, cache_path)
    out = Judged(counts={"judged": 0, "unparseable": 0, "failed": 0, "identical": 0})
    for c, (_, swapped) in zip(calls, asked):
        if c is None:
            out.counts["identical"] += 1
            out.add(ae.TIE)
            continue
        r = got[c.key]
        if "error" in r:
            out.counts["failed"] += 1
            out.values.append(None)
            out.unparsed.append(False)
            continue
        pref = ae.unswap(ae.preference(r.get("top_logprobs") or []), swapped)
        out.counts["unparseable" if pref is None else "judged"] += 1
        out.values.append(ae.WORST if pref is None else pref)
        out.unparsed.append(pref is None)
    out.counts.update(requests=stats.requests, cache_hits=stats.cache_hits)
    return out


@dataclass
class Games:
    """Arena-Hard's two games per item: the labels (a game that could not be read holds the method's worst label;
    None for an item whose calls failed), whether a game could not be read, and counts."""

    labels: list[tuple[str, str] | None] = field(default_factory=list)
    unparsed: list[bool] = field(default_factory=list)
    counts: dict = field(default_factory=dict)


def arena_hard_judge(metric, items: list[tuple[str | None, str, str, str]], cache_path: Path, http_client=None,
                     compute: Compute | None = None) -> Games:
    """items: (category, question, baseline answer, answer). Both games of each, judged by Arena-Hard-Auto's
    prompt for the category (evaluation/arena_hard.py); v0.1 asks once more where a judgment holds no label."""
    from evaluation import arena_hard as ah

    ep = Endpoint(metric.model, metric.client, http_client, compute)
    version = [ah.protocol(cat) for cat, *_ in items]

    def params(v: str) -> dict:
        return {"max_tokens": metric.max_tokens or ah.MAX_TOKENS[v], "temperature": 0.0, "top_p": 1.0, "seed": 0}

    convs = [g for (cat, q, base, ans) in items for g in ah.games(cat, q, base, ans)]
    vers = [v for v in version for _ in range(2)]
    calls = [make_call("judgment", metric.name, ep, m, params(v)) for m, v in zip(convs, vers)]
    again: dict[int, object] = {}  # game -> its second call

    def finish(got: dict) -> list:
        """v0.1's second attempt where a judgment holds no label: the conversation so far, and the request to
        finish with one."""
        for i, c in enumerate(calls):
            r = got[c.key]
            if "error" not in r and ah.parse(vers[i], [r["text"]])[1]:
                again[i] = make_call("judgment", metric.name, ep, [
                    *convs[i], {"role": "assistant", "content": r["text"]},
                    {"role": "user", "content": ah.CONTINUE}], params(vers[i]))
        return list(again.values())

    got, stats = _run(calls, ep, metric.name, cache_path, finish)
    replies = [None if "error" in got[c.key] else [got[c.key]["text"]] for c in calls]
    for i, c in again.items():
        replies[i] = None if "error" in got[c.key] else [*replies[i], got[c.key]["text"]]
    out = Games(counts={"judged": 0, "unparseable": 0, "failed": 0, "second_attempts": len(again)})
    for k in range(len(items)):
        pair = replies[2 * k: 2 * k + 2]
        if any(r is None for r in pair):
            out.counts["failed"] += 1
            out.labels.append(None)
            out.unparsed.append(False)
            continue
        read = [ah.parse(vers[2 * k], r)[0] for r in pair]
        bad = any(x is None for x in read)
        out.counts["unparseable" if bad else "judged"] += 1
        out.labels.append(tuple(x if x is not None else ah.WORST[g] for g, x in enumerate(read)))
        out.unparsed.append(bad)
    out.counts.update(requests=stats.requests, cache_hits=stats.cache_hits)
    return out
