"""Text normalisation: mojibake and unicode fixes (ftfy, NFC), control characters removed, whitespace tidied.
The original turns are kept beside the normalised ones."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalise_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():  # mojibake and unnormalised forms need non-ASCII characters: skip ftfy otherwise
        import ftfy

        text = ftfy.fix_text(text, normalization="NFC")
    text = _CONTROL.sub("", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens (the unit of dedup shingles, decontamination n-grams and quality ratios)."""
    return _WORD.findall(text.lower())


def dedup_key(text: str) -> str:
    """The exact-duplicate key: case, punctuation and spacing ignored."""
    return " ".join(words(text))


def prompt_text(messages: list[dict]) -> str:
    """The text a row is judged by: every turn's content, in order."""
    return "\n\n".join(t["content"] for t in messages)
