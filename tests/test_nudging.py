"""Nudging as its authors run it (fywalter/nudging utils.py, `completion_with_nudging`): the batched engine equals
a batch-1 reference written from their code on both tokenizer pairs, and the stops and limits of their rule hold.
"""

import random

import pytest

from pilot_core.models.loading import load_hf_model
from wsd_inference.baselines import pilot_only_batch
from wsd_inference.config import NudgingConfig, WSDConfig
from wsd_inference.nudging import nudging_batch
from wsd_inference.nudging_rule import (
    Ask,
    Completion,
    NudgingState,
    Rule,
    Writer,
    cut_at_marker,
    find_longest_repeated_suffix,
    nudging,
    remove_redundant_repetitions,
    repetition_check,
)

from . import wsd_reference
from .helpers import RECS

GAMMA = {"same": 0.3, "different": 0.15}  # near the median top-1 probability of each tiny base: both models write
STOPS = {"nudging_model_stop", "repeated_nudging_words", "round", "length"}


@pytest.fixture(scope="module")
def m(pair_same, pair_different):
    return {"pilot": load_hf_model(str(pair_same[0]), need_chat_template=True),
            "same": load_hf_model(str(pair_same[1])), "different": load_hf_model(str(pair_different[1]))}


def _cfg(gamma, budget=40, **kw):
    return WSDConfig(max_new_tokens=budget, nudging=NudgingConfig(threshold=gamma, **kw))


def _same_as_reference(pilot, base, got, cfg):
    for rec, g in zip(RECS, got):
        want = wsd_reference.nudging(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in want} == want, rec.id


@pytest.mark.parametrize("pair,gamma", [("same", "mid"), ("different", "mid"), ("same", 0.4), ("different", 0.0)])
def test_batched_engine_equals_the_authors_rule(m, pair, gamma):
    pilot, base = m["pilot"], m[pair]
    cfg = _cfg(GAMMA[pair] if gamma == "mid" else gamma)
    got = nudging_batch(pilot, base, RECS, cfg)
    _same_as_reference(pilot, base, got, cfg)
    for g in got:
        assert g.method == "nudging" and len(base.encode(g.response)) <= cfg.max_new_tokens
        assert g.nudging.stop_reason in STOPS and 1 <= g.nudging.rounds <= cfg.nudging.max_rounds
    if gamma == "mid":  # both models wrote, and the turns went back and forth (not one switch as in WSD)
        assert sum(g.pilot_tokens for g in got) > 0 and sum(g.base_tokens for g in got) > 0
        assert max(g.nudging.handoffs for g in got) >= 3


def test_at_gamma_zero_the_base_takes_over_after_the_pilots_first_word(m):
    """Their rule at γ = 0 (ours once let the base open the answer: base-only): each round the pilot's first word,
    then the base, which is always sure, writes on."""
    pilot, base = m["pilot"], m["same"]
    cfg = _cfg(0.0)
    for rec, g in zip(RECS, nudging_batch(pilot, base, RECS, cfg)):
        texts, _, finished = wsd_reference._completion(
            pilot, wsd_reference.chat_prompt(pilot.tokenizer, rec.messages), cfg.nudging.completion_tokens)
        words = "".join(texts).strip().split(" ")
        if finished or len(words) < 2:
            continue
        assert g.response.startswith(words[0]) and g.base_tokens > 0 and g.nudging.handoffs >= 1, rec.id
        assert g.nudging.pilot_pieces == g.nudging.rounds


def test_a_pilot_that_finishes_in_its_first_completion_writes_the_whole_answer(m):
    """The nudging model's completion that ends (its end of turn) ends the answer: with completions as long as
    its answers, every prompt the pilot answers within one gets the pilot's own answer."""
    pilot, base = m["pilot"], m["different"]
    cfg = _cfg(0.4, budget=160, completion_tokens=80)
    alone = pilot_only_batch(pilot, RECS, cfg)
    got = nudging_batch(pilot, base, RECS, cfg)
    ended = [(a, g) for a, g in zip(alone, got) if a.pilot_tokens < 80]
    assert ended, "no prompt the tiny pilot answers within 80 tokens"
    for a, g in ended:
        assert g.response == a.response and g.nudging.stop_reason == "nudging_model_stop"
        assert g.base_tokens == 0 and g.nudging.rounds == 1


def test_a_character_split_across_tokens_goes_whole_with_the_token_that_ends_it(m):
    from wsd_inference.nudging import token_texts

    for model in (m["pilot"], m["different"]):
        before = model.encode("Say it: ")
        ids = model.encode("héllo 你好 🙂 done")
        texts = token_texts(model, before, ids)
        assert "".join(texts) == model.decode(before + ids)[len(model.decode(before)):]
        assert "\ufffd" not in "".join(texts) and len(texts) == len(ids)


def test_one_round_only(m):
    pilot, base = m["pilot"], m["same"]
    cfg = _cfg(GAMMA["same"], max_rounds=1)
    got = nudging_batch(pilot, base, RECS, cfg)
    _same_as_reference(pilot, base, got, cfg)
    assert all(g.nudging.rounds == 1 and g.nudging.stop_reason in ("round", "nudging_model_stop") for g in got)


