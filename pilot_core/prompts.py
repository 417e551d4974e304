"""Prompt records: what every stage hands a model. A JSONL prompt file holds one `{id, prompt}` or
`{id, messages}` object per line; a bad line is one UserError naming the file and the line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.jsonl import read_jsonl

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptRecord:
    id: str
    messages: tuple[dict, ...]  # role/content dicts; the last one is a user turn


def _bad(path, lineno, msg) -> UserError:
    return UserError(f"{path}:{lineno}: {msg}")


def parse_record(obj: object, path: str | Path = "<input>", lineno: int = 1) -> PromptRecord:
    if not isinstance(obj, dict):
        raise _bad(path, lineno, f"expected a JSON object, found {type(obj).__name__}")
    if "id" not in obj:
        raise _bad(path, lineno, "missing field 'id'")
    rid = obj["id"]
    if not isinstance(rid, (str, int)) or isinstance(rid, bool) or str(rid) == "":
        raise _bad(path, lineno, f"field 'id' must be a non-empty string or integer, got {rid!r}")
    has_msgs, has_prompt = "messages" in obj, "prompt" in obj
    if has_msgs == has_prompt:
        raise _bad(path, lineno, "give exactly one of 'messages' or 'prompt'")
    if has_prompt:
        p = obj["prompt"]
        if not isinstance(p, str) or not p.strip():
            raise _bad(path, lineno, "field 'prompt' must be a non-empty string")
        return PromptRecord(str(rid), ({"role": "user", "content": p},))
    msgs = obj["messages"]
    if not isinstance(msgs, list) or not msgs:
        raise _bad(path, lineno, "field 'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise _bad(path, lineno, f"messages[{i}] must be an object with exactly 'role' and 'content'")
        if m["role"] not in ROLES:
            raise _bad(path, lineno, f"messages[{i}].role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str) or not m["content"].strip():
            raise _bad(path, lineno, f"messages[{i}].content must be a non-empty string")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] != "user":
        raise _bad(path, lineno, f"the last message must be from the user, found {out[-1]['role']!r}")
    return PromptRecord(str(rid), tuple(out))


def load_prompts(path: str | Path) -> list[PromptRecord]:
    """Read a JSONL prompt file; any bad line is one UserError naming the file and line."""
    records, seen = [], {}
    for lineno, obj in read_jsonl(path, "input file"):
        rec = parse_record(obj, path, lineno)
        if rec.id in seen:
            raise _bad(path, lineno, f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno
        records.append(rec)
    if not records:
        raise UserError(f"{path}: no prompts (the file is empty)")
    return records
