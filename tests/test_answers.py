"""Answers read as lm-evaluation-harness reads them (evaluation/answers.py), in the formats chat models write, and
`pilot score`, which rescores saved answers with validation's own scorers."""

from __future__ import annotations

import json

import pytest

from evaluation.evalsets import score_answer

from .helpers import REPO, one_line_error, pilot

B = REPO / "tests" / "fixtures" / "benchmarks"

# response, gold, (gated correct, lm-eval strict-match correct, lm-eval flexible-extract correct), the gated reading:
# lm-eval's strict-match misses most chat formats (the examples); the gated reading reads them
GSM8K = [
    ("6 * 8 = 48 carrots.\n#### 48", 48, (True, True, True), "48"),
    ("She sells 16 - 3 - 4 = 9 eggs, so she makes 9 * 2 = $18.\nThe answer is 18.", 18, (True, True, True), "18"),
    ("**Step 1:** 1,200 / 25 = 48 boxes.\n\n**Answer: 48 boxes**", 48, (True, False, True), "48"),
    ("Total: **$1,200.00**\n\nFinal answer: $1,200.00", 1200, (True, False, True), "1200.00"),
    ("The temperature drops to -7 degrees.\n#### -7", -7, (True, True, True), "-7"),
    ("#### 7\n\nLet me double-check with another method: 3 + 6 = 9.", 7, (True, True, False), "7"),
    ("We have 12 apples, give away 5, so 7 are left... wait, it was 8 given away, so 4.", 4, (True, False, True),
     "4"),
    ("I am not able to solve this problem.", 3, (False, False, False), None),
    ("The answer is 14.\nThat is 2 weeks.", 14, (True, True, False), "14"),
]
MMLU = [
    ("Answer: B", "B", (True, False, True), "B"),
    ("The correct answer is: C", "C", (True, False, True), "C"),
    ("**B**", "B", (True, False, False), "B"),
    ("Let's consider each option. A photosynthesis cell... so the correct choice is C.", "C", (True, False, False),
     "C"),
    ("The answer is **(B)**.", "B", (True, True, True), "B"),
    ("(C) Carbon dioxide", "C", (True, False, True), "C"),
    ("D. Mercury is the closest planet to the sun.", "D", (True, False, False), "D"),
    ("A farmer would plant in spring. The answer is a bit unclear to me.", "A", (False, False, False), None),
    ("I think it is E", "A", (False, False, False), None),
    ("Final answer: C) Paris", "C", (True, False, True), "C"),
    ("Option (A) is tempting, but (D) is right.\n\nThe answer is D.", "D", (True, True, True), "D"),
]


@pytest.mark.parametrize("response,gold,ok,extracted", GSM8K, ids=[g[0][:30] for g in GSM8K])
def test_gsm8k_answers_as_chat_models_write_them(response, gold, ok, extracted):
    s = score_answer("math", response, float(gold))
    assert (s.correct, s.strict, s.flexible) == ok and s.extracted == extracted


@pytest.mark.parametrize("response,gold,ok,extracted", MMLU, ids=[m[0][:30] for m in MMLU])
def test_mmlu_answers_as_chat_models_write_them(response, gold, ok, extracted):
    s = score_answer("choice", response, gold, 4)
    assert (s.correct, s.strict, s.flexible) == ok and s.extracted == extracted


