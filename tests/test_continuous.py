"""Continuous batching (`wsd_inference.continuous`): answers that join a running batch at any step and leave it
when done get the batch engine's answers, greedy and sampled, on both tokenizer pairs, and free their rows."""

import json

import pytest

from wsd_inference.baselines import base_only_batch, pilot_only_batch, urial_batch
from wsd_inference.config import WSDConfig
from wsd_inference.continuous import ContinuousEngine
from wsd_inference.engine import wsd_batch

from .helpers import RECS, median_max_window

FIELDS = ("response", "draft_text", "switch_index", "switched", "base_tokens", "kept_draft_tokens")


def run(engine: ContinuousEngine, cfg: WSDConfig, arrivals: list[int], capacity: int = 64) -> dict:
    """RECS through the engine, `arrivals[i]` of them joining at step i (the rest after the last), at most
    `capacity` running; records by id, and the most rows each batch held."""
    todo, got, widest, i = list(RECS), {}, {"base": 0, "pilot": 0}, 0
    while todo or engine.running:
        n = arrivals[i] if i < len(arrivals) else len(todo)
        for rec in todo[: max(0, min(n, capacity - engine.running))]:
            engine.add(rec, cfg)
            todo.remove(rec)
        for a in engine.step():
            got[a.rec.id] = a.record
        widest["base"] = max(widest["base"], len(engine.rows))
        widest["pilot"] = max(widest["pilot"], len(engine.pilot_rows) if engine.pilot_rows else 0)
        assert len(engine.rows) == len(engine.answers) and engine.steps < 2000
        i += 1
    assert len(engine.rows) == 0 and (engine.pilot_rows is None or len(engine.pilot_rows) == 0)
    return got, widest


STAGGERED = [2, 0, 1, 0, 0, 3, 1]  # two at once, then one and three more while the first are mid-answer


@pytest.mark.parametrize("pair", ["same", "different"])
@pytest.mark.parametrize("rule,temperature,chunk", [("absolute", 0.0, 8), ("relative", 0.0, 8), ("absolute", 1.0, 8),
                                                    ("absolute", 1.0, 3), ("absolute", 0.0, 16),
                                                    ("absolute", 1.0, 16)])
def test_wsd_answers_equal_the_batch_engine_whenever_they_join(models, pair, rule, temperature, chunk):
    """Sampled: a draft and its continuation share a generator, so the engine must draw the batch engine's draft
    tokens, chunk by chunk (a chunk shorter than the tokens a new draft is given when it joins, too)."""
    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), rule=rule, max_draft_tokens=24,
                    max_new_tokens=40, temperature=temperature, seed=3, chunk_size=chunk, speculation={"tokens": 0})
    want = {r.id: r for r in wsd_batch(pilot, base, RECS, cfg)}
    if rule == "absolute":  # the threshold is the absolute rule's median: some switch, some do not
        assert any(r.wsd.switched for r in want.values()) and not all(r.wsd.switched for r in want.values())
    for arrivals, capacity in ((STAGGERED, 64), ([len(RECS)], 3)):
        got, widest = run(ContinuousEngine("wsd", base, pilot), cfg, arrivals, capacity)
        assert widest["base"] <= capacity and widest["base"] > 1
        for rec in RECS:
            g, w = got[rec.id].to_json(), want[rec.id].to_json()
            assert {k: g[k] for k in FIELDS} == {k: w[k] for k in FIELDS}, (rec.id, arrivals)
            # a sampled draft draws what the batch engine's does; a greedy one, scored as it becomes final (never
            # chunk_size tokens behind), stops within a chunk of where the batch engine's does
            if temperature:
                assert g["pilot_tokens"] == w["pilot_tokens"]
            else:
                assert abs(g["pilot_tokens"] - w["pilot_tokens"]) <= cfg.chunk_size


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_base_only_equals_the_batch_engine_with_answers_of_their_own_settings(models, temperature):
    """Rows of one batch need not share settings: each answer decodes with its own budget and temperature."""
    _, base = models["different"]
    cfg = WSDConfig(max_new_tokens=30, temperature=temperature, seed=5, speculation={"tokens": 0})
    short = cfg.model_copy(update={"max_new_tokens": 7, "temperature": 0.0})
    want = {r.id: r for r in base_only_batch(base, RECS, cfg)}
    want_short = {r.id: r for r in base_only_batch(base, RECS, short)}
    engine, got = ContinuousEngine("base_only", base), {}
    for i, rec in enumerate(RECS):  # one joins per step, every other one with the short settings
        engine.add(rec, short if i % 2 else cfg)
        for a in engine.step():
            got[a.rec.id] = a.record
    while engine.running:
        for a in engine.step():
            got[a.rec.id] = a.record
    for i, rec in enumerate(RECS):
        w = (want_short if i % 2 else want)[rec.id]
        assert (got[rec.id].response, got[rec.id].base_tokens) == (w.response, w.base_tokens), rec.id
    assert max(r.base_tokens for r in got.values()) > 7  # the long answers outlived the short ones' rows


