"""AlpacaEval 2 and Arena-Hard-Auto as their projects compute them: our prompts, verdict readings and scores equal
to the upstream code (ported in tests/alpaca_eval_reference.py and tests/arena_hard_reference.py, each function
naming the upstream file it was copied from) on the same inputs; the loaders check the reference outputs'
generator and read Arena-Hard's v0.1 and v2.0 schemas."""

import json
import math
import random

import numpy as np
import pytest

from evaluation import alpaca_eval as ae
from evaluation import arena_hard as ah
from evaluation.config import EvalSet
from evaluation.evalsets import load_eval_set
from pilot_core.errors import UserError

from . import alpaca_eval_reference as ref_ae
from . import arena_hard_reference as ref_ah
from .helpers import REPO

B = REPO / "tests" / "fixtures" / "benchmarks"
INSTRUCTIONS = ["What is the capital of Australia?", "Write a haiku about {output_1} braces.", "",
                'Say "m" or "M".', "Explain recursion.\n\nUse one example.", "ünïcode — and emoji 🎉"]


# ------------------------------------------------------------------------------------------ AlpacaEval 2
def test_alpaca_eval_prompts_and_swaps_are_upstream_s():
    for i, instruction in enumerate(INSTRUCTIONS + [f"instruction {k}" for k in range(200)]):
        assert ae.is_switched(instruction) == ref_ae.is_switched(instruction)
        out_1, out_2 = f"reference {i} {{instruction}}", f"answer {i}"
        assert ae.prompt_messages(instruction, out_1, out_2) == ref_ae.fill_prompt(instruction, out_1, out_2)
    swaps = [ae.is_switched(f"instruction {k}") for k in range(200)]
    assert 60 < sum(swaps) < 140  # a seeded coin, not a constant


def test_alpaca_eval_reads_the_annotators_log_probabilities_as_upstream():
    cases = [[{"token": "M", "logprob": -0.0176}, {"token": "m", "logprob": -4.0488},
              {"token": "Both", "logprob": -14.9}],
             [{"token": "m", "logprob": -0.3}, {"token": "M", "logprob": -1.4}],
             [{"token": "M", "logprob": -0.2}, {"token": "The", "logprob": -2.0}],  # only one of them: 2 exactly
             [{"token": "m", "logprob": -3.0}],
             [{"token": " m", "logprob": -0.1}, {"token": "Model", "logprob": -0.5}]]  # neither: upstream's NaN
    for top in cases:
        want = ref_ae.logprob_preference(top)
        got = ae.preference(top)
        assert (got is None and math.isnan(want)) or got == pytest.approx(want, abs=1e-12)
    # swapped back as upstream does (3 - preference): the same judgment seen in the other order
    assert ae.unswap(1.2, True) == pytest.approx(1.8) and ae.unswap(1.2, False) == 1.2 and ae.unswap(None, True) is None
    msgs, swapped = ae.annotation("Same?", "identical", "identical")
    assert msgs is None and not swapped  # upstream: 1.5 without a call


