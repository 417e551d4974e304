"""The files of a review: what `export` writes (review.html, review.csv, review.jsonl, review.json) and the
decisions file a reviewer hands back (the page's saved CSV, or the CSV / JSONL filled in by hand), read with
one clear error per bad line; and the seeded stratified sample both reviews draw."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

from pilot_core.atomic import atomic_dir, atomic_write_text
from pilot_core.errors import UserError
from pilot_core.inputs import read_text
from pilot_core.jsonl import read_jsonl

YES = ("yes", "true", "1", "y", "x")
# A cell a spreadsheet would evaluate (a formula, or a DDE call) starts with one of these. On export such a text
# cell gets a leading apostrophe (OWASP's CSV-injection advice: spreadsheets show it as text), and on import the
# apostrophe is taken off again, so a text reads back unchanged. Texts that already start with apostrophes before
# such a character get one more, so the rule can be undone exactly. The review page saves its CSV by this rule too.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def to_cell(value):
    """A value as written into a CSV cell: text a spreadsheet would evaluate is neutralised."""
    if isinstance(value, str) and value.lstrip("'").startswith(FORMULA_START):
        return "'" + value
    return value


def from_cell(text: str) -> str:
    """The text a CSV cell written by `to_cell` (or the page) stands for."""
    return text[1:] if text.startswith("'") and text.lstrip("'").startswith(FORMULA_START) else text


def stratified_sample(rows: list[dict], key, k: int, seed: int) -> list[dict]:
    """Up to k rows per stratum (`key` of a row), a seeded sample, strata and rows in a stable order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for g in sorted(groups, key=str):
        out += sorted(groups[g], key=lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).digest())[:k]
    return out


def write_review(out: Path, fields: tuple[str, ...], rows: list[dict], page: str, meta: dict) -> None:
    """The review directory, replaced as a whole: a reader never sees half of it."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows({k: to_cell(v) for k, v in r.items()} for r in rows)
    with atomic_dir(out, overwrite=True) as tmp:
        atomic_write_text(tmp / "review.csv", buf.getvalue())
        atomic_write_text(tmp / "review.jsonl", "".join(json.dumps({k: r.get(k, "") for k in fields},
                                                                   ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(tmp / "review.html", page)
        atomic_write_text(tmp / "review.json", json.dumps(meta, indent=2) + "\n")


def read_decisions(path: Path, decisions: tuple[str, ...], flags: tuple[str, ...] = ()) -> list[dict]:
    """[{line, id, decision, note, <flag>: bool}] from a CSV (with id and decision columns) or a JSONL file;
    a decision outside `decisions` (or "") is an error naming the file, line and id."""
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, "decisions file")
    else:
        reader = csv.DictReader(io.StringIO(read_text(path, "decisions file")))
        if not reader.fieldnames or "id" not in reader.fieldnames or "decision" not in reader.fieldnames:
            raise UserError(f"{path}: the header must have id and decision columns (found: "
                            f"{', '.join(reader.fieldnames or [])})")
        rows = [(n, {k: from_cell(v) if isinstance(v, str) else v for k, v in r.items()})
                for n, r in enumerate(reader, 2)]
    out, seen = [], {}
    allowed = ", ".join(decisions[:-1]) + f" or {decisions[-1]}"
    for n, r in rows:
        d = str(r.get("decision") or "").strip().lower()
        if d not in (*decisions, ""):
            raise UserError(f"{path}:{n}: decision {r.get('decision')!r} for id {r.get('id')!r}; use {allowed}, "
                            "or leave it empty")
        rid = str(r.get("id"))
        if rid in seen:
            raise UserError(f"{path}:{n}: id {rid!r} again (first on line {seen[rid]}); decide each row once")
        seen[rid] = n
        row = {"line": n, "id": rid, "decision": d, "note": str(r.get("note") or "")}
        for f in flags:
            v = r.get(f)
            row[f] = v is True or str(v or "").strip().lower() in YES
        out.append(row)
    return out
