"""Scheduled retraining against a real `prefect server start` on loopback: `pilot serve` and the deployments
in prefect.yaml are registered with their cron schedules, and the server's scheduler creates their runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from pilot_core.processes import die_with_parent

from .helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PREFECT = str(Path(sys.executable).with_name("prefect"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(p: subprocess.Popen) -> None:
    p.terminate()  # `serve` pauses its deployments on SIGTERM and may take a while: kill after a grace period
    try:
        p.wait(timeout=15)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}
    log = open(home / "server.log", "w")
    p = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                         stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).json() is True:
                    break
            except (httpx.HTTPError, ValueError):
                pass
            assert p.poll() is None and time.monotonic() < deadline, (home / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        yield {"api": api, "env": env}
    finally:
        _stop(p)


def _deployment(api: str, name: str, timeout: float = 90) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [d for d in httpx.post(f"{api}/deployments/filter", json={}).json() if d["name"] == name]
        if got:
            return got[0]
        time.sleep(1)
    raise AssertionError(f"deployment {name} was not registered")


def _scheduled_runs(api: str, deployment_id: str, timeout: float = 60) -> list[dict]:
    body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = httpx.post(f"{api}/flow_runs/filter", json=body).json()
        if runs:
            return runs
        time.sleep(1)
    raise AssertionError("the scheduler created no run")


def test_pilot_serve_registers_a_scheduled_deployment(server):
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--config", "configs/pipeline/demo.yaml",
                          "--cron", "0 3 * * *", "--name", "demo-served"], cwd=REPO, env=server["env"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        d = _deployment(server["api"], "demo-served")
        assert d["parameters"] == {"config": "configs/pipeline/demo.yaml", "overrides": []}
        assert [s["schedule"]["cron"] for s in d["schedules"]] == ["0 3 * * *"]
        runs = _scheduled_runs(server["api"], d["id"])
        starts = [datetime.fromisoformat(r["expected_start_time"].replace("Z", "+00:00")) for r in runs]
        assert all((t.hour, t.minute) == (3, 0) for t in starts), starts
    finally:
        _stop(p)


def test_prefect_yaml_deploys_with_a_schedule_for_a_work_pool(server):
    env = server["env"]
    r = subprocess.run([PREFECT, "work-pool", "create", "pilot-cpu", "--type", "process"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", "demo-nightly"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    d = _deployment(server["api"], "demo-nightly")
    assert d["work_pool_name"] == "pilot-cpu" and d["entrypoint"] == "flows/pipeline.py:pipeline"
    assert d["parameters"]["config"] == "configs/pipeline/demo.yaml"
    assert [s["schedule"]["cron"] for s in d["schedules"]] == ["0 2 * * *"]
    runs = _scheduled_runs(server["api"], d["id"])
    assert all(r["work_pool_name"] == "pilot-cpu" for r in runs)
