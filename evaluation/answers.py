"""Reading the final answer out of a model's text: lm-evaluation-harness's two readings, and the one validation
gates on, which also reads the formats chat models write.

- strict (lm-eval's strict-match): GSM8K: `#### N` (`gsm8k.yaml`), else `The answer is N` (`gsm8k-cot.yaml`);
  MMLU: what follows "The answer is ", "The answer is: ", "answer is ", "The answer: " or "The final answer: " to the
  line's last character (`mmlu/flan_cot_zeroshot`), read as a letter once punctuation is dropped.
- flexible (lm-eval's flexible-extract): GSM8K: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)` (as lm-eval);
  MMLU: the last letter in parentheses, else a letter after a colon (`multi_choice_regex` and its fallback), more
  lenient than lm-eval's: only the question's own letters count (lm-eval takes any capital, so a last "(E)" on a
  4-choice question is wrong there), a letter must stand alone ("Reason: Because" is not B), and lm-eval's matching
  of the choices' own texts is not ported.
- answer (gated): strict where it read something, else an answer marker as chat models write it ("Answer: B",
  "The correct answer is: C", "**Answer: $1,200**", the letter or number in bold or parentheses, "the correct
  choice is C"), else, for MMLU, a line that opens with the letter ("B." / "B)") or is only the letter (lm-eval's
  generative MMLU), else flexible.

Numbers are compared as numbers after lm-eval's `regexes_to_ignore` (",", "$", a final "."), so "1,200.00" is 1200
where lm-eval's exact match would not count it: ours is the more lenient there. An article ("A farmer...", "a bit")
is never read as a choice: a letter counts only as a capital standing alone after a marker, in bold or parentheses,
or opening a line with punctuation.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Reading:
    strict: str | None  # lm-eval's strict-match
    flexible: str | None  # lm-eval's flexible-extract
    answer: str | None  # what validation gates on (None: nothing could be read)


# ------------------------------------------------------------------------------------------------ numbers
# Patterns a model's text is matched with use possessive quantifiers (`*+`) where runs of spaces meet: a text that
# degenerates into whitespace after "answer" must not cost more than one pass.
_HASH = re.compile(r"#### (\-?[0-9\.\,]+)")  # gsm8k.yaml strict-match
_COT = re.compile(r"The answer is (\-?[0-9\.\,]+).")  # gsm8k-cot.yaml strict-match (the "." is any character)
_GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_NUMBER_MARKER = re.compile(r"(?i:answer)(?:\s++is)?[\s:：*]*+\$?\s*+(-?[0-9][0-9,]*+(?:\.[0-9]++)?)(?![0-9])")


def clean_number(text: str | None) -> str | None:
    """lm-eval's `regexes_to_ignore` for GSM8K: ',' and '$' dropped, and a final '.'; None if no number is left."""
    if text is None:
        return None
    t = text.replace(",", "").replace("$", "")
    t = t[:-1] if t.endswith(".") else t
    try:
        float(t)
    except ValueError:
        return None
    return t


def read_number(response: str) -> Reading:
    hashed = _HASH.search(response)
    m = hashed or _COT.search(response)
    strict = clean_number(m.group(1)) if m else None
    found = [a or b for a, b in _GSM8K_FLEXIBLE.findall(response)]
    flexible = clean_number(found[-1]) if found else None
    marked = [x for x in map(clean_number, _NUMBER_MARKER.findall(response)) if x is not None]
    last = next((x for x in map(clean_number, reversed(found)) if x is not None), None)  # the last number
    answer = (clean_number(hashed.group(1)) if hashed else None) or (marked[-1] if marked else None) or last
    return Reading(strict, flexible, answer)


def same_number(got: str | None, gold: float) -> bool:
    return got is not None and abs(float(got) - gold) <= 1e-6 * max(1.0, abs(gold))


# ------------------------------------------------------------------------------------------------ letters
_MMLU_STRICT = re.compile(r"((?<=The answer is )(.*)(?=.)|(?<=The answer is: )(.*)(?=.)|(?<=answer is )(.*)(?=.)|"
                          r"(?<=The answer: )(.*)(?=.)|(?<=The final answer: )(.*)(?=.))")
_LEAD = r"(?i:(?:the\s++)?(?:final\s++|correct\s++|right\s++|best\s++)?answer\s*+(?:is|would be|:)[\s:]*+" \
        r"(?:option\s++|choice\s++)?)"
_CHOICE_IS = r"(?i:(?:correct|right|best)\s++(?:choice|option)\s++(?:is|would be)[\s:]*+)"


@functools.lru_cache(maxsize=16)  # per number of choices, not per answer
def _patterns(letters: str) -> tuple[re.Pattern, re.Pattern, list[re.Pattern], re.Pattern]:
    L = f"[{letters}]"
    box = rf"(?:\*\*|__)?+[\(\[]?+({L})[\)\]]?+(?:\*\*|__)?+(?![A-Za-z0-9])"  # B, (B), **B**, **(B)**
    flexible = re.compile(rf"\(({L})\)")
    colon = re.compile(rf":[ \t]*+({L})(?![A-Za-z0-9])")
    chat = [re.compile(_LEAD + box), re.compile(_CHOICE_IS + box),
            re.compile(rf"\*\*[ \t]*+\(?({L})\)?[.:)]?[ \t]*+\*\*")]  # a bold letter
    line = re.compile(rf"^[ \t]*+\(?({L})[.):](?:\s|$)", re.M)  # a line that opens with the letter
    return flexible, colon, chat, line


def _word(response: str, m: re.Match) -> bool:
    """Whether the capital read is the article "A" or the pronoun "I" starting a sentence, not a choice: bare
    (not in parentheses or bold) and followed by a lower-case word."""
    letter = m.group(1)
    bare = response[m.start(1) - 1: m.start(1)] not in ("(", "[", "*") if m.start(1) else True
    return letter in "AI" and bare and re.match(r"[ \t]++[a-z]", response[m.end(1):]) is not None


def _last(pattern: re.Pattern, response: str) -> str | None:
    hits = [m.group(1) for m in pattern.finditer(response) if not _word(response, m)]
    return hits[-1] if hits else None


def read_letter(response: str, n_choices: int) -> Reading:
    letters = LETTERS[:n_choices]
    flexible_pat, colon, chat, line = _patterns(letters)
    strict = None
    m = _MMLU_STRICT.search(response)
    if m:
        got = re.sub(r"[^\w\s]", "", m.group(0)).strip().upper()
        strict = got if len(got) == 1 and got in letters else None
    flexible = _last(flexible_pat, response) or _last(colon, response)
    answer = strict
    for pat in chat if answer is None else ():
        answer = _last(pat, response)
        if answer is not None:
            break
    if answer is None:  # a line that opens with the letter, unless the text lists the options that way
        opening = {m.group(1) for m in line.finditer(response) if not _word(response, m)}
        answer = opening.pop() if len(opening) == 1 else None
    if answer is None:  # the whole first line is the letter (lm-eval's generative MMLU)
        first = response.strip().split("\n")[0] if response.strip() else ""
        m = re.fullmatch(rf"\W*\(?([{letters}])\)?\W*", first)
        answer = m.group(1) if m else flexible
    return Reading(strict, flexible, answer)