def _annotations(n: int, seed: int):
    """Preferences that follow a length difference and a per-instruction difficulty, as an annotator's would."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        l_ref, l_ans = int(rng.integers(200, 1500)), int(rng.integers(100, 3000))
        p = 1 / (1 + math.exp(-(0.8 * math.tanh((l_ans - l_ref) / 800) + 0.3 + rng.normal(0, 0.6))))
        pref = 1.5 if i % 17 == 0 else 1 + p
        rows.append({"instruction": f"q{i}", "output_1": "r" * l_ref, "output_2": "a" * l_ans, "index": i,
                     "generator_1": "gpt4_1106_preview", "generator_2": "pilot-wsd", "preference": pref})
    return rows


def test_alpaca_eval_win_rates_equal_upstream_s(tmp_path):
    """The raw win rate is the mean of preference - 1 (metrics/winrate.py); the length-controlled one is
    AlpacaEval's GLM (metrics/glm_winrate.py, length_controlled_v1) fitted on the same annotations with the same
    gamed baselines (a stand-in df_gamed.csv: the hub's file cannot be fetched here), to the last digit."""
    gamed = tmp_path / "df_gamed.csv"
    ref_ae.make_df_gamed(gamed, 120, seed=1)
    import pandas as pd

    for seed in (0, 1):
        rows = _annotations(120, seed)
        up = ref_ae.get_winrate(rows)
        assert np.mean([r["preference"] - 1 for r in rows]) == pytest.approx(up["win_rate"] / 100, abs=1e-12)
        up = ref_ae.get_length_controlled_winrate(rows, str(gamed))
        got = ae.length_controlled([r["preference"] for r in rows], [len(r["output_1"]) for r in rows],
                                   [len(r["output_2"]) for r in rows], [r["index"] for r in rows],
                                   pd.read_csv(gamed))
        assert np.mean(got) == pytest.approx(up["length_controlled_winrate"] / 100, abs=1e-9)
        assert np.std(got, ddof=1) / np.sqrt(len(got)) == pytest.approx(up["lc_standard_error"] / 100, abs=1e-9)
        assert abs(np.mean(got) - up["win_rate"] / 100) > 1e-3  # the length term moved it: not the raw rate
    with pytest.raises(UserError, match="instruction 130 has no difficulty"):
        ae.length_controlled([1.5], [10], [20], [130], pd.read_csv(gamed))
    with pytest.raises(UserError, match="10 of its 120 instructions were answered"):  # a subset: another figure
        ae.length_controlled([1.5] * 10, [10] * 10, [20] * 10, list(range(10)), pd.read_csv(gamed))


def test_alpaca_eval_2_is_only_scored_against_gpt4_turbos_references_and_all_of_them():
    from evaluation.config import EvalSpec

    ae_set = {"name": "ae", "version": "t", "format": "alpaca_eval", "path": str(B / "alpaca_eval.json")}
    metric = {"model": {"name": "annotator", "url": "http://127.0.0.1:1/v1", "served_model": "gpt-4-1106-preview"}}
    with pytest.raises(ValueError, match="set reference_generator: gpt4_1106_preview"):
        EvalSpec.model_validate({"eval_sets": [ae_set], "metrics": {"alpaca_eval": metric}})
    ok = {**ae_set, "reference_generator": "gpt4_1106_preview"}
    EvalSpec.model_validate({"eval_sets": [ok], "metrics": {"alpaca_eval": metric}})
    glm = {**metric, "glm_data": {"path": "csv", "data_files": "df_gamed.csv", "split": "train"}}
    with pytest.raises(ValueError, match="fitted on all its instructions: no limit"):
        EvalSpec.model_validate({"eval_sets": [{**ok, "limit": 2}], "metrics": {"alpaca_eval": glm}})


def test_alpaca_eval_references_must_be_the_configured_generator(tmp_path):
    es = EvalSet(name="ae", version="t", format="alpaca_eval", path=str(B / "alpaca_eval.json"),
                 reference_generator="gpt4_1106_preview")
    items = load_eval_set(es)
    assert [it.index for it in items] == [0, 1, 2] and all(it.reference for it in items)
    davinci = tmp_path / "alpaca_eval.json"
    rows = json.loads((B / "alpaca_eval.json").read_text())
    rows[1]["generator"] = "text_davinci_003"
    davinci.write_text(json.dumps(rows))
    with pytest.raises(UserError, match=r"alpaca_eval.json:2: 'generator' is 'text_davinci_003', not "
                                        r"'gpt4_1106_preview'"):
        load_eval_set(es.model_copy(update={"path": str(davinci)}))


# ------------------------------------------------------------------------------------------ Arena-Hard-Auto
def test_arena_hard_judge_prompts_are_upstream_s():
    q, a, b = "Write {a} poem.", "answer one", "answer two"
    for version, category in (("v0.1", "arena-hard-v0.1"), ("v2.0", "hard_prompt"), ("v2.0", "creative_writing")):
        got = ah.messages(category, q, a, b)
        assert got == [{"role": "system", "content": ref_ah.system_prompt(version, category)},
                       {"role": "user", "content": ref_ah.user_prompt(version, category, q, a, b)}]
    assert ah.messages("creative_writing", q, a, b)[0] != ah.messages("hard_prompt", q, a, b)[0]
    g1, g2 = ah.games("hard_prompt", q, "BASELINE", "MINE")
    assert "A's Answer|>\nBASELINE" in g1[1]["content"] and "A's Answer|>\nMINE" in g2[1]["content"]


JUDGMENTS = ["My final verdict is tie: [[A=B]]", "Assistant B is better: [[B>>A]]. Final: [[B>>A]]",
             "[[A>B]] at first, but on reflection [[B>A]]", "no label at all", "lower case [[b>a]]",
             "single brackets [B>A] here", "[[A>>>B]] is not a label", "both [A>B] and later [[B>A]]", "",
             "reversed [[B<A]]", "[[A<<B]] and again [[A<<B]]",
             "Verdict: [[A>B]]\n\nThe end."]


def test_arena_hard_reads_verdicts_as_upstream():
    import re

    def known(label, version):  # upstream records any [[...]] it finds; a game whose label its battles do not
        return label if label in ah.KNOWN[version] else None  # know is dropped (v0.1) or stops show_result (v2.0)

    for text in JUDGMENTS:
        assert ah.parse("v2.0", [text])[0] == known(ref_ah.parse_v20(text), "v2.0"), text
        first, again = ah.parse("v0.1", [text])
        assert again == ref_ah.get_score_v01("\n" + text, re.compile(ref_ah.REGEX_PATTERN_V01))[1], text
        assert first == known(ref_ah.parse_v01([text]), "v0.1"), text
        if again:  # v0.1's second attempt: the verdict is read from both replies
            for more in ("My final verdict: [[B>A]]", "still nothing", "[[A>B]] or [[A=B]]"):
                want = known(ref_ah.parse_v01([text, more]), "v0.1")
                assert ah.parse("v0.1", [text, more]) == (want, False), (text, more)
    # a reversed spelling: v0.1's battles drop it (no verdict for us), v2.0's label_to_score reads it
    assert ah.parse("v0.1", ["[[B<A]]"])[0] is None and ah.parse("v2.0", ["[[B<A]]"])[0] == "B<A"
    assert ref_ah.battles_v01([{"question_id": "q", "model": "m", "games": [{"score": "B<A"}, {"score": "B<A"}]}],
                              "gpt-4-0314").empty
    assert ah.parse("v2.0", ["[[A>>>B]]"])[0] is None and ref_ah.parse_v20("[[A>>>B]]") == "A>>>B"


def _judgments(models: list[str], n: int, seed: int, v2: bool = False) -> list[dict]:
    rng = random.Random(seed)
    odds = {m: k for k, m in enumerate(models)}  # later models win more often
    out = []
    for m in models:
        for q in range(n):
            w = [1, 2, 2, 2 + odds[m], 1 + odds[m]]
            g1, g2 = rng.choices(ah.LABELS, weights=w)[0], rng.choices(ah.LABELS, weights=w[::-1])[0]
            key = {"uid": f"q{q}", "category": "hard_prompt"} if v2 else {"question_id": f"q{q}"}
            out.append({**key, "model": m, "games": [{"score": g1}, {"score": g2}]})
    return out


def test_arena_hard_v01_scores_equal_upstream_s_bradley_terry_and_bootstrap():
    """compute_mle_elo + get_bootstrap_result (seed 42, 100 rounds over the pooled battles) + the win-rate
    conversion of show_result.py, against ours on the same judgments."""
    models = ["base_only", "nudging", "wsd"]
    for seed in (0, 3):
        judgments = _judgments(models, 40, seed)
        want = ref_ah.scores_v01(ref_ah.battles_v01(judgments, "gpt-4-0314"), "gpt-4-0314")
        battles = {m: [x for j in judgments if j["model"] == m
                       for x in ah.method_scores(j["games"][0]["score"], j["games"][1]["score"])] for m in models}
        got = ah.score_v01(battles)
        for m in models:
            assert [round(100 * x, 2) for x in got[m]] == pytest.approx(list(want[m]), abs=0.011), m
        assert got["wsd"][0] > got["base_only"][0]


def test_arena_hard_v20_scores_equal_upstream_s():
    models = ["base_only", "wsd"]
    judgments = _judgments(models, 30, 5, v2=True)
    want = ref_ah.scores_v20(judgments, seed=7)
    battles = {m: [x for j in judgments if j["model"] == m
                   for x in ah.method_scores(j["games"][0]["score"], j["games"][1]["score"], version="v2.0")]
               for m in models}
    got = ah.score_v20(battles, seed=7)
    for m in models:  # upstream prints the score to one decimal; the quantiles are compared whole
        assert 100 * got[m][0] == pytest.approx(want[m][0], abs=0.05 + 1e-9), m
        assert [100 * x for x in got[m][1:]] == pytest.approx(list(want[m][1:]), abs=1e-9), m


def test_arena_hard_reads_both_schemas_and_one_category_at_a_time():
    v01 = load_eval_set(EvalSet(name="ah", version="v0.1", format="arena_hard",
                                path=str(B / "arena-hard/question.jsonl"),
                                baseline_path=str(B / "arena-hard/model_answer/gpt-4-0314.jsonl")))
    assert {it.category for it in v01} == {"arena-hard-v0.1"} and all(it.reference for it in v01)
    d = B / "arena-hard-v2.0"
    with pytest.raises(UserError, match="creative_writing, hard_prompt: give categories"):
        load_eval_set(EvalSet(name="ah2", version="v2.0", format="arena_hard", path=str(d / "question.jsonl"),
                              baseline_path=str(d / "model_answer/o3-mini-2025-01-31.jsonl")))
    hard = load_eval_set(EvalSet(name="ah2", version="v2.0", format="arena_hard", path=str(d / "question.jsonl"),
                                 categories=["hard_prompt"],
                                 baseline_path=str(d / "model_answer/o3-mini-2025-01-31.jsonl")))
    assert [it.category for it in hard] == ["hard_prompt"] * 2 and hard[0].reference.startswith("def fib")
    assert ah.protocol(hard[0].category) == "v2.0" and ah.protocol(v01[0].category) == "v0.1"
    with pytest.raises(UserError, match="no baseline answer for question 'd9e3f4a5b6c70819'"):
        load_eval_set(EvalSet(name="ah2", version="v2.0", format="arena_hard", path=str(d / "question.jsonl"),
                              categories=["creative_writing"],
                              baseline_path=str(d / "model_answer/o3-mini-2025-01-31.jsonl")))


def test_arena_hard_judges_each_category_against_its_own_baseline(tmp_path):
    d = B / "arena-hard-v2.0"
    both = tmp_path / "both.jsonl"  # every question answered, but by the other category's baseline
    both.write_text((d / "model_answer/o3-mini-2025-01-31.jsonl").read_text()
                    + (d / "model_answer/gemini-2.0-flash-001.jsonl").read_text())
    es = EvalSet(name="ah2", version="v2.0", format="arena_hard", path=str(d / "question.jsonl"),
                 categories=["hard_prompt"], baseline_path=str(both))
    assert len(load_eval_set(es)) == 2
    wrong = tmp_path / "wrong.jsonl"  # the creative questions answered by the hard prompts' baseline model
    wrong.write_text((d / "model_answer/gemini-2.0-flash-001.jsonl").read_text().replace("gemini-2.0-flash-001",
                                                                                         "o3-mini-2025-01-31"))
    with pytest.raises(UserError, match=r"wrong.jsonl:1: the answer of 'o3-mini-2025-01-31', but category "
                                        r"creative_writing is judged against 'gemini-2.0-flash-001'"):
        load_eval_set(es.model_copy(update={"categories": ["creative_writing"], "baseline_path": str(wrong)}))
    odd = tmp_path / "q.jsonl"
    odd.write_text(json.dumps({"uid": "x1", "category": "poetry", "prompt": "Write."}) + "\n")
    with pytest.raises(UserError, match="category 'poetry' is not one of Arena-Hard-Auto's"):
        load_eval_set(es.model_copy(update={"path": str(odd), "categories": None}))


def test_an_unreadable_arena_hard_game_is_the_methods_worst_outcome():
    assert ah.method_scores(*ah.WORST) == [0.0] * 6
    assert ah.method_scores("B>A", "A>B") == [1.0, 1.0] and ah.method_scores("A=B", "A=B") == [0.5, 0.5]
    assert ah.method_scores("B>>A", "A>B", weight=3) == [1.0, 1.0, 1.0, 1.0]


# ------------------------------------------------------------------------------------------ a real chat model
@pytest.mark.slow
def test_smollm2_annotates_and_judges_as_the_upstream_code_reads_it(smollm2, tmp_path):
    """SmolLM2 in-process as AlpacaEval's annotator and Arena-Hard's judge on the fixtures: each preference and each
    label is what the upstream code makes of the same model's answers to the upstream prompts (asked here
    directly, without our judge code)."""
    import asyncio
    import re

    from evaluation.config import AlpacaEvalMetric, ArenaHardMetric
    from evaluation.judges import alpaca_eval_annotate, arena_hard_judge
    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.source import ModelSource

    model = ModelSource(name="smollm2", path=str(smollm2))
    chat = LocalChat.of(model)
    ae_items = [(it.question[-1]["content"], it.reference, ans) for it, ans in zip(
        load_eval_set(EvalSet(name="ae", version="t", format="alpaca_eval", path=str(B / "alpaca_eval.json"))),
        ["Stay focused: close the door, silence your phone, and take breaks.", "Sydney.", "Bread Basket"])]
    got = alpaca_eval_annotate(AlpacaEvalMetric(model=model), ae_items, tmp_path / "cache.sqlite")
    for (instruction, reference, answer), pref, bad in zip(ae_items, got.values, got.unparsed):
        swapped = ref_ae.is_switched(instruction)
        msgs = ref_ae.fill_prompt(instruction, *((answer, reference) if swapped else (reference, answer)))
        top = asyncio.run(chat.chat(msgs, 1, 1.0, 1.0, 0, top_logprobs=5))["top_logprobs"]
        want = ref_ae.logprob_preference(top)
        if math.isnan(want):
            assert bad and pref == ae.WORST
        else:
            assert not bad and pref == pytest.approx(3 - want if swapped else want, abs=1e-6)
    assert got.counts["judged"] + got.counts["unparseable"] == 3

    ah_set = load_eval_set(EvalSet(name="ah", version="v0.1", format="arena_hard",
                                   path=str(B / "arena-hard/question.jsonl"),
                                   baseline_path=str(B / "arena-hard/model_answer/gpt-4-0314.jsonl")))
    items = [(it.category, it.question[0]["content"], it.reference, "A short answer of mine.") for it in ah_set[:1]]
    games = arena_hard_judge(ArenaHardMetric(model=model, max_tokens=48), items, tmp_path / "cache.sqlite")
    for (cat, q, base, ans), labels, bad in zip(items, games.labels, games.unparsed):
        read = []
        for g, (a, b) in enumerate(((base, ans), (ans, base))):
            conv = [{"role": "system", "content": ref_ah.system_prompt("v0.1", cat)},
                    {"role": "user", "content": ref_ah.user_prompt("v0.1", cat, q, a, b)}]
            first = asyncio.run(chat.chat(conv, 48, 0.0, 1.0, 0))["text"]
            replies = [first]
            if ref_ah.get_score_v01("\n" + first, re.compile(ref_ah.REGEX_PATTERN_V01))[1]:  # upstream asks again
                conv += [{"role": "assistant", "content": first}, {"role": "user", "content": ref_ah.CONTINUE_V01}]
                replies.append(asyncio.run(chat.chat(conv, 48, 0.0, 1.0, 0))["text"])
            label = ref_ah.parse_v01(replies)
            read.append(label if label in ah.KNOWN["v0.1"] else None)
        assert bad == any(x is None for x in read)
        assert list(labels) == [x if x is not None else ah.WORST[g] for g, x in enumerate(read)]
    assert games.counts["judged"] + games.counts["unparseable"] == 1
