"""`pilot config check`: everything a config names, resolved before anything runs, so that a recipe does not fail
days in (a missing file at validation, an integration that is not installed at the trainer's start).

Walks the validated config and reports, per key: local files and directories that do not exist, hub models and
datasets (pilot_core.hub_items' rules; listed as what must be fetched, with their revision; a moving one is said;
one the lock beside the recipe pins is said so, with whether it is in the cache; a stale lock is a problem),
hosted endpoints that name no API key variable (and variables that are not set here), integrations that do not
import (`report_to` of training, validation and release; AlpacaEval's GLM), commands that are not here (lm-eval),
DeepSpeed presets, and TRL's own argument checks of each training stage. One line per finding, naming the file and
the key.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from pydantic import BaseModel

from pilot_core.hub_data import HubData
from pilot_core.hub_items import BUILDERS, HubItem, refs_of
from pilot_core.lock import LockEntry, cached, lock_path
from pilot_core.models.files import is_local
from pilot_core.models.source import ModelSource

LOOPBACK = ("127.0.0.1", "localhost", "::1")
HUB = {"model": "hub model", "tokenizer": "hub tokenizer", "dataset": "hub dataset", "file": "hub file"}


@dataclass(frozen=True)
class Finding:
    key: str
    text: str
    problem: bool  # False: what must be fetched (or set at run time) before a run; True: the recipe cannot run


Locked = dict[tuple[int, str], LockEntry]  # (id of the config object, its field's key) -> the lock's entry


def _sub(key: str, name: str) -> str:
    """`key.name`, or `name` at the top level."""
    return f"{key}.{name}" if key else name


def _hub(key: str, obj, locked: Locked, lock_name: str) -> list[Finding]:
    """The hub items an object names (pilot_core.hub_items' rules): to fetch, at their revision; one the recipe's
    lock pins is said so, with whether it is in this machine's cache."""
    out = []
    for r in refs_of(obj):
        entry = locked.get((id(obj), r.key))
        if entry is not None:
            here = "in the cache here" if cached(entry) else "not in the cache here: run `pilot fetch`"
            text = (f"{HUB[r.what]} {entry.repo}@{entry.revision}{f' {r.file}' if r.file else ''} pinned to "
                    f"{entry.sha} by {lock_name} ({here})")
        else:
            text = f"fetch {HUB[r.what]} {r.name}{'' if r.pinned else ' (a moving revision: pin a commit)'}"
        out.append(Finding(_sub(key, r.key), text, False))
    return out


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
    if files.startswith("hf://"):  # a hub item (_hub)
        return []
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
    return []  # a hub item (_hub)


def _model(key: str, m: ModelSource) -> list[Finding]:
    if m.path:  # a hub id is a hub item (_hub)
        return _exists(_sub(key, "path"), m.path, "model directory") if is_local(m.path) else []
    if not m.url:
        return []  # tiny: built here
    out = []
    hosted = [u for u in m.urls if u.startswith("https://") and (urlparse(u).hostname or "") not in LOOPBACK]
    if m.api_key_env is None and hosted:  # replicas (a list of urls) share one key variable
        out.append(Finding(_sub(key, "api_key_env"), f"{hosted[0]} is a hosted endpoint and names no api_key_env "
                           "(the variable its key is read from)", True))
    if m.api_key_env and not os.environ.get(m.api_key_env):
        out.append(Finding(_sub(key, "api_key_env"), f"set {m.api_key_env} before the run (not set here)", False))
    if m.tokenizer and is_local(m.tokenizer):
        out += _exists(_sub(key, "tokenizer"), m.tokenizer, "tokenizer directory")
    return out


def _walk(key: str, obj, locked: Locked, lock_name: str) -> list[Finding]:
    """Every finding under one config value."""
    from data_curation.config import BenchmarkRef, DecontamConfig, DedupConfig, SourceConfig
    from evaluation.config import AlpacaEvalMetric, EvalSet, HarnessConfig
    from flows.pipeline_config import PipelineConfig
    from training.config import StagesConfig
    from training.launch import AccelerateConfig
    from wsd_inference.config import WSDConfig

    out: list[Finding] = _hub(key, obj, locked, lock_name)
    if isinstance(obj, ModelSource):
        return out + _model(key, obj)
    if isinstance(obj, HubData):
        return out + _hub_data(key, obj)
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
        if rm and is_local(rm):  # a hub id is a hub item (_hub, of bon)
            out += _exists(_sub(key, "bon.reward_model"), rm, "model directory")
    elif isinstance(obj, DedupConfig) and isinstance(obj.previous, list):
        for i, p in enumerate(obj.previous):
            out += _exists(_sub(key, f"previous.{i}"), p, "dataset directory")
    elif isinstance(obj, PipelineConfig):
        out += _exists(_sub(key, "prompts"), obj.prompts)
    elif isinstance(obj, AccelerateConfig):
        out += _exists(_sub(key, "deepspeed_config.deepspeed_config_file"),
                       obj.deepspeed_config.deepspeed_config_file)
    if isinstance(obj, BaseModel) and "report_to" in type(obj).model_fields:
        out += _report_to(_sub(key, "report_to"), obj.report_to)
    if isinstance(obj, StagesConfig):
        out += _training(key, obj)
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            out += _walk(_sub(key, name), getattr(obj, name), locked, lock_name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += _walk(f"{key}.{i}", v, locked, lock_name)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += _walk(f"{key}.{k}", v, locked, lock_name)
    return out


def _report_to(key: str, to: str) -> list[Finding]:
    """The tracking integration imports (else the stage stops at its start); where MLflow logs is said."""
    package, install = {"mlflow": ("mlflow", "'pilot-wsd[mlflow]'"), "wandb": ("wandb", "wandb"),
                        "tensorboard": ("tensorboard", "tensorboard")}.get(to, (None, None))
    if package and not importlib.util.find_spec(package):
        return [Finding(key, f"report_to {to}: the {package} package is not installed (pip install {install}); "
                        "the stage would stop at its start", True)]
    if to == "mlflow" and not os.environ.get("MLFLOW_TRACKING_URI"):
        return [Finding(key, "report_to mlflow: MLFLOW_TRACKING_URI is not set here (MLflow would log to a local "
                        "store in the working directory)", False)]
    return []


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


def resolve(cfg: BaseModel, locked: list[tuple[HubItem, LockEntry]] = (), recipe: str | Path = "") -> list[Finding]:
    """Every finding of one validated config, in the order of its keys; `locked`: the hub items the lock beside
    `recipe` pinned (pilot_core.lock.apply_lock)."""
    pins = {(id(item.owner), item.ref.key): entry for item, entry in locked}
    return _walk("", cfg, pins, lock_path(recipe).name if recipe else "")
