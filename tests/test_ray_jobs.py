"""Prefect composes, Ray runs. The KubeRay manifest of the production recipe: KubeRay's kinds, its entrypoint a
real `pilot` command on real config files, keys from a Secret. On a real local Ray cluster (`ray_head`) and
Prefect's test API (`prefect_api`): the validate stage submitted as a Ray job through the Jobs API runs `pilot
validate` on the cluster (its generation jobs fanned out there too), its output lines land in the Prefect task's
log, and the task returns the stage directory with the report; a job that fails fails the task with the command's
own error; an interrupted wait stops its job; a rerun follows its stage's job that is still running; the
pipeline's cancellation hook stops what its run submitted."""

from __future__ import annotations

import _thread
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from .helpers import REPO, checkpoint

DEPLOY = REPO / "deploy" / "kuberay"


@pytest.fixture
def cluster(ray_head, monkeypatch):
    """The Jobs API's address, with this process set up to talk to it (token authentication, when on)."""
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # the flow reads them (pilot_core.ray_connect.import_ray)
        monkeypatch.setenv(k, ray_head.env[k])
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # it would win over the address given (Ray's rule)
    monkeypatch.chdir(REPO)
    return ray_head.dashboard


def jobs_config(address: str, **kw):
    from flows.pipeline_config import RayJobs

    # the `pilot` command as this checkout runs it; validation's driver reserves no CPU: both go to its jobs
    return RayJobs.model_validate({"address": address, "pilot": f"{sys.executable} -m flows.cli",
                                   "validation": {"num_cpus": 0}, **kw})


def task_logs(state) -> list[str]:
    """Every log line of the flow run's tasks, from the API."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the batches this process still holds
    out, flt = [], LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as c:
        while batch := c.read_logs(log_filter=flt, limit=200, offset=len(out)):
            out += batch
    return [x.message for x in out if x.task_run_id is not None]


def validation_stage(cfg, ckpt: Path, base: Path, root: Path):
    """The pipeline's validate task in a flow of its own (the pipeline wires it the same way)."""
    from prefect import flow

    from evaluation.config import EvalSpec
    from flows.tasks import validate_task
    from pilot_core.models.compute import Compute
    from pilot_core.models.source import ModelSource

    spec = EvalSpec.model_validate({
        "engine": "ray", "methods": ["wsd", "base_only"],
        "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "limit": 2,
                       "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")}],
        "metrics": {"harmlessness": {"kind": "refusal_rules"}, "bootstrap_samples": 100},
        "wsd": {"max_draft_tokens": 8, "max_new_tokens": 12, "window": 4}})

    @flow(name="validation-on-ray")
    def stage():
        return validate_task(spec, str(ckpt), [ModelSource(name="base", path=str(base))], str(root), "pilot",
                             Compute(), ray=cfg)

    return stage(return_state=True)


@pytest.mark.slow
@pytest.mark.integration
def test_the_validate_stage_runs_as_a_ray_job_and_logs_into_the_task(prefect_api, cluster, pair_same, tmp_path):
    ckpt = checkpoint(tmp_path, {"pilot": pair_same[0]})
    state = validation_stage(jobs_config(cluster), ckpt, pair_same[1], tmp_path / "runs")
    assert state.is_completed(), state.message
    out = Path(state.result())
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["base"]["wsd"]["harmful"]["harmlessness"]["n"] == 2
    job_config = out.with_name(out.name + ".ray-job.yaml")
    assert "engine: ray" in job_config.read_text()  # excluded from the dump, kept for the job
    logs = task_logs(state)
    assert any(x.startswith("Ray job pilot-validation-") and "submitted" in x for x in logs), logs[:5]
    assert any(x.strip() == f"report: {out}/report.md (figures: {out}/report.json)" for x in logs), logs[-10:]
    assert any("base" in x and "wsd" in x and "harmful/harmlessness" in x for x in logs)  # the job's own stdout

    again = validation_stage(jobs_config(cluster), ckpt, pair_same[1], tmp_path / "runs")  # done: no new job
    assert again.is_completed() and Path(again.result()) == out
    assert not any(x.startswith("Ray job") for x in task_logs(again))


