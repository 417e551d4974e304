"""The two role templates a model reads a conversation in, and where a base model's turn ends.

A chat model (the pilot, the writers, the judges) reads its own chat template; a base model reads the
authors' plain role template: BOS + "\n\n[User]\n{message}" per turn (+ [System], [Assistant]) +
"\n\n[Assistant]\n", then whatever it continues (in WSD, the pilot's draft).
"""

from __future__ import annotations

from pilot_core.errors import UserError

ROLE_TAGS = {"system": "[System]", "user": "[User]", "assistant": "[Assistant]"}
# Where the base model must stop: a new role block, with two, one or no newlines before it (authors' list).
STOP_MARKERS = tuple(f"{nl}{tag}" for tag in ROLE_TAGS.values() for nl in ("\n\n", "\n", ""))
# Every marker contains a bare tag, so stopping at the three tags is the same rule (OpenAI allows 4 stop strings).
STOP_STRINGS = tuple(ROLE_TAGS.values())
# End-of-turn tokens the pilot stops at, besides its EOS (authors' list).
PILOT_STOP_TOKENS = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>")


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


def chat_prompt(tokenizer, messages) -> str:
    """A chat model's own template with the generation prompt, BOS prepended if the template lacks it."""
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
