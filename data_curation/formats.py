"""Upstream dataset formats by name: how a row of a public dataset becomes a prompt (its turns) and, where the
dataset already labels a preference, a pair of responses. A source with `format:` is read by its format; one
without it, by its column mapping (`columns:`). One place to add a format: a function and an entry in FORMATS.

    hh-rlhf                  Anthropic/hh-rlhf: `chosen` / `rejected` dialogues as one string of
                             "\\n\\nHuman: ..." / "\\n\\nAssistant: ..." turns; the prompt is the dialogue up to its
                             last human turn, the pair the two final assistant turns (when the dialogues agree
                             up to there)
    ultrafeedback            openbmb/UltraFeedback: `instruction` (no id column: the row number)
    ultrafeedback-binarized  HuggingFaceH4/ultrafeedback_binarized: `prompt`, `prompt_id`, `chosen` / `rejected`
                             message lists with `score_chosen` / `score_rejected`
    sharegpt                 `conversations` of {from: human|gpt|system, value}, `id`
    alpaca                   `instruction` and `input` (appended after a blank line when not empty)
    arena-hard               Arena-Hard-Auto questions: `question_id`, `turns` of {content} (user turns)
    trl                      TRL's formats: conversational `messages`, or `prompt` (text or messages) with
                             optional `chosen` / `rejected` (text or messages): a preference pair
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
         "model": "assistant", "system": "system"}


@dataclass(frozen=True)
class Parsed:
    """One upstream row: its turns (None with a problem "reason: detail") and, if labelled, a pair."""

    messages: list[dict] | None
    problem: str | None = None
    chosen: str | None = None  # a labelled pair's preferred final response
    rejected: str | None = None
    score_chosen: float | None = None
    score_rejected: float | None = None


@dataclass(frozen=True)
class Format:
    name: str
    columns: tuple[str, ...]  # a table source must have these (checked once, before any row)
    id: str | None  # the upstream id column (None: the row number)
    parse: Callable[[dict], Parsed]


def turns(value, key_role: str = "role", key_content: str = "content") -> tuple[list[dict] | None, str | None]:
    """A list of {role, content} (or {from, value}) turns, roles normalised; (None, problem) otherwise."""
    if not isinstance(value, list) or not value:
        return None, "bad_messages: not a list of turns"
    out = []
    for t in value:
        if not isinstance(t, dict):
            return None, "bad_messages: a turn is not an object"
        role, content = t.get(key_role, t.get("from")), t.get(key_content, t.get("value"))
        if role not in ROLES or not isinstance(content, str):
            return None, f"bad_messages: turn with role {role!r} and content of type {type(content).__name__}"
        out.append({"role": ROLES[role], "content": content})
    return out, None


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant): ?")


def hh_dialogue(text) -> list[dict] | None:
    """An HH-RLHF string dialogue as turns (None when it has no Human/Assistant markers)."""
    if not isinstance(text, str):
        return None
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return None
    return [{"role": "user" if who == "Human" else "assistant", "content": body.strip()}
            for who, body in zip(parts[1::2], parts[2::2])]


def _until_last_user(msgs: list[dict]) -> tuple[list[dict], str | None]:
    """The turns up to the last user turn, and the assistant turn after it (None if there is none)."""
    last = max((i for i, t in enumerate(msgs) if t["role"] == "user"), default=-1)
    after = [t["content"] for t in msgs[last + 1:] if t["role"] == "assistant"]
    return msgs[: last + 1], (after[0] if after else None)


def _hh(row: dict) -> Parsed:
    chosen = hh_dialogue(row.get("chosen"))
    if chosen is None:
        return Parsed(None, "bad_dialogue: chosen is not a string of Human/Assistant turns")
    prompt, good = _until_last_user(chosen)
    rejected = hh_dialogue(row.get("rejected"))
    bad = None
    if rejected is not None:
        rprompt, bad = _until_last_user(rejected)
        bad = bad if rprompt == prompt else None  # a pair only where both answer the same dialogue
    return Parsed(prompt, chosen=good if bad is not None else None, rejected=bad if good is not None else None)


def _text_prompt(column: str) -> Callable[[dict], Parsed]:
    def parse(row: dict) -> Parsed:
        value = row.get(column)
        if not isinstance(value, str) or not value.strip():
            return Parsed(None, "missing_prompt")
        return Parsed([{"role": "user", "content": value}])

    return parse


def _last_assistant(value) -> str | None:
    """A response given as text, or as messages whose last turn is the assistant's."""
    if isinstance(value, str):
        return value
    msgs, problem = turns(value)
    return msgs[-1]["content"] if msgs and not problem and msgs[-1]["role"] == "assistant" else None


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _pair(row: dict, parsed: Parsed) -> Parsed:
    chosen, rejected = _last_assistant(row.get("chosen")), _last_assistant(row.get("rejected"))
    if parsed.messages is None or chosen is None or rejected is None:
        return parsed
    return Parsed(parsed.messages, chosen=chosen, rejected=rejected, score_chosen=_num(row.get("score_chosen")),
                  score_rejected=_num(row.get("score_rejected")))


def _uf_binarized(row: dict) -> Parsed:
    return _pair(row, _text_prompt("prompt")(row))


def _sharegpt(row: dict) -> Parsed:
    msgs, problem = turns(row.get("conversations"), "from", "value")
    return Parsed(msgs, problem)


def _alpaca(row: dict) -> Parsed:
    ins, extra = row.get("instruction"), row.get("input")
    if not isinstance(ins, str) or not ins.strip():
        return Parsed(None, "missing_prompt")
    text = ins if not isinstance(extra, str) or not extra.strip() else f"{ins}\n\n{extra}"
    return Parsed([{"role": "user", "content": text}])


def _arena_hard(row: dict) -> Parsed:
    t = row.get("turns")
    if not isinstance(t, list) or not t or not all(isinstance(x, dict) and isinstance(x.get("content"), str)
                                                    for x in t):
        return Parsed(None, "bad_messages: turns is not a list of {content}")
    return Parsed([{"role": "user", "content": x["content"]} for x in t])


def _trl(row: dict) -> Parsed:
    if row.get("messages") is not None:
        msgs, problem = turns(row["messages"])
        return Parsed(msgs, problem)
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        msgs, problem = turns(prompt)
        parsed = Parsed(msgs, problem)
    else:
        parsed = _text_prompt("prompt")(row)
    return _pair(row, parsed)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("hh-rlhf", ("chosen",), None, _hh),
    Format("ultrafeedback", ("instruction",), None, _text_prompt("instruction")),
    Format("ultrafeedback-binarized", ("prompt",), "prompt_id", _uf_binarized),
    Format("sharegpt", ("conversations",), "id", _sharegpt),
    Format("alpaca", ("instruction",), None, _alpaca),
    Format("arena-hard", ("turns",), "question_id", _arena_hard),
    Format("trl", (), "id", _trl),
)}
