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
from pilot_core.manifest import fingerprint

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


def write_review(out: Path, fields: tuple[str, ...], parts: dict[str, tuple[list[dict], str]], meta: dict) -> None:
    """The review directory, replaced as a whole: a reader never sees half of it. `parts`: {"": (rows, page)}
    writes the files into `out`; {reviewer: (rows, page), ...} one set per reviewer's share in out/<reviewer>/."""
    with atomic_dir(out, overwrite=True) as tmp:
        for name, (rows, page) in parts.items():
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows({k: to_cell(v) for k, v in r.items()} for r in rows)
            d = tmp / name if name else tmp
            atomic_write_text(d / "review.csv", buf.getvalue())
            atomic_write_text(d / "review.jsonl", "".join(json.dumps({k: r.get(k, "") for k in fields},
                                                                     ensure_ascii=False) + "\n" for r in rows))
            atomic_write_text(d / "review.html", page)
            if name:
                atomic_write_text(d / "review.json", json.dumps({**meta, "reviewer": name, "rows": len(rows)},
                                                                indent=2) + "\n")
        atomic_write_text(tmp / "review.json", json.dumps(meta, indent=2) + "\n")


EXPORT = "export"  # the column every exported row carries: which review (prompts or pairs) of which version
SEPARATORS = (",", ";", "\t")  # as spreadsheets save CSV: Excel in many locales uses ";"


def export_tag(kind: str, fp: str) -> str:
    """What the export column holds: the review's kind and the directory's version it was exported from."""
    return f"{kind}@{fp[:16]}"


def _csv_rows(path: Path) -> list[tuple[int, dict]]:
    """A CSV as people save it: UTF-8 with or without a byte-order mark, `,` `;` or tab between cells, Windows
    or Unix line ends; the separator is the one that makes a header with id and decision columns."""
    text = read_text(path, "decisions file").removeprefix("\ufeff")
    head = text.splitlines()[0] if text.strip() else ""
    for sep in SEPARATORS:
        fields = next(csv.reader([head], delimiter=sep), [])
        if "id" in fields and "decision" in fields:
            reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=sep)
            return [(n, {k: from_cell(v) if isinstance(v, str) else v for k, v in r.items()})
                    for n, r in enumerate(reader, 2)]
    raise UserError(f"{path}: the header must have id and decision columns, separated by , ; or a tab (found: "
                    f"{head[:120]!r})")


def read_decisions(path: Path, decisions: tuple[str, ...], flags: tuple[str, ...] = (),
                   texts: tuple[str, ...] = ()) -> list[dict]:
    """[{line, id, decision, note, export, reviewer, texts, <flag>: bool}] from a CSV (with id and decision
    columns) or a JSONL file; `texts`: the exported text columns, as the file holds them (to find edits). A
    decision outside `decisions` (or "") is an error naming the file, line and id; so is a file with no rows."""
    rows = read_jsonl(path, "decisions file") if path.suffix == ".jsonl" else _csv_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows (only a header?): nothing to import")
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
        row = {"line": n, "id": rid, "decision": d, "note": str(r.get("note") or ""),
               EXPORT: str(r.get(EXPORT) or ""), "reviewer": str(r.get("reviewer") or "").strip(),
               "texts": {f: r.get(f) for f in texts if r.get(f)}}
        for f in flags:
            v = r.get(f)
            row[f] = v is True or str(v or "").strip().lower() in YES
        out.append(row)
    return out


def check_export(path: Path, rows: list[dict], kind: str, fp: str, directory: Path,
                 also: frozenset[str] = frozenset()) -> None:
    """The decisions were exported from this kind of review of this version of `directory` (or of an earlier
    export in `also`, whose files still accumulate); else one error (exit 2) before anything is written."""
    want = export_tag(kind, fp)
    for r in rows:
        got = r[EXPORT]
        if got == want or got in also:
            continue
        if not got:
            raise UserError(f"{path}:{r['line']}: no {EXPORT} column value: not a file `pilot review export"
                            f"{'-pairs' if kind == 'pairs' else ''}` wrote (export again and decide in that file)")
        if got.split("@")[0] != kind:
            other = "import-pairs" if kind == "prompts" else "import"
            raise UserError(f"{path}:{r['line']}: exported from a {got.split('@')[0]} review, not a {kind} review of "
                            f"{directory}: use `pilot review {other}` with the directory it came from")
        raise UserError(f"{path}:{r['line']}: exported from another version of {directory} ({got}; it is {want} "
                        "now): the directory changed since; export again")


def check_texts(path: Path, rows: list[dict], current: dict[str, dict[str, str]]) -> None:
    """Decisions apply to rows as exported: a text edited in the file (spacing aside) is one error naming it."""
    for r in rows:
        for field, text in r["texts"].items():
            now = (current.get(r["id"]) or {}).get(field)
            if now is not None and " ".join(str(text).split()) != " ".join(str(now).split()):
                raise UserError(f"{path}:{r['line']}: the {field} of id {r['id']!r} was edited in the file "
                                f"(decisions apply to the rows as exported): put it back, or export again")


def imported_before(entries: list[dict], decisions: Path, name: str, role: str) -> dict | None:
    """The review entry a decisions file already made (the same file again, e.g. a retried task), or None. A file's
    decisions are one person's: the same file as someone else's (or as adjudicator) is an error."""
    fp = fingerprint(decisions)
    done = next((e for e in entries if e.get("decisions_fingerprint") == fp), None)
    if done is not None and (done.get("reviewer"), done.get("role", "reviewer")) != (name, role):
        raise UserError(f"{decisions}: imported before as {done.get('reviewer')}'s decisions"
                        f"{' (adjudicator)' if done.get('role') == 'adjudicator' else ''} on {done.get('at')}; a "
                        "file's decisions are one person's")
    return done
