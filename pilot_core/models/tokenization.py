"""Where a text's tokens are final while it is still growing: WSD scores only those draft tokens, and a
speculative proposal that crosses tokenizers checks only those."""

from __future__ import annotations


def stable_token_count(offsets: list[tuple[int, int]], text: str, min_char: int) -> int:
    """How many leading tokens of `text` no appended text can change.

    Pre-tokenizers of BPE/SentencePiece tokenizers split at whitespace and never merge across it, and a split
    before the last whitespace depends only on characters already present. So a token that ends at or before
    the last whitespace character is final; the last word may still grow ("Th" -> "The") and is held back.
    Only whitespace at or after `min_char` (the start of the draft) counts: the prompt is always final.
    """
    last_ws = -1
    for i in range(len(text) - 1, min_char - 1, -1):
        if text[i].isspace():
            last_ws = i
            break
    if last_ws < 0:
        return sum(1 for _, end in offsets if end <= min_char)
    return sum(1 for _, end in offsets if end <= last_ws)
