"""Harm tags behind one interface. `rules` (the offline default) are the word lists of data_curation/lexicons.py,
with obfuscated spellings read as letters and everyday senses of harm words left out; `classifier` is a
`transformers` text-classification model whose labels map to harm tags. Either fills the same `harm_tags`
column (and the category `harmful` follows from it), and the data card reports the tagger's precision and recall
on a labelled set shipped with the project (data_curation/labelled/harm-labelled.v1.jsonl), so a team can see what a
tagger misses before it decides which rubric judges a pair.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Protocol

from data_curation.config import TaggingConfig
from data_curation.filters import harm_tags
from pilot_core.errors import UserError
from pilot_core.jsonl import read_jsonl
from pilot_core.manifest import file_sha256
from pilot_core.models.compute import Compute


class Tagger(Protocol):
    name: str

    def tags(self, texts: list[str]) -> list[list[str]]:
        """The harm tags of each text (empty: not harmful)."""


class RulesTagger:
    name = "rules"

    def tags(self, texts: list[str]) -> list[list[str]]:
        return [harm_tags(t) for t in texts]


class ClassifierTagger:
    """A sequence-classification model: a label whose probability reaches `threshold` and that `labels` maps to a
    tag tags the text (softmax over the labels, or a sigmoid per label for a multi-label model)."""

    def __init__(self, cfg: TaggingConfig, compute: Compute | None = None):
        from pilot_core.models.loading import check_head, input_device, load_config, load_tokenizer, load_weights

        src, role = cfg.model, "tagging classifier"
        path = src.local_path()
        config = load_config(path, role, src.trust_remote_code, revision=src.revision)
        check_head(config, path, role, "classifier", src.trust_remote_code)
        unknown = sorted(set(cfg.labels) - set(config.id2label.values()))
        if unknown:
            raise UserError(f"tagging.labels: {unknown[0]!r} is not a label of {path} (labels: "
                            f"{', '.join(config.id2label.values())})")
        self.tokenizer = load_tokenizer(path, role, src.trust_remote_code, src.revision)
        self.model = load_weights(path, role, "classifier", compute, src.trust_remote_code, revision=src.revision)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.name = f"classifier {src.name}"
        self.cfg, self.device = cfg, input_device(self.model)
        self.multi = config.problem_type == "multi_label_classification"

    def tags(self, texts: list[str]) -> list[list[str]]:
        import torch

        names = self.model.config.id2label
        out = []
        for i in range(0, len(texts), self.cfg.batch_size):
            enc = self.tokenizer(texts[i : i + self.cfg.batch_size], padding=True, truncation=True, max_length=512,
                                 return_tensors="pt")
            with torch.no_grad():
                logits = self.model(**enc.to(self.device)).logits.float()
            probs = torch.sigmoid(logits) if self.multi else torch.softmax(logits, dim=-1)
            for row in probs:
                found = {self.cfg.labels.get(names[j]) for j, p in enumerate(row.tolist()) if p >= self.cfg.threshold}
                out.append(sorted(t for t in found if t))
        return out


def make_tagger(cfg: TaggingConfig, compute: Compute | None = None) -> Tagger:
    """The tagger `cfg` names; a run that tags its rows and then measures the tagger loads a classifier once."""
    if cfg.kind == "rules":
        return RulesTagger()
    return ClassifierTagger(cfg, compute) if compute is not None else _classifier(cfg.model_dump_json())


@lru_cache(maxsize=1)
def _classifier(spec: str) -> ClassifierTagger:
    return ClassifierTagger(TaggingConfig.model_validate_json(spec))


def labelled_path(name: str) -> Path:
    """A labelled set: a file, or the name of one shipped in data_curation/labelled/."""
    if Path(name).is_file():
        return Path(name)
    shipped = Path(__file__).with_name("labelled") / f"{name}.jsonl"
    if shipped.is_file():
        return shipped
    raise UserError(f"tagging.labelled_set {name}: no such file, nor a set in data_curation/labelled/")


def measure(tagger: Tagger, labelled: str | Path) -> dict:
    """Precision and recall of `harmful` (any tag) on a labelled set of {id, prompt, harmful, tags}, and the share
    of harmful prompts given exactly their labelled tags."""
    rows = [obj for _, obj in read_jsonl(labelled, "tagging labelled set")]
    for r in rows:
        if not isinstance(r.get("prompt"), str) or not isinstance(r.get("harmful"), bool):
            raise UserError(f"{labelled}: every row needs a prompt and harmful (true/false): {r.get('id')!r}")
    got = tagger.tags([r["prompt"] for r in rows])
    tp = sum(bool(g) and r["harmful"] for g, r in zip(got, rows))
    fp = sum(bool(g) and not r["harmful"] for g, r in zip(got, rows))
    fn = sum(not g and r["harmful"] for g, r in zip(got, rows))
    exact = sum(sorted(g) == sorted(r.get("tags") or []) for g, r in zip(got, rows) if r["harmful"])
    return {"tagger": tagger.name, "set": Path(labelled).name, "sha256": file_sha256(labelled), "n": len(rows),
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None, "false_positives": fp, "false_negatives": fn,
            "exact_tags": round(exact / (tp + fn), 4) if tp + fn else None}