@pytest.mark.parametrize("method,temperature", [("urial", 0.0), ("urial", 1.0), ("pilot_only", 0.0),
                                                ("pilot_only", 1.0)])
def test_the_other_baselines_equal_their_batch_functions_whenever_they_join(models, method, temperature):
    """URIAL (its prefix, its stop string, its answer out of the fence) and the pilot alone (its chat template, to
    its end of turn) batched continuously: the batch functions' answers, with answers joining at different steps."""
    pilot, base = models["different"]
    cfg = WSDConfig(max_new_tokens=30, temperature=temperature, seed=7, speculation={"tokens": 0})
    batch = {"urial": lambda: urial_batch(base, RECS, cfg), "pilot_only": lambda: pilot_only_batch(pilot, RECS, cfg)}
    want = {r.id: r for r in batch[method]()}
    engine = ContinuousEngine(method, base if method == "urial" else pilot)
    got, _ = run(engine, cfg, STAGGERED)
    count = "pilot_tokens" if method == "pilot_only" else "base_tokens"
    for rec in RECS:
        g, w = got[rec.id].to_json(), want[rec.id].to_json()
        assert (g["method"], g["response"], g[count]) == (w["method"], w["response"], w[count]), rec.id
    assert len({r.response for r in want.values()}) > 1


def test_an_answer_dropped_mid_way_leaves_and_the_others_are_unchanged(models):
    pilot, base = models["same"]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), max_draft_tokens=24, max_new_tokens=40,
                    speculation={"tokens": 0})
    want = {r.id: r for r in wsd_batch(pilot, base, RECS, cfg)}
    engine = ContinuousEngine("wsd", base, pilot)
    never = engine.add(RECS[0], cfg)
    engine.drop(never)  # before it joined: the next step returns it, and it never took a row
    answers = [engine.add(rec, cfg) for rec in RECS]
    assert engine.step()[0] is never and len(engine.rows) == len(RECS)
    engine.step()
    engine.drop(answers[0])  # drafting
    got = {}
    while engine.running:
        if answers[1].stream is not None and not answers[1].done:
            engine.drop(answers[1])  # continuing
        for a in engine.step():
            got[a.rec.id] = a.record
    assert len(engine.rows) == 0
    for rec in RECS[2:]:
        assert got[rec.id].response == want[rec.id].response


def test_the_server_batches_continuously_unless_asked_to_speculate_with_a_given_k(pair_same):
    """`pilot wsd serve` in-process: continuous batching by default (no pilot loaded for base_only, whose pilot
    would only speculate); static where the config gives a k or one answer runs at a time; continuous and a k
    together are refused."""
    import asyncio

    from pilot_core.models.source import ModelSource
    from wsd_inference.serving import ContinuousBackend, LocalBackend, make_backend

    pilot, base = ModelSource(name="p", path=str(pair_same[0])), ModelSource(name="b", path=str(pair_same[1]))
    k4 = WSDConfig(speculation={"tokens": 4})
    chosen = {}
    for label, method, cfg in (("default", "wsd", WSDConfig()), ("alone", "base_only", WSDConfig()),
                               ("k", "wsd", k4), ("static", "wsd", WSDConfig(batching="static")),
                               ("one", "wsd", WSDConfig(batch_size=1))):
        backend = make_backend(method, pilot, base, cfg)
        chosen[label] = backend
        asyncio.run(backend.close())
    assert isinstance(chosen["default"], ContinuousBackend) and isinstance(chosen["alone"], ContinuousBackend)
    assert chosen["alone"].models.pilot is None and chosen["default"].engine.pilot is not None
    for label in ("k", "static", "one"):  # at one answer at a time, speculation is what pays
        assert isinstance(chosen[label], LocalBackend) and chosen[label].stats()["batching"] == "static", label
    with pytest.raises(ValueError, match="batching continuous does not speculate"):
        WSDConfig(batching="continuous", speculation={"tokens": 4})  # a config error, before anything loads


