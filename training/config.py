"""Training recipes (configs/training/*.yaml): what to train on what, and TRL's own arguments.

`sft` and `dpo` hold keyword arguments for TRL's `SFTConfig` / `DPOConfig` (checked by constructing them, so an
unknown or mistyped key is a clear error); this config adds only what TRL lacks: the model and dataset
directory, LoRA, the distribution preset and the stage order (DPO starts from the SFT output when both run).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from pilot_core.config import BaseConfig
from pilot_core.models.compute import Compute
from pilot_core.models.source import ModelSource


class LoraSpec(BaseConfig):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class StagesConfig(BaseConfig):
    """How to train: the part of a recipe a pipeline config carries (it supplies the model and the data)."""

    stages: list[Literal["sft", "dpo"]] = Field(["sft", "dpo"], min_length=1)
    seed: int = 0
    lora: LoraSpec | None = None
    distributed: str | None = Field(None, description="a preset in configs/deepspeed/ (zero2, zero3, "
                                    "zero3_offload); null: one process, no DeepSpeed")
    nproc: int = Field(1, ge=1, description="processes on this node with a distributed preset")
    chat_template: str | None = Field(None, description="a Jinja file: the model's own chat template with {% "
                                      "generation %} markers, for models TRL has no training template for "
                                      "(configs/chat_templates/)")
    report_to: Literal["none", "mlflow", "wandb", "tensorboard"] = "none"
    IDENTITY_REPORT_TO: ClassVar[str] = "none"  # what report_to counts as in a run's identity (pilot_core.tracking)
    resume: bool = Field(True, description="continue from the last checkpoint of the same run")
    sft: dict[str, Any] = Field(default_factory=dict, description="trl.SFTConfig arguments")
    dpo: dict[str, Any] = Field(default_factory=dict, description="trl.DPOConfig arguments")

    @field_validator("stages")
    @classmethod
    def _order(cls, v: list[str]) -> list[str]:
        if v != sorted(set(v), key=["sft", "dpo"].index):
            raise ValueError("stages run in the order sft, dpo, each at most once")
        return v

    @field_validator("sft", "dpo")
    @classmethod
    def _trl_keys(cls, v: dict, info) -> dict:
        """Unknown keys now; the values are checked by TRL when the stage starts."""
        unknown = sorted(set(v) - trl_fields(info.field_name))
        if unknown:
            name = "SFTConfig" if info.field_name == "sft" else "DPOConfig"
            raise ValueError(f"unknown argument {unknown[0]!r} for trl.{name}")
        return v


class TrainConfig(StagesConfig):
    name: str = "pilot"
    model: ModelSource = Field(description="the starting chat model (path or tiny; safetensors)")
    compute: Compute = Field(Compute(), description="device (cpu: no GPU is used), the weights' dtype, attention "
                             "implementation; TRL's bf16 / fp16 arguments set mixed precision")
    dataset: str = Field(description="a dataset directory from `pilot preferences` (splits sft and dpo)")
    output_dir: str = Field(description="the run directory: <output_dir>/sft, <output_dir>/dpo, checkpoints inside")

    @model_validator(mode="after")
    def _local(self) -> "TrainConfig":
        if self.model.url:
            raise ValueError("training needs local weights: model.path or model.tiny")
        return self


def trl_fields(stage: str) -> set[str]:
    import dataclasses

    from trl import DPOConfig, SFTConfig

    return {f.name for f in dataclasses.fields(SFTConfig if stage == "sft" else DPOConfig)}
