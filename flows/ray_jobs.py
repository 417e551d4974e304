"""A stage's `pilot` command as a Ray job (the Jobs API), for the flows: submitted, its log streamed into the
Prefect run's log, waited for.

- The job's outcome is the command's: exit 0 succeeds; 2 (bad input) is a UserError and 1 (a decided failure) a
  JobFailed, each with the command's last line (its one-line error), so the tasks' retry rules treat them as they
  treat the same errors in-process; anything else (a crash, a stop, a lost node) is a RayJobFailed a retry may
  help (the stages resume).
- One job per stage directory at a time: a job carries its stage's key in its metadata, and a rerun whose job is
  still running (the flow's process died, the job did not) follows that job instead of starting a second writer.
- Cancelled or interrupted (Prefect turns the runner's SIGTERM into an exception), the task stops its job; the
  pipeline's on_cancellation hook stops what its run submitted as well (`stop_jobs_of_run`).
- Secrets stay on the cluster: the nodes get keys from their own environment (a Kubernetes Secret); only the
  settings in pilot_core.ray_connect.FORWARDED_ENV travel in the job's runtime environment (the dashboard shows it).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from flows.pipeline_config import RayJobs
from pilot_core import ray_connect
from pilot_core.atomic import atomic_write_text
from pilot_core.errors import JobFailed, UserError

RUN_KEY, STAGE_KEY = "prefect_flow_run", "pilot_stage"  # the job metadata that finds a run's and a stage's jobs
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours (Ray prefixes its workers' lines with them)


class RayJobFailed(RuntimeError):
    """The job's command crashed, was stopped, or its node was lost (a rerun resumes the stage)."""


@dataclass(frozen=True)
class JobSpec:
    """One stage's job: its command (argv, run in the cluster's working directory), what it reserves, and the key
    of the stage directory it writes (one job per key at a time)."""

    argv: list[str]
    stage_key: str
    num_cpus: float
    num_gpus: float


def full_dump(obj) -> object:
    """A config as plain data with every field, also those out of its dump (`exclude=True`: settings that change no
    result, such as a served model's timeout or validation's engine), so the job's command runs what this process
    would."""
    if isinstance(obj, BaseModel):
        return {name: full_dump(getattr(obj, name)) for name in type(obj).model_fields}
    if isinstance(obj, (list, tuple)):
        return [full_dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: full_dump(v) for k, v in obj.items()}
    return to_jsonable_python(obj)


def write_job_config(config: BaseModel, path: Path) -> Path:
    atomic_write_text(path, yaml.safe_dump(full_dump(config), sort_keys=False, allow_unicode=True))
    return path


