"""Prompt inputs and the two prompt formats WSD uses.

The pilot sees its own chat template; the base sees the authors' plain role template:
BOS + "\n\n[User]\n{message}" per turn (+ [System], [Assistant]) + "\n\n[Assistant]\n", then the draft.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.inputs import read_text

ROLES = ("system", "user", "assistant")
ROLE_TAGS = {"system": "[System]", "user": "[User]", "assistant": "[Assistant]"}
# Where the base model must stop: a new role block, with two, one or no newlines before it (authors' list).
STOP_MARKERS = tuple(f"{nl}{tag}" for tag in ROLE_TAGS.values() for nl in ("\n\n", "\n", ""))
# Every marker contains a bare tag, so stopping at the three tags is the same rule (OpenAI allows 4 stop strings).
STOP_STRINGS = tuple(ROLE_TAGS.values())
# End-of-turn tokens the pilot stops at, besides its EOS (authors' list).
PILOT_STOP_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")


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
    text = read_text(path, "input file")
    records, seen = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise _bad(path, lineno, f"malformed JSON: {e.msg} (column {e.colno})") from None
        rec = parse_record(obj, path, lineno)
        if rec.id in seen:
            raise _bad(path, lineno, f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno
        records.append(rec)
    if not records:
        raise UserError(f"{path}: no prompts (the file is empty)")
    return records


def base_prompt(messages, bos_token: str | None) -> str:
    """The base model's plain role template, ending with the generation prompt "\n\n[Assistant]\n"."""
    parts = [bos_token or ""]
    for m in messages:
        parts.append(f"\n\n{ROLE_TAGS[m['role']]}\n{m['content'].strip()}")
    parts.append("\n\n[Assistant]\n")
    return "".join(parts)


def base_text(prompt: str, draft: str) -> str:
    """What the base model reads: the prompt, the stripped draft, the whole right-stripped (authors' code)."""
    return (prompt + draft.strip()).rstrip()


def pilot_prompt(tokenizer, messages) -> str:
    """The pilot's chat template with the generation prompt, BOS prepended if the template lacks it."""
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"pilot tokenizer {tokenizer.name_or_path!r} has no chat template: "
                        "a pilot must be a chat model")
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos):
        text = bos + text
    return text


def cut_before_markers(text: str, stop: tuple[str, ...] = STOP_STRINGS) -> str:
    """The text before the first stop string (by default a role marker: the base model starting a new turn)."""
    return text[: min((i for i in (text.find(t) for t in stop) if i != -1), default=len(text))]


def cut_at_markers(text: str, stop: tuple[str, ...] = STOP_STRINGS) -> str:
    """Cut at the first stop string, then strip: the final response."""
    return cut_before_markers(text, stop).strip()


def has_marker(text: str, stop: tuple[str, ...] = STOP_STRINGS) -> bool:
    return any(tag in text for tag in stop)
