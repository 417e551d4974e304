"""The end-to-end pipeline config (`configs/pipeline/*.yaml`): which models, which prompts, which settings.

Stage sections (curation, training, validation, release) join here as their stages land.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from pilot_core.config import BaseConfig
from pilot_core.names import validate_name
from pilot_core.tiny_models import TinyModelSpec
from wsd_inference.config import WSDConfig


class ModelSource(BaseConfig):
    """Where a model comes from: exactly one of `path` (local directory or hub id), `tiny` (built in-process
    and cached) or `url` (an OpenAI-compatible server such as vLLM, serving `served_model`)."""

    name: str
    path: str | None = None
    tiny: TinyModelSpec | None = None
    url: str | None = None
    served_model: str | None = None
    api_key_env: str | None = Field(None, description="name of the environment variable holding the API key")
    trust_remote_code: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return validate_name(v, "model name")
        except Exception as e:  # surface as a validation error with the key's location
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        given = [k for k in ("path", "tiny", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, tiny, url (got {', '.join(given) or 'none'})")
        if self.url and not self.served_model:
            raise ValueError("a url source needs served_model (the model name the server serves)")
        return self


class PipelineConfig(BaseConfig):
    name: str
    seed: int = 0
    output_dir: str = Field("runs", description="run directories are created under it")
    prompts: str = Field(..., description="JSONL of {id, messages} or {id, prompt}, relative to the working directory")
    pilot: ModelSource
    bases: list[ModelSource] = Field(..., min_length=1)
    wsd: WSDConfig = WSDConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return validate_name(v, "pipeline name")
        except Exception as e:
            raise ValueError(str(e)) from None

    @model_validator(mode="after")
    def _unique_bases(self) -> "PipelineConfig":
        names = [b.name for b in self.bases]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"base model names must be unique, repeated: {', '.join(dup)}")
        return self
