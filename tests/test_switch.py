"""The switch rule, edge cases included, and the tokenisation-boundary rule of the online engine."""

import math

import pytest

from pilot_core.models.tokenization import stable_token_count
from wsd_inference.switch import accept_index, first_switch, window_scores


def lp(*probs):
    return [math.log(p) for p in probs]


def test_window_scores_are_geometric_means():
    s = window_scores(lp(0.5, 0.5, 1.0, 0.25), 2)
    assert s == pytest.approx([0.5, math.sqrt(0.5), 0.5])


def test_first_qualifying_window_is_kept_inclusive():
    probs = lp(0.1, 0.9, 0.9, 0.9, 0.1, 0.99, 0.99, 0.99)
    assert accept_index(probs, 3, 0.85) == (3, True)  # window 1..3 is the first >= 0.85; tokens 0..3 kept


def test_never_reaching_gamma_keeps_whole_draft():
    assert accept_index(lp(0.1, 0.2, 0.3, 0.2, 0.1), 2, 0.8) == (4, False)


def test_draft_shorter_than_window_keeps_whole_draft():
    assert accept_index(lp(0.99, 0.99), 6, 0.1) == (1, False)


def test_gamma_reached_at_first_window():
    assert accept_index(lp(*([0.9] * 10)), 6, 0.8) == (5, True)  # earliest possible switch: after w tokens


def test_gamma_zero_switches_at_first_full_window():
    assert accept_index(lp(*([1e-9] * 8)), 6, 0.0) == (5, True)


def test_gamma_one_needs_certainty():
    assert accept_index(lp(*([0.999999] * 8)), 6, 1.0) == (7, False)
    assert accept_index([0.0] * 8, 6, 1.0) == (5, True)  # p == 1 exactly


def test_empty_draft():
    assert accept_index([], 6, 0.8) == (None, False)


def test_first_switch_resumes_from_start():
    probs = lp(0.9, 0.9, 0.1, 0.9, 0.9, 0.9)
    assert first_switch(probs, 2, 0.85) == 1
    assert first_switch(probs, 2, 0.85, start=2) == 4  # incremental checks see only new windows


def test_window_equals_product_form():
    probs = [0.3, 0.7, 0.9, 0.95, 0.99, 0.8, 0.85]
    s = window_scores([math.log(p) for p in probs], 3)
    assert s == pytest.approx([math.prod(probs[i - 2 : i + 1]) ** (1 / 3) for i in range(2, len(probs))])


def test_stable_tokens_hold_back_the_last_word():
    prompt = "P:\n"
    text = prompt + "Hello wor"
    offsets = [(0, 2), (2, 3), (3, 8), (8, 12)]  # "P:", "\n", "Hello", " wor"
    assert stable_token_count(offsets, text, len(prompt)) == 3
    assert stable_token_count(offsets[:3], prompt + "Hello", len(prompt)) == 2  # no space in draft yet


@pytest.mark.parametrize("which", [0, 1])
def test_stable_tokens_never_change_as_text_grows(pair_different, which):
    """For every character prefix of real texts, the tokens called stable are a prefix of the final tokenisation
    (both tokenizer families; prompt + right-stripped draft, as the base model reads it)."""
    from transformers import AutoTokenizer

    from pilot_core.demo_world import default_corpus
    from pilot_core.models.templates import base_prompt, base_text

    tok = AutoTokenizer.from_pretrained(pair_different[which])
    prompt = base_prompt([{"role": "user", "content": "Hi there"}], tok.bos_token)
    texts = [" ".join(default_corpus(40, seed=s)[5:12]) + " 3.14159, naïve café — ok!!  end" for s in range(3)]
    checked = 0
    for draft in texts:
        final = tok(base_text(prompt, draft), add_special_tokens=False).input_ids
        for cut in range(1, len(draft) + 1):
            text = base_text(prompt, draft[:cut])
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            n = stable_token_count(enc.offset_mapping, text, len(prompt))
            assert enc.input_ids[:n] == final[:n], (draft[:cut], n)
            checked += n
    assert checked > 1000
