"""Read sources into rows with provenance. Per-row problems (malformed JSON, no prompt, bad turns, a huge prompt)
become excluded rows with a reason; problems with the whole source (missing file or column, empty, not UTF-8)
are one UserError naming the file. Rows: id ("source:original id"), source, source_id, source_fingerprint,
messages (a list of {role, content}, trailing assistant turns removed), category_given, row (1-based), and
labelled_pair ({chosen, rejected, score_chosen, score_rejected} or None) when a source's format labels pairs.
A source is read by its upstream format (`format:`, data_curation.formats) or by its column mapping."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from data_curation.config import SourceConfig
from data_curation.decision import ROW_KEYS, Drop
from data_curation.formats import FORMATS, Parsed, turns
from pilot_core.errors import UserError
from pilot_core.jsonl import iter_jsonl
from pilot_core.manifest import fingerprint

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
    from pilot_core.hub_data import HubData, load_split

    data = HubData(path=src.path, subset=src.subset, data_dir=src.data_dir, data_files=src.data_files,
                   split=src.split, revision=src.revision)
    return load_split(data, f"source {src.name}").data.table


def _messages(row: dict, src: SourceConfig) -> Parsed:
    """The row's turns (and labelled pair): by the source's format, or the messages column where the row has it,
    else the prompt column."""
    c = src.columns
    if src.format:
        parsed = FORMATS[src.format].parse(row)
        if parsed.messages is None:
            return parsed
        out = parsed.messages
    elif c.messages and row.get(c.messages) is not None:
        value = row[c.messages]
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                return Parsed(None, "bad_messages: not a list of turns")
        out, problem = turns(value)
        if problem:
            return Parsed(None, problem)
        parsed = Parsed(out)
    else:
        value = row.get(c.prompt) if c.prompt else None
        if not isinstance(value, str) or not value.strip():
            return Parsed(None, "missing_prompt")
        out = [{"role": "user", "content": value}]
        parsed = Parsed(out)
    out = list(out)
    if c.system and isinstance(row.get(c.system), str) and row[c.system].strip() and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": row[c.system]})
    while out and out[-1]["role"] == "assistant":  # a prompt set: responses are generated later
        out.pop()
    if not any(t["role"] == "user" for t in out):
        return Parsed(None, "no_user_turn")
    return Parsed(out, None, parsed.chosen, parsed.rejected, parsed.score_chosen, parsed.score_rejected)


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
    c, fmt = src.columns, FORMATS.get(src.format or "")
    labels = src.labelled_pairs if src.labelled_pairs is not None else src.format != "hh-rlhf"  # its card: no
    wanted = list(fmt.columns) if fmt else [col for col in (c.messages, c.prompt) if col]
    id_col = fmt.id if fmt else c.id
    if not wanted and not fmt:
        raise UserError(f"source {src.name}: columns: give prompt or messages")
    if src.kind == "jsonl":  # a line that is not a JSON object is an excluded row, not an error
        names = None
        rows = ((n, obj, problem and f"malformed_json: {problem}") for n, obj, problem in iter_jsonl(path, "source"))
    else:
        names, rows = _table(src, path)
        if fmt:  # the format's columns, all of them; its id column where the table has one
            missing = [col for col in wanted if col not in names]
            id_col = id_col if id_col in names else None
        else:
            missing = [col for col in (c.id, c.system, c.category) if col and col not in names]
            if not any(col in names for col in wanted):
                missing.insert(0, " or ".join(wanted))
        if missing:
            raise UserError(f"source {src.name}: {path}: column {missing[0]!r} not found "
                            f"(columns: {', '.join(names)})" + (f"; format {fmt.name} reads {', '.join(wanted)}"
                                                                 if fmt else ""))
    kept, excluded, seen, saw_column, n_rows = [], [], set(), False, 0
    for n, obj, problem in rows:
        n_rows += 1
        sid = str(obj.get(id_col)) if obj is not None and id_col and obj.get(id_col) is not None else f"row{n}"
        base = {"id": f"{src.name}:{sid}", "source": src.name, "source_id": sid, "row": n}

        def drop(problem: str, score: float | None = None) -> None:
            reason, _, detail = problem.partition(": ")
            excluded.append({**base, **Drop("load", reason, score, detail=detail or None).columns()})

        if problem:
            drop(problem)
            continue
        saw_column = saw_column or not wanted or any(col in obj for col in wanted)
        if sid in seen:
            drop("duplicate_id")
            continue
        seen.add(sid)
        parsed = _messages(obj, src)
        if parsed.problem:
            drop(parsed.problem)
            continue
        msgs = parsed.messages
        chars = sum(len(t["content"]) for t in msgs)
        if chars > max_chars:
            drop("too_long_chars", float(chars))
            continue
        cat = obj.get(c.category) if c.category and not fmt else None
        pair = None
        if parsed.chosen is not None and parsed.rejected is not None and labels:
            pair = {"chosen": parsed.chosen, "rejected": parsed.rejected, "score_chosen": parsed.score_chosen,
                    "score_rejected": parsed.score_rejected}
        kept.append({**base, "source_fingerprint": fp[:16], "messages": msgs,
                     "category_given": str(cat) if cat not in (None, "") else None, "labelled_pair": pair})
    if n_rows == 0:
        raise UserError(f"source {src.name}: {path} has no rows")
    if names is None and not saw_column:
        raise UserError(f"source {src.name}: {path}: no row has the column {' or '.join(wanted)!r} "
                        + (f"(format {fmt.name} reads {', '.join(wanted)})" if fmt
                           else "(set sources[].columns to the file's keys)"))
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
