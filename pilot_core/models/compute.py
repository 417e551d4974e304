"""Where and how in-process models run: one `compute:` section read by every model Pilot loads (the drafting
pilot, in-process bases, local generators, reward models and judges, validation, training)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

from pydantic import Field, field_validator

from pilot_core.config import BaseConfig
from pilot_core.errors import UserError

DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+|mps)$")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Attention = Literal["eager", "sdpa", "flash_attention_2", "flex_attention"]
DTYPES, ATTENTION = get_args(Dtype), get_args(Attention)  # the CLI flags offer the same choices


class Compute(BaseConfig):
    """`auto`: the GPU in bfloat16 when there is one, else the CPU in float32."""

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    dtype: Dtype = Field("auto", description="weights' dtype")
    attn_implementation: Attention | None = Field(
        None, description="null: transformers' default for the model (sdpa where it can)")
    device_map: str | None = Field(None, description="spread a model that does not fit one device (accelerate's "
                                   "'auto', 'balanced', ...); device then only says where inputs start")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.match(v):
            raise ValueError(f"device {v!r}: use auto, cpu, cuda, cuda:N or mps")
        return v

    def resolve(self) -> Placement:
        """The concrete placement on this machine; asking for a GPU that is not here is a UserError."""
        import torch

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise UserError(f"compute.device {device}: no CUDA GPU on this machine (use auto or cpu)")
            index = int(device.split(":")[1]) if ":" in device else 0
            if index >= torch.cuda.device_count():
                raise UserError(f"compute.device {device}: this machine has {torch.cuda.device_count()} GPU(s)")
        if device == "mps" and not torch.backends.mps.is_available():
            raise UserError("compute.device mps: not available on this machine")
        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
        return Placement(device, dtype, self.attn_implementation, self.device_map)


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str
    attn_implementation: str | None = None
    device_map: str | None = None

    def identity(self) -> dict:
        """What can change a result (stage keys): the kind of device, the dtype, the attention kernel."""
        return {"device": self.device.split(":")[0], "dtype": self.dtype,
                "attn_implementation": self.attn_implementation}

    def from_pretrained_kwargs(self) -> dict:
        import torch

        kw: dict = {"dtype": getattr(torch, self.dtype)}
        if self.attn_implementation:
            kw["attn_implementation"] = self.attn_implementation
        if self.device_map:
            kw["device_map"] = self.device_map
        return kw


def placement_of(model) -> dict:
    """What a loaded model actually runs with (recorded in manifests, so a run shows what it used)."""
    p = next(model.parameters())
    return {"device": str(p.device), "dtype": str(p.dtype).removeprefix("torch."),
            "attn_implementation": getattr(model.config, "_attn_implementation", None)}
