"""Read sources into rows with provenance. Per-row problems (malformed JSON, no prompt, bad turns, a huge prompt)
become excluded rows with a reason; problems with the whole source (missing file or column, empty, not UTF-8)
are one UserError naming the file. Rows: id ("source:original id"), source, source_id, source_fingerprint,
messages (a list of {role, content}, trailing assistant turns removed), category_given, row (1-based)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from data_curation.config import SourceConfig
from data_curation.decision import ROW_KEYS, Drop
from pilot_core.errors import UserError
from pilot_core.jsonl import iter_jsonl
from pilot_core.manifest import fingerprint

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


def _table(src: SourceConfig, path: Path) -> tuple[list[str], Iterator[tuple[int, dict | None, str | None]]]:
    """(column names, rows) of a columnar source."""
    if src.kind == "parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a foreign file
            raise UserError(f"source {src.name}: {path}: not a readable Parquet file: {e}") from None
    elif src.kind == "csv":
        import pyarrow.csv as pcsv

        try:
            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(strings_can_be_null=False))
        except Exception as e:
            msg = str(e).splitlines()[0]
            if "UTF8" in msg or "utf8" in msg or "UTF-8" in msg:
                raise UserError(f"source {src.name}: {path}: not valid UTF-8 ({msg})") from None
            raise UserError(f"source {src.name}: {path}: not a readable CSV file: {msg}") from None
    else:
        table = _hf_table(src)
    return table.column_names, ((i, r, None) for i, r in enumerate(table.to_pylist(), 1))


def _hf_table(src: SourceConfig):
    import datasets

    try:
        if Path(src.path).is_dir():
            ds = datasets.load_from_disk(src.path)
        else:
            ds = datasets.load_dataset(src.path, split=src.split, revision=src.revision)
    except Exception as e:  # offline hub, missing dir, foreign format
        raise UserError(f"source {src.name}: cannot load dataset {src.path!r}: {str(e).splitlines()[0]}") from None
    if isinstance(ds, datasets.DatasetDict):
        if src.split not in ds:
            raise UserError(f"source {src.name}: {src.path} has no split {src.split!r} (has: {', '.join(ds)})")
        ds = ds[src.split]
    return ds.data.table


def _messages(row: dict, src: SourceConfig) -> tuple[list[dict] | None, str | None]:
    """The row's turns: the messages column where the row has it, else the prompt column."""
    c = src.columns
    if c.messages and row.get(c.messages) is not None:
        turns = row[c.messages]
        if isinstance(turns, str):
            try:
                turns = json.loads(turns)
            except ValueError:
                return None, "bad_messages: not a list of turns"
        if not isinstance(turns, list) or not turns:
            return None, "bad_messages: not a list of turns"
        out = []
        for t in turns:
            if not isinstance(t, dict):
                return None, "bad_messages: a turn is not an object"
            role, content = t.get("role", t.get("from")), t.get("content", t.get("value"))
            if role not in ROLES or not isinstance(content, str):
                return None, f"bad_messages: turn with role {role!r} and content of type {type(content).__name__}"
            out.append({"role": ROLES[role], "content": content})
    else:
        value = row.get(c.prompt) if c.prompt else None
        if not isinstance(value, str) or not value.strip():
            return None, "missing_prompt"
        out = [{"role": "user", "content": value}]
    if c.system and isinstance(row.get(c.system), str) and row[c.system].strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": row[c.system]})
    while out and out[-1]["role"] == "assistant":  # a prompt set: responses are generated later
        out.pop()
    if not any(t["role"] == "user" for t in out):
        return None, "no_user_turn"
    return out, None


def source_fingerprint(src: SourceConfig) -> str:
    """The file's fingerprint; a hub dataset's name and pinned revision."""
    path = Path(src.path)
    return fingerprint(path) if path.exists() else hashlib.sha256(f"{src.path}@{src.revision}".encode()).hexdigest()


def read_source(src: SourceConfig, max_chars: int, seed: int) -> tuple[list[dict], list[dict], str]:
    """(rows, excluded, fingerprint) of one source, capped to `src.cap` rows by a seeded sample."""
    path = Path(src.path)
    if src.kind != "hf":
        if not path.is_file():
            raise UserError(f"source {src.name}: file not found: {path}")
        if path.stat().st_size == 0:
            raise UserError(f"source {src.name}: {path} is empty")
    fp = source_fingerprint(src)
    c = src.columns
    wanted = [col for col in (c.messages, c.prompt) if col]
    if not wanted:
        raise UserError(f"source {src.name}: columns: give prompt or messages")
    if src.kind == "jsonl":  # a line that is not a JSON object is an excluded row, not an error
        names = None
        rows = ((n, obj, problem and f"malformed_json: {problem}") for n, obj, problem in iter_jsonl(path, "source"))
    else:
        names, rows = _table(src, path)
        missing = [col for col in (c.id, c.system, c.category) if col and col not in names]
        if not any(col in names for col in wanted):
            missing.insert(0, " or ".join(wanted))
        if missing:
            raise UserError(f"source {src.name}: {path}: column {missing[0]!r} not found "
                            f"(columns: {', '.join(names)})")
    kept, excluded, seen, saw_column, n_rows = [], [], set(), False, 0
    for n, obj, problem in rows:
        n_rows += 1
        sid = str(obj.get(c.id)) if obj is not None and c.id and obj.get(c.id) is not None else f"row{n}"
        base = {"id": f"{src.name}:{sid}", "source": src.name, "source_id": sid, "row": n}

        def drop(problem: str, score: float | None = None) -> None:
            reason, _, detail = problem.partition(": ")
            excluded.append({**base, **Drop("load", reason, score, detail=detail or None).columns()})

        if problem:
            drop(problem)
            continue
        saw_column = saw_column or any(col in obj for col in wanted)
        if sid in seen:
            drop("duplicate_id")
            continue
        seen.add(sid)
        msgs, problem = _messages(obj, src)
        if problem:
            drop(problem)
            continue
        chars = sum(len(t["content"]) for t in msgs)
        if chars > max_chars:
            drop("too_long_chars", float(chars))
            continue
        cat = obj.get(c.category) if c.category else None
        kept.append({**base, "source_fingerprint": fp[:16], "messages": msgs,
                     "category_given": str(cat) if cat not in (None, "") else None})
    if n_rows == 0:
        raise UserError(f"source {src.name}: {path} has no rows")
    if names is None and not saw_column:
        raise UserError(f"source {src.name}: {path}: no row has the column {' or '.join(wanted)!r} "
                        f"(set sources[].columns to the file's keys)")
    if src.cap is not None and len(kept) > src.cap:
        kept, over = _sample(kept, src.cap, seed)
        excluded += [{**{k: r[k] for k in ROW_KEYS}, **Drop("load", "over_cap", detail=f"cap {src.cap}").columns()}
                      for r in over]
    return kept, excluded, fp


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def _sample(rows: list[dict], k: int, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded sample of k rows, in their original order (the same seed and ids give the same sample)."""
    chosen = set(sorted(range(len(rows)), key=lambda i: _rank(seed, rows[i]["id"]))[:k])
    return [r for i, r in enumerate(rows) if i in chosen], [r for i, r in enumerate(rows) if i not in chosen]