def _client(address: str | None):
    if not (address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS")):
        raise UserError("ray: which cluster? set ray.address (its Jobs API, e.g. http://head:8265) or RAY_ADDRESS")
    # its token, where one is at hand (never a token of a Ray started here: this names a cluster)
    ray_connect.import_ray(address or os.environ.get("RAY_ADDRESS") or os.environ.get("RAY_API_SERVER_ADDRESS"))
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"ray.address {address or os.environ.get('RAY_ADDRESS')}: no Ray Jobs API there "
                        f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _lines(log: Callable[[str], None]) -> Callable[[str | None], None]:
    """Chunks of a job's output -> whole lines for `log`, each as a terminal shows it (a progress bar's redraws
    after a carriage return: the last one); None flushes the rest."""
    buf = [""]

    def emit(line: str) -> None:
        line = ANSI.sub("", line.rstrip("\r").rsplit("\r", 1)[-1]).rstrip()
        if line.strip():
            log(line)

    def feed(chunk: str | None) -> None:
        if chunk is None:
            emit(buf[0])
            buf[0] = ""
            return
        *whole, buf[0] = (buf[0] + chunk).split("\n")
        for line in whole:
            emit(line)

    return feed


def _tail(client, job_id: str, log: Callable[[str], None]) -> None:
    """Follow the job's output into `log` until the job ends (a thread of its own: the waiting thread stays free to
    be interrupted)."""
    feed = _lines(log)

    async def follow() -> None:
        async for chunk in client.tail_job_logs(job_id):
            feed(chunk)

    try:
        asyncio.run(follow())
    except Exception as e:  # noqa: BLE001 - the log is a view; the job's status decides the outcome
        log(f"(log stream of Ray job {job_id} ended early: {e})")
    feed(None)


def _find_running(client, stage_key: str):
    """(the stage's job still running, how many jobs the stage had)."""
    mine = [j for j in client.list_jobs() if (j.metadata or {}).get(STAGE_KEY) == stage_key]
    alive = [j for j in mine if not j.status.is_terminal()]
    return (alive[0] if alive else None), len(mine)


def run_job(cfg: RayJobs, job: JobSpec, log: Callable[[str], None], run_id: str | None = None,
            on_poll: Callable[[], None] | None = None, poll_s: float = 2.0) -> str:
    """Submit `job` (or follow the stage's job that is still running), stream its output to `log` line by line,
    wait for its end; returns its submission id. A failed job raises (see the module's docstring); an interrupted
    or cancelled wait stops the job."""
    from ray.job_submission import JobStatus

    client = _client(cfg.address)
    running, before = _find_running(client, job.stage_key)
    if running is not None:
        job_id = running.submission_id
        log(f"Ray job {job_id} of this stage is still running on {client.get_address()}: following it")
    else:
        workdir = cfg.working_dir or os.getcwd()
        entrypoint = f"cd {shlex.quote(workdir)} && exec " + shlex.join([*shlex.split(cfg.pilot), *job.argv])
        env = ray_connect.forwarded_env()
        job_id = _submit(client, entrypoint=entrypoint, submission_id=f"pilot-{job.stage_key}-{before + 1}",
                         runtime_env={"env_vars": env} if env else None,
                         metadata={STAGE_KEY: job.stage_key, **({RUN_KEY: run_id} if run_id else {})},
                         entrypoint_num_cpus=job.num_cpus, entrypoint_num_gpus=job.num_gpus)
        log(f"Ray job {job_id} submitted to {client.get_address()}: {entrypoint}")
    tail = threading.Thread(target=_tail, args=(client, job_id, log), daemon=True, name=f"ray-log-{job_id}")
    tail.start()
    waited = time.monotonic()
    try:
        while not (status := client.get_job_status(job_id)).is_terminal():
            if status == JobStatus.PENDING and time.monotonic() - waited > cfg.pending_timeout_s:
                raise RayJobFailed(f"Ray job {job_id} waited {cfg.pending_timeout_s:g} s for {job.num_cpus:g} CPU "
                                   f"and {job.num_gpus:g} GPU without starting: the cluster has no node for it "
                                   "(ray.training / ray.validation)")
            if on_poll is not None:
                on_poll()
            time.sleep(poll_s)
    except BaseException:  # cancelled, interrupted or timed out: the job must not run on unattended
        _stop(client, job_id, log)
        raise
    tail.join(timeout=30)
    if on_poll is not None:
        on_poll()
    info = client.get_job_info(job_id)
    if info.status == JobStatus.SUCCEEDED:
        return job_id
    raise _failure(job_id, info, client)


def _submit(client, *, tries: int = 6, **job) -> str:
    """submit_job, again while the cluster says it has no job agent yet (a node's agent registers some seconds
    after the node: Ray answers 500 "No available agent ... try again later")."""
    for i in range(tries):
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e):
                raise
            if i == tries - 1:
                raise RayJobFailed(f"{e} (after {2 ** (tries - 1) - 1} s): the head node's dashboard agent is not "
                                   "running; its dashboard_agent.log says why (on one machine, often another Ray "
                                   "holding its port 52365)") from None
            time.sleep(2 ** i)
    raise AssertionError("unreachable")


def _stop(client, job_id: str, log: Callable[[str], None]) -> None:
    try:
        client.stop_job(job_id)
        log(f"Ray job {job_id}: stopped")
    except Exception as e:  # noqa: BLE001 - already ended, or the cluster is gone with it
        log(f"Ray job {job_id}: could not stop it ({e})")


def _failure(job_id: str, info, client) -> Exception:
    """The job's own error: the command's last line of output (a `pilot` error is one line), by its exit code."""
    try:
        logs = client.get_job_logs(job_id)
    except Exception:  # noqa: BLE001
        logs = info.message or ""
    last = next((x.strip() for x in reversed(logs.splitlines()) if x.strip()), "no output")
    code = info.driver_exit_code
    msg = f"Ray job {job_id} {info.status.value.lower()}" + (f" (exit code {code})" if code is not None else "") + \
        f": {last}"
    if code == UserError.exit_code:
        return UserError(msg)
    if code == JobFailed.exit_code:
        return JobFailed(msg)
    return RayJobFailed(msg + ("" if code is not None else f" ({(info.message or '').strip()[:300]})"))


def stop_jobs_of_run(address: str | None, run_id: str, log: Callable[[str], None]) -> int:
    """Stop the jobs a flow run submitted that are still running; returns how many."""
    client = _client(address)
    alive = [j for j in client.list_jobs() if (j.metadata or {}).get(RUN_KEY) == run_id and not j.status.is_terminal()]
    for j in alive:
        _stop(client, j.submission_id, log)
    return len(alive)
