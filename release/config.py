"""Typed release recipe (configs/release/*.yaml): the gate's thresholds, where versions are published, what the
model card says, and an optional Hugging Face Hub push."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from pilot_core.config import BaseConfig
from pilot_core.names import config_name
from release.gate import GateConfig


class CardConfig(BaseConfig):
    license: str = "apache-2.0"
    language: list[str] = ["en"]
    intended_use: str = ("A pilot for Weak-to-Strong Decoding: it drafts the start of an aligned answer and a larger "
                         "base model continues once confident. Use it with the base models it was validated with.")
    limitations: str = ("Alignment is measured on the eval sets named below only. The base model writes most of "
                        "each answer and can still produce unaligned text after the switch.")


class HubConfig(BaseConfig):
    repo_id: str = Field(description="owner/name on the Hub")
    token_env: str = Field("HF_TOKEN", description="environment variable holding the token (never written)")
    endpoint: str | None = Field(None, description="Hub endpoint (default: the public Hub or $HF_ENDPOINT)")
    private: bool = True

    @field_validator("repo_id")
    @classmethod
    def _repo(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", v) or ".." in v:
            raise ValueError("repo_id must look like owner/name")
        return v


class ReleaseConfig(BaseConfig):
    name: str = Field(description="the model's name in the registry: <registry>/<name>/<version>/")
    registry: str = "registry"
    promote: bool = Field(True, description="move the champion alias to a version that passes the gate")
    report_to: Literal["none", "mlflow"] = Field("none", description="mlflow: each published version registered "
                                                 "in MLflow's model registry too (aliases candidate, champion)")
    gate: GateConfig
    card: CardConfig = CardConfig()
    hub: HubConfig | None = None

    _name = field_validator("name")(config_name("registry model name"))
