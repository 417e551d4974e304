"""MLflow, for recipes that report to it (`report_to: mlflow`; the `mlflow` extra): training's and validation's
runs, and the release's versions in MLflow's model registry. Where to is MLflow's own business: its variables
(MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME, MLFLOW_TRACKING_TOKEN, ...) are read by mlflow, never written here.

A run's id is kept in the directory it describes (mlflow_run.json, the tracking URI without credentials beside
it), so a resumed training stage logs into the same run and a finished validation is not logged twice. A
registered version carries the registry's version as a tag, so publishing again registers nothing new.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pilot_core.atomic import atomic_write_json
from pilot_core.errors import JobFailed, UserError

RUN_FILE = "mlflow_run.json"
INSTALL = "pip install 'pilot-wsd[mlflow]'"


def mlflow():
    """The mlflow module, with its usage telemetry off (runs are offline: nothing leaves for MLflow's servers)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow as m
    except ImportError:
        raise UserError(f"report_to mlflow: the mlflow package is not installed ({INSTALL})") from None
    return m


def _uri() -> str:
    """The tracking URI as it may be written down: without user and password."""
    parts = urlsplit(mlflow().get_tracking_uri())
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def _failed(what: str, e: Exception) -> JobFailed:
    why = str(e).splitlines()[0] if str(e) else type(e).__name__
    why = re.sub(r"://[^/@\s]+@", "://", why)  # mlflow's messages name the URL, credentials and all
    return JobFailed(f"MLflow at {_uri()}: {what}: {why}")


def identity(cfg) -> dict:
    """A config's dump as its identity (run keys, config hashes): where it reports to is no part of what it
    computes. Training's report_to is older than this rule and its identities were made with it, mostly "none":
    "none" stands in for any value, so they stay what they were; validation's is new: left out, likewise."""
    dump = cfg.model_dump(mode="json")
    if getattr(cfg, "IDENTITY_REPORT_TO", None):
        return {**dump, "report_to": cfg.IDENTITY_REPORT_TO}
    dump.pop("report_to", None)
    return dump


def finished(directory: Path) -> bool:
    """Whether `directory`'s run was logged to the current tracking server and ended."""
    f = Path(directory) / RUN_FILE
    if not f.is_file():
        return False
    rec = json.loads(f.read_text())
    return rec.get("status") == "FINISHED" and rec.get("tracking_uri") == _uri()


@contextlib.contextmanager
def run(directory: Path, experiment: str, name: str, tags: dict[str, str]) -> Iterator[object]:
    """An active MLflow run for the work in `directory`: the one it started before when there is one (a resumed
    stage), else a new one in the experiment (MLFLOW_EXPERIMENT_NAME wins over `experiment`). Ended FINISHED,
    or FAILED when the work raised."""
    m = mlflow()
    directory = Path(directory)
    f = directory / RUN_FILE
    prev = json.loads(f.read_text()) if f.is_file() else {}
    run_id = prev.get("run_id") if prev.get("tracking_uri") == _uri() else None
    try:
        if m.active_run() is not None:
            m.end_run()
        active = None
        if run_id is not None:
            try:
                active = m.start_run(run_id=run_id, tags=tags)
            except m.exceptions.MlflowException as e:
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                # deleted on the server: the work starts a new run
        if active is None:
            m.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment)
            active = m.start_run(run_name=name, tags=tags)
    except Exception as e:  # unreachable, refused: after mlflow's own retries
        raise _failed("cannot start a run", e) from None
    rec = {"run_id": active.info.run_id, "experiment_id": active.info.experiment_id, "tracking_uri": _uri()}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_json(f, {**rec, "status": "RUNNING"})
    try:
        yield active
    except BaseException:
        m.end_run("FAILED")
        atomic_write_json(f, {**rec, "status": "FAILED"})
        raise
    m.end_run("FINISHED")
    atomic_write_json(f, {**rec, "status": "FINISHED"})


