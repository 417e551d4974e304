"""Responses and preferences with local transformers models: pairs in TRL's conversational format, a cache that
makes a rerun free, strict verdict parsing and position-bias control."""

import json

import pyarrow.parquet as pq
import pytest

from data_curation.preferences import build_preferences
from data_curation.preferences_config import PreferencesConfig
from pilot_core.judging import combine_orders, parse_pairwise, parse_pointwise, win_rates
from pilot_core.models.tiny import PILOT_SPEC

from .helpers import PREF_PROMPTS as PROMPTS
from .helpers import local_cfg


def test_local_run_builds_sft_and_dpo_and_a_rerun_is_free(small_dataset, tmp_path, tiny_cache):
    cfg = local_cfg(tmp_path / "c.sqlite")
    s = build_preferences(small_dataset, cfg, tmp_path / "out", progress=False)
    assert s.responses == 4 * 3 and s.usage["warm"]["requests"] == 8 and s.usage["cold"]["requests"] == 4
    dpo = pq.read_table(tmp_path / "out" / "dpo.parquet").to_pylist()
    sft = pq.read_table(tmp_path / "out" / "sft.parquet").to_pylist()
    responses = pq.read_table(tmp_path / "out" / "responses.parquet").to_pylist()
    assert len(sft) == 4 and 1 <= len(dpo) <= 4
    for row in dpo:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        assert row["chosen"][0]["content"] and row["rejected"][0]["content"]
        mine = [r for r in responses if r["id"] == row["id"]]
        assert row["score_chosen"] == max(r["score"] for r in mine)
        assert row["score_rejected"] == min(r["score"] for r in mine) < row["score_chosen"]
    for row in sft:  # the SFT target is the best response
        mine = [r for r in responses if r["id"] == row["id"]]
        best = max(mine, key=lambda r: r["score"])
        assert row["messages"][-1] == {"role": "assistant", "content": best["text"]}
    import datasets

    dd = datasets.load_from_disk(str(tmp_path / "out" / "dataset"))
    assert set(dd) == {"prompts", "excluded", "sft", "dpo"} and dd["dpo"].num_rows == len(dpo)
    # a rerun with the same cache requests nothing and builds the same pairs
    again = build_preferences(small_dataset, cfg, tmp_path / "again", progress=False)
    assert sum(u["requests"] for u in again.usage.values()) == 0
    assert again.usage["warm"]["cache_hits"] == 8
    for name in ("sft.parquet", "dpo.parquet"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert m["data"]["preferences"]["dpo"] == len(dpo) and "warm" in m["data"]["preferences"]["usage"]
    assert "## Responses and preferences" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("kind", ["pairwise", "pointwise"])
def test_a_garbage_judge_is_recorded_not_guessed(small_dataset, tmp_path, tiny_cache, kind):
    """The tiny pilot as judge answers word salad: every verdict is `unparseable`, no pair is built."""
    cfg = local_cfg(tmp_path / "c.sqlite", judge_kind=kind)
    s = build_preferences(small_dataset, cfg, tmp_path / "out", progress=False)
    judgments = pq.read_table(tmp_path / "out" / "judgments.parquet").to_pylist()
    assert s.dpo == 0 and s.sft == 0
    raw = [j for j in judgments if j["order"] in ("AB", "BA", "single")]
    per_prompt = 3 * 2 if kind == "pairwise" else 3  # 3 pairs in both orders, or 3 single verdicts
    assert len(raw) == 4 * per_prompt and all(j["status"] == "unparseable" and j["raw"] for j in raw)
    assert s.skipped == {"no_scored_response": 4}


def test_verdict_parsing_is_strict():
    assert parse_pointwise('{"score": 7, "rationale": "ok"}') == (7.0, "ok")
    assert parse_pointwise('```json\n{"score": 3}\n```') == (3.0, "")
    for bad in ('Score: 7', '{"score": 11}', '{"score": "7"}', '{"score": true}', 'I give it {"score": 7}', ""):
        assert parse_pointwise(bad)[0] is None, bad
    assert parse_pairwise('{"winner": "b", "rationale": "r"}') == ("B", "r")
    assert parse_pairwise('{"winner": "TIE"}')[0] == "tie"
    for bad in ('{"winner": "C"}', 'A', '{"winner": "A"', '[{"winner": "A"}]'):
        assert parse_pairwise(bad)[0] is None, bad


def test_both_orders_cancel_position_bias():
    assert combine_orders("A", "B") == ("A", "consistent")  # A wins, then (swapped) the second one, A, wins
    assert combine_orders("A", "A") == ("tie", "inconsistent")  # always the first position: a bias, not a win
    assert combine_orders("tie", "tie") == ("tie", "consistent")
    assert combine_orders(None, "A") == (None, "unparseable")
    assert win_rates(3, {(0, 1): "A", (0, 2): "tie", (1, 2): None}) == [0.75, 0.0, 0.5]


def test_config_needs_two_responses_per_prompt():
    with pytest.raises(ValueError, match="at least two responses"):
        PreferencesConfig.model_validate({"generators": [{"name": "g", "model": {"name": "m", "path": "/x"}}],
                                          "judge": {"name": "j", "model": {"name": "m", "path": "/x"}}})


def test_local_calls_in_a_batch_answer_as_alone(tiny_cache):
    """A local generator answers `concurrency` calls in one batch. Each call's answer is what it gets alone:
    sampled with its own seed (so a rerun that makes only the missing calls builds the same responses), and
    greedy exactly transformers' own `generate`."""
    import asyncio

    import torch

    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.source import ModelSource
    from pilot_core.models.templates import chat_prompt

    chat = LocalChat.of(ModelSource(name="pilot", tiny=PILOT_SPEC), batch_size=8)
    calls = [([{"role": "user", "content": text}], {"max_tokens": 6 + 5 * i, "temperature": t, "top_p": p,
                                                    "seed": i})
             for i, (_, text) in enumerate(PROMPTS) for t, p in ((0.0, 1.0), (0.9, 0.95))]
    batched = asyncio.run(chat.chat_many(calls))
    alone = [asyncio.run(chat.chat(msgs, **params)) for msgs, params in calls]
    assert batched == alone
    assert len({r["text"] for r in batched}) > len(PROMPTS)  # sampled answers differ from the greedy ones
    for (msgs, params), got in zip(calls, batched):
        assert got["completion_tokens"] <= params["max_tokens"]
        if params["temperature"] == 0:
            ids = chat.m.encode(chat_prompt(chat.m.tokenizer, msgs))
            with torch.no_grad():
                ref = chat.m.model.generate(torch.tensor([ids]), max_new_tokens=params["max_tokens"], do_sample=False,
                                            eos_token_id=sorted(chat.m.stop_ids), pad_token_id=chat.m.pad_id)
            assert got["text"] == chat.m.decode(ref[0, len(ids):].tolist()).strip()


def test_a_served_models_own_timeout_and_retries_win_over_the_client_section():
    """`client:` sets the stage's default; a model that sets `timeout_s`/`max_retries` itself (as WSD and
    validation bases do) keeps its own."""
    from pilot_core.models.calls import Endpoint

    served = {"url": "http://127.0.0.1:9/v1", "served_model": "m"}
    cfg = PreferencesConfig.model_validate({
        "client": {"timeout_s": 30, "max_retries": 2}, "judge": {"name": "r", "kind": "rules"},
        "generators": [{"name": "own", "model": {"name": "own", **served, "timeout_s": 7, "max_retries": 4}},
                       {"name": "default", "model": {"name": "default", **served}}]})
    own, default = (Endpoint(g.model, cfg.client).backend.client for g in cfg.generators)
    assert (own.timeout, own.max_retries) == (7, 4)
    assert (default.timeout, default.max_retries) == (30, 2)
