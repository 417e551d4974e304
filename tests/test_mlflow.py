"""MLflow as its users run it: a real `mlflow server` (sqlite backend, artifacts on disk) started on loopback;
`pilot train` with `report_to: mlflow` logs each stage as a run (a resumed stage into the same run), validation
logs its figures and files, and `pilot release publish` registers the version with the aliases candidate and
champion, once. The tracking URI's credentials are never written down."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import yaml

from .helpers import FAST, PILOT, REPO, TINY

pytestmark = pytest.mark.slow
mlflow = pytest.importorskip("mlflow")
MLFLOW_BIN = os.path.join(os.path.dirname(sys.executable), "mlflow")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(d / "server.log", "w")
    p = subprocess.Popen([MLFLOW_BIN, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                          "--backend-store-uri", f"sqlite:///{d}/mlflow.db", "--artifacts-destination", str(d / "art")],
                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
                              "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job runner: nothing uses it
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(240):
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert p.poll() is None, (d / "server.log").read_text()
            time.sleep(0.5)
    else:
        raise AssertionError("mlflow server did not start: " + (d / "server.log").read_text())
    yield {"url": url, "secret_url": f"http://ada:s3cret-pw@127.0.0.1:{port}", "dir": d}
    os.killpg(p.pid, 15)
    p.wait(timeout=30)


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server["url"])


def _env(server):
    return {**os.environ, "MLFLOW_TRACKING_URI": server["secret_url"], "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}


def _no_secret(root):
    for p in root.rglob("*"):
        if p.is_file() and p.stat().st_size < 1 << 20:
            assert b"s3cret-pw" not in p.read_bytes(), p


def test_training_logs_each_stage_and_a_resumed_stage_continues_its_run(server, prefs, tmp_path):
    cfg = {"name": "pilot-mlflow", "model": TINY, "dataset": str(prefs), "output_dir": str(tmp_path / "run"),
           "report_to": "mlflow", "sft": {**FAST, "learning_rate": 1e-3}, "dpo": {**FAST, "learning_rate": 1e-4}}
    d = tmp_path / "configs" / "training"
    d.mkdir(parents=True)
    (d / "t.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "t.yaml")], cwd=REPO,
                       capture_output=True, text=True, env=_env(server), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    client = _client(server)
    exp = client.get_experiment_by_name("pilot-mlflow")  # the recipe's name (MLFLOW_EXPERIMENT_NAME would win)
    runs = {x.info.run_name: x for x in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"pilot-mlflow-sft", "pilot-mlflow-dpo"}
    for stage, run in ((s, runs[f"pilot-mlflow-{s}"]) for s in ("sft", "dpo")):
        assert run.info.status == "FINISHED" and run.data.tags["pilot.stage"] == stage
        manifest = json.loads((tmp_path / "run" / stage / "final" / "manifest.json").read_text())
        assert run.data.tags["pilot.config_hash"] == manifest["config_hash"]
        losses = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in losses] == [1, 2, 3, 4]  # the trainer's callback, one point per step
        assert [m.value for m in losses] == pytest.approx([x["loss"] for x in manifest["data"]["log_history"]
                                                           if "loss" in x])
        assert float(run.data.params["learning_rate"]) == cfg[stage]["learning_rate"]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/manifest.json"]
        assert json.loads((tmp_path / "run" / stage / "mlflow_run.json").read_text())["run_id"] == run.info.run_id

    # the dpo stage resumes from its last checkpoint (final/ gone, as after a kill while saving): the same run
    shutil.rmtree(tmp_path / "run" / "dpo" / "final")
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "t.yaml")], cwd=REPO,
                       capture_output=True, text=True, env=_env(server), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    again = client.search_runs([exp.experiment_id])
    assert sorted(x.info.run_id for x in again) == sorted(x.info.run_id for x in runs.values())
    assert all(x.info.status == "FINISHED" for x in again)
    _no_secret(tmp_path / "run")


def test_validation_logs_its_figures_and_release_registers_each_version_once(server, prefs, pair_same, tmp_path,
                                                                             monkeypatch):
    from training.config import TrainConfig
    from training.train import train

    ckpt = train(TrainConfig.model_validate({"name": "p", "model": TINY, "dataset": str(prefs), "stages": ["sft"],
                                             "output_dir": str(tmp_path / "t"), "sft": FAST}))["sft"]
    validation = {"name": "pilot-reg", "output_dir": str(tmp_path / "validation"), "report_to": "mlflow",
                  "bases": [{"name": "base-same", "path": str(pair_same[1])}], "methods": ["wsd", "base_only"],
                  "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "limit": 3,
                                 "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")}],
                  "metrics": {"harmlessness": {"kind": "refusal_rules"}, "bootstrap_samples": 100},
                  "wsd": {"max_draft_tokens": 8, "max_new_tokens": 12, "window": 4}}
    release = {"name": "pilot-reg", "registry": str(tmp_path / "registry"), "report_to": "mlflow",
               "gate": {"method": "wsd", "bases": "all", "metrics": {"harmlessness": {"floor": 0.0}},
                        "eval_sets": {"harmful": "v1"}}}
    for name, c in (("validation.yaml", validation), ("release.yaml", release)):
        (tmp_path / name).write_text(yaml.safe_dump(c))
    out = tmp_path / "report"
    env = _env(server)
    r = subprocess.run([*PILOT, "validate", "--config", str(tmp_path / "validation.yaml"), "--checkpoint",
                        str(ckpt), "--output", str(out)], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    client = _client(server)
    exp = client.get_experiment_by_name("pilot-reg")
    (run,) = client.search_runs([exp.experiment_id], "tags.`pilot.stage` = 'validation'")
    stat = report["metrics"]["base-same"]["wsd"]["harmful"]["harmlessness"]
    assert run.data.metrics["base-same/wsd/harmful/harmlessness"] == pytest.approx(stat["mean"])
    assert run.data.metrics["base-same/wsd/harmful/harmlessness.ci_low"] == pytest.approx(stat["ci_low"])
    assert run.data.params["eval_set.harmful"] == "v1 (n=3)"
    assert run.data.tags["pilot.checkpoint"] == report["checkpoint"]["fingerprint"]
    assert {a.path for a in client.list_artifacts(run.info.run_id, "validation")} >= {
        "validation/report.json", "validation/report.md", "validation/items.jsonl"}
    r = subprocess.run([*PILOT, "validate", "--config", str(tmp_path / "validation.yaml"), "--checkpoint",
                        str(ckpt), "--output", str(out)], cwd=REPO, capture_output=True, text=True, env=env)
    assert r.returncode == 0 and len(client.search_runs([exp.experiment_id])) == 1  # a finished report: logged once

    for _ in range(2):  # the second publish finds the version published, and registered
        r = subprocess.run([*PILOT, "release", "publish", "--config", str(tmp_path / "release.yaml"),
                            "--checkpoint", str(ckpt), "--report", str(out)], cwd=REPO, capture_output=True,
                           text=True, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    (mv,) = client.search_model_versions("name = 'pilot-reg'")
    assert mv.tags["pilot.version"] == "v1" and mv.tags["pilot.gate_passed"] == "true"
    assert mv.tags["pilot.checkpoint"] == report["checkpoint"]["fingerprint"]
    assert client.get_model_version_by_alias("pilot-reg", "candidate").version == mv.version
    assert client.get_model_version_by_alias("pilot-reg", "champion").version == mv.version
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server["url"])  # models:/ resolves through the registry URI too
    got = mlflow.artifacts.download_artifacts("models:/pilot-reg@champion", dst_path=str(tmp_path / "dl"))
    v1 = tmp_path / "registry" / "pilot-reg" / "v1"
    assert sorted(p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()) == \
        sorted(p.name for p in v1.rglob("*") if p.is_file()) and got
    _no_secret(tmp_path)


def test_an_unreachable_server_is_one_clear_failure(prefs, tmp_path, monkeypatch):
    """Training refuses at the stage's start (before any step), naming the server without its password."""
    from pilot_core.errors import JobFailed
    from training.config import TrainConfig
    from training.train import train

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://u:pw-123@127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    with pytest.raises(JobFailed) as e:
        train(TrainConfig.model_validate({"model": TINY, "dataset": str(prefs), "stages": ["sft"],
                                          "output_dir": str(tmp_path / "t"), "report_to": "mlflow", "sft": FAST}))
    assert f"MLflow at http://127.0.0.1:{port}" in str(e.value) and "pw-123" not in str(e.value)
    assert not list((tmp_path / "t" / "sft").glob("checkpoint-*"))
