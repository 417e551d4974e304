"""Upstream dataset formats by name (data_curation/formats.py), each read from a fixture written in its upstream
schema (tests/fixtures/upstream/, a few rows each), through the loader a user's config would take: a local
directory laid out like the hub repository (data_dir, split), a builder with data_files, or a JSONL file. Pairs a
source labels join the dpo split beside the generated ones."""

import json

import pyarrow.parquet as pq
import pytest

from data_curation.config import CurationConfig, SourceConfig
from data_curation.preferences import build_preferences
from data_curation.run import curate
from data_curation.sources import read_source
from pilot_core.errors import UserError

from .helpers import REPO, local_cfg

F = REPO / "tests" / "fixtures" / "upstream"
H, A = "\n\nHuman: ", "\n\nAssistant: "


def _read(**src):
    kept, excluded, _ = read_source(SourceConfig(**src), 200_000, 0)
    return {r["source_id"]: r for r in kept}, [(e["reason"], e["detail"]) for e in excluded]


def _texts(row) -> list[tuple[str, str]]:
    return [(t["role"], t["content"]) for t in row["messages"]]


def test_hh_rlhf_dialogues_become_turns_and_pairs():
    """The prompt is the dialogue up to its last human turn; the pair, both final assistant turns when the two
    dialogues agree up to there. data_dir picks the subset (harmless-base), as on the hub."""
    rows, excluded = _read(name="hh", kind="hf", path=str(F / "hh-rlhf"), data_dir="harmless-base",
                           format="hh-rlhf", labelled_pairs=True)  # its pairs: only when asked for (its card)
    raw = [json.loads(x) for x in open(F / "hh-rlhf" / "harmless-base" / "train.jsonl")]
    assert sorted(rows) == ["row1", "row2", "row3"]  # no id column upstream: the row number
    assert excluded == [("bad_dialogue", "chosen is not a string of Human/Assistant turns")]
    assert _texts(rows["row1"]) == [("user", "How do I pick a lock on my neighbour's front door?")]
    assert rows["row1"]["labelled_pair"]["chosen"] == raw[0]["chosen"].split(A)[-1]
    assert rows["row1"]["labelled_pair"]["rejected"] == raw[0]["rejected"].split(A)[-1]
    two = _texts(rows["row2"])  # multi-turn: up to the last human turn, the assistant's earlier turn kept
    assert [r for r, _ in two] == ["user", "assistant", "user"]
    assert two[2][1] == "Which of those is worse if I wanted to hurt someone?"
    assert rows["row2"]["labelled_pair"]["rejected"].startswith("Bleach and ammonia makes chloramine")
    assert rows["row3"]["labelled_pair"] is None  # the two dialogues ask different things: no pair
    helpful, _ = _read(name="hh", kind="hf", path=str(F / "hh-rlhf"), data_dir="helpful-base", format="hh-rlhf")
    assert [_texts(r) for r in helpful.values()] == [[("user", "How long should I boil an egg for a soft yolk?")]]


def test_ultrafeedback_binarized_reads_its_split_with_ids_scores_and_pairs():
    rows, excluded = _read(name="ufb", kind="hf", path=str(F / "ultrafeedback_binarized"), split="train_prefs",
                           format="ultrafeedback-binarized")
    assert sorted(rows) == ["a1f3", "b27c"] and excluded == []  # prompt_id is the id; test_prefs not read
    assert _texts(rows["a1f3"]) == [("user", "Write a haiku about autumn rain.")]
    assert rows["a1f3"]["labelled_pair"] == {"chosen": "Cold rain on red leaves / the gutter hums a low song / the "
                                             "street smells of earth", "rejected": "Rain is wet in fall.",
                                             "score_chosen": 8.5, "score_rejected": 3.0}
    test, _ = _read(name="ufb", kind="hf", path=str(F / "ultrafeedback_binarized"), split="test_prefs",
                    format="ultrafeedback-binarized")
    assert list(test) == ["c9d0"]
    with pytest.raises(UserError, match="no split 'train'|train"):
        _read(name="ufb", kind="hf", path=str(F / "ultrafeedback_binarized"), format="ultrafeedback-binarized")


@pytest.mark.parametrize("src, ids, first, dropped", [
    ({"path": "ultrafeedback.jsonl", "format": "ultrafeedback"}, ["row1", "row2"],
     [("user", "Give me three tips for writing a clear bug report.")], [("missing_prompt", None)]),
    ({"path": "sharegpt.jsonl", "format": "sharegpt"}, ["sg-001", "sg-002"],
     [("system", "You are a helpful travel assistant."), ("user", "Plan a rainy day in Lisbon for two people.")],
     [("bad_messages", "turn with role 'narrator' and content of type str")]),
    ({"kind": "hf", "path": "json", "data_files": "alpaca_data.json", "format": "alpaca"}, ["row1", "row2"],
     [("user", "Rewrite the sentence in the passive voice.\n\nThe committee approved the new budget.")],
     [("missing_prompt", None)]),
    ({"path": "arena-hard-question.jsonl", "format": "arena-hard"}, ["328c149ed45a41c0", "b43c07656ead4150"],
     [("user", "Write a Python function that merges overlapping intervals and explain its time complexity.")], []),
    ({"path": "trl-preference.jsonl", "format": "trl"}, ["t1", "t2", "t3"],
     [("user", "Is it safe to eat raw cookie dough?")], []),
], ids=["ultrafeedback", "sharegpt", "alpaca", "arena-hard", "trl"])
def test_each_format_reads_its_fixture(src, ids, first, dropped):
    if "data_files" in src:
        src = {**src, "data_files": str(F / src["data_files"])}  # a builder with local files
    else:
        src = {**src, "path": str(F / src["path"])}
    rows, excluded = _read(name="s", **src)
    assert list(rows) == ids and excluded == dropped
    assert _texts(rows[ids[0]]) == first


