"""The online, batched WSD engine equals the staged reference on every prompt, for both tokenizer pairs."""

import pytest

from wsd_inference.config import WSDConfig
from wsd_inference.engine import wsd_generate

from .helpers import RECS, median_max_window
from .wsd_reference import staged_wsd

FIELDS = ("response", "draft_text", "switch_index", "switched", "base_tokens", "kept_draft_tokens")


@pytest.mark.parametrize("pair", ["same", "different"])
@pytest.mark.parametrize("threshold,window,chunk,batch", [
    (0.8, 6, 8, 8),       # the paper's setting: tiny models rarely reach it
    ("median", 3, 3, 3),  # about half the prompts switch, at different points
    ("median", 2, 1, 7),  # chunk of one token: scoring after every pilot token
    (0.0, 6, 5, 2),       # switch at the first full window
])
def test_online_engine_equals_staged_reference(models, pair, threshold, window, chunk, batch):
    pilot, base = models[pair]
    if threshold == "median":
        threshold = median_max_window(pilot, base, window)
    cfg = WSDConfig(window=window, threshold=threshold, max_draft_tokens=24, max_new_tokens=40,
                    chunk_size=chunk, batch_size=batch)
    got = list(wsd_generate(pilot, base, RECS, cfg))
    assert [g.id for g in got] == [r.id for r in RECS]
    for rec, g in zip(RECS, got):
        ref = staged_wsd(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in FIELDS} == {k: ref[k] for k in FIELDS}, rec.id
        # drafting stops at the switch point: never more pilot tokens than the staged pipeline's whole draft
        assert g.pilot_tokens <= ref["pilot_tokens"]
        if not g.wsd.switched:
            assert g.pilot_tokens == ref["pilot_tokens"]


@pytest.mark.parametrize("pair", ["same", "different"])
def test_median_threshold_gives_a_mix_of_switch_decisions(models, pair):
    """Guards the test above: the derived threshold really exercises switched and unswitched prompts."""
    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), max_draft_tokens=24, max_new_tokens=40)
    got = list(wsd_generate(pilot, base, RECS, cfg))
    assert any(g.wsd.switched for g in got) and not all(g.wsd.switched for g in got)
    assert all(g.response for g in got)  # the test world writes real (if silly) text


def test_budget_counts_kept_draft_and_continuation(models):
    pilot, base = models["same"]
    cfg = WSDConfig(window=2, threshold=0.0, max_draft_tokens=20, max_new_tokens=5)
    for g in wsd_generate(pilot, base, RECS, cfg):
        assert g.wsd.kept_draft_tokens + g.base_tokens <= 5
        assert g.wsd.switch_index == 1 and g.wsd.switched


def test_zero_draft_is_base_only(models):
    pilot, base = models["same"]
    cfg = WSDConfig(window=1, threshold=0.8, max_draft_tokens=0, max_new_tokens=12)
    for rec, g in zip(RECS, wsd_generate(pilot, base, RECS, cfg)):
        assert g.wsd.switch_index is None and g.wsd.draft_text == "" and g.pilot_tokens == 0
        ref = staged_wsd(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in FIELDS} == {k: ref[k] for k in FIELDS}


def test_sampling_is_seeded_and_batch_independent(models):
    pilot, base = models["different"]
    cfg = WSDConfig(window=3, threshold=0.3, max_draft_tokens=16, max_new_tokens=24, temperature=1.0, top_p=0.9,
                    seed=7)
    a = [g.response for g in wsd_generate(pilot, base, RECS, cfg)]
    b = [g.response for g in wsd_generate(pilot, base, RECS, cfg.model_copy(update={"batch_size": 3}))]
    c = [g.response for g in wsd_generate(pilot, base, RECS, cfg.model_copy(update={"seed": 8}))]
    assert a == b and a != c


@pytest.mark.parametrize("pair", ["same", "different"])
def test_batched_staged_pipeline_equals_online_engine(models, pair):
    """wsd_inference.staged (the speed baseline) gives the same answers as the online engine."""
    from wsd_inference.staged import staged_batch

    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), max_draft_tokens=24, max_new_tokens=40)
    online = list(wsd_generate(pilot, base, RECS, cfg))
    staged = staged_batch(pilot, base, RECS, cfg)
    for o, s in zip(online, staged):
        assert {k: o.to_json()[k] for k in FIELDS} == {k: s.to_json()[k] for k in FIELDS}
        assert o.wsd.window_scores == pytest.approx(s.wsd.window_scores, abs=1e-5)


def test_base_only_matches_plain_greedy(models):
    from pilot_core.models.templates import base_prompt, cut_at_markers
    from wsd_inference.baselines import base_only_batch

    from .wsd_reference import greedy

    _, base = models["different"]
    cfg = WSDConfig(max_new_tokens=30)
    for rec, g in zip(RECS, base_only_batch(base, RECS, cfg)):
        ctx = base.encode(base_prompt(rec.messages, base.tokenizer.bos_token))
        cont = greedy(base.model, ctx, 30, base.stop_ids, base.tokenizer, stop_on_marker=True)
        assert g.response == cut_at_markers(base.decode(cont)) and g.base_tokens == len(cont)
        assert g.method == "base_only" and g.pilot_tokens == 0


@pytest.mark.parametrize("pair", ["same", "different"])
def test_a_draft_that_fills_the_budget_stops_there(models, pair):
    """With max_new_tokens below the draft length and no switch, the answer is the first max_new_tokens draft
    tokens: the engine stops drafting once they are scored (the pilot writing on would never be read)."""
    pilot, base = models[pair]
    cfg = WSDConfig(window=2, threshold=1.0, max_draft_tokens=24, max_new_tokens=6, chunk_size=2)
    for rec, g in zip(RECS, wsd_generate(pilot, base, RECS, cfg)):
        ref = staged_wsd(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in FIELDS} == {k: ref[k] for k in FIELDS}, rec.id
        if ref["kept_draft_tokens"] == 6:  # the budget is all draft
            assert (g.wsd.switch_index, g.wsd.switched, g.base_tokens) == (5, False, 0)
            assert g.pilot_tokens < ref["pilot_tokens"]  # drafting stopped early