@pytest.mark.slow
@pytest.mark.integration
def test_a_failing_job_fails_the_task_with_its_error(prefect_api, cluster, pair_same, tmp_path):
    from pilot_core.errors import UserError

    no_manifest = pair_same[0]  # a model, not a checkpoint: `pilot validate` refuses it (exit 2)
    state = validation_stage(jobs_config(cluster), no_manifest, pair_same[1], tmp_path / "runs")
    assert state.is_failed()
    err = state.result(raise_on_failure=False)
    assert isinstance(err, UserError), repr(err)
    assert "(exit code 2): pilot: error:" in str(err) and "manifest" in str(err), str(err)
    assert any(x.startswith("pilot: error:") and "manifest" in x for x in task_logs(state))


@pytest.mark.slow
@pytest.mark.integration
def test_a_wait_interrupted_stops_its_job_and_a_rerun_follows_the_running_one(cluster):
    from ray.job_submission import JobStatus, JobSubmissionClient

    from flows.ray_jobs import RUN_KEY, STAGE_KEY, JobSpec, run_job, stop_jobs_of_run

    client, lines = JobSubmissionClient(cluster), []
    sleep = jobs_config(cluster, pilot="sleep")  # a stand-in command that takes its time

    def wait_for(job_id: str, status, timeout_s: float = 60) -> None:
        end = time.monotonic() + timeout_s
        while client.get_job_status(job_id) != status:
            assert time.monotonic() < end, (job_id, client.get_job_status(job_id))
            time.sleep(0.5)

    # the flow's process died while its job ran on: the rerun follows that job instead of starting a second one
    first = client.submit_job(entrypoint="sleep 4", metadata={STAGE_KEY: "stage-a"})
    assert run_job(sleep, JobSpec(["4"], "stage-a", 0, 0), lines.append, poll_s=0.5) == first
    assert any("still running" in x and first in x for x in lines)
    assert [j.submission_id for j in client.list_jobs() if (j.metadata or {}).get(STAGE_KEY) == "stage-a"] == [first]

    # interrupted (Ctrl-C, or Prefect's cancellation turned into an exception): the job is stopped
    def interrupt_when_running() -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            running = [j for j in client.list_jobs() if (j.metadata or {}).get(STAGE_KEY) == "stage-b"
                       and j.status == JobStatus.RUNNING]
            if running:
                _thread.interrupt_main()
                return
            time.sleep(0.3)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run_job(sleep, JobSpec(["120"], "stage-b", 0, 0), lines.append, poll_s=0.5)
    (stopped,) = [j.submission_id for j in client.list_jobs() if (j.metadata or {}).get(STAGE_KEY) == "stage-b"]
    wait_for(stopped, JobStatus.STOPPED)

    # the pipeline's on_cancellation hook: what its run submitted is stopped
    orphan = client.submit_job(entrypoint="sleep 120", metadata={RUN_KEY: "run-1"})
    other = client.submit_job(entrypoint="sleep 120", metadata={RUN_KEY: "run-2"})
    wait_for(orphan, JobStatus.RUNNING)
    assert stop_jobs_of_run(cluster, "run-1", lines.append) == 1
    wait_for(orphan, JobStatus.STOPPED)
    assert client.get_job_status(other) in (JobStatus.PENDING, JobStatus.RUNNING)
    client.stop_job(other)
    wait_for(other, JobStatus.STOPPED)


def test_without_a_ray_section_the_pipeline_runs_as_before():
    """The embedded default: no `ray:` key, no Ray (the flows' tests run every stage in-process)."""
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config

    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml")
    assert cfg.ray is None and cfg.validation.engine == "local"


