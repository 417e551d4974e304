"""Speculative continuation: the pilot proposes the base's next tokens, the base checks them in one pass.

Answers are the base's own, token for token, greedy or sampled (the base draws each token itself, the draws a
plain step makes), on both tokenizer pairs, batched, whatever each row accepts."""

import pytest

from pilot_core.models.loading import load_hf_model
from pilot_core.models.ragged import RaggedBatch
from pilot_core.models.sampling import Generation, Sampling, Stream
from pilot_core.models.speculative import Drafter, Proposal, Speculation, SpeculativeGeneration, verify
from pilot_core.models.templates import STOP_STRINGS, base_prompt, chat_prompt
from wsd_inference.baselines import base_only_batch
from wsd_inference.config import WSDConfig
from wsd_inference.engine import wsd_batch

from .helpers import RECS, median_max_window

FIELDS = ("response", "draft_text", "switch_index", "switched", "kept_draft_tokens", "base_tokens", "pilot_tokens")


def speculating(cfg: WSDConfig, k: int, **more) -> WSDConfig:
    """`cfg` with the pilot proposing k tokens at first and every round run (the mechanism under test; when rounds
    run at all is the measured pace's business: test_speculation_pace.py)."""
    more = {"pace": "always", **more}
    return cfg.model_copy(update={"speculation": cfg.speculation.model_copy(update={"tokens": k, **more})})


@pytest.mark.parametrize("pair", ["same", "different"])
def test_greedy_answers_are_identical_with_speculation(models, pair):
    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=median_max_window(pilot, base, 3), max_draft_tokens=24, max_new_tokens=48,
                    batch_size=len(RECS))
    for run in (lambda c: wsd_batch(pilot, base, RECS, c), lambda c: base_only_batch(base, RECS, c, pilot=pilot)):
        plain, spec = run(speculating(cfg, 0)), run(speculating(cfg, 3))
        assert any(p.base_tokens > 10 for p in plain)  # the base writes a continuation worth speculating on
        for p, s in zip(plain, spec):
            assert {k: s.to_json()[k] for k in FIELDS} == {k: p.to_json()[k] for k in FIELDS}, p.id
            assert p.speculation is None
            st = s.speculation
            assert st.tokens == p.base_tokens
            if p.base_tokens > 1:
                assert st.proposed > 0 and 0 <= st.accepted <= st.proposed
                assert st.base_passes <= p.base_tokens  # never more passes than tokens
        if pair == "same":  # some proposals were kept (the tiny pilot and the other family's base hardly agree:
            # see test_text_crossing_proposes_what_the_base_writes for proposals kept across tokenizers)
            assert sum(s.speculation.accepted for s in spec) > 0


@pytest.mark.parametrize("pair", ["same", "different"])
def test_sampled_answers_are_the_draws_without_speculation(models, pair):
    """The base keeps a proposal only where its own draw (with the row's generator) equals it, so the random
    draws, and the answers, are those of decoding without speculation, on one vocabulary and across tokenizers;
    seeded per prompt, not per batch position."""
    pilot, base = models[pair]
    cfg = WSDConfig(window=3, threshold=0.1, max_draft_tokens=16, max_new_tokens=40, temperature=0.9, seed=3)
    plain, spec = base_only_batch(base, RECS, cfg), base_only_batch(base, RECS, speculating(cfg, 2), pilot=pilot)
    assert [s.response for s in spec] == [p.response for p in plain]
    assert sum(s.speculation.proposed for s in spec) > 0
    a, b = (wsd_batch(pilot, base, recs, speculating(cfg, 3)) for recs in (RECS, RECS[::-1]))
    assert [x.response for x in a] == [x.response for x in b[::-1]] == [
        x.response for x in wsd_batch(pilot, base, RECS, speculating(cfg, 0))]
    if pair == "same":
        assert sum(x.speculation.accepted for x in a) > 0
    c = wsd_batch(pilot, base, RECS, speculating(cfg, 3).model_copy(update={"seed": 1}))
    assert [x.response for x in c] != [x.response for x in a]