@pytest.mark.parametrize("method", ["wsd", "base_only", "urial", "pilot_only"])
def test_generate_batches_continuously_with_the_answers_of_static_batches(models, pair_same, tmp_path, method):
    """`pilot wsd generate` (generate_to_file) batched continuously: batch_size answers at once, a finished one's
    place going to the next prompt; the answers are static batches', each record's time its share of the steps it
    ran in."""
    from pilot_core.models.source import ModelSource
    from wsd_inference.runner import generate_to_file

    pilot, base = models["same"]
    sources = [ModelSource(name=n, path=str(p)) for n, p in zip(("pilot", "base"), pair_same)]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), max_draft_tokens=16, max_new_tokens=24,
                    batch_size=3)
    got = {}
    for batching in ("static", "continuous"):
        out = tmp_path / f"{batching}.jsonl"
        generate_to_file(*sources, RECS, cfg.model_copy(update={"batching": batching}).without_speculation(), out,
                         progress=False, method=method)
        got[batching] = {r["id"]: r for r in map(json.loads, open(out))}
    assert list(got["continuous"]) == [r.id for r in RECS]  # in input order, as static batches write them
    for rec in RECS:
        s, c = got["static"][rec.id], got["continuous"][rec.id]
        count = "pilot_tokens" if method == "pilot_only" else "base_tokens"
        assert c["response"] == s["response"] and c[count] == s[count], rec.id
        assert "running" in c["timing"] and "batch_size" in s["timing"] and c["time_s"] > 0
    if method == "wsd":
        assert {r["switched"] for r in got["continuous"].values()} == {True, False}


def test_auto_batches_continuously_in_the_server_and_statically_in_generate():
    """`batching: auto`: the server batches continuously unless a k is given or one answer runs at a time;
    generate keeps static batches (measured: the pilot's speculation there is worth more on a close pair)."""
    from wsd_inference.methods import METHODS, continuous_batching

    auto, off, k4, one = WSDConfig(), WSDConfig(speculation={"tokens": 0}), WSDConfig(speculation={"tokens": 4}), \
        WSDConfig(batch_size=1)
    for name in ("wsd", "base_only", "urial", "pilot_only"):
        m = METHODS[name]
        k_static = m.speculates  # a k is for the pilot speculating: the pilot alone never does
        assert [continuous_batching(m, c, serving=True) for c in (auto, off, k4, one)] == [True, True, not k_static,
                                                                                            False], name
        assert not any(continuous_batching(m, c) for c in (auto, off, k4, one)), name
        assert not continuous_batching(m, off.model_copy(update={"batching": "continuous"}), remote=True)
    asked = off.model_copy(update={"batching": "continuous"})
    assert not any(continuous_batching(METHODS[m], c, serving=True) for m in ("nudging", "eft", "bon", "cbs")
                   for c in (off, asked))


def test_generate_resumes_under_either_batching_and_batches_the_others_statically(models, pair_same, tmp_path):
    """How answers are batched is not a setting an output is bound to: a run resumed with the other batching
    completes it. `batching: continuous` (validation gives one config to every method) batches the methods that
    have no continuous engine (nudging) statically, with their usual answers."""
    from pilot_core.models.source import ModelSource
    from wsd_inference.nudging import nudging_batch
    from wsd_inference.runner import generate_to_file

    pilot, base = models["same"]
    sources = [ModelSource(name=n, path=str(p)) for n, p in zip(("pilot", "base"), pair_same)]
    cfg = WSDConfig(max_draft_tokens=8, max_new_tokens=12, batch_size=2, batching="continuous",
                    speculation={"tokens": 0})
    out = tmp_path / "out.jsonl"
    first = generate_to_file(*sources, RECS[:3], cfg, out, progress=False)
    rest = generate_to_file(*sources, RECS, cfg.model_copy(update={"batching": "static"}), out, progress=False)
    assert (first.new, rest.new, rest.already_done) == (3, len(RECS) - 3, 3)
    assert [json.loads(x)["id"] for x in open(out)] == [r.id for r in RECS]
    generate_to_file(*sources, RECS, cfg, tmp_path / "nudging.jsonl", progress=False, method="nudging")
    want = {r.id: r.response for r in nudging_batch(pilot, base, RECS[:2], cfg)}
    got = {r["id"]: r["response"] for r in map(json.loads, open(tmp_path / "nudging.jsonl"))}
    assert all(got[i] == want[i] for i in want)
