"""Decontamination against reference prompt sets (benchmarks, this project's validation and eval sets).

Reference sets are versioned files (JSONL with `prompt` or `messages`, as `pilot wsd generate` reads), hashed into
the manifest; nothing is downloaded. A row is dropped when at least `max_overlap` of its word n-grams appear in a
reference set, when it contains a whole reference prompt, or, for texts shorter than n words, when its
normalised text equals a reference prompt. The drop names the reference file and prompt id.
"""

from __future__ import annotations

from pathlib import Path

from data_curation.config import DecontamConfig
from data_curation.decision import Drop
from data_curation.normalise import dedup_key, normalise_text, prompt_text, words
from pilot_core.manifest import fingerprint
from pilot_core.prompts import load_prompts


def _ngrams(ws: list[str], n: int) -> set[str]:
    return {" ".join(ws[i : i + n]) for i in range(len(ws) - n + 1)}


class Decontaminator:
    def __init__(self, cfg: DecontamConfig):
        self.n, self.max_overlap = cfg.ngram, cfg.max_overlap
        self.owner: dict[str, str] = {}  # n-gram -> "file#id" of the first reference prompt holding it
        self.size: dict[str, int] = {}  # reference prompt -> its number of distinct n-grams
        self.short: dict[str, str] = {}  # normalised text of short reference prompts -> "file#id"
        self.fingerprints: dict[str, str] = {}
        self.prompts = 0
        for path in cfg.reference_sets:
            name = Path(path).name
            self.fingerprints[name] = fingerprint(path)
            for rec in load_prompts(path):
                ref = f"{name}#{rec.id}"
                text = normalise_text(prompt_text([m for m in rec.messages if m["role"] == "user"]))
                ws = words(text)
                self.prompts += 1
                if len(ws) < self.n:
                    self.short.setdefault(dedup_key(text), ref)
                    continue
                grams = _ngrams(ws, self.n)
                self.size[ref] = len(grams)
                for g in grams:
                    self.owner.setdefault(g, ref)

    def check(self, text: str) -> Drop | None:
        """None if clean, else the drop naming the reference prompt and the overlap share."""
        ws = words(text)
        if len(ws) < self.n:
            ref = self.short.get(" ".join(ws))
            return Drop("decontamination", "contaminated_exact", 1.0, ref) if ref else None
        grams = _ngrams(ws, self.n)
        hits: dict[str, int] = {}
        for g in grams:
            ref = self.owner.get(g)
            if ref is not None:
                hits[ref] = hits.get(ref, 0) + 1
        if not hits:
            return None
        share = sum(hits.values()) / len(grams)
        top = max(hits, key=lambda r: (hits[r], r))
        if share >= self.max_overlap:
            return Drop("decontamination", "contaminated_overlap", round(share, 4), top)
        whole = [r for r, k in hits.items() if k == self.size[r]]
        if whole:
            return Drop("decontamination", "contaminated_contains", round(share, 4), min(whole))
        return None
