"""Benchmarks in their upstream columns, read as the project's eval rows ({id, prompt | messages, answer, choices,
category, reference, code}): validation measures them (evaluation/evalsets.py) and curation decontaminates
against them (data_curation/decontam.py), so both read them the same way. One place to add a benchmark format:
a function and an entry in FORMATS.

    gsm8k        question, answer (the number after '####')                     -> a math item
    mmlu         question, choices, answer (an index or a letter), subject     -> a choice item
    humaneval    task_id, prompt, test, entry_point                            -> a code item (run in a sandbox)
    alpaca_eval  instruction, output (the reference answer), generator,        -> an alignment item with a reference
                 dataset
    arena_hard   v0.1: question_id, turns [{content}], category;               -> an alignment item (its reference,
                 v2.0: uid, prompt, category                                       the baseline's answer, comes from
                                                                                   the eval set's baseline_path)
    advbench     goal (and target)                                             -> a harmful item
    harmbench    BehaviorID, Behavior, SemanticCategory (ContextString)        -> a harmful item (a contextual
                                                                                   behavior gets its context first)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.hub_data import HubData, load_split
from pilot_core.jsonl import read_jsonl

LETTERS = "ABCDEFGHIJ"
CODE_INSTRUCTION = ("Complete the following Python function. Answer with the whole function (and any imports it "
                    "needs) in one ```python code block.\n\n```python\n{prompt}```")


class BadRow(ValueError):
    """A row that does not have the format's columns (the message names the column)."""


def _text(row: dict, col: str) -> str:
    v = row.get(col)
    if not isinstance(v, str) or not v.strip():
        raise BadRow(f"{col!r} must be a non-empty string, got {v!r}")
    return v


def _gsm8k(n: int, row: dict) -> dict:
    answer = _text(row, "answer")
    if "####" not in answer:
        raise BadRow(f"'answer' has no '#### <number>' final answer: {answer[-60:]!r}")
    return {"id": str(row.get("id", n)), "prompt": _text(row, "question"),
            "answer": answer.rsplit("####", 1)[1].strip().replace(",", "")}


def _mmlu(n: int, row: dict) -> dict:
    choices, a = row.get("choices"), row.get("answer")
    if isinstance(a, int) and not isinstance(a, bool) and isinstance(choices, list) and 0 <= a < len(choices):
        a = LETTERS[a]
    out = {"id": str(row.get("id", n)), "prompt": _text(row, "question"), "choices": choices, "answer": a}
    if isinstance(row.get("subject"), str):
        out["category"] = row["subject"]
    return out


def _humaneval(n: int, row: dict) -> dict:
    code = {k: _text(row, k) for k in ("prompt", "test", "entry_point")}
    return {"id": _text(row, "task_id"), "prompt": CODE_INSTRUCTION.format(prompt=code["prompt"]), "code": code}


def _alpaca_eval(n: int, row: dict) -> dict:
    out = {"id": str(row.get("id", n)), "prompt": _text(row, "instruction"), "reference": _text(row, "output")}
    if isinstance(row.get("dataset"), str):
        out["category"] = row["dataset"]
    if isinstance(row.get("generator"), str):
        out["generator"] = row["generator"]
    return out


ARENA_HARD_V01 = "arena-hard-v0.1"  # the category of every v0.1 question (upstream's judge settings key)


def _arena_hard(n: int, row: dict) -> dict:
    if "uid" in row:  # v2.0: {uid, category, subcategory, prompt}
        return {"id": _text(row, "uid"), "prompt": _text(row, "prompt"), "category": _text(row, "category")}
    turns = row.get("turns")
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                          for t in turns):
        raise BadRow(f"'turns' must be a list of {{content}} (v0.1) or the row needs 'uid' and 'prompt' (v2.0), got "
                     f"{turns!r}"[:200])
    return {"id": _text(row, "question_id"), "messages": [{"role": "user", "content": t["content"]} for t in turns],
            "category": row.get("category") if isinstance(row.get("category"), str) else ARENA_HARD_V01}


def _advbench(n: int, row: dict) -> dict:
    return {"id": str(row.get("id", n)), "prompt": _text(row, "goal")}


def _harmbench(n: int, row: dict) -> dict:
    behavior, context = _text(row, "Behavior"), row.get("ContextString")
    out = {"id": _text(row, "BehaviorID"),
           "prompt": f"{context}\n\n---\n\n{behavior}" if isinstance(context, str) and context.strip() else behavior}
    if isinstance(row.get("SemanticCategory"), str):
        out["category"] = row["SemanticCategory"]
    return out


FORMATS: dict[str, Callable[[int, dict], dict]] = {
    "gsm8k": _gsm8k, "mmlu": _mmlu, "humaneval": _humaneval, "alpaca_eval": _alpaca_eval, "arena_hard": _arena_hard,
    "advbench": _advbench, "harmbench": _harmbench}


def _raw(path: str | None, hub: HubData | None, what: str) -> tuple[str, list[tuple[int, dict]]]:
    """(where, [(row number, row)]) from a local JSONL / JSON list / CSV / Parquet file or a hub dataset."""
    if hub is not None:
        ds = load_split(hub, what)
        return f"{hub.path}[{hub.split}]", list(enumerate(ds.to_list(), 1))
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what}: file not found: {path}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return path, list(enumerate(pq.read_table(p).to_pylist(), 1))
        except Exception as e:
            raise UserError(f"{what}: {path}: not a readable Parquet file: {str(e).splitlines()[0]}") from None
    if p.suffix == ".csv":  # AdvBench and HarmBench publish CSV
        import pyarrow.csv as pcsv

        try:
            table = pcsv.read_csv(p, convert_options=pcsv.ConvertOptions(strings_can_be_null=False))
        except Exception as e:
            raise UserError(f"{what}: {path}: not a readable CSV file: {str(e).splitlines()[0]}") from None
        return path, list(enumerate(table.to_pylist(), 1))
    if p.suffix == ".json":
        try:
            rows = json.loads(p.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{what}: {path}: not a JSON file ({e})") from None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise UserError(f"{what}: {path}: expected a JSON list of objects")
        return path, list(enumerate(rows, 1))
    return path, read_jsonl(path, what)


def read_rows(fmt: str, path: str | None, hub: HubData | None, what: str) -> list[tuple[str, dict]]:
    """[(where, eval row)] of a benchmark in format `fmt`; a row without the format's columns is one error that
    names the file, the row and the column."""
    where, raw = _raw(path, hub, what)
    if not raw:
        raise UserError(f"{what}: {where}: no rows")
    out = []
    for n, row in raw:
        try:
            out.append((f"{where}:{n}", FORMATS[fmt](n, row)))
        except BadRow as e:
            raise UserError(f"{what}: {where}:{n}: format {fmt}: {e}") from None
    return out


def rows_sha256(rows: list[tuple[str, dict]]) -> str:
    """The identity of what was read (a hub dataset has no one file to hash)."""
    import hashlib

    return hashlib.sha256("\n".join(json.dumps(r, sort_keys=True, ensure_ascii=False)
                                    for _, r in rows).encode()).hexdigest()
