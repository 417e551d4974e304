"""Speculation pays or steps aside: a round runs only where the tokens the rows are expected to keep beat what the
round costs against a plain step, as measured for this pair and batch shape (`pilot_core.models.speculative`:
`Pacing`, `PassCosts`). Greedy answers never change, whatever the pace decides."""

import pytest

from pilot_core.models import speculative as sp
from pilot_core.models.speculative import (
    EXPLORE_ROUNDS,
    PROBE_PLAIN,
    PROBE_ROUNDS,
    SAMPLES,
    SETTLED,
    Pacing,
    PassCosts,
    SpecRow,
    SpecStats,
    Speculation,
)
from wsd_inference.baselines import base_only_batch
from wsd_inference.config import SpeculationConfig, WSDConfig
from wsd_inference.engine import wsd_batch

from .helpers import RECS


def measured(t_plain: float, per_token: float, draft: float) -> PassCosts:
    """Costs as the timing leaves them, fixed: a plain pass, a pass 4 tokens wider, a draft pass (seconds)."""
    return PassCosts(plain=[t_plain] * SAMPLES, verify=[(5, t_plain + 4 * per_token)] * SAMPLES,
                     draft=[draft] * SAMPLES)


def rows_at(acceptance: float, n: int = 4, k: int = 8) -> list[SpecRow]:
    return [SpecRow(k, SpecStats(rounds=10, proposed=1000, accepted=round(1000 * acceptance))) for _ in range(n)]


def test_the_probe_times_plain_passes_then_rounds_then_decides():
    pace, rows = Pacing(Speculation(tokens=4), PassCosts()), rows_at(0.9)
    assert pace.round_ks(rows, [20] * 4) == [0] * 4  # plain passes are timed first
    for _ in range(PROBE_PLAIN):
        pace.costs.timed_plain(1.0)
    assert pace.round_ks(rows, [20] * 4) == [8] * 4  # then rounds at the rows' own k
    pace.costs.timed_round(width=1, draft_passes=1, propose_s=0.1, verify_s=1.0)  # one token wide: no width cost
    assert pace.costs.measuring == "round" and pace.costs.verify == []
    pace.costs.timed_round(width=5, draft_passes=0, propose_s=0.0, verify_s=1.4)  # proposals from the cache
    assert pace.costs.draft == [0.1]  # a round without draft passes times no draft pass
    pace.costs.timed_round(width=5, draft_passes=4, propose_s=0.4, verify_s=1.4)
    assert pace.costs.measuring is None
    pace.costs.timed_round(width=5, draft_passes=4, propose_s=4.0, verify_s=5.0)  # a disturbed one: least wins
    assert pace.costs.round_s(4) == pytest.approx(1.0 + 0.1 * 4 + 0.1 * 4)
    while pace.costs.timing(False):  # timed as they come, up to SAMPLES of each kind
        pace.costs.timed_plain(0.5)
    assert pace.costs.timing(True)  # rounds are still timed, plain steps no more (a GPU is not synced for them)
    while pace.costs.timing(True):
        pace.costs.timed_round(width=5, draft_passes=4, propose_s=0.4, verify_s=0.9)
    frozen = (list(pace.costs.plain), list(pace.costs.verify), list(pace.costs.draft))
    assert len(frozen[0]) == len(frozen[1]) == len(frozen[2]) == SAMPLES
    pace.costs.timed_plain(0.1)
    pace.costs.timed_round(width=5, draft_passes=4, propose_s=0.04, verify_s=0.2)
    assert (pace.costs.plain, pace.costs.verify, pace.costs.draft) == frozen  # then fixed
    assert pace.costs.round_s(4) == pytest.approx(0.5 + 0.1 * 4 + 0.1 * 4)


@pytest.mark.parametrize("costs, acceptance, runs", [
    (measured(1.0, 0.4, 0.05), 0.5, False),  # a CPU at batch 16: a wide pass costs, half the proposals kept
    (measured(1.0, 0.4, 0.05), 0.95, True),  # ... unless the pilot is nearly always right
    (measured(1.0, 0.01, 0.03), 0.5, True),  # a GPU: the wide pass is almost free
    (measured(1.0, 0.01, 0.03), 0.05, False),  # ... but proposals that are never kept still cost the draft
])
def test_a_round_runs_only_where_it_writes_faster(costs, acceptance, runs):
    ks = Pacing(Speculation(tokens=4, max_tokens=16), costs).round_ks(rows_at(acceptance, k=16), [50] * 4)
    assert any(ks) == runs
    if runs:  # the k chosen writes the most tokens per second, and more than a plain step by the margin
        pace = Pacing(Speculation(tokens=4), costs)
        rate = lambda k: (1 + pace._expected_kept(pace._acceptance(rows_at(acceptance)[0].stats, costs.prior), k)) \
            / costs.round_s(k)  # noqa: E731
        assert rate(ks[0]) >= max(rate(k) for k in range(1, 17)) - 1e-12
        assert rate(ks[0]) > 1.1 / costs.t_plain


