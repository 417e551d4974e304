"""The methods WSD is compared with: base_only, pilot_only, URIAL, best-of-N, weak-to-strong search, EFT."""

import asyncio

import pytest

from pilot_core.models.sampling import Sampling

from wsd_inference.baselines import URIAL_STOP, pilot_only_batch, urial_batch, urial_prefix, urial_prompt
from wsd_inference.config import EFTConfig, WSDConfig
from wsd_inference.eft import eft_batch
from pilot_core.models.loading import load_hf_model
from wsd_inference.implicit_reward import IncrementalScorer, implicit_reward_from_scratch
from pilot_core.models.templates import cut_at_markers
from wsd_inference.search import LocalRows, bon_batch, cbs_batch, scored_text, top_beams

from .helpers import RECS
from .wsd_reference import greedy

CFG = WSDConfig(max_new_tokens=30)


@pytest.fixture(scope="module")
def m(pair_same, pair_different, untuned_path):
    return {"pilot": load_hf_model(str(pair_same[0]), need_chat_template=True),
            "untuned": load_hf_model(str(untuned_path)),
            "same": load_hf_model(str(pair_same[1])), "different": load_hf_model(str(pair_different[1]))}


def test_pilot_only_is_the_pilot_alone(m):
    from pilot_core.models.templates import chat_prompt

    pilot = m["pilot"]
    for rec, g in zip(RECS, pilot_only_batch(pilot, RECS, CFG)):
        ref = greedy(pilot.model, pilot.encode(chat_prompt(pilot.tokenizer, rec.messages)), 30, pilot.stop_ids)
        assert g.response == pilot.decode(ref).strip() and g.pilot_tokens == len(ref)
        assert g.base_tokens == 0 and g.method == "pilot_only"


def test_urial_is_the_base_with_the_prefix(m):
    base = m["different"]
    prefix = urial_prefix()
    assert prefix.count("\n# Query:\n```") == 3 and prefix.count("\n# Answer:\n```") == 3
    for rec, g in zip(RECS, urial_batch(base, RECS, CFG)):
        prompt = urial_prompt(rec.messages, prefix, base.tokenizer.bos_token)
        assert prompt.endswith("# Answer:\n```\n") and rec.messages[-1]["content"] in prompt
        ref = greedy(base.model, base.encode(prompt), 30, base.stop_ids, base.tokenizer, stop_on_marker=False)
        want = cut_at_markers(base.decode(ref), URIAL_STOP).removesuffix("```").strip()
        assert g.response == want  # the reference ran on past a marker; the method stopped there: the same cut
        assert "# Query" not in g.response and g.method == "urial"


def test_urial_prefix_file_errors(tmp_path):
    from pilot_core.errors import UserError

    with pytest.raises(UserError, match="URIAL prefix file not found"):
        urial_prefix(tmp_path / "nope.txt")


@pytest.mark.parametrize("pair", ["same", "different"])
def test_incremental_scores_equal_from_scratch(m, pair):
    """Scores kept with cached small-model states equal a from-scratch re-scoring, round after round,
    through beam re-indexing with repeats, for base tokenizers equal to or different from the pilot's."""
    base, tuned, untuned = m[pair], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=40)
    recs = RECS[:3]
    rows = LocalRows(base, recs, 2, cfg, Sampling(temperature=0.9))
    scorer = IncrementalScorer(tuned, untuned, [r.messages for r in rows.prompts])
    compared = 0
    for round_ in range(5):
        asyncio.run(rows.sample(7, round_))
        texts = [scored_text(base, r, f) for r, f in zip(rows.resp, rows.finished)]
        got = scorer.score(texts, rows.finished)
        for r, rec in enumerate(rows.prompts):
            want = implicit_reward_from_scratch(tuned, untuned, rec.messages, texts[r], rows.finished[r])
            assert got[r] == pytest.approx(want, abs=1e-3), (round_, r, texts[r])
            compared += 1
        order = [1, 1, 2, 2, 5, 4]  # keep some rows twice, drop others
        rows.select(order, round_ + 1)
        scorer.select(order)
    assert compared == 30


@pytest.mark.parametrize("pair", ["same", "different"])
def test_cbs_with_one_beam_and_no_chunks_is_best_of_n(m, pair):
    base, tuned, untuned = m[pair], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=30, seed=3)
    cfg = cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"beam_width": 1, "successors": 4,
                                                                      "chunk_length": None}),
                                 "bon": cfg.bon.model_copy(update={"n": 4})})
    bon = bon_batch(base, tuned, untuned, RECS, cfg)
    cbs = cbs_batch(base, tuned, untuned, RECS, cfg)
    for b, c in zip(bon, cbs):
        assert b.response == c.response and b.base_tokens == c.base_tokens
        assert b.search.score == pytest.approx(c.search.score, abs=1e-3)


def test_best_of_n_picks_the_highest_scoring_sample(m):
    base, tuned, untuned = m["different"], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=20)
    seen = {}

    class PrefersShort:  # a reward that prefers short answers: the chosen sample must be the shortest of the N
        def score(self, items):
            for messages, text in items:
                seen.setdefault(messages[-1]["content"], []).append(len(text))
            return [-len(text) for _, text in items]

    for rec, g in zip(RECS, bon_batch(base, tuned, untuned, RECS, cfg, reward=PrefersShort())):
        lengths = seen[rec.messages[-1]["content"]]
        assert len(lengths) == cfg.bon.n and g.search.score == -min(lengths)
        assert g.search.candidate_scores == [-x for x in lengths]


