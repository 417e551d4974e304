"""Eval set files: read, check and turn into prompts (few-shot turns and choice lists included).

A report records each set's version and the sha256 of its file, so two reports are comparable only when they
measured the same items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from evaluation import answers as reading
from evaluation.config import CAPABILITY_KINDS, EvalSet
from pilot_core.errors import UserError
from pilot_core.jsonl import read_jsonl
from pilot_core.manifest import file_sha256
from pilot_core.prompts import PromptRecord, parse_record
from pilot_core.report import EvalSetIdentity

LETTERS = "ABCDEFGHIJ"
EXTRA_FIELDS = ("answer", "choices", "category", "response", "reference", "code", "index", "generator")


@dataclass(frozen=True)
class EvalItem:
    record: PromptRecord  # what the methods decode (few-shot turns and choices included)
    question: tuple[dict, ...]  # the item's own messages (what judges and reward models read)
    answer: object = None  # code: {prompt, test, entry_point}
    category: str | None = None
    n_choices: int = 0
    reference: str | None = None  # the answer a response is judged against (AlpacaEval's output, Arena-Hard's baseline)
    index: int | None = None  # alpaca_eval: the instruction's position in the file (AlpacaEval's LC GLM reads it)


def _rows(path: str) -> list[tuple[int, dict]]:
    rows = read_jsonl(path, "eval set")
    if not rows:
        raise UserError(f"{path}: no items (the file is empty)")
    return rows


def _answer(es: EvalSet, obj: dict, where: str):
    if es.kind not in CAPABILITY_KINDS:
        return None
    if es.kind == "code":
        code = obj.get("code")
        if not isinstance(code, dict) or not all(isinstance(code.get(k), str) for k in ("prompt", "test",
                                                                                        "entry_point")):
            raise UserError(f"{where}: a code item needs prompt, test and entry_point")
        return code
    a = obj.get("answer")
    if es.kind == "math":
        if isinstance(a, bool) or not isinstance(a, (int, float, str)) or reading.clean_number(str(a)) is None:
            raise UserError(f"{where}: 'answer' must be a number for a math set, got {a!r}")
        return float(reading.clean_number(str(a)))
    if es.kind == "choice":
        choices = _choices(obj, where)
        if not isinstance(a, str) or a not in LETTERS[: len(choices)]:
            raise UserError(f"{where}: 'answer' must be one of {', '.join(LETTERS[:len(choices)])}, got {a!r}")
        return a
    answers = [a] if isinstance(a, str) else a
    if not isinstance(answers, list) or not answers or not all(isinstance(x, str) and x.strip() for x in answers):
        raise UserError(f"{where}: 'answer' must be a non-empty string or list of strings, got {a!r}")
    return answers


def _choices(obj: dict, where: str) -> list[str]:
    choices = obj.get("choices")
    if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or \
            not all(isinstance(c, str) and c.strip() for c in choices):
        raise UserError(f"{where}: 'choices' must be a list of 2-{len(LETTERS)} non-empty strings")
    return choices


def _with_choices(text: str, choices: list[str]) -> str:
    lines = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{text}\n\n{lines}\n\nAnswer with the letter of the correct option."


def _question(es: EvalSet, obj: dict, where: str, lineno: int) -> tuple[dict, ...]:
    fields = {k: v for k, v in obj.items() if k not in EXTRA_FIELDS}
    rec = parse_record(fields, where.rsplit(":", 1)[0], lineno)
    if es.kind == "choice":
        last = rec.messages[-1]
        return (*rec.messages[:-1], {"role": "user", "content": _with_choices(last["content"], _choices(obj, where))})
    return rec.messages


def _shots(es: EvalSet) -> list[dict]:
    """Few-shot turns: user/assistant pairs from the first `few_shot` examples."""
    if not es.few_shot:
        return []
    rows = _rows(es.few_shot_path)
    if len(rows) < es.few_shot:
        raise UserError(f"{es.few_shot_path}: {len(rows)} examples, but few_shot is {es.few_shot}")
    turns = []
    for lineno, obj in rows[: es.few_shot]:
        where = f"{es.few_shot_path}:{lineno}"
        if not isinstance(obj.get("response"), str) or not obj["response"].strip():
            raise UserError(f"{where}: a few-shot example needs a non-empty 'response'")
        q = _question(es, obj, where, lineno)
        turns += [*q, {"role": "assistant", "content": obj["response"]}]
    return turns


def _baseline_answer(obj: dict) -> tuple[str, str, object]:
    """(question id, answer, model) of an Arena-Hard-Auto model answer: v0.1 {question_id, model_id,
    choices[0].turns[0].content}, v2.0 {uid, model, messages[-1].content.answer}."""
    if "uid" in obj:
        content = obj["messages"][-1]["content"]
        return str(obj["uid"]), content["answer"] if isinstance(content, dict) else content, obj.get("model")
    return str(obj["question_id"]), obj["choices"][0]["turns"][0]["content"], obj.get("model_id")


def _baselines(es: EvalSet) -> dict[str, tuple[str, object, int]]:
    """Arena-Hard-Auto's model_answer file: question id -> (the baseline's answer, its model, the line)."""
    out = {}
    for lineno, obj in _rows(es.baseline_path):
        try:
            qid, answer, model = _baseline_answer(obj)
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{es.baseline_path}:{lineno}: expected a model answer (v0.1: {{question_id, choices: "
                            "[{turns: [{content}]}]}; v2.0: {uid, messages: [..., {content: {answer}}]})") from None
        if not isinstance(answer, str):
            raise UserError(f"{es.baseline_path}:{lineno}: the baseline's answer is not a string")
        out[qid] = (answer, model, lineno)
    return out


def _arena_hard_baseline(es: EvalSet, rows: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Each question with its category's baseline answer (Arena-Hard-Auto's JUDGE_SETTINGS: the category names
    the baseline model; an answer file of another model would score against the wrong baseline)."""
    from evaluation.arena_hard import BASELINES

    cats = sorted({r["category"] for _, r in rows})
    unknown = [c for c in cats if c not in BASELINES]
    if unknown:
        raise UserError(f"eval set {es.name}: category {unknown[0]!r} is not one of Arena-Hard-Auto's "
                        f"({', '.join(BASELINES)}): its judge prompt and baseline are unknown")
    if len(cats) > 1:
        raise UserError(f"eval set {es.name}: Arena-Hard v2.0 scores each category against its own baseline; "
                        f"these rows are {', '.join(cats)}: give categories: [one of them] (one set each)")
    base = _baselines(es)
    missing = [r["id"] for _, r in rows if r["id"] not in base]
    if missing:
        raise UserError(f"{es.baseline_path}: no baseline answer for question {missing[0]!r} "
                        f"({len(missing)} missing)")
    want = BASELINES[cats[0]]
    for _, r in rows:
        _, model, lineno = base[r["id"]]
        if model is not None and model != want:
            raise UserError(f"{es.baseline_path}:{lineno}: the answer of {model!r}, but category {cats[0]} is "
                            f"judged against {want!r}'s (Arena-Hard-Auto's baseline)")
    return [(w, {**r, "reference": base[r["id"]][0]}) for w, r in rows]