def test_better_acceptance_never_asks_for_fewer_proposals():
    costs = measured(1.0, 0.05, 0.02)
    ks = [Pacing(Speculation(tokens=4), costs).round_ks(rows_at(a, k=16), [50] * 4)[0] for a in (0.6, 0.8, 0.95)]
    assert 0 < ks[0] <= ks[1] <= ks[2]


def test_a_row_capped_by_its_room_or_its_k_proposes_no_more():
    costs = measured(1.0, 0.0, 0.0)  # free rounds: every row proposes what it may
    rows = rows_at(0.9, n=3, k=6)
    assert Pacing(Speculation(tokens=6), costs).round_ks(rows, [3, None, 50]) == [3, 0, 6]


def test_new_rows_explore_once_then_go_by_their_own_and_the_pairs_acceptance():
    """The pair's acceptance so far is a prior: while it rests on few proposals, a new row runs one round at its k
    even where the prior says it does not pay (else a pilot unlucky in its first rounds would never speculate again
    in this process); after it, its own proposals weigh. Once the prior rests on SETTLED proposals and the costs
    are fixed, a new row is judged at once."""
    costs = measured(1.0, 0.1, 0.02)
    costs.proposed, costs.accepted = SETTLED - 4, 3  # this pair's proposals were hardly ever kept, so far
    pace = Pacing(Speculation(tokens=4), costs)
    assert pace.round_ks([SpecRow(4) for _ in range(4)], [50] * 4) == [4] * 4
    costs.proposed, costs.accepted = 1000, 50
    assert not any(pace.round_ks([SpecRow(4) for _ in range(4)], [50] * 4))  # settled: no exploring round
    costs.draft = []  # the pilot's passes never timed (it proposed from its cache): settled all the same
    assert not any(pace.round_ks([SpecRow(4) for _ in range(4)], [50] * 4))
    costs.verify = costs.verify[:-1]  # ... but not while a round sample is missing (costs still being timed)
    assert pace.round_ks([SpecRow(4) for _ in range(4)], [50] * 4) == [4] * 4
    assert not any(pace.round_ks([SpecRow(4, SpecStats(rounds=1, proposed=4, accepted=0)) for _ in range(4)],
                                 [50] * 4))
    assert all(pace.round_ks([SpecRow(4, SpecStats(rounds=1, proposed=4, accepted=4)) for _ in range(4)], [50] * 4))
    costs.proposed, costs.accepted = 1000, 950  # a pilot the base agrees with: rows without rounds of their own too
    assert all(pace.round_ks([SpecRow(4, SpecStats(rounds=1)) for _ in range(4)], [50] * 4))
    dear = measured(1.0, 10.0, 10.0)  # even where no round could pay: costs measured on a busy machine may lie
    assert Pacing(Speculation(tokens=4), dear).round_ks([SpecRow(4) for _ in range(4)], [50] * 4) == [4] * 4


def test_auto_is_the_default_and_zero_turns_it_off():
    assert SpeculationConfig().auto and SpeculationConfig().enabled
    assert SpeculationConfig().settings().tokens > 0
    assert not SpeculationConfig(tokens=0).enabled
    with pytest.raises(ValueError):
        SpeculationConfig(tokens=65)


@pytest.fixture
def fresh_costs():
    """No costs measured yet in this process."""
    saved = dict(sp._COSTS)
    sp._COSTS.clear()
    yield sp._COSTS
    sp._COSTS.clear()
    sp._COSTS.update(saved)


def seeded(pilot, base, rows: int, costs: PassCosts) -> PassCosts:
    sp.pass_costs(pilot, base, "RaggedBatch", rows)
    sp._COSTS[pilot.model][base.model][("RaggedBatch", rows)] = costs
    return costs


@pytest.mark.parametrize("pair", ["same", "different"])
def test_measured_generation_probes_once_then_decides_with_the_same_answers(models, fresh_costs, pair):
    """The first generation of a shape probes (plain passes, then rounds), the next of the same shape does not;
    answers are those without speculation either way."""
    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=0.5, max_draft_tokens=16, max_new_tokens=40, batch_size=len(RECS))
    plain = base_only_batch(base, RECS, cfg.model_copy(update={"speculation": SpeculationConfig(tokens=0)}))
    first = base_only_batch(base, RECS, cfg, pilot=pilot)
    assert [f.response for f in first] == [p.response for p in plain]
    costs = fresh_costs[pilot.model][base.model][("RaggedBatch", len(RECS))]
    assert costs.measuring is None and len(costs.plain) >= PROBE_PLAIN and len(costs.verify) >= PROBE_ROUNDS
    again = base_only_batch(base, RECS, cfg, pilot=pilot)
    assert [a.response for a in again] == [p.response for p in plain]
    assert costs.measuring is None  # no second probe
    assert max(len(costs.plain), len(costs.verify), len(costs.draft)) <= SAMPLES
    assert all(a.speculation.base_passes <= a.base_tokens for a in again)