# ------------------------------------------------------------------------------------------ the KubeRay manifest
def manifests() -> list[dict]:
    import yaml

    docs = [d for p in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    assert docs, f"no manifests in {DEPLOY}"
    return docs


def containers(doc: dict) -> list[dict]:
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_the_manifests_are_kuberays_and_run_a_real_pilot_command_on_real_configs():
    import shlex

    import click

    from flows.cli import cli
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config

    for doc in manifests():
        assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] in ("RayJob", "RayCluster"), doc.get("kind")
        if doc["kind"] != "RayJob":
            continue
        argv = shlex.split(doc["spec"]["entrypoint"])
        assert argv[0] == "pilot", argv
        ctx = cli.make_context("pilot", argv[1:], resilient_parsing=False)  # a real command, its options parse
        with ctx:
            name, cmd, rest = cli.resolve_command(ctx, argv[1:])
            assert name == "run" and isinstance(cmd, click.Command)
            params = cmd.make_context(name, rest, parent=ctx).params
        assert (REPO / params["config_path"]).is_file()
        cfg = load_config(PipelineConfig, REPO / params["config_path"], params["overrides"])  # every --set is valid
        assert cfg.validation.engine == "ray" and cfg.ray is not None
        assert set(cfg.ray.stages) == {"training", "validation"}
        # the commands run where the checkout is mounted, on every node
        assert all(c["workingDir"] == cfg.ray.working_dir for c in containers(doc))
        workers = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        gpus = [int(w["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) for w in workers]
        assert max(gpus) >= cfg.training.nproc  # the training job's GPUs fit on one node
        assert sum(g * w["maxReplicas"] for g, w in zip(gpus, workers)) == 16  # the 2 x 8 GPUs of docs/scale.md


def test_the_manifests_take_keys_and_the_tracking_server_from_a_secret():
    for doc in manifests():
        for c in containers(doc):
            env = {e["name"]: e for e in c["env"]}
            assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]["name"] == "pilot-secrets"
            for name, e in env.items():
                if any(w in name for w in ("KEY", "TOKEN", "SECRET", "PASSWORD", "TRACKING_URI", "API_URL")):
                    assert "value" not in e and "secretKeyRef" in e["valueFrom"], name
            assert env["HF_HOME"]["value"].startswith("/cache") and any(
                m["mountPath"] == "/cache" for m in c["volumeMounts"])


# ------------------------------------------------------------------------------------------ without a cluster
def test_a_stage_config_travels_whole_to_its_job(tmp_path):
    """What a job's `pilot` command reads is what this process holds: also the fields out of the dump (a served
    base's client settings, validation's engine and resources), which a plain dump would drop."""
    from evaluation.config import ValidationConfig
    from flows.ray_jobs import write_job_config
    from pilot_core.config import load_config

    cfg = ValidationConfig.model_validate({
        "name": "pilot", "engine": "ray", "ray": {"bases": {"served": {"num_cpus": 2}}, "autoscaling": True},
        "bases": [{"name": "served", "url": "http://base:8000/v1", "served_model": "b", "timeout_s": 7,
                   "max_retries": 9}],
        "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful",
                       "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")}]})
    assert "engine" not in cfg.model_dump()  # what keys and reports see
    back = load_config(ValidationConfig, write_job_config(cfg, tmp_path / "job.yaml"))
    assert back == cfg and back.engine == "ray" and back.bases[0].timeout_s == 7 and back.bases[0].max_retries == 9


def test_a_jobs_output_reaches_the_log_line_by_line_as_a_terminal_shows_it():
    from flows.ray_jobs import _lines

    got: list[str] = []
    feed = _lines(got.append)
    for chunk in ("Ray job pilot-x submitted\nwsd base: 10%", "\rwsd base: 100%\n\n", "\x1b[36m(w pid=1)\x1b[0m hi\n",
                  "report: out/rep", "ort.md"):
        feed(chunk)
    feed(None)
    assert got == ["Ray job pilot-x submitted", "wsd base: 100%", "(w pid=1) hi", "report: out/report.md"]
