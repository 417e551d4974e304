"""Where a text's tokens are final while it is still growing: WSD scores only those draft tokens, and a
speculative proposal that crosses tokenizers checks only those."""

from __future__ import annotations

import weakref


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


PROBE = "Hello world, this is a probe.\nIt has two lines,  double spaces and numbers: 123 4567."


# per tokenizer, what is read once: the speculation's drafter asks for both at every generation
_VOCABULARY: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vocabulary(tokenizer) -> dict[str, int]:
    """The tokenizer's vocabulary (token -> id), built once: get_vocab() builds it anew at every call (0.1-0.2 s
    for SmolLM2's 49k tokens on 2 CPU cores; paid per generation it cost base-only at batch 1 ~5%). Read only."""
    if tokenizer not in _VOCABULARY:
        _VOCABULARY[tokenizer] = tokenizer.get_vocab()
    return _VOCABULARY[tokenizer]


def splits_at_whitespace(tokenizer) -> bool:
    """Whether a text cut before any whitespace character tokenizes, piece by piece, into the tokens of the whole
    (checked once per tokenizer on a probe text). Regex pre-tokenizers (byte-level BPE: GPT-2, Llama 3, Qwen,
    SmolLM2) do; a SentencePiece tokenizer that prepends a space to every text does not. Where it holds, a growing
    text's tail can be tokenized alone, from a word start, instead of the whole text again."""
    if tokenizer not in _SPLITS:
        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False).input_ids

        whole = ids(PROBE)
        _SPLITS[tokenizer] = all(ids(PROBE[:i]) + ids(PROBE[i:]) == whole for i, c in enumerate(PROBE) if c.isspace())
    return _SPLITS[tokenizer]