def continue_greedily(base, prompts: list[str], drafter: Drafter | None = None, spec: Speculation | None = None):
    """The base's greedy continuations of `prompts` (40 tokens), plainly or with `drafter` speculating: (rows,
    each row's speculation figures or None)."""
    batch = RaggedBatch(base, len(prompts))
    batch.feed([base.encode(p) for p in prompts])
    rows = [Stream(40) for _ in prompts]
    if drafter is None:
        Generation(batch, rows, Sampling(), STOP_STRINGS).run()
        return rows, None
    gen = SpeculativeGeneration(batch, rows, Sampling(), STOP_STRINGS, drafter, spec)
    gen.run()
    return rows, gen.stats


def test_rows_accept_all_some_or_none_in_one_batch(models):
    """The base drafts for itself: rows whose draft reads the base's own context accept every proposal (and k
    grows), rows whose draft reads another prompt accept some or none; every row's answer is the base's own."""
    _, base = models["same"]
    prompts = [base_prompt(r.messages, base.tokenizer.bos_token) for r in RECS[:6]]
    misread = prompts[3:] + prompts[:3]
    draft_prompts = prompts[:3] + misread[3:]

    def run(spec: Speculation | None):
        return continue_greedily(base, prompts, spec and Drafter(base, base, draft_prompts), spec)

    plain, _ = run(None)
    rows, stats = run(Speculation(tokens=2, max_tokens=6, min_acceptance=0.0, pace="always"))
    assert [r.tokens for r in rows] == [p.tokens for p in plain]
    for st, row in zip(stats[:3], rows):
        assert st.accepted == st.proposed > 0 and st.empty_rounds == 0
        assert st.base_passes < len(row.tokens) / 3  # k grew: several tokens per pass
    assert all(st.full_rounds < st.rounds for st in stats[3:])  # the misread rows were refused proposals
    assert any(st.empty_rounds for st in stats[3:]) and any(0 < st.accepted for st in stats[3:])

    # a row that does not pay stops speculating after min_rounds rounds; the others go on
    rows, stats = run(Speculation(tokens=2, max_tokens=6, min_acceptance=1.0, min_rounds=2, pace="always"))
    assert [r.tokens for r in rows] == [p.tokens for p in plain]
    assert all(st.rounds > 2 for st in stats[:3] if st.proposed)
    assert all(st.rounds == 2 for st in stats[3:] if st.accepted < st.proposed)



def test_text_crossing_proposes_what_the_base_writes(models):
    """The proposal crosses as text, re-tokenized by the base, its last (unstable) word held back: with the base
    drafting for itself through that path most proposals are kept, and the answers are the base's own."""
    _, base = models["different"]
    prompts = [base_prompt(r.messages, base.tokenizer.bos_token) for r in RECS[:4]]

    drafter = Drafter(base, base, prompts)
    drafter.same_vocab = False  # the text path, as for a pilot of another tokenizer family
    plain, _ = continue_greedily(base, prompts)
    rows, stats = continue_greedily(base, prompts, drafter, Speculation(tokens=4, pace="always"))
    assert [r.tokens for r in rows] == [p.tokens for p in plain]
    assert sum(st.accepted for st in stats) > 0.5 * sum(st.proposed for st in stats) > 0


def test_sampled_verify_emits_the_plain_draws():
    """On a 6-token vocabulary, sampled: whatever is proposed, the tokens emitted are the ones a plain step draws
    with the same generator, position by position (one draw per token emitted), and the proposals kept are the
    longest prefix equal to them."""
    import torch

    from pilot_core.models.sampling import pick_token

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, generator=g) * 1.5
    sampling = Sampling(temperature=1.0)
    kept_counts = set()
    for seed in range(300):
        proposal = [int(x) for x in torch.randint(0, 6, (3,), generator=g)]
        mine, plain = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        tokens, kept = verify(logits, Proposal(proposal), sampling, mine)
        want = [pick_token(logits[i], sampling, plain) for i in range(len(tokens))]
        assert tokens == want and tokens[:kept] == proposal[:kept] and len(tokens) == kept + 1
        assert kept == 3 or tokens[kept] != proposal[kept]
        kept_counts.add(kept)
        assert mine.get_state().equal(plain.get_state())  # no other draws were made
    assert kept_counts == {0, 1, 2, 3}


