"""Decontamination against reference prompt sets (benchmarks, this project's validation and eval sets).

Reference sets are versioned files (JSONL with `prompt` or `messages`, as `pilot wsd generate` reads) and
benchmarks in their upstream columns (pilot_core/benchmarks.py: a local file, or a hub dataset pinned by
revision), hashed into the manifest. A row is dropped when at least `max_overlap` of its word n-grams appear in a
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


def references(cfg: DecontamConfig, read: bool = True):
    """(name, fingerprint, [(id, messages)]) of each reference set and benchmark (prompts left out unless read)."""
    from pilot_core.benchmarks import read_rows, rows_sha256

    for path in cfg.reference_sets:
        yield Path(path).name, fingerprint(path), [(r.id, r.messages) for r in load_prompts(path)] if read else []
    for b in cfg.benchmarks:
        rows = read_rows(b.format, b.path, b.hub, f"decontamination benchmark {b.format}")
        name = f"{b.format}:{Path(b.path).name if b.path else f'{b.hub.path}[{b.hub.split}]'}"
        yield name, rows_sha256(rows), [(r["id"], r.get("messages") or [{"role": "user", "content": r["prompt"]}])
                                        for _, r in rows]


class Decontaminator:
    def __init__(self, cfg: DecontamConfig):
        self.n, self.max_overlap = cfg.ngram, cfg.max_overlap
        self.owner: dict[str, str] = {}  # n-gram -> "file#id" of the first reference prompt holding it
        self.size: dict[str, int] = {}  # reference prompt -> its number of distinct n-grams
        self.short: dict[str, str] = {}  # normalised text of short reference prompts -> "file#id"
        self.fingerprints: dict[str, str] = {}
        self.prompts = 0
        for name, fp, prompts in references(cfg):
            self.fingerprints[name] = fp
            for rid, messages in prompts:
                ref = f"{name}#{rid}"
                text = normalise_text(prompt_text([m for m in messages if m["role"] == "user"]))
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