def test_trl_pairs_as_text_or_messages_and_a_conversation_without_one():
    rows, _ = _read(name="t", path=str(F / "trl-preference.jsonl"), format="trl")
    assert rows["t1"]["labelled_pair"]["rejected"] == "Yes, totally safe."  # conversational
    assert rows["t2"]["labelled_pair"]["rejected"] == "It's a play."  # standard (text)
    assert rows["t3"]["labelled_pair"] is None and _texts(rows["t3"]) == [("user",
                                                                          "Translate 'good morning' into Spanish.")]


def test_format_errors_are_clear():
    with pytest.raises(ValueError, match="give format or columns, not both"):
        SourceConfig(name="s", path="x.jsonl", format="alpaca", columns={"prompt": "instruction"})
    with pytest.raises(ValueError, match="subset, data_dir and data_files are for kind hf"):
        SourceConfig(name="s", path="x.jsonl", data_dir="harmless-base")
    with pytest.raises(UserError, match=r"column 'turns' not found .* format arena-hard reads turns"):
        _read(name="s", kind="hf", path="json", data_files=str(F / "alpaca_data.json"), format="arena-hard")
    with pytest.raises(UserError, match=r"no row has the column 'conversations' \(format sharegpt"):
        _read(name="s", path=str(F / "arena-hard-question.jsonl"), format="sharegpt")


def test_labelled_pairs_join_the_dpo_split_beside_the_generated_ones(tmp_path, tiny_cache):
    """HH-RLHF and UltraFeedback-binarized curated together; their pairs reach the dpo split with origin
    `labelled` and the source as generator, beside the pairs generated for every prompt. HH-RLHF's only when
    asked for (its card advises against training dialogue agents on it); empty, identical and overlong pairs are
    left out, counted by reason."""
    hh = {"name": "hh", "kind": "hf", "path": str(F / "hh-rlhf"), "data_dir": "harmless-base", "format": "hh-rlhf"}
    default = CurationConfig.model_validate({"sources": [hh], "filters": {"language": None}})
    curate(default, output=str(tmp_path / "hh-default"), progress=False)
    assert not any(r.get("labelled_pair") for r in pq.read_table(tmp_path / "hh-default" / "prompts.parquet")
                   .to_pylist())
    cfg = CurationConfig.model_validate({
        "sources": [{**hh, "labelled_pairs": True},
                    {"name": "ufb", "kind": "hf", "path": str(F / "ultrafeedback_binarized"),
                     "split": "train_prefs", "format": "ultrafeedback-binarized"}],
        "filters": {"language": None}})
    curate(cfg, output=str(tmp_path / "curated"), progress=False)
    kept = {r["id"]: r for r in pq.read_table(tmp_path / "curated" / "prompts.parquet").to_pylist()}
    assert {i for i, r in kept.items() if r["labelled_pair"]} == {"hh:row1", "hh:row2", "ufb:a1f3", "ufb:b27c"}
    s = build_preferences(tmp_path / "curated", local_cfg(tmp_path / "c.sqlite"), tmp_path / "prefs",
                          progress=False)
    dpo = {r["id"]: r for r in pq.read_table(tmp_path / "prefs" / "dpo.parquet").to_pylist()}
    labelled = {i: r for i, r in dpo.items() if r["origin"] == "labelled"}
    assert sorted(labelled) == ["hh:row1:labelled", "hh:row2:labelled", "ufb:a1f3:labelled", "ufb:b27c:labelled"]
    assert s.dpo_labelled == 4 and len(dpo) == s.dpo > 4  # generated pairs too
    uf = labelled["ufb:a1f3:labelled"]
    assert uf["chosen"] == [{"role": "assistant", "content": kept["ufb:a1f3"]["labelled_pair"]["chosen"]}]
    assert (uf["score_chosen"], uf["score_rejected"], uf["margin"], uf["generator_chosen"]) == (8.5, 3.0, 5.5, "ufb")
    assert uf["prompt"] == kept["ufb:a1f3"]["messages"]
    assert all(r["origin"] == "generated" for i, r in dpo.items() if i not in labelled)
    from data_curation.pair_review import export_pair_review

    export_pair_review(tmp_path / "prefs", tmp_path / "review", per_stratum=100)  # the data team sees them too
    shown = {r["id"]: r for r in map(json.loads, open(tmp_path / "review" / "review.jsonl"))}
    assert shown["ufb:a1f3:labelled"]["verdict"] == "labelled" and shown["ufb:a1f3:labelled"]["rationale"] == \
        "labelled by source ufb"
    off = build_preferences(tmp_path / "curated", local_cfg(tmp_path / "c.sqlite", labelled_pairs=False),
                            tmp_path / "prefs-off", progress=False)
    assert off.dpo_labelled == 0 and off.dpo == s.dpo - 4

    from data_curation.preferences import labelled_pairs

    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "q"}], "category": "c", "source": "s",
             "labelled_pair": {"chosen": c, "rejected": r}} for i, (c, r) in enumerate(
                 [("good", "bad"), ("  ", "bad"), ("same", "same "), ("x" * 50, "short"), ("fine", "")])]
    pairs, left = labelled_pairs(rows, max_chars=40)
    assert [p["id"] for p in pairs] == ["r0:labelled"]
    assert [(x["id"], x["reason"]) for x in left] == [("r1:labelled", "labelled_pair_empty"),
                                                       ("r2:labelled", "labelled_pair_identical"),
                                                       ("r3:labelled", "labelled_pair_too_long"),
                                                       ("r4:labelled", "labelled_pair_empty")]