def _upstream(es: EvalSet) -> list[tuple[str, dict]]:
    from pilot_core.benchmarks import read_rows

    rows = read_rows(es.format, es.path, es.hub, f"eval set {es.name}")
    if es.reference_generator:  # AlpacaEval 2's reference is GPT-4 Turbo's; AlpacaEval 1's would pass silently
        for w, r in rows:
            if r.get("generator") != es.reference_generator:
                raise UserError(f"{w}: 'generator' is {r.get('generator')!r}, not {es.reference_generator!r} (the "
                                "eval set's reference_generator): these are another model's reference outputs")
    if es.format == "alpaca_eval":  # its position in the file: AlpacaEval's LC GLM reads instructions by it
        rows = [(w, {**r, "index": i}) for i, (w, r) in enumerate(rows)]
    if es.categories is not None:
        rows = [(w, r) for w, r in rows if r.get("category") in es.categories]
        if not rows:
            raise UserError(f"eval set {es.name}: no row of categories {', '.join(es.categories)}")
    return _arena_hard_baseline(es, rows) if es.format == "arena_hard" else rows


def load_eval_set(es: EvalSet) -> list[EvalItem]:
    rows = _upstream(es) if es.format else [(f"{es.path}:{n}", obj) for n, obj in _rows(es.path)
                                            if es.categories is None or obj.get("category") in es.categories]
    shots = _shots(es)
    items, seen = [], {}
    for where, obj in rows[: es.limit] if es.limit else rows:
        lineno = int(where.rsplit(":", 1)[1])
        q = _question(es, obj, where, lineno)
        rid = str(obj["id"])
        if rid in seen:
            raise UserError(f"{where}: duplicate id {rid!r} (first on line {seen[rid]})")
        seen[rid] = lineno
        cat = obj.get("category")
        if cat is not None and not isinstance(cat, str):
            raise UserError(f"{where}: 'category' must be a string, got {cat!r}")
        n_choices = len(obj["choices"]) if es.kind == "choice" else 0
        items.append(EvalItem(PromptRecord(rid, (*shots, *q)), q, _answer(es, obj, where), cat, n_choices,
                              obj.get("reference"), obj.get("index")))
    return items