def test_greedy_verify_keeps_the_agreeing_prefix():
    import torch

    logits = torch.full((4, 5), -5.0)
    for i, t in enumerate([1, 2, 3, 4]):
        logits[i, t] = 5.0
    assert verify(logits, Proposal([1, 2, 0]), Sampling(), None) == ([1, 2, 3], 2)
    assert verify(logits, Proposal([0, 2, 3]), Sampling(), None) == ([1], 0)
    assert verify(logits, Proposal([1, 2, 3]), Sampling(), None) == ([1, 2, 3, 4], 3)
    assert verify(logits[:1], Proposal(), Sampling(), None) == ([1], 0)


def test_cli_speculates_and_refuses_it_for_a_served_base(models, pair_different, tmp_path):
    """`pilot wsd generate --speculate` writes the answers of in-process WSD without speculation, with each
    record's speculation figures; a base on a server speculates there, so the flag is refused for a URL."""
    import json

    from .helpers import one_line_error, pilot

    pilot_m, base = models["different"]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": r.id, "messages": list(r.messages)}) + "\n"
                                               for r in RECS))
    common = ["wsd", "generate", "--pilot", pilot_m.path, "--input", str(tmp_path / "in.jsonl"), "--window", "3",
              "--threshold", "0.3", "--max-draft-tokens", "16", "--max-new-tokens", "32"]
    r = pilot(*common, "--base", str(pair_different[1]), "--output", str(tmp_path / "out.jsonl"), "--speculate", "3")
    assert r.returncode == 0, r.stderr
    got = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    want = wsd_batch(pilot_m, base, RECS, WSDConfig(window=3, threshold=0.3, max_draft_tokens=16, max_new_tokens=32))
    assert [g["response"] for g in got] == [w.response for w in want]
    assert all(g["speculation"]["base_passes"] <= g["base_tokens"] for g in got)
    err = one_line_error(pilot(*common, "--base", "http://127.0.0.1:9/v1", "--base-model", "b", "--output",
                               str(tmp_path / "o2.jsonl"), "--speculate", "3"))
    assert "--speculate" in err and "--speculative-config" in err and not (tmp_path / "o2.jsonl").exists()


@pytest.fixture(scope="module")
def untuned(untuned_path):
    return load_hf_model(str(untuned_path))


@pytest.mark.parametrize("pair", ["same", "different"])
def test_urial_and_eft_greedy_answers_are_identical_with_speculation(models, untuned, pair):
    """The other methods that decode token by token with the base take the pilot as their draft model: URIAL
    (the base reads the prefix, the pilot its chat template) and EFT (all three models check the proposals and
    the combination picks), greedy answers identical."""
    from wsd_inference.baselines import urial_batch
    from wsd_inference.eft import eft_batch

    pilot, base = models[pair]
    cfg = WSDConfig(max_new_tokens=40, batch_size=len(RECS))
    runs = {"urial": lambda c: urial_batch(base, RECS, c, pilot=pilot)}
    if pair == "same":  # EFT needs one vocabulary
        runs["eft"] = lambda c: eft_batch(base, pilot, untuned, RECS, c)
    for name, run in runs.items():
        plain, spec = run(speculating(cfg, 0)), run(speculating(cfg, 3))
        assert [s.response for s in spec] == [p.response for p in plain], name
        assert [s.base_tokens for s in spec] == [p.base_tokens for p in plain]
        assert all(p.speculation is None for p in plain)
        assert sum(s.speculation.proposed for s in spec) > 0
        assert all(s.speculation.base_passes <= max(s.base_tokens, 1) for s in spec)
        if pair == "same":
            assert sum(s.speculation.accepted for s in spec) > 0


def search_cfg(k: int = 0, seed: int = 3) -> WSDConfig:
    cfg = WSDConfig(max_new_tokens=24, seed=seed)
    return speculating(cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"chunk_length": 5})}), k)


