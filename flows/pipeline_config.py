"""The end-to-end pipeline config (`configs/pipeline/*.yaml`): which models, which prompts, which settings.

Stage sections, each optional and each needing the one before: curation, preferences, training, validation (of
the trained checkpoint, with every base below), release (gate + publish).
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from data_curation.config import CurationConfig
from data_curation.preferences_config import PreferencesConfig
from evaluation.config import EvalSpec
from pilot_core.config import BaseConfig
from pilot_core.model_source import ModelSource
from pilot_core.names import check_unique, config_name
from release.config import ReleaseConfig
from training.config import StagesConfig
from wsd_inference.config import WSDConfig


class PipelineConfig(BaseConfig):
    name: str
    seed: int = 0
    output_dir: str = Field("runs", description="run directories are created under it")
    prompts: str = Field(..., description="JSONL of {id, messages} or {id, prompt}, relative to the working directory")
    pilot: ModelSource
    bases: list[ModelSource] = Field(..., min_length=1)
    wsd: WSDConfig = WSDConfig()
    curation: CurationConfig | None = Field(None, description="GenerAlign curation (tokenizer defaults to the pilot)")
    preferences: PreferencesConfig | None = Field(None, description="responses and preference pairs for the "
                                                  "curated prompts (needs curation)")
    training: StagesConfig | None = Field(None, description="train the pilot on the preferences (needs them); WSD "
                                          "then runs with the trained pilot")
    validation: EvalSpec | None = Field(None, description="validate the trained checkpoint with every base (needs "
                                        "training)")
    release: ReleaseConfig | None = Field(None, description="gate the validated checkpoint and publish it (needs "
                                          "validation)")

    _name = field_validator("name")(config_name("pipeline name"))

    @model_validator(mode="after")
    def _unique_bases(self) -> "PipelineConfig":
        if self.preferences is not None and self.curation is None:
            raise ValueError("preferences need a curation section (they label its prompts)")
        if self.training is not None and self.preferences is None:
            raise ValueError("training needs a preferences section (it trains on its sft and dpo splits)")
        if self.validation is not None and self.training is None:
            raise ValueError("validation needs a training section (it validates the trained checkpoint)")
        if self.release is not None and self.validation is None:
            raise ValueError("release needs a validation section (the gate decides from its report)")
        check_unique([b.name for b in self.bases], "base model")
        return self
