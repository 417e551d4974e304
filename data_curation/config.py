"""Typed curation recipe (configs/curation/*.yaml). Filters compute scores once; the thresholds here decide, so
they can be changed and replayed on a finished run without recomputing any score (`pilot curate --replay`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from pilot_core.config import BaseConfig
from pilot_core.hub_data import HubData
from pilot_core.hub_items import HubRef, dataset_refs
from pilot_core.models.source import ModelSource
from pilot_core.names import check_unique, config_name


class Columns(BaseConfig):
    """Which source column holds what. Give `prompt` (one user turn) or `messages` (a conversation)."""

    id: str | None = Field("id", description="original row id (null: the 1-based row number)")
    prompt: str | None = "prompt"
    messages: str | None = Field(None, description="a list of {role, content} (or {from, value}) turns")
    system: str | None = Field(None, description="optional system prompt column, prepended as a system turn")
    category: str | None = Field(None, description="optional category given by the source")


PAIR_FORMATS = ("hh-rlhf", "ultrafeedback-binarized", "trl")  # the formats whose rows may hold a labelled pair


class SourceConfig(BaseConfig):
    """One input. `cap` and `weight` are documented in the README (Curation: mixing)."""

    name: str
    kind: Literal["jsonl", "parquet", "csv", "hf"] = "jsonl"
    path: str = Field(description="a file; for kind hf a hub dataset id, a local directory laid out like one, a "
                      "`save_to_disk` directory, or a builder (json, parquet, csv) with data_files")
    format: Literal["hh-rlhf", "ultrafeedback", "ultrafeedback-binarized", "sharegpt", "alpaca", "arena-hard",
                    "trl"] | None = Field(None, description="an upstream format by name (data_curation/formats.py): "
                                          "its columns are read as that dataset defines them; null: `columns`")
    subset: str | None = Field(None, description="kind hf: the dataset's configuration (the hub's subset; `name` "
                                  "in datasets.load_dataset)")
    data_dir: str | None = Field(None, description="kind hf: a directory inside the dataset (e.g. hh-rlhf's "
                                 "harmless-base)")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="kind hf: files inside the dataset, or local files for a builder path (json, parquet)")
    split: str = Field("train", description="kind hf: the split to read")
    revision: str | None = Field(None, description="kind hf, a hub dataset: the commit to read; pin one in "
                                 "production, or a changed upstream is silently used")
    labelled_pairs: bool | None = Field(None, description="whether the pairs this source labels (hh-rlhf, "
                                        "ultrafeedback-binarized, trl with chosen/rejected) may join the dpo split; "
                                        "default: yes, but not for hh-rlhf, whose dataset card advises against "
                                        "training dialogue agents on it (its harmless-base 'chosen' answers can "
                                        "themselves be harmful)")
    columns: Columns = Field(Columns(), description="the column mapping of a source without `format`")
    cap: int | None = Field(None, ge=1, description="read at most this many rows (a seeded sample, not the first N)")
    weight: float = Field(1.0, gt=0, description="share of the mix when mix.total is set")

    _name = field_validator("name")(config_name("source name"))

    @model_validator(mode="after")
    def _format_or_columns(self) -> "SourceConfig":
        if self.format and "columns" in self.model_fields_set:
            raise ValueError(f"source {self.name}: give format or columns, not both (format {self.format} "
                             "names its own columns)")
        if self.kind != "hf" and (self.subset or self.data_dir or self.data_files):
            raise ValueError(f"source {self.name}: subset, data_dir and data_files are for kind hf")
        if self.labelled_pairs is not None and self.format not in PAIR_FORMATS:
            raise ValueError(f"source {self.name}: labelled_pairs is for formats that label pairs "
                             f"({', '.join(PAIR_FORMATS)})")
        return self

    def hub_refs(self) -> list[HubRef]:
        return dataset_refs(self) if self.kind == "hf" else []

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        """Unset, `labelled_pairs` is left out of the dump (so of the config's hash) where it changed nothing:
        every format but hh-rlhf behaves as before it existed."""
        out = handler(self)
        if self.labelled_pairs is None and self.format != "hh-rlhf":
            out.pop("labelled_pairs", None)
        return out


class LengthFilter(BaseConfig):
    min_tokens: int = Field(4, ge=0, description="tokens of the turns' content (the template's own not counted)")
    max_tokens: int = Field(1024, ge=1, description="tokens of the whole prompt under the pilot's chat template")
    max_chars: int = Field(200_000, ge=1, description="longer rows are excluded before tokenizing")


class LanguageFilter(BaseConfig):
    keep: list[str] = Field(["en"], description="ISO 639-1 codes to keep")
    candidates: list[str] = Field(
        ["en", "de", "fr", "es", "it", "pt", "nl", "ru", "zh", "ja", "ko", "ar", "hi", "tr", "pl", "sv", "vi",
         "id", "uk", "fa"], description="languages the detector chooses among (ISO 639-1)")
    min_confidence: float = Field(0.0, ge=0, le=1, description="and the top language's confidence at least this")
    min_letters: int = Field(10, ge=0, description="shorter texts are not identified (language 'und', kept)")


class QualityFilter(BaseConfig):
    max_repetition: float = Field(0.3, ge=0, le=1, description="share of duplicated word 3-grams")
    max_symbol_ratio: float = Field(0.3, ge=0, le=1, description="share of characters that are neither letters, "
                                    "digits, spaces nor common punctuation")
    boilerplate: bool = Field(True, description="drop rows matching the boilerplate patterns")


class PIIFilter(BaseConfig):
    action: Literal["flag", "redact", "drop"] = Field("redact", description="flag: keep and tag; redact: replace "
                                                      "with <EMAIL> etc. (the original is kept); drop: exclude")
    kinds: list[Literal["email", "phone", "ip", "card"]] = ["email", "phone", "ip", "card"]


class Filters(BaseConfig):
    length: LengthFilter = LengthFilter()
    language: LanguageFilter | None = LanguageFilter()
    quality: QualityFilter = QualityFilter()
    pii: PIIFilter = PIIFilter()


class DedupConfig(BaseConfig):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0, lt=1, description="estimated Jaccard similarity of word n-gram sets")
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(3, ge=1, description="word n-gram shingles")
    previous: list[str] | Literal["auto"] = Field(
        "auto", description="earlier published versions to dedup against (dataset dirs); auto: every earlier "
        "version under output_dir/name/")


class BenchmarkRef(BaseConfig):
    """A benchmark in its upstream columns, read as validation reads it (pilot_core/benchmarks.py)."""

    format: Literal["gsm8k", "mmlu", "humaneval", "alpaca_eval", "arena_hard", "advbench", "harmbench"]
    path: str | None = Field(None, description="a local JSONL, JSON or Parquet file")
    hub: HubData | None = Field(None, description="or read with datasets.load_dataset")

    @model_validator(mode="after")
    def _one(self) -> "BenchmarkRef":
        if (self.path is None) == (self.hub is None):
            raise ValueError(f"benchmark {self.format}: give path or hub")
        return self


class DecontamConfig(BaseConfig):
    reference_sets: list[str] = Field([], description="JSONL prompt files that must never leak into training "
                                      "(benchmarks, the validation and eval sets)")
    benchmarks: list[BenchmarkRef] = Field([], description="benchmarks in their upstream columns (a local file or "
                                           "the hub), e.g. {format: gsm8k, hub: {path: openai/gsm8k, subset: main, "
                                           "split: test, revision: ...}}")
    validation_sets: bool = Field(True, description="in a pipeline: every eval set its validation section names is "
                                  "a reference set too (added to reference_sets), so nothing it is validated on can "
                                  "leak into what it trains on")
    ngram: int = Field(8, ge=3, description="word n-grams compared")
    max_overlap: float = Field(0.5, gt=0, le=1, description="drop a row when this share of its n-grams (or, for "
                               "rows shorter than ngram words, its whole text) appears in a reference set")


class TaggingConfig(BaseConfig):
    """Who fills `harm_tags` (data_curation/tagging.py): the rules, or a text-classification model."""

    kind: Literal["rules", "classifier"] = "rules"
    model: ModelSource | None = Field(None, description="classifier: a transformers sequence-classification model")
    labels: dict[str, str] = Field({}, description="classifier: model label -> harm tag (a label left out, such as "
                                   "safe, tags nothing)")
    threshold: float = Field(0.5, gt=0, lt=1, description="classifier: a label tags a text from this probability")
    batch_size: int = Field(32, ge=1)
    labelled_set: str | None = Field("harm-labelled.v1", description="JSONL of {id, prompt, harmful, tags} the "
                                     "tagger is measured on (a file, or a set shipped in data_curation/labelled/); "
                                     "its precision and recall go into the data card; null: not measured")

    @model_validator(mode="after")
    def _model(self) -> "TaggingConfig":
        if self.kind == "classifier" and (self.model is None or not self.labels):
            raise ValueError("tagging kind classifier needs model and labels")
        return self


class MixConfig(BaseConfig):
    total: int | None = Field(None, ge=1, description="rows in the final set, split by source weight "
                              "(null: keep everything that passed)")


class CurationConfig(BaseConfig):
    name: str = "generalign"
    version: str | None = Field(None, description="null: the next vN under output_dir/name/")
    output_dir: str = "runs/datasets"
    seed: int = 0
    num_proc: int = Field(1, ge=1, description="worker processes for the per-row stages (datasets.map)")
    tokenizer: ModelSource | None = Field(None, description="the pilot (its chat template measures length); "
                                          "null: length in words")
    sources: list[SourceConfig]
    filters: Filters = Filters()
    dedup: DedupConfig = DedupConfig()
    decontamination: DecontamConfig = DecontamConfig()
    tagging: TaggingConfig = TaggingConfig()
    mix: MixConfig = MixConfig()

    _names = field_validator("name", "version")(config_name("dataset name or version"))

    @model_validator(mode="after")
    def _unique_sources(self) -> "CurationConfig":
        if not self.sources:
            raise ValueError("give at least one source")
        check_unique([s.name for s in self.sources], "source")
        return self
