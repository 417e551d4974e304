"""Which config model validates which directory under configs/ (used by `pilot config check` and the tests)."""

from __future__ import annotations

import importlib
from pathlib import Path

from pydantic import BaseModel

from pilot_core.config import load_config
from pilot_core.errors import UserError

SCHEMAS = {
    "pipeline": "flows.pipeline_config:PipelineConfig",
    "wsd": "wsd_inference.config:WSDConfig",
    "models": "pilot_core.models.tiny:TinyModelSpec",
    "curation": "data_curation.config:CurationConfig",
    "preferences": "data_curation.preferences_config:PreferencesConfig",
    "training": "training.config:TrainConfig",
    "accelerate": "training.launch:AccelerateConfig",
    "validation": "evaluation.config:ValidationConfig",
    "release": "release.config:ReleaseConfig",
}


def schema_for(path: str | Path) -> type[BaseModel]:
    """The config class for a YAML file, from the configs/ subdirectory it lives in."""
    parts = Path(path).resolve().parts
    if "configs" not in parts or parts.index("configs") + 1 >= len(parts) - 1:
        raise UserError(f"{path}: not under configs/<kind>/; known kinds: {', '.join(SCHEMAS)}")
    kind = parts[len(parts) - 1 - parts[::-1].index("configs") + 1]
    if kind not in SCHEMAS:
        raise UserError(f"{path}: unknown config kind {kind!r}; known kinds: {', '.join(SCHEMAS)}")
    module, _, name = SCHEMAS[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def check_config(path: str | Path, overrides: tuple[str, ...] = (), lock: bool = True) -> BaseModel:
    return load_config(schema_for(path), path, overrides, lock=lock)
