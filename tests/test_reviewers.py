"""Many reviewers (shared by the prompt and the pair review): Cohen's kappa, the decision that applies to a row
(agreement, conflict, adjudication), a reviewer's decisions imported again adding nothing, shares with an
overlap."""

import pytest

from data_curation.reviewers import (
    ADJUDICATOR,
    REVIEWER,
    Event,
    agreement,
    cohen_kappa,
    conflicts,
    new_events,
    settle,
    split_shares,
    who,
    with_section,
)
from pilot_core.errors import UserError


def test_cohen_kappa_as_the_literature_computes_it():
    # Wikipedia's "Cohen's kappa" worked example: 50 grant proposals, both readers yes on 20, both no on 15, A yes
    # and B no on 5, A no and B yes on 10: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4
    a = ["yes"] * 20 + ["no"] * 15 + ["yes"] * 5 + ["no"] * 10
    b = ["yes"] * 20 + ["no"] * 15 + ["no"] * 5 + ["yes"] * 10
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == 1.0 and cohen_kappa([], []) is None
    assert cohen_kappa(["reject"] * 3, ["reject"] * 3) is None  # one label only: p_e = 1, undefined
    sklearn = pytest.importorskip("sklearn.metrics")  # the dev extra has it; the review does not need it
    three = (["approve", "flip", "reject", "approve", "approve", "flip", "reject", "approve", "flip"],
             ["approve", "reject", "reject", "approve", "flip", "flip", "reject", "approve", "approve"])
    assert cohen_kappa(*three) == pytest.approx(sklearn.cohen_kappa_score(*three))
    assert cohen_kappa(a, b) == pytest.approx(sklearn.cohen_kappa_score(a, b))


def _e(rid, who_, decision, role=REVIEWER, note="", at="2026-01-01T00:00:00+00:00"):
    return Event(rid, who_, role, decision, note, False, at, "pairs@x", "f.csv")


def test_a_row_takes_the_decision_its_reviewers_agree_on_or_an_adjudicators():
    history = [_e("a", "alice", "reject", note="off-topic"), _e("a", "bob", "reject"),
               _e("b", "alice", "approve"), _e("b", "bob", "reject"),
               _e("c", "alice", "approve"), _e("c", "alice", "reject")]  # alice changed her mind on c
    s = settle(history)
    assert s["a"].decision == "reject" and s["a"].detail() == "alice: off-topic; bob" and s["a"].who == "alice, bob"
    assert s["b"].decision is None and conflicts(s) == [{"id": "b", "votes": {"alice": "approve", "bob": "reject"}}]
    assert s["c"].decision == "reject"  # her latest
    settled = settle([*history, _e("b", "carol", "approve", ADJUDICATOR, "fine"),
                      _e("b", "dan", "reject", ADJUDICATOR)])
    assert settled["b"].decision == "reject" and settled["b"].who == "dan (adjudicator)"  # the latest adjudicator
    assert settled["b"].votes == {"alice": "approve", "bob": "reject"} and conflicts(settled) == []
    assert agreement(history) == [{"reviewers": ["alice", "bob"], "rows": 2, "agreed": 1, "kappa": 0.0}]


def test_the_same_decisions_again_add_nothing():
    rows = [{"id": "a", "decision": "reject", "note": "x", "export": "e", "judge_wrong": False},
            {"id": "b", "decision": "", "note": "", "export": "e"}]
    first = new_events([], rows, "alice", REVIEWER, "t1", "f")
    assert [e.id for e in first] == ["a"]
    assert new_events(first, rows, "alice", REVIEWER, "t2", "g") == []
    assert len(new_events(first, rows, "bob", REVIEWER, "t2", "g")) == 1  # another reviewer's decision counts
    changed = [{**rows[0], "note": "y"}]
    assert [e.note for e in new_events(first, changed, "alice", REVIEWER, "t2", "g")] == ["y"]


def test_shares_have_the_overlap_and_split_the_rest():
    rows = [{"id": f"r{i}", "stratum": f"s{i % 3}"} for i in range(20)]
    shares = split_shares(rows, ("alice", "bob", "carol"), 5, 0, lambda r: r["stratum"])
    ids = {n: [r["id"] for r in s] for n, s in shares.items()}
    common = set.intersection(*map(set, ids.values()))
    assert len(common) == 5 and len({r["stratum"] for r in rows if r["id"] in common}) == 3  # over the strata
    rest = [i for s in ids.values() for i in s if i not in common]
    assert sorted(rest) == sorted({r["id"] for r in rows} - common) and len(rest) == 15  # each other row once
    assert all(len(s) == 10 for s in ids.values())
    order = [r["id"] for r in rows]
    assert all(s == sorted(s, key=order.index) for s in ids.values())  # in the export's order
    assert all(r["reviewer"] == n for n, s in shares.items() for r in s)
    assert split_shares(rows, ("alice", "bob", "carol"), 5, 0, lambda r: r["stratum"]) == shares  # seeded
    with pytest.raises(UserError, match="named twice"):
        split_shares(rows, ("alice", "alice"), 0, 0, lambda r: r["stratum"])
    with pytest.raises(UserError, match="--overlap 21: between 0 and the 20 rows"):
        split_shares(rows, ("alice", "bob"), 21, 0, lambda r: r["stratum"])
    with pytest.raises(UserError, match="letters, digits"):
        split_shares(rows, ("alice", "../bob"), 0, 0, lambda r: r["stratum"])


def test_who_imports_a_share(tmp_path):
    rows = [{"line": 2, "reviewer": "alice"}, {"line": 3, "reviewer": "alice"}]
    assert who(tmp_path / "f.csv", rows, None, None) == ("alice", REVIEWER)
    assert who(tmp_path / "f.csv", rows, None, "carol") == ("carol", ADJUDICATOR)
    with pytest.raises(UserError, match=r"f.csv:2: this row is alice's share, not bob's"):
        who(tmp_path / "f.csv", rows, "bob", None)
    with pytest.raises(UserError, match=r"f.csv:3: a row of bob's share in alice's file"):
        who(tmp_path / "f.csv", [rows[0], {"line": 3, "reviewer": "bob"}], None, None)
    with pytest.raises(UserError, match="give one"):
        who(tmp_path / "f.csv", rows, "alice", "carol")


def test_the_cards_reviewers_section_is_replaced_not_repeated():
    card = with_section("# card\n", "pairs", "<!-- pairs-reviewers -->\none\n<!-- /pairs-reviewers -->\n")
    card += "\n## Pair review\n\nmore\n"
    card = with_section(card, "pairs", "<!-- pairs-reviewers -->\ntwo\n<!-- /pairs-reviewers -->\n")
    assert "one" not in card and card.count("pairs-reviewers -->") == 2
    assert card.endswith("two\n<!-- /pairs-reviewers -->\n")
    assert "more" in card