def test_where_rounds_cost_too_much_the_base_steps_alone(models, fresh_costs):
    pilot, base = models["same"]
    cfg = WSDConfig(window=3, threshold=0.5, max_draft_tokens=16, max_new_tokens=40, batch_size=len(RECS))
    plain = wsd_batch(pilot, base, RECS, cfg.model_copy(update={"speculation": SpeculationConfig(tokens=0)}))
    seeded(pilot, base, len(RECS), measured(1.0, 10.0, 10.0))  # a round costs 40x a plain step or more
    out = wsd_batch(pilot, base, RECS, cfg)
    assert [o.response for o in out] == [p.response for p in plain]
    assert all(o.speculation.rounds <= EXPLORE_ROUNDS for o in out)  # each row's first round, then none
    assert all(o.base_tokens <= o.speculation.base_passes + o.speculation.accepted for o in out)


def test_where_rounds_are_cheap_the_rows_speculate(models, fresh_costs):
    pilot, base = models["same"]
    cfg = WSDConfig(max_new_tokens=40, batch_size=len(RECS))
    plain = base_only_batch(base, RECS, cfg.model_copy(update={"speculation": SpeculationConfig(tokens=0)}))
    costs = seeded(pilot, base, len(RECS), measured(1.0, 0.0, 0.0))
    costs.proposed, costs.accepted = 10, 9  # a pilot the base agrees with
    out = base_only_batch(base, RECS, cfg, pilot=pilot)
    assert [o.response for o in out] == [p.response for p in plain]
    assert sum(o.speculation.proposed for o in out) > 0


def test_sampled_answers_do_not_move_with_the_pace(models, fresh_costs):
    """The base draws every token itself, so a seeded sampled answer is the same whether the measured pace
    speculates (cheap rounds), steps aside (dear rounds) or is still probing (nothing measured yet)."""
    pilot, base = models["same"]
    cfg = WSDConfig(max_new_tokens=32, batch_size=len(RECS), temperature=0.9, seed=5)
    probing = base_only_batch(base, RECS, cfg, pilot=pilot)
    answers = [[x.response for x in probing]]
    cheap = measured(1.0, 0.0, 0.0)
    cheap.proposed, cheap.accepted = 1000, 900  # a pilot the base agreed with, many times
    for costs, speculates in ((cheap, True), (measured(1.0, 1.0, 1.0), False)):
        seeded(pilot, base, len(RECS), costs)
        out = base_only_batch(base, RECS, cfg, pilot=pilot)
        assert any(x.speculation.rounds > 1 for x in out) == speculates  # beyond each row's first round
        answers.append([x.response for x in out])
    assert answers[0] == answers[1] == answers[2]


def test_cli_takes_auto_and_refuses_a_bad_k(models, tmp_path):
    import json

    from .helpers import pilot

    pilot_m, base = models["same"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": r.id, "messages": list(r.messages)}) + "\n"
                                               for r in RECS[:2]))
    common = ["wsd", "generate", "--pilot", pilot_m.path, "--base", base.path, "--input", str(tmp_path / "in.jsonl"),
              "--window", "3", "--max-draft-tokens", "8", "--max-new-tokens", "12", "--method", "base_only"]
    r = pilot(*common, "--output", str(tmp_path / "out.jsonl"), "--speculate", "auto")
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert all("speculation" in g for g in got)  # base-only took the pilot as its draft model
    r = pilot(*common, "--output", str(tmp_path / "o2.jsonl"), "--speculate", "many")  # click's usage error
    assert r.returncode == 2 and "'many' is neither auto nor a k" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o2.jsonl").exists()


def test_a_base_pass_costs_what_was_timed_at_its_width_or_between_two():
    """A pass's fixed part weighs less the wider it is: a narrow round is read between the widths timed, not at
    the widest pass's cost per token (which would make it look cheap); the least time per width counts."""
    costs = PassCosts(plain=[1.0] * SAMPLES, verify=[(5, 2.0), (9, 2.4), (5, 1.8)], draft=[0.1])
    assert [costs.base_pass_s(w) for w in (1, 3, 5, 7, 9, 13)] == pytest.approx([1.0, 1.4, 1.8, 2.1, 2.4, 3.0])
    assert costs.round_s(2) == pytest.approx(1.4 + 0.2)
    assert costs.round_s(2) > costs.t_plain + 2 * (2.4 - 1.0) / 8 + 0.2  # what the widest pass per token says


def test_across_tokenizers_a_round_pays_for_the_draft_passes_it_makes():
    """Across tokenizers the pilot drafts CROSS_HOLD tokens beyond k (its text's last word is held back): a round
    costs those passes too, so where the pilot's passes are dear an acceptance that pays on one vocabulary does
    not across two."""
    costs = measured(1.0, 0.02, 0.1)
    rows = rows_at(0.5, k=16)
    same = Pacing(Speculation(tokens=4, max_tokens=16), costs).round_ks(rows, [50] * 4)
    cross = Pacing(Speculation(tokens=4, max_tokens=16), costs, sp.CROSS_HOLD).round_ks(rows, [50] * 4)
    assert costs.round_s(2, sp.CROSS_HOLD) == pytest.approx(costs.round_s(2) + sp.CROSS_HOLD * 0.1)
    assert all(same) and not any(cross)