def set_identity(es: EvalSet, n: int) -> EvalSetIdentity:
    """What a report records about an eval set; equal identities mean the same items were measured."""
    if es.format:  # what was read (a hub dataset has no one file), and the baseline answers with it
        from pilot_core.benchmarks import rows_sha256

        sha = rows_sha256(_upstream(es))
    else:
        sha = file_sha256(es.path)
    return EvalSetIdentity(version=es.version, kind=es.kind, path=es.path or es.hub.path, sha256=sha, n=n,
                           few_shot=es.few_shot,
                           few_shot_sha256=file_sha256(es.few_shot_path) if es.few_shot else None, limit=es.limit)


# ------------------------------------------------------------------------------------------------ answers
@dataclass(frozen=True)
class Score:
    """One answer scored: correct by the gated reading (the marked answer, else the flexible one), correct by
    lm-eval's strict-match and flexible-extract readings alone, and what was read (None: nothing)."""

    correct: bool
    strict: bool
    flexible: bool
    extracted: str | None


def score_answer(kind: str, response: str, answer, n_choices: int = 0) -> Score:
    """A capability item's answer scored (math, choice, short_answer; code runs in the sandbox instead)."""
    if kind == "math":
        r = reading.read_number(response)
        ok = [reading.same_number(x, answer) for x in (r.answer, r.strict, r.flexible)]
    elif kind == "choice":
        r = reading.read_letter(response, n_choices)
        ok = [x == answer for x in (r.answer, r.strict, r.flexible)]
    else:
        got = f" {_norm(response)} "
        hit = next((a for a in answer if f" {_norm(a)} " in got), None)  # an accepted answer as whole words
        return Score(hit is not None, hit is not None, hit is not None, hit)
    return Score(*ok, r.answer)


def extract_number(response: str) -> float | None:
    """The gated reading of a numeric answer, as a number."""
    got = reading.read_number(response).answer
    return None if got is None else float(got)


def extract_letter(response: str, n_choices: int) -> str | None:
    """The gated reading of a multiple-choice answer."""
    return reading.read_letter(response, n_choices).answer


def _norm(text: str) -> str:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def is_correct(kind: str, response: str, answer, n_choices: int = 0) -> bool:
    return score_answer(kind, response, answer, n_choices).correct