def log_validation(output: Path, report, experiment: str) -> None:
    """A validation report as one run: what was measured (params), every figure (metrics: base/method/set/metric
    with its interval, and the alignment tax) and the report's files (artifacts under validation/)."""
    output = Path(output)
    if finished(output):
        return
    m = mlflow()
    tags = {"pilot.stage": "validation", "pilot.checkpoint": report.checkpoint.fingerprint,
            "pilot.config_hash": report.config_hash}
    with run(output, experiment, f"{experiment}-validation", tags):
        try:
            m.log_params({"checkpoint": report.checkpoint.path, "pilot": report.pilot,
                          "methods": ",".join(report.methods), "bases": ",".join(report.bases),
                          **{f"eval_set.{n}": f"{i.version} (n={i.n})" for n, i in report.eval_sets.items()},
                          **{f"switch.{b}": f"{c.rule} window {c.window} threshold {c.threshold}"
                             for b, c in report.switch_settings.items()}})
            m.log_metrics(_figures(report))
            for name in ("report.json", "report.md", "items.jsonl", "gate.json"):
                if (output / name).is_file():
                    m.log_artifact(str(output / name), "validation")
            if (output / "plots").is_dir():
                m.log_artifacts(str(output / "plots"), "validation/plots")
        except JobFailed:
            raise
        except Exception as e:
            raise _failed("cannot log the validation", e) from None


def _figures(report) -> dict[str, float]:
    out = {}

    def put(key: str, stat) -> None:
        for part in ("mean", "ci_low", "ci_high"):
            v = getattr(stat, part)
            if v is not None:
                out[key if part == "mean" else f"{key}.{part}"] = float(v)

    for base, methods in report.metrics.items():
        for method, sets in methods.items():
            for es, cell in sets.items():
                for metric, stat in cell.items():
                    put(f"{base}/{method}/{es}/{metric}", stat)
    for base, methods in report.alignment_tax.items():
        for method, sets in methods.items():
            for es, stat in sets.items():
                put(f"{base}/{method}/{es}/alignment_tax", stat)
    return out


def register_version(version_dir: Path, model: str, version: str, *, champion: bool) -> str:
    """Register a published registry version in MLflow's model registry (its files logged as the artifacts of a
    run in experiment `model`), alias it `candidate` when it is new, and `champion` when the registry's champion is
    this version. Returns MLflow's version number; a version registered before is found by its tag and not logged
    again."""
    m = mlflow()
    from mlflow import MlflowClient

    client = MlflowClient()
    release = json.loads((Path(version_dir) / "release.json").read_text())
    try:
        if not client.search_registered_models(f"name = '{model}'"):
            client.create_registered_model(model, description="Pilot models for Weak-to-Strong Decoding, "
                                           "published by `pilot release`")
        found = client.search_model_versions(f"name = '{model}' and tag.`pilot.version` = '{version}'")
        if found:
            mv = found[0]
            if not mv.aliases:  # an earlier run stopped between registering and aliasing it
                client.set_registered_model_alias(model, "candidate", mv.version)
        else:
            if m.active_run() is not None:
                m.end_run()
            m.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or model)
            tags = {"pilot.version": version, "pilot.checkpoint": release["checkpoint"]["fingerprint"],
                    "pilot.gate_passed": str(release["gate_passed"]).lower(), "pilot.registry_path": str(version_dir)}
            with m.start_run(run_name=f"{model}-{version}", tags={**tags, "pilot.stage": "release"}) as r:
                m.log_artifacts(str(version_dir), "pilot")
            mv = client.create_model_version(model, f"{r.info.artifact_uri}/pilot", run_id=r.info.run_id,
                                             tags=tags, description=f"{model} {version} in the Pilot registry")
            client.set_registered_model_alias(model, "candidate", mv.version)  # the newest published version
        if champion:
            client.set_registered_model_alias(model, "champion", mv.version)
    except Exception as e:
        raise _failed(f"cannot register {model} {version}", e) from None
    return str(mv.version)