def _answers(tmp_path, name, rows):
    p = tmp_path / f"{name}.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_pilot_score_rescores_saved_answers(tmp_path):
    gsm = [json.loads(x) for x in (B / "gsm8k" / "main" / "test-00000-of-00001.jsonl").read_text().splitlines()]
    gsm_in = _answers(tmp_path, "gsm", [{**gsm[0], "response": "**Answer: 14**"},
                                        {**gsm[1], "response": "I cannot answer that."}])
    r = pilot("score", "--format", "gsm8k", "--input", str(gsm_in), "--output", str(tmp_path / "gsm.out.jsonl"))
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in (tmp_path / "gsm.out.jsonl").read_text().splitlines()]
    assert [(o["correct"], o["extracted"], o["correct_strict"]) for o in out] == [(True, "14", False),
                                                                                  (False, None, False)]
    assert out[0]["question"] == gsm[0]["question"] and "2 answers: 1 correct (50.0%), nothing read from 1" in r.stdout

    he = [json.loads(x) for x in (B / "humaneval.jsonl").read_text().splitlines()]
    he_in = _answers(tmp_path, "he", [
        {**he[0], "response": "```python\ndef add(a, b):\n    return a + b\n```\nExample:\n```python\n"
                              "print(add(1, 2))\n```"},
        {**he[1], "response": "```python\ndef is_palindrome(text):\n    return False\n```"},
        {**he[2], "response": "Sorry, I can't write code today."}])
    r = pilot("score", "--format", "humaneval", "--input", str(he_in), "--output", str(tmp_path / "he.out.jsonl"))
    assert r.returncode == 0, r.stderr
    out = [json.loads(x) for x in (tmp_path / "he.out.jsonl").read_text().splitlines()]
    assert [(o["correct"], o["status"]) for o in out] == [(True, "passed"), (False, "failed"), (False, "failed")]
    assert out[0]["extracted"].startswith("def add(a, b):") and "print" not in out[0]["extracted"]
    assert out[2]["extracted"] is None and "AssertionError" in out[1]["detail"] and "code ran in bubblewrap" in r.stdout

    # bad input: exit 2, one line, nothing written
    line = one_line_error(pilot("score", "--format", "gsm8k", "--input", str(gsm_in), "--output",
                                str(tmp_path / "gsm.out.jsonl")))
    assert "already exists" in line
    bad = _answers(tmp_path, "bad", [{**gsm[0], "response": "ok"}, {k: v for k, v in gsm[1].items()}])
    line = one_line_error(pilot("score", "--format", "gsm8k", "--input", str(bad), "--output", str(tmp_path / "x")))
    assert f"{bad}:2" in line and "'response'" in line and not (tmp_path / "x").exists()
    nomarker = _answers(tmp_path, "nomarker", [{"question": "q?", "answer": "no final number", "response": "1"}])
    line = one_line_error(pilot("score", "--format", "gsm8k", "--input", str(nomarker), "--output",
                                str(tmp_path / "y")))
    assert "####" in line and not (tmp_path / "y").exists()


def test_readings_hold_on_hard_cases_and_take_linear_time():
    """lm-eval's strict "The answer is N." needs a character after N (a number ending the text loses a digit: kept,
    as lm-eval has it) while the gated reading reads the whole number; an article or a pronoun is never a choice,
    nor is a listing of the options; a text that degenerates into whitespace after "answer" is read in one pass."""
    from evaluation.answers import read_letter, read_number

    assert read_number("The answer is 12") == read_number("The answer is 12").__class__("1", "12", "12")
    assert read_number("The answer is 1,200\nok").answer == "1200"
    assert read_number("the answer is 5... actually the answer is 6.").answer == "6"  # the last marker
    for text in ("Note: A farmer sells eggs.", "The answer is A farmer.",
                 "A. London\nB. Paris\nC. Rome\nD. Berlin\nSo it is London."):
        assert read_letter(text, 4).answer is None, text
    assert read_letter("Answer: I think it is (C)", 10).answer == "C"
    assert read_letter("Answer: B because it is larger", 4).answer == "B"
    for n in (5000, 20000):  # milliseconds now; backtracking grew with n**4 before (18 s at n = 400): a regression
        assert read_letter("The answer is" + " " * n + ".", 4).answer is None  # shows as this test never ending
        assert read_letter("the correct choice is" + "\n" * n, 4).answer is None
        assert read_number("answer" + " " * n + ".").answer is None
