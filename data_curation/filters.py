"""Per-row scores (stored as columns) and the checks that turn them into keep/drop with a reason.

`score_batch` runs once per row (in `datasets.map` workers): normalise, find and redact PII, measure length
under the pilot's chat template, identify the language, compute quality ratios, tag harm and category.
`drop_reason` reads only those columns and the thresholds, so new thresholds replay on stored scores.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache

from data_curation.config import Filters
from data_curation.decision import Drop
from data_curation.lexicons import (BOILERPLATE, BOILERPLATE_RE, CATEGORY_ORDER, CATEGORY_RE, HARM, HARM_RE,
                                    deobfuscate, matches)
from data_curation.normalise import normalise_text, prompt_text, words

# Every column `score_batch` adds to a loaded row, with its type: declared once, for the datasets schema, the
# batch it fills and the checks. The normalised row itself:
ROW_SCORES = {"messages": "turns", "original": "string", "text": "string"}
# and what was measured on it (what the checks read, and a replay re-reads):
MEASURES = {"tokens": "int64", "content_tokens": "int64", "lang": "string", "lang_score": "float64",
            "repetition": "float64", "symbol_ratio": "float64", "boilerplate": "string", "pii": "strings",
            "harm_tags": "strings", "category": "string", "chars": "int64", "words": "int64"}

# ------------------------------------------------------------------------------------------------ PII
PII_PATTERNS = {  # order matters: card numbers before phone numbers
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?!\w)"),
    "card": re.compile(r"(?<![\d-])(?:\d[ -]?){12,18}\d(?![\d-])"),
    "ip": re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])"),
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{3}[ .-])\d{3,4}[ .-]\d{3,4}(?!\w)"
                        r"|(?<![\w+])\+\d{1,3}(?:[ .-]?\d{2,4}){2,4}(?!\w)"),
}


_DIGIT = re.compile(r"\d")


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def find_pii(text: str, kinds: list[str]) -> tuple[str, list[str]]:
    """(text with PII replaced by <EMAIL>/<CARD>/<IP>/<PHONE>, the kinds found, one entry per match)."""
    found: list[str] = []
    has_digit = _DIGIT.search(text) is not None
    for kind, pattern in PII_PATTERNS.items():
        if kind not in kinds or (kind == "email" and "@" not in text) or (kind != "email" and not has_digit):
            continue  # cheap pre-checks: most prompts hold neither '@' nor digits

        def sub(m: re.Match, kind=kind) -> str:
            if kind == "card" and not _luhn(re.sub(r"\D", "", m.group())):
                return m.group()
            found.append(kind)
            return f"<{kind.upper()}>"

        text = pattern.sub(sub, text)
    return text, found


# ------------------------------------------------------------------------------------------------ scores
# characters that are neither letters, digits, spaces nor common punctuation
_SYMBOL = re.compile(r"[^\w\s.,;:!?'\"()\[\]/%&+=-]|_")


def repetition(ws: list[str], n: int = 3) -> float:
    """Share of word n-grams that repeat an earlier one (0 for text shorter than n words)."""
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


def symbol_ratio(text: str) -> float:
    if not text:
        return 0.0
    return len(_SYMBOL.findall(text)) / len(text)


def boilerplate(text: str) -> str:
    found = matches(BOILERPLATE_RE, text)
    return next((name for name in BOILERPLATE if name in found), "")


def harm_tags(text: str) -> list[str]:
    found = matches(HARM_RE, deobfuscate(text))
    return [name for name in HARM if name in found]


def category(text: str, harm: list[str], given: str | None) -> str:
    if given:
        return given
    if harm:
        return "harmful"
    found = matches(CATEGORY_RE, text)
    return next((name for name in CATEGORY_ORDER if name in found), "other")


@lru_cache(maxsize=4)
def _detector(candidates: tuple[str, ...]):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    langs = [Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in candidates]
    return LanguageDetectorBuilder.from_languages(*langs).with_preloaded_language_models().build()


def languages(texts: list[str], candidates: tuple[str, ...], min_letters: int) -> list[tuple[str, float | None]]:
    """(ISO 639-1 code, confidence) per text; 'und' with no score for texts too short to tell."""
    todo = [i for i, t in enumerate(texts) if sum(ch.isalpha() for ch in t[:2000]) >= min_letters]
    out: list[tuple[str, float | None]] = [("und", None)] * len(texts)
    if todo:
        det = _detector(candidates)
        for i, conf in zip(todo, det.compute_language_confidence_values_in_parallel([texts[i][:2000] for i in todo])):
            out[i] = (conf[0].language.iso_code_639_1.name.lower(), round(conf[0].value, 4))
    return out


@lru_cache(maxsize=4)
def _tokenizer(path: str, revision: str | None = None):
    from pilot_core.models.loading import load_tokenizer

    return load_tokenizer(path, "curation tokenizer", revision=revision)


def token_lengths(msgs: list[list[dict]], tokenizer_path: str | None,
                  revision: str | None = None) -> tuple[list[int], list[int]]:
    """(tokens of the prompt under the pilot's chat template with the generation prompt, tokens of the turns'
    content alone: the same minus the template's own tokens). Without a tokenizer both are an estimate of one
    token per 4 characters (word counts would make every CJK prompt one word long)."""
    if tokenizer_path is None:
        est = [-(-len(prompt_text(m)) // 4) for m in msgs]
        return est, est
    tok = _tokenizer(tokenizer_path, revision)

    def lengths(convs):
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in convs]
        return [len(ids) for ids in tok(texts, add_special_tokens=False).input_ids]

    full = lengths(msgs)
    empty = lengths([[{"role": t["role"], "content": ""} for t in m] for m in msgs])
    return full, [a - b for a, b in zip(full, empty)]


def score_features(input_features):
    """The scored table's schema, declared: inferred per batch, a batch whose PII lists are all empty would be
    typed list<null> and the next batch's strings would not fit."""
    from datasets import Features, List, Value

    s = Value("string")
    types = {"turns": List({"role": s, "content": s}), "strings": List(s), "string": s, "int64": Value("int64"),
             "float64": Value("float64")}
    return Features({**input_features, **{k: types[t] for k, t in {**ROW_SCORES, **MEASURES}.items()}})


def score_batch(batch: dict, filters: dict, tokenizer_path: str | None, tokenizer_revision: str | None = None) -> dict:
    """The score columns of a batch of loaded rows (a `datasets.map` function, batched)."""
    f = Filters.model_validate(filters)
    out: dict[str, list] = {k: [] for k in (*ROW_SCORES, *MEASURES)}
    for msgs, given in zip(batch["messages"], batch["category_given"]):
        turns, found = [], []
        for t in msgs:
            content, kinds = find_pii(normalise_text(t["content"]), f.pii.kinds)
            found += kinds
            turns.append({"role": t["role"], "content": content if f.pii.action != "flag" else
                          normalise_text(t["content"])})
        if f.pii.action != "flag":  # the kept original must not carry what was redacted
            msgs = [{"role": t["role"], "content": find_pii(t["content"], f.pii.kinds)[0]} for t in msgs]
        text = prompt_text(turns)
        ws = words(text)
        harm = harm_tags(text)
        for k, v in (("messages", turns), ("original", json.dumps(msgs, ensure_ascii=False)), ("text", text),
                     ("chars", len(text)), ("words", len(ws)), ("pii", sorted(set(found))),
                     ("repetition", round(repetition(ws), 4)), ("symbol_ratio", round(symbol_ratio(text), 4)),
                     ("boilerplate", boilerplate(text)), ("harm_tags", harm),
                     ("category", category(text, harm, given))):
            out[k].append(v)
    out["tokens"], out["content_tokens"] = token_lengths(out["messages"], tokenizer_path, tokenizer_revision)
    if f.language is not None:
        langs = languages(out["text"], tuple(f.language.candidates), f.language.min_letters)
    else:
        langs = [("und", None)] * len(out["text"])
    out["lang"], out["lang_score"] = [x[0] for x in langs], [x[1] for x in langs]
    return out


# ------------------------------------------------------------------------------------------------ checks
def _length(row: dict, f: Filters):
    if row["content_tokens"] < f.length.min_tokens:
        return "too_short", row["content_tokens"]
    if row["tokens"] > f.length.max_tokens:
        return "too_long", row["tokens"]


def _language(row: dict, f: Filters):
    lang = f.language
    if lang is None or row["lang"] == "und":
        return None
    if row["lang"] not in lang.keep:
        return f"language_{row['lang']}", row["lang_score"]
    if row["lang_score"] is not None and row["lang_score"] < lang.min_confidence:
        return "language_low_confidence", row["lang_score"]


def _quality(row: dict, f: Filters):
    if row["repetition"] > f.quality.max_repetition:
        return "repetition", row["repetition"]
    if row["symbol_ratio"] > f.quality.max_symbol_ratio:
        return "symbols", row["symbol_ratio"]
    if f.quality.boilerplate and row["boilerplate"]:
        return f"boilerplate_{row['boilerplate']}", 1.0


def _pii(row: dict, f: Filters):
    if f.pii.action == "drop" and row["pii"]:
        return f"pii_{row['pii'][0]}", float(len(row["pii"]))


CHECKS: tuple[Callable, ...] = (_length, _language, _quality, _pii)


def drop_reason(row: dict, f: Filters) -> Drop | None:
    """The first failed check, or None to keep the row. `row` holds the MEASURES."""
    for check in CHECKS:
        r = check(row, f)
        if r is not None:
            return Drop("filter", r[0], None if r[1] is None else float(r[1]))
    return None
