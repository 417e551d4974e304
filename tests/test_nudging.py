"""Nudging (Fei et al. 2025), in-process: its limits, and equality with a batch-1 reference written from its rule."""

import pytest

from pilot_core.models.loading import load_hf_model
from wsd_inference.baselines import base_only_batch, pilot_only_batch
from wsd_inference.config import NudgingConfig, WSDConfig
from wsd_inference.nudging import nudging_batch

from .helpers import RECS
from . import wsd_reference

GAMMA = {"same": 0.3, "different": 0.15}  # near the median top-1 probability of each tiny base: both models write


@pytest.fixture(scope="module")
def m(pair_same, pair_different):
    return {"pilot": load_hf_model(str(pair_same[0]), need_chat_template=True),
            "same": load_hf_model(str(pair_same[1])), "different": load_hf_model(str(pair_different[1]))}


def _cfg(gamma, piece="word", **kw):
    return WSDConfig(threshold=gamma, max_new_tokens=40, nudging=NudgingConfig(piece=piece, **kw))


@pytest.mark.parametrize("pair", ["same", "different"])
def test_limits_are_the_base_alone_and_the_pilot_alone(m, pair):
    pilot, base = m["pilot"], m[pair]
    zero = nudging_batch(pilot, base, RECS, _cfg(0.0))
    alone = base_only_batch(base, RECS, _cfg(0.0))
    assert [x.response for x in zero] == [x.response for x in alone]
    assert [x.base_tokens for x in zero] == [x.base_tokens for x in alone]
    assert all(x.pilot_tokens == 0 and x.nudging.handoffs == 0 for x in zero)
    one = nudging_batch(pilot, base, RECS, _cfg(1.0))
    pilot_alone = pilot_only_batch(pilot, RECS, _cfg(1.0))
    assert [x.response for x in one] == [x.response for x in pilot_alone]
    assert [x.pilot_tokens for x in one] == [x.pilot_tokens for x in pilot_alone]
    assert all(x.base_tokens == 0 and x.nudging.handoffs == 0 and x.nudging.pilot_pieces > 0 for x in one)


@pytest.mark.parametrize("pair,piece,compact", [("same", "word", False), ("different", "word", True),
                                                ("same", "chunk", True)])
def test_batched_engine_equals_the_reference(m, pair, piece, compact, monkeypatch):
    from pilot_core.models.ragged import RaggedBatch

    compactions, compact_fn = [], RaggedBatch.compact
    monkeypatch.setattr(RaggedBatch, "compact", lambda self: compactions.append(1) or compact_fn(self))
    if compact:  # the caches drop their holes after every pass
        monkeypatch.setattr("wsd_inference.nudging.COMPACT_SLACK", -10**6)
    pilot, base = m["pilot"], m[pair]
    cfg = _cfg(GAMMA[pair], piece, piece_tokens=3 if piece == "chunk" else 8)
    got = nudging_batch(pilot, base, RECS, cfg)
    for rec, g in zip(RECS, got):
        want = wsd_reference.nudging(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in want} == want, rec.id
        assert g.method == "nudging" and g.pilot_tokens + g.base_tokens <= cfg.max_new_tokens
    # both models wrote, and the turns went back and forth (not one switch as in WSD)
    assert sum(g.pilot_tokens for g in got) > 0 and sum(g.base_tokens for g in got) > 0
    assert max(g.nudging.handoffs for g in got) >= 3
    assert bool(compactions) == compact


def test_sampled_nudging_is_seeded_per_prompt(m):
    pilot, base = m["pilot"], m["same"]
    cfg = _cfg(GAMMA["same"]).model_copy(update={"temperature": 0.9})
    a = nudging_batch(pilot, base, RECS, cfg)
    b = nudging_batch(pilot, base, RECS[:3], cfg) + nudging_batch(pilot, base, RECS[3:], cfg)
    assert [x.response for x in a] == [x.response for x in b]  # an answer does not depend on its batch
    c = nudging_batch(pilot, base, RECS, cfg.model_copy(update={"seed": 1}))
    assert [x.response for x in a] != [x.response for x in c]


@pytest.mark.parametrize("pair", ["same", "different"])
def test_the_pilot_speculates_for_the_bases_turns(m, pair):
    """With speculation on, the pilot's proposals ride in the base's pass and the base writes on through those it
    is confident of and picks itself: the answers of writing token by token (greedy = the reference, on both
    tokenizer pairs; sampled = the same draws)."""
    pilot, base = m["pilot"], m[pair]
    cfg = _cfg(GAMMA[pair])
    spec = {"speculation": cfg.speculation.model_copy(update={"tokens": 3, "min_acceptance": 0.0})}
    got = nudging_batch(pilot, base, RECS, cfg.model_copy(update=spec))
    for rec, g in zip(RECS, got):
        want = wsd_reference.nudging(pilot, base, rec.messages, cfg)
        assert {k: g.to_json()[k] for k in want} == want, rec.id
        st = g.speculation
        assert st.tokens == g.base_tokens and st.accepted <= st.proposed
    assert sum(g.speculation.proposed for g in got) > 0
    if pair == "same":
        assert sum(g.speculation.accepted for g in got) > 0  # passes that wrote several base tokens
        sampled = cfg.model_copy(update={"temperature": 0.9})
        plain = nudging_batch(pilot, base, RECS, sampled)
        spec_sampled = nudging_batch(pilot, base, RECS, sampled.model_copy(update=spec))
        assert [x.response for x in spec_sampled] == [x.response for x in plain]