def test_cbs_searches_in_chunks_and_is_seeded(m):
    base, tuned, untuned = m["same"], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=24)
    cfg = cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"chunk_length": 5})})
    a = cbs_batch(base, tuned, untuned, RECS, cfg)
    b = cbs_batch(base, tuned, untuned, RECS, cfg)
    c = cbs_batch(base, tuned, untuned, RECS, cfg.model_copy(update={"seed": 1}))
    assert [x.response for x in a] == [x.response for x in b]
    assert [x.response for x in a] != [x.response for x in c]
    assert all(x.search.candidates == 4 and x.base_tokens <= 24 for x in a)
    # the kept response scores at least as well as a fresh sample from the base (search helps on its own metric)
    single = bon_batch(base, tuned, untuned, RECS, cfg.model_copy(
        update={"bon": cfg.bon.model_copy(update={"n": 1})}))
    assert sum(x.search.score for x in a) > sum(x.search.score for x in single)


def test_eft_with_beta_zero_is_base_only_greedy(m):
    from wsd_inference.baselines import base_only_batch

    base, tuned, untuned = m["same"], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=30)
    zero = eft_batch(base, tuned, untuned, RECS, cfg.model_copy(update={"eft": EFTConfig(beta=0.0)}))
    assert [x.response for x in zero] == [x.response for x in base_only_batch(base, RECS, cfg)]
    one = eft_batch(base, tuned, untuned, RECS, cfg)
    assert [x.response for x in one] != [x.response for x in zero]


def test_eft_refuses_different_vocabularies(m):
    from pilot_core.errors import UserError

    with pytest.raises(UserError, match="EFT needs one shared vocabulary"):
        eft_batch(m["different"], m["pilot"], m["untuned"], RECS, CFG)


def test_eft_combines_over_the_shared_vocabulary_when_only_added_tokens_differ(m, untuned_path, tmp_path):
    """Releases of one family that name an added special token differently (Llama 3's reserved tokens in 3.1)
    combine over the ids they share; the renamed id is never picked."""
    import shutil

    from pilot_core.models.loading import load_hf_model
    from wsd_inference.eft import shared_vocabulary

    renamed = tmp_path / "untuned-renamed"
    shutil.copytree(untuned_path, renamed)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        f = renamed / name
        f.write_text(f.read_text().replace('"<unk>"', '"<|reserved_special_token_0|>"'))
    other = load_hf_model(str(renamed))
    unk = m["untuned"].tokenizer.get_vocab()["<unk>"]
    assert other.tokenizer.get_vocab()["<|reserved_special_token_0|>"] == unk
    vocab = shared_vocabulary(m["same"], m["pilot"], other)
    assert vocab.excluded == (unk,) and vocab.size == len(m["pilot"].tokenizer)
    got = eft_batch(m["same"], m["pilot"], other, RECS, CFG)
    assert [x.response for x in got] == [x.response for x in eft_batch(m["same"], m["pilot"], m["untuned"],
                                                                             RECS, CFG)]


def test_cbs_keeps_w_distinct_beams_when_a_finished_beam_leads():
    """A finished beam comes back from its round as K identical copies; with the best score they would fill every
    slot (W=2, K=2 here) and the search would collapse onto one answer. It holds one slot."""
    scores = [5.0, 5.0, 1.0, 0.5, 2.0, 2.0, 2.0, 1.0]
    resp = [[1, 2], [1, 2], [3], [4], [7], [7], [8], [9]]
    finished = [True, True, False, False, False, False, False, False]
    assert top_beams(scores, resp, finished, 4, 2) == [[0, 2], [4, 6]]  # the second prompt: identical rows too
    assert top_beams(scores, resp, finished, 4, 1) == [[0], [4]]


def test_cbs_search_keeps_distinct_beams_every_round(m, monkeypatch):
    """A whole search with W=2, K=3: the beams each round keeps are W distinct hypotheses wherever its rows held
    that many (a spy on the rows' re-indexing)."""
    from wsd_inference import search

    base, tuned, untuned = m["same"], m["pilot"], m["untuned"]
    cfg = WSDConfig(max_new_tokens=24)
    cfg = cfg.model_copy(update={"cbs": cfg.cbs.model_copy(update={"beam_width": 2, "successors": 3,
                                                                      "chunk_length": 4})})
    kept, select = [], search.LocalRows.select

    def spy(self, order, round_):
        hyps = [(tuple(self.resp[r]), self.finished[r]) for r in range(len(self.resp))]
        for g in range(len(order) // 6):
            group = order[g * 6 : (g + 1) * 6]
            kept.append((len({hyps[r] for r in group}), len(set(hyps[g * 6 : (g + 1) * 6]))))
        select(self, order, round_)

    monkeypatch.setattr(search.LocalRows, "select", spy)
    cbs_batch(base, tuned, untuned, RECS, cfg)
    assert kept and all(k == min(2, available) for k, available in kept)


def test_eft_beta_steers_toward_the_pilot(m):
    """β > 0 moves the answer toward the pilot (its implicit reward, log π_pilot - log π_untuned, rises against
    β = 0), β < 0 away from it: a sign error in the combination fails here."""
    base, tuned, untuned = m["same"], m["pilot"], m["untuned"]

    def reward(beta):
        out = eft_batch(base, tuned, untuned, RECS, CFG.model_copy(update={"eft": EFTConfig(beta=beta)}))
        return sum(implicit_reward_from_scratch(tuned, untuned, rec.messages, g.response, False)
                   for rec, g in zip(RECS, out))

    low, zero, high = reward(-1.0), reward(0.0), reward(1.0)
    assert low < zero < high, (low, zero, high)
