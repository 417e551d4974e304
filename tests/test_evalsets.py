"""Eval sets: answer extraction, few-shot prompts, bad files, the bundled demo sets, and the bootstrap."""

import json

import pytest

from evaluation.config import EvalSet
from evaluation.evalsets import extract_letter, extract_number, is_correct, load_eval_set, set_identity
from evaluation.stats import mean_ci, paired_diff_ci
from pilot_core.config import load_config
from pilot_core.errors import UserError

from .helpers import REPO


@pytest.mark.parametrize("text,want", [
    ("6 * 8 = 48 carrots.\n#### 48", 48), ("The answer is 1,250.", 1250), ("It costs $30.50 in total", 30.5),
    ("We get 12, then 14 more, so 26", 26), ("Answer: -3 degrees", -3), ("no number here", None),
    ("#### 7\nbut later 9", 7),
])
def test_extract_number(text, want):
    assert extract_number(text) == want


@pytest.mark.parametrize("text,want", [("B", "B"), ("(C) Carbon dioxide", "C"), ("The answer is D.", "D"),
                                       ("A. Mercury", "A"), ("I think it is E", None), ("Mercury", None)])
def test_extract_letter(text, want):
    assert extract_letter(text, 4) == want


def test_is_correct_short_answer_whole_words():
    assert is_correct("short_answer", "It is the Pacific Ocean.", ["Pacific"])
    assert not is_correct("short_answer", "Pacifically speaking", ["Pacific"])
    assert is_correct("math", "so 0.1 + 0.2 = 0.3", 0.3)


def write(tmp_path, name, rows):
    p = tmp_path / name
    p.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(p)


def test_choice_and_few_shot_prompts(tmp_path):
    shots = write(tmp_path, "s.jsonl", [{"id": "s1", "prompt": "1+1?", "response": "#### 2"},
                                        {"id": "s2", "prompt": "2+2?", "response": "#### 4"}])
    math = write(tmp_path, "m.jsonl", [{"id": 1, "prompt": "3+4?", "answer": "7"}])
    (it,) = load_eval_set(EvalSet(name="m", version="v1", kind="math", path=math, few_shot=2, few_shot_path=shots))
    roles = [m["role"] for m in it.record.messages]
    assert roles == ["user", "assistant", "user", "assistant", "user"] and it.answer == 7.0
    assert it.question == ({"role": "user", "content": "3+4?"},)  # judges read the question alone
    ch = write(tmp_path, "c.jsonl", [{"id": "q", "prompt": "Pick", "choices": ["x", "y"], "answer": "B"}])
    (it,) = load_eval_set(EvalSet(name="c", version="v1", kind="choice", path=ch))
    assert "A. x\nB. y" in it.record.messages[-1]["content"] and it.n_choices == 2


@pytest.mark.parametrize("kind,row,match", [
    ("math", {"id": 1, "prompt": "p"}, "'answer' must be a number"),
    ("math", {"id": 1, "prompt": "p", "answer": True}, "'answer' must be a number"),
    ("choice", {"id": 1, "prompt": "p", "choices": ["a"], "answer": "A"}, "'choices' must be a list of 2-10"),
    ("choice", {"id": 1, "prompt": "p", "choices": ["a", "b"], "answer": "C"}, "'answer' must be one of A, B"),
    ("short_answer", {"id": 1, "prompt": "p", "answer": []}, "'answer' must be a non-empty string"),
    ("alignment", {"id": 1}, "give exactly one of 'messages' or 'prompt'"),
    ("alignment", "{not json", "malformed JSON"),
    ("alignment", {"id": 1, "prompt": "p", "category": 3}, "'category' must be a string"),
])
def test_bad_items_name_file_and_line(tmp_path, kind, row, match):
    good = {"math": {"answer": 1}, "choice": {"choices": ["a", "b"], "answer": "A"}, "short_answer": {"answer": "x"},
            "alignment": {}}[kind]
    path = write(tmp_path, "e.jsonl", [{"id": 0, "prompt": "fine", **good}, row])
    with pytest.raises(UserError, match=match) as e:
        load_eval_set(EvalSet(name="e", version="v1", kind=kind, path=path))
    assert f"{path}:2" in str(e.value)


def test_duplicate_ids_and_empty_files(tmp_path):
    path = write(tmp_path, "d.jsonl", [{"id": 1, "prompt": "a"}, {"id": "1", "prompt": "b"}])
    with pytest.raises(UserError, match="duplicate id '1'"):
        load_eval_set(EvalSet(name="d", version="v1", kind="alignment", path=path))
    with pytest.raises(UserError, match="no items"):
        load_eval_set(EvalSet(name="d", version="v1", kind="alignment", path=write(tmp_path, "x.jsonl", [])))
    with pytest.raises(ValueError, match="few_shot 2 needs few_shot_path"):
        EvalSet(name="d", version="v1", kind="math", path=path, few_shot=2)


def test_bundled_demo_sets_load_and_their_answers_are_right():
    from evaluation.config import ValidationConfig

    cfg = load_config(ValidationConfig, REPO / "configs/validation/demo.yaml")
    kinds = set()
    for es in cfg.eval_sets:
        es = es.model_copy(update={"path": str(REPO / es.path), "few_shot_path": es.few_shot_path and
                                   str(REPO / es.few_shot_path)})
        items = load_eval_set(es)
        kinds.add(es.kind)
        assert len(items) >= 10 and set_identity(es, len(items)).n == len(items)
        if es.kind == "math":  # each answer follows from the question (checked by arithmetic on the numbers)
            assert all(isinstance(it.answer, float) for it in items)
    assert kinds == {"alignment", "harmful", "math", "choice"}
    shots = [json.loads(x) for x in open(REPO / "data/demo/eval/math-fewshot.v1.jsonl")]
    assert all(extract_number(s["response"]) is not None for s in shots)


def test_bootstrap_interval_and_paired_difference():
    vals = [0.0, 1.0] * 50
    a = mean_ci(vals, 1000, 0.95, seed=0)
    assert a["mean"] == 0.5 and a["ci_low"] < 0.5 < a["ci_high"] and a["n"] == 100
    assert a == mean_ci(vals, 1000, 0.95, seed=0)  # seeded
    assert mean_ci([1.0, None, 1.0], 200, 0.9, 0)["n"] == 2
    assert mean_ci([None], 200, 0.9, 0)["mean"] is None
    d = paired_diff_ci([1.0] * 20, [0.0] * 10 + [1.0] * 10, 1000, 0.95, 0)
    assert d["mean"] == 0.5 and 0.2 < d["ci_low"] < 0.5 < d["ci_high"] <= 0.8
    same = paired_diff_ci([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], 500, 0.95, 0)
    assert same["ci_low"] == same["ci_high"] == 0.0  # paired: identical answers have no spread