def test_sampled_nudging_is_seeded_per_prompt(m):
    pilot, base = m["pilot"], m["same"]
    cfg = _cfg(GAMMA["same"]).model_copy(update={"temperature": 0.9})
    a = nudging_batch(pilot, base, RECS, cfg)
    b = nudging_batch(pilot, base, RECS[:3], cfg) + nudging_batch(pilot, base, RECS[3:], cfg)
    assert [x.response for x in a] == [x.response for x in b]  # an answer does not depend on its batch
    c = nudging_batch(pilot, base, RECS, cfg.model_copy(update={"seed": 1}))
    assert [x.response for x in a] != [x.response for x in c]


@pytest.mark.parametrize("pair", ["same", "different"])
def test_the_pilot_speculates_for_the_bases_completions(m, pair):
    """With speculation on, the pilot's proposals ride in the base's passes: the same answers (greedy: the
    reference, on both tokenizer pairs; sampled: the same draws), with figures."""
    pilot, base = m["pilot"], m[pair]
    cfg = _cfg(GAMMA[pair])
    spec = {"speculation": cfg.speculation.model_copy(update={"tokens": 3, "min_acceptance": 0.0, "pace": "always"})}
    got = nudging_batch(pilot, base, RECS, cfg.model_copy(update=spec))
    _same_as_reference(pilot, base, got, cfg)
    assert all(g.speculation.accepted <= g.speculation.proposed for g in got)
    assert sum(g.speculation.proposed for g in got) > 0
    if pair == "same":
        assert sum(g.speculation.accepted for g in got) > 0  # passes that wrote several base tokens
        sampled = cfg.model_copy(update={"temperature": 0.9})
        plain = nudging_batch(pilot, base, RECS, sampled)
        spec_sampled = nudging_batch(pilot, base, RECS, sampled.model_copy(update=spec))
        assert [x.response for x in spec_sampled] == [x.response for x in plain]


# ------------------------------------------------------------------------------------------ the rule alone
def _drive(rule: Rule, pilot_says, base_says) -> NudgingState:
    """Run the rule with scripted models: pilot_says(text) -> (completion text, finished); base_says(text, n,
    more) -> [(token text, top-1 probability)], finished."""
    state = NudgingState()
    run, reply = nudging(rule, state), None
    try:
        ask = next(run)
        while True:
            if ask.writer is Writer.PILOT:
                text, fin = pilot_says(ask.text)
                reply = Completion([text], [], fin)
            else:
                toks, fin = base_says(ask)
                reply = Completion([t for t, _ in toks], [p for _, p in toks], fin)
            ask = run.send(reply)
    except StopIteration:
        return state


def _rule(gamma=0.5, budget=200, rounds=150):
    return Rule(gamma, 16, rounds, budget, lambda t: len(t.split()))


def test_the_same_words_three_rounds_running_end_the_answer():
    state = _drive(_rule(), lambda text: (" The same words again", False), lambda ask: ([("x", 0.1)], False))
    # round 1 takes "The same words" (the last word never: the base never took over), rounds 2-4 repeat it
    assert state.stop_reason == "repeated_nudging_words" and state.rounds == 4
    assert state.output == " The same words" * 3


def test_the_base_takes_over_on_agreement_and_writes_while_sure():
    def base(ask: Ask):
        if ask.n == 1:  # stage 1: the base's next token after the words taken
            return ([(" over", 0.2)], False) if ask.text.endswith("takes") else ([(" no", 0.1)], False)
        if ask.more:  # the rest of that completion: sure, then unsure
            return [(" here", 0.9), (" and", 0.8), (" then", 0.1), (" junk", 0.9)], False
        return [(".", 0.1)], False

    answers = iter([(" The base takes over soon", False), (" Done now", True)])
    state = _drive(_rule(), lambda text: next(answers), base)
    assert state.output == " The base takes over here and Done now"  # "over" agreed; "then" below γ
    assert state.stop_reason == "nudging_model_stop" and state.rounds == 2 and state.base_tokens == 3
    assert [w for w, _ in state.segments] == [Writer.PILOT, Writer.BASE, Writer.PILOT] and state.handoffs == 2


def test_the_budget_and_the_rounds_end_the_answer():
    state = _drive(_rule(budget=6), lambda text: (" one two three four", False), lambda ask: ([("z", 0.1)], False))
    assert state.stop_reason == "length" and len(state.output.split()) >= 6
    state = _drive(_rule(rounds=2), lambda text: (f" w{len(text)} x", False), lambda ask: ([("z", 0.1)], False))
    assert state.stop_reason == "round" and state.rounds == 2


def test_the_authors_helpers():
    rnd = random.Random(0)
    for _ in range(300):
        unit = "".join(rnd.choice("ab ") for _ in range(rnd.randint(1, 40)))
        s = rnd.choice(["", "x", "head "]) + unit * rnd.randint(1, 4)
        assert find_longest_repeated_suffix(s) == wsd_reference._repeated_suffix(s)
    # a long repeated tail goes (theirs halves it while the binary search finds a repeat; it often finds none)
    assert remove_redundant_repetitions("  A" + "q" * 200 + " ") == "A" + "q" * 50
    assert repetition_check("one two three four five six", "x one two three four five six y")
    assert not repetition_check("one two three", "one two three")  # five words or fewer never count
    c = cut_at_marker("ok\n[Us", Completion(["er] hi", " more"], [0.9, 0.9]))
    assert c.texts == [] and c.finished  # a marker begun in the text before
    c = cut_at_marker("ok", Completion([" a", " b\n[User", "] next"], [0.9, 0.8, 0.7]))
    assert c.text == " a b\n" and c.top1 == [0.9, 0.8] and c.finished
