"""Validation's generation jobs, here or on a Ray cluster.

A job is one file of generations: a method with a base on one eval set (`generate_to_file`, which resumes by id).
Engine `local` runs them here one after another, as validation always did; engine `ray` submits each as a Ray
task with its resources (`EvalSpec.ray`) and waits for all of them. Either way the files are the same, and
validation reads and measures them here afterwards, so the report is the same.

What a Ray task needs: the run's working directory, output and local models at the same path on its node (shared
storage; the task changes into the driver's working directory, so relative paths mean the same there) and the
project installed. Keys for served models come from the nodes' own environment, never through Ray (its dashboard
shows a runtime environment). A job that fails does not stop the others: their files are complete, and a rerun
runs only what is missing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from evaluation.config import EvalSpec, JobResources
from pilot_core import ray_connect
from pilot_core.errors import JobFailed, UserError
from pilot_core.models.compute import Compute
from pilot_core.models.source import ModelSource
from pilot_core.prompts import PromptRecord
from wsd_inference.config import WSDConfig
from wsd_inference.methods import METHODS


@dataclass(frozen=True)
class GenerationJob:
    """One file of generations. `base_name`: the base whose resources it takes (None: a method that reads no base,
    run once per eval set for every base)."""

    label: str  # set/base/method, as errors and progress name it
    pilot: ModelSource
    base: ModelSource
    untuned: ModelSource | None
    prompts: list[PromptRecord]
    cfg: WSDConfig
    method: str
    path: Path
    base_name: str | None

    def run(self, compute: Compute | None, progress: bool) -> None:
        from wsd_inference.runner import generate_to_file

        generate_to_file(self.pilot, self.base, self.prompts, self.cfg, self.path, compute, progress, self.method,
                         self.untuned)

    def in_process(self) -> bool:
        """Whether a model it uses loads here (and so may want a GPU)."""
        models = {"pilot": self.pilot, "base": self.base, "untuned": self.untuned}
        return any(models[k] is not None and models[k].url is None for k in METHODS[self.method].models(self.cfg))


def run_jobs(jobs: list[GenerationJob], spec: EvalSpec, compute: Compute | None, progress: bool) -> None:
    """Run every job (engine local: here, in order; ray: as Ray tasks). A failed job is an error naming it, raised
    after the others finished (their files complete)."""
    if spec.engine == "local":
        for job in jobs:
            job.run(compute, progress)
        return
    _on_ray(jobs, spec, compute or Compute(), progress)


def _resources(job: GenerationJob, spec: EvalSpec, compute: Compute, cluster_gpus: float) -> JobResources:
    r = spec.ray.bases.get(job.base_name, spec.ray.resources) if job.base_name else spec.ray.resources
    if r.num_gpus is None:
        wants = compute.device.startswith("cuda") or (compute.device == "auto" and cluster_gpus > 0)
        r = r.model_copy(update={"num_gpus": 1.0 if wants and job.in_process() else 0.0})
    return r


def _check_fits(ray, planned: list[tuple[GenerationJob, JobResources]], spec: EvalSpec) -> None:
    """A job no node can hold would wait forever: refused, naming it (unless the cluster adds nodes)."""
    if spec.ray.autoscaling:
        return
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for job, r in planned:
        if not any(n.get("CPU", 0) >= r.num_cpus and n.get("GPU", 0) >= r.num_gpus for n in nodes):
            where = f"ray.bases.{job.base_name}" if job.base_name in spec.ray.bases else "ray.resources"
            have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
            raise UserError(f"validation.{where}: job {job.label} asks for {r.num_cpus:g} CPU and {r.num_gpus:g} "
                            f"GPU on one node; the Ray cluster's nodes have {have} (ray.autoscaling: true if "
                            "it adds nodes on demand)")


def _run_remote(job: GenerationJob, compute: Compute, cwd: str) -> None:
    """A Ray task: the job, in the driver's working directory (so relative paths mean the same)."""
    import socket

    import ray

    if not ray.get_gpu_ids():  # Ray 2.60 leaves a task without GPUs seeing all the node's: it must use none
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # (this worker runs this one job: max_calls=1)
    if not Path(cwd).is_dir():
        raise UserError(f"Ray node {socket.gethostname()} has no directory {cwd} (the run's working directory): "
                        "the run must be on storage every node mounts at the same path")
    here = os.getcwd()
    os.chdir(cwd)
    try:
        job.run(compute, progress=False)
    finally:
        os.chdir(here)


def _on_ray(jobs: list[GenerationJob], spec: EvalSpec, compute: Compute, progress: bool) -> None:
    from tqdm import tqdm

    if re.fullmatch(r"cuda:\d+", compute.device):
        raise UserError(f"compute.device {compute.device} with validation.engine ray: Ray gives each job its own "
                        "GPUs (cuda:0 .. as reserved); use device auto or cuda")
    pending: list = []
    # for the rest of this process: a sweep's jobs and the eval sets' share it (Ray's exit hook disconnects, and
    # stops a Ray started here)
    ray, _ = ray_connect.connect(spec.ray.address, what="validation.ray.address / RAY_ADDRESS")
    try:
        gpus = ray.cluster_resources().get("GPU", 0)
        planned = [(job, _resources(job, spec, compute, gpus)) for job in jobs]
        _check_fits(ray, planned, spec)
        env = ray_connect.forwarded_env()
        # each job a worker of its own, which exits after it: its memory (GPU too) is freed, and what CUDA
        # devices it saw (torch keeps the first answer) cannot leak into the next job
        task = ray.remote(max_calls=1)(_run_remote)
        refs = {task.options(
            num_cpus=r.num_cpus, num_gpus=r.num_gpus, name=job.label, runtime_env={"env_vars": env},
        ).remote(job, compute, os.getcwd()): job for job, r in planned}
        pending, errors = list(refs), {}
        with tqdm(total=len(jobs), desc="generation jobs (ray)", unit="job", disable=not progress) as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    ray.get(done[0])
                except ray.exceptions.RayTaskError as e:
                    errors[refs[done[0]].label] = e.cause if isinstance(e.cause, BaseException) else e
                except ray.exceptions.RayError as e:  # the worker or its node died (after Ray's own retries)
                    errors[refs[done[0]].label] = e
                bar.update(1)
    finally:
        for ref in pending:  # interrupted: the jobs must not run on unattended
            ray.cancel(ref, force=True)
    if errors:
        # disconnected first: the workers' forwarded output would otherwise go on printing after the error, which
        # is to be the command's last line (a later run here connects again)
        ray.shutdown()
        raise _failure(errors, len(jobs))


def _failure(errors: dict[str, BaseException], total: int) -> Exception:
    """One error for the failed jobs, each named with its own error; bad input (a UserError in any job) is exit 2,
    anything else exit 1."""
    by_error: dict[str, list[str]] = {}  # one line per distinct error: a broken base fails all its jobs alike
    for label, e in sorted(errors.items()):
        text = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        by_error.setdefault(f"{type(e).__name__}: {text}", []).append(label)
    lines = "; ".join(f"{', '.join(labels)}: {text}" for text, labels in by_error.items())
    msg = (f"{len(errors)} of {total} generation jobs failed on Ray ({lines}); the others' generations are kept: "
           "rerun the same command to run only what is missing")
    bad = next((e for e in errors.values() if isinstance(e, UserError)), None)
    err = UserError(msg) if bad is not None else JobFailed(msg)
    err.__cause__ = bad or next(iter(errors.values()))
    return err
