"""Typed settings of WSD decoding (defaults are the paper's: w=6, gamma=0.8, 512-token draft, 2048 total)."""

from __future__ import annotations

from pydantic import Field, model_validator

from pilot_core.config import BaseConfig


class WSDConfig(BaseConfig):
    window: int = Field(6, ge=1, description="w: draft tokens in the geometric-mean window")
    threshold: float = Field(0.8, ge=0.0, le=1.0, description="gamma: switch at the first window mean >= gamma")
    max_draft_tokens: int = Field(512, ge=0, description="pilot tokens drafted at most")
    max_new_tokens: int = Field(2048, ge=1, description="total budget in base tokens: kept draft + continuation")
    batch_size: int = Field(8, ge=1, description="prompts decoded together")
    chunk_size: int = Field(8, ge=1, description="draft tokens scored per base forward pass (online engine)")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (the paper); > 0 samples, seeded")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _budget(self) -> "WSDConfig":
        if self.max_draft_tokens > 0 and self.window > self.max_draft_tokens:
            raise ValueError(f"window {self.window} is longer than max_draft_tokens {self.max_draft_tokens}: "
                             "no window could ever be scored")
        return self
