"""Rescoring saved answers without generating again (`pilot score`): each input row is a benchmark item in its
format's upstream columns plus the model's `response`; each output row is the input row plus `correct`,
`extracted` (what was read; null when nothing could be), for GSM8K and MMLU lm-eval's two readings
(`correct_strict`, `correct_flexible`), for HumanEval the sandbox's `status`. Validation scores with the same
functions (`evalsets.score_answer`, `sandbox.solution_program` + `run_program`)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from evaluation.config import EvalSet
from evaluation.evalsets import load_eval_set, score_answer
from pilot_core.atomic import atomic_write_text
from pilot_core.errors import UserError
from pilot_core.jsonl import read_jsonl

FORMATS = ("gsm8k", "mmlu", "humaneval")


@dataclass(frozen=True)
class ScoreSummary:
    rows: int
    correct: int
    unparsed: int  # answers nothing could be read from (code: no definition of the entry point)
    code_execution: str | None  # how code ran ("bubblewrap <version>" or "unsafe: ..."), None for other formats


def score_file(fmt: str, input_path: str | Path, output: str | Path, unsafe: bool = False) -> ScoreSummary:
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose from {', '.join(FORMATS)}")
    output = Path(output)
    if output.exists():
        raise UserError(f"--output {output} already exists; choose a new file")
    rows = read_jsonl(input_path, "answers file")
    if not rows:
        raise UserError(f"{input_path}: no rows")
    for n, row in rows:
        if not isinstance(row.get("response"), str):
            raise UserError(f"{input_path}:{n}: 'response' must be a string (the model's answer), got "
                            f"{row.get('response')!r}")
    items = load_eval_set(EvalSet(name="answers", version="score", format=fmt, path=str(input_path)))
    mode = None
    out = []
    if fmt == "humaneval":
        from evaluation.sandbox import isolation, program_with_tests, run_program, solution_code

        mode = isolation(unsafe)  # refuses (exit 2) before anything runs where no boundary can be set up
        codes = [solution_code(row["response"], it.answer) for (_, row), it in zip(rows, items)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            outcomes = list(pool.map(lambda c: run_program(program_with_tests(c[0], c[1].answer), unsafe=unsafe),
                                     zip(codes, items)))
        for (_, row), it, o, code in zip(rows, items, outcomes, codes):
            defines = f"def {it.answer['entry_point']}(" in code
            out.append({**row, "correct": o.passed, "extracted": code if defines else None, "status": o.status,
                        "detail": o.detail})
    else:
        for (_, row), it in zip(rows, items):
            sc = score_answer(_kind(fmt), row["response"], it.answer, it.n_choices)
            out.append({**row, "correct": sc.correct, "extracted": sc.extracted, "correct_strict": sc.strict,
                        "correct_flexible": sc.flexible})
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    return ScoreSummary(len(out), sum(r["correct"] for r in out), sum(r["extracted"] is None for r in out), mode)


def _kind(fmt: str) -> str:
    return {"gsm8k": "math", "mmlu": "choice"}[fmt]
