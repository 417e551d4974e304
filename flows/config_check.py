"""`pilot config check`: everything a config names, resolved before anything runs, so that a recipe does not fail
days in (a missing file at validation, an integration that is not installed at the trainer's start).

Walks the validated config and reports, per key: local files and directories that do not exist, hub models and
datasets (offline they cannot be read: listed as what must be fetched, with their revision; a moving one is
said), hosted endpoints that name no API key variable (and variables that are not set here), integrations that
do not import (`report_to`, AlpacaEval's GLM), commands that are not here (lm-eval), DeepSpeed presets, and TRL's
own argument checks of each training stage. One line per finding, naming the file and the key.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from pilot_core.hub_data import HubData
from pilot_core.models.files import is_local
from pilot_core.models.source import ModelSource

BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets' file builders: their data_files are read
COMMIT = re.compile(r"[0-9a-f]{40}")  # a pinned revision; a branch or tag name moves
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Finding:
    key: str
    text: str
    problem: bool  # False: what must be fetched (or set at run time) before a run; True: the recipe cannot run


def _moving(revision: str | None) -> str:
    return "" if revision and COMMIT.fullmatch(revision) else " (a moving revision: pin a commit)"


def _sub(key: str, name: str) -> str:
    """`key.name`, or `name` at the top level."""
    return f"{key}.{name}" if key else name


def _fetch(key: str, what: str, name: str, revision: str | None) -> Finding:
    return Finding(key, f"fetch {what} {name}@{revision or 'main'}{_moving(revision)}", False)


def _exists(key: str, path: str | None, what: str = "file") -> list[Finding]:
    if not path or Path(path).expanduser().exists():
        return []
    return [Finding(key, f"{what} not found: {path}", True)]


def _data_files(key: str, files) -> list[Finding]:
    if files is None:
        return []
    if isinstance(files, dict):
        return [f for k, v in files.items() for f in _data_files(f"{key}.{k}", v)]
    if isinstance(files, list):
        return [f for i, v in enumerate(files) for f in _data_files(f"{key}.{i}", v)]
    if files.startswith("hf://"):  # hf://datasets/<owner>/<name>[@<revision>]/<file>: the revision is the repo's
        parts = files.removeprefix("hf://").split("/")
        rev = parts[2].partition("@")[2] if len(parts) > 2 else ""
        return [Finding(key, f"fetch hub file {files}{_moving(rev or None)}", False)]
    if any(c in files for c in "*?["):
        found = glob.glob(os.path.expanduser(files), recursive=True)
        return [] if found else [Finding(key, f"no file matches {files}", True)]
    return _exists(key, files)


def _hub_data(key: str, data) -> list[Finding]:
    """A dataset read as the hub publishes it (HubData, a curation source of kind hf)."""
    if data.path in BUILDERS:
        return _data_files(_sub(key, "data_files"), data.data_files)
    if is_local(data.path):
        return _exists(_sub(key, "path"), data.path, "dataset directory")
    return [_fetch(_sub(key, "path"), "hub dataset", data.path, data.revision)]


def _model(key: str, m: ModelSource) -> list[Finding]:
    if m.path:
        if is_local(m.path):
            return _exists(_sub(key, "path"), m.path, "model directory")
        return [_fetch(_sub(key, "path"), "hub model", m.path, m.revision)]
    if not m.url:
        return []  # tiny: built here
    out = []
    host = urlparse(m.url).hostname or ""
    if m.api_key_env is None and m.url.startswith("https://") and host not in LOOPBACK:
        out.append(Finding(_sub(key, "api_key_env"), f"{m.url} is a hosted endpoint and names no api_key_env (the "
                           "variable its key is read from)", True))
    if m.api_key_env and not os.environ.get(m.api_key_env):
        out.append(Finding(_sub(key, "api_key_env"), f"set {m.api_key_env} before the run (not set here)", False))
    tok = m.tokenizer
    if tok and is_local(tok):
        out += _exists(_sub(key, "tokenizer"), tok, "tokenizer directory")
    elif tok:
        out.append(_fetch(_sub(key, "tokenizer"), "hub tokenizer", tok, m.revision))
    return out


def _walk(key: str, obj) -> list[Finding]:
    """Every finding under one config value."""
    from data_curation.config import BenchmarkRef, DecontamConfig, DedupConfig, SourceConfig
    from evaluation.config import AlpacaEvalMetric, EvalSet, HarnessConfig
    from flows.pipeline_config import PipelineConfig
    from training.config import StagesConfig
    from training.launch import AccelerateConfig
    from wsd_inference.config import WSDConfig

    out: list[Finding] = []
    if isinstance(obj, ModelSource):
        return _model(key, obj)
    if isinstance(obj, HubData):
        return _hub_data(key, obj)
    if isinstance(obj, SourceConfig):
        out += _hub_data(key, obj) if obj.kind == "hf" else _exists(_sub(key, "path"), obj.path)
    elif isinstance(obj, (EvalSet, BenchmarkRef)):
        for name in ("path", "few_shot_path", "baseline_path"):
            out += _exists(_sub(key, name), getattr(obj, name, None))
    elif isinstance(obj, DecontamConfig):
        for i, p in enumerate(obj.reference_sets):
            out += _exists(f"{key}.reference_sets.{i}", p)
    elif isinstance(obj, HarnessConfig):
        out += _exists(_sub(key, "include_path"), obj.include_path, "directory")
        if not (shutil.which(obj.lm_eval) or Path(obj.lm_eval).is_file()):
            out.append(Finding(_sub(key, "lm_eval"), f"no lm_eval command {obj.lm_eval!r} here (install "
                               "lm-eval[api] in an environment of its own and give its path)", True))
    elif isinstance(obj, AlpacaEvalMetric) and obj.glm_data and not importlib.util.find_spec("sklearn"):
        out.append(Finding(_sub(key, "glm_data"), "AlpacaEval's length-controlled GLM needs scikit-learn: pip install "
                           "'pilot-wsd[alpaca_eval]'", True))
    elif isinstance(obj, WSDConfig):
        out += _exists(_sub(key, "urial_prefix"), obj.urial_prefix)
        rm = obj.bon.reward_model
        if rm:
            out += (_exists(_sub(key, "bon.reward_model"), rm, "model directory") if is_local(rm) else
                    [_fetch(_sub(key, "bon.reward_model"), "hub model", rm, None)])
    elif isinstance(obj, DedupConfig) and isinstance(obj.previous, list):
        for i, p in enumerate(obj.previous):
            out += _exists(_sub(key, f"previous.{i}"), p, "dataset directory")
    elif isinstance(obj, PipelineConfig):
        out += _exists(_sub(key, "prompts"), obj.prompts)
    elif isinstance(obj, AccelerateConfig):
        out += _exists(_sub(key, "deepspeed_config.deepspeed_config_file"),
                       obj.deepspeed_config.deepspeed_config_file)
    if isinstance(obj, StagesConfig):
        out += _training(key, obj)
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            out += _walk(_sub(key, name), getattr(obj, name))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += _walk(f"{key}.{i}", v)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += _walk(f"{key}.{k}", v)
    return out


def _training(key: str, stages) -> list[Finding]:
    """The integration it reports to imports; its DeepSpeed preset is valid; TRL's configs construct."""
    from pilot_core.errors import UserError
    from training.config import TrainConfig
    from training.launch import load_preset
    from training.train import _trl_args

    out = _exists(_sub(key, "chat_template"), stages.chat_template)
    if isinstance(stages, TrainConfig) and not Path(stages.dataset).exists():
        out.append(Finding(_sub(key, "dataset"), f"{stages.dataset} is not here yet (`pilot preferences` makes it)",
                           False))
    package, install = {"mlflow": ("mlflow", "'pilot-wsd[mlflow]'"), "wandb": ("wandb", "wandb"),
                        "tensorboard": ("tensorboard", "tensorboard")}.get(stages.report_to, (None, None))
    if package and not importlib.util.find_spec(package):
        out.append(Finding(_sub(key, "report_to"), f"report_to {stages.report_to}: the {package} package is not "
                           f"installed (pip install {install}); the trainer would stop at its start", True))
    if stages.distributed:  # the preset's ZeRO section by DeepSpeed's own model (the engine needs the devices)
        try:
            load_preset(stages.distributed)
        except UserError as e:
            out.append(Finding(_sub(key, "distributed"), str(e), True))
    if isinstance(stages, TrainConfig):
        cfg = stages
    else:  # a pipeline's section: the pipeline supplies the model and the data
        cfg = TrainConfig(**stages.model_dump(), name="check", model=ModelSource(name="pilot", path="pilot"),
                          dataset="dataset", output_dir="out")
    try:
        cfg.compute.resolve()
    except UserError as e:  # a GPU asked for where there is none: said once, TRL is not asked
        return [*out, Finding(_sub(key, "compute"), f"{e} (check on the machine that will train)", False)]
    for stage in cfg.stages:
        try:
            _trl_args(cfg.model_copy(update={"report_to": "none"}), stage, Path("/nonexistent"), None)
        except Exception as e:  # TRL's and transformers' own argument checks
            out.append(Finding(_sub(key, stage), f"TRL rejects the {stage} arguments: {str(e).splitlines()[0]}",
                               True))
    return out


def resolve(cfg: BaseModel) -> list[Finding]:
    """Every finding of one validated config, in the order of its keys."""
    return _walk("", cfg)
