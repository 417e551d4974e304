"""A Prefect API for one `pilot run` when no server is configured, started as a child that ends with the run.

Prefect's own ephemeral API is a uvicorn subprocess stopped by an `atexit` hook, so a run killed by SIGKILL (the
OOM killer, a test's timeout) left it serving, orphaned, with its port and memory. This starts the same server
(Prefect's app factory in ephemeral mode, the same settings and database) with PR_SET_PDEATHSIG set, and points
this process's Prefect settings at it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

from pilot_core.errors import JobFailed
from pilot_core.processes import die_with_parent

PORT_IN_USE = 3  # uvicorn's exit code when its port was taken between our choice and its bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int) -> subprocess.Popen:
    from prefect.settings import get_current_settings

    env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           **get_current_settings().to_environment_variables(exclude_unset=True)}
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "prefect.server.api.server:create_app", "--host",
         "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"],
        env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)


def _healthy(url: str, proc: subprocess.Popen, timeout_s: float) -> bool:
    """True once the API answers; False if the server exited because its port was taken."""
    import httpx

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            code = proc.poll()
            if code == PORT_IN_USE:
                return False
            if code is not None:
                raise JobFailed(f"Prefect's ephemeral API exited with code {code} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return True
            time.sleep(0.1)
    _stop(proc)
    raise JobFailed(f"Prefect's ephemeral API did not answer within {timeout_s:.0f} s "
                    "(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def ephemeral_api() -> Iterator[str]:
    """PREFECT_API_URL set, within the block, to a fresh local API that ends with this process."""
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    for _ in range(5):
        port = _free_port()
        proc = _start(port)
        url = f"http://127.0.0.1:{port}/api"
        if _healthy(url, proc, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()):
            break
    else:
        raise JobFailed("Prefect's ephemeral API found no free port in 5 tries")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _drain()
    finally:
        _stop(proc)


def _drain() -> None:
    """Send the logs and events still queued while the API is up (the run's last lines would otherwise be
    "Error logging to API" on stderr)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10)