def test_searches_speculate_across_tokenizers_with_the_same_draws(models, untuned):
    """Best-of-N and CBS sample; across tokenizers the base keeps a proposal only where its own draw equals it,
    so every sample, every chunk (capped at L tokens however many a round keeps) and every successor's draws are
    those without speculation: the same answers and scores."""
    from wsd_inference.search import bon_batch, cbs_batch

    pilot, base = models["different"]
    for run in (bon_batch, cbs_batch):
        plain, spec = run(base, pilot, untuned, RECS, search_cfg()), run(base, pilot, untuned, RECS, search_cfg(3))
        assert [(s.response, s.search.score) for s in spec] == [(p.response, p.search.score) for p in plain]
        assert all(p.speculation is None for p in plain)
        assert all(s.speculation.proposed > 0 for s in spec)
        # the figures count every row's tokens, kept or not: more than the chosen answer's
        assert all(s.speculation.tokens > s.base_tokens for s in spec)


def test_searches_speculate_on_one_vocabulary_with_the_same_draws_chunk_by_chunk(models, untuned):
    """On one vocabulary too the searches' samples are the draws without speculation, proposals are kept, and a
    chunk is never longer than L tokens even when a round keeps several."""
    import asyncio

    from wsd_inference.search import LocalRows, cbs_batch

    pilot, base = models["same"]
    a, plain = cbs_batch(base, pilot, untuned, RECS, search_cfg(3)), cbs_batch(base, pilot, untuned, RECS, search_cfg())
    assert [(x.response, x.search.score) for x in a] == [(x.response, x.search.score) for x in plain]
    assert sum(x.speculation.accepted for x in a) > 0
    assert all(x.base_tokens <= 24 for x in a)

    rows = LocalRows(base, RECS, 2, search_cfg(3), Sampling(temperature=0.7), pilot)
    for round_ in range(3):
        asyncio.run(rows.sample(5, round_))
        assert all(len(r) == 5 * (round_ + 1) or f for r, f in zip(rows.resp, rows.finished))
        rows.select([1, 1, 2, 2] + list(range(4, len(rows.resp))), round_ + 1)
    assert rows.speculation(RECS[0]).proposed > 0


def test_what_the_draft_cache_holds_past_the_answer_is_proposed_first(models):
    """WSD's pilot drafted past the switch: those tokens, still in its cache, are the first proposals (no pass
    of the pilot for them), and drafting goes on after them: the proposals a fresh draft would make."""
    pilot, base = models["same"]
    prompts = [chat_prompt(pilot.tokenizer, r.messages) for r in RECS[:3]]
    want = [p.ids for p in Drafter(pilot, base, prompts).propose([[]] * 3, [6] * 3)]
    assert all(len(w) == 6 for w in want)
    batch = RaggedBatch(pilot, 3)
    batch.feed([pilot.encode(p) + w[:3] for p, w in zip(prompts, want)])  # the draft ran 2 tokens past "the answer"
    width = batch.mask.shape[1]
    warm = Drafter(pilot, base, prompts, batch)
    assert [p.ids for p in warm.propose([w[:1] for w in want], [2] * 3)] == [w[1:3] for w in want]
    assert batch.mask.shape[1] == width  # no pass
    assert [p.ids for p in warm.propose([w[:1] for w in want], [5] * 3)] == [w[1:6] for w in want]
    assert batch.mask.shape[1] == width + 2  # two passes of one token: the last proposal is not fed


def test_text_crossing_tokenizes_only_the_tail_with_the_same_result(models):
    """Across tokenizers that split at whitespace, each round re-tokenizes only the answer's tail: the draft's
    tokens of the answer and the base tokens proposed are those of re-tokenizing the whole text, as the answer
    grows token by token past the window."""
    pilot, base = models["different"]
    text = " ".join(f"Step {i}: mix the flour, add water and wait {i * 7} minutes; then stir." for i in range(30))
    answer = base.encode(" " + text)
    prompts = [chat_prompt(pilot.tokenizer, RECS[0].messages)]
    windowed, whole = Drafter(pilot, base, prompts), Drafter(pilot, base, prompts)
    assert windowed.windowed and not windowed.same_vocab
    whole.windowed = False
    draft = pilot.encode(" and then serve it warm with butter")
    crossed = 0
    for n in range(0, len(answer), 5):
        (a, at), (b, bt) = windowed._target(0, answer[:n]), whole._target(0, answer[:n])
        assert a == b and at == bt, n
        got = windowed._cross(answer[:n], at, a, draft)
        assert got == whole._cross(answer[:n], bt, b, draft), n
        crossed += bool(got)
    assert len(base.decode(answer)) > 4 * 256 and crossed > len(answer) // 10
