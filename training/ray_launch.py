"""Training on a Ray cluster: `pilot train --launcher ray --distributed PRESET --nproc N`.

The cluster is RAY_ADDRESS's (Ray's own variable: its GCS host:port, or ray://host:port), else a Ray started here
for the run, on loopback, that ends with it. Ray Train's TorchTrainer starts N workers (one GPU each when the
compute settings train on GPUs, else one CPU each), gives them the torch distributed environment and process group,
and runs training.ray_worker.train_loop in each: the torchrun worker's code, with the same DeepSpeed preset.

Checkpoints are kept on storage every worker reaches (--storage: a path or an fsspec URL; default OUTPUT_DIR/ray),
under a name the run's config fixes, so rerunning the same command resumes from the last one, on a fresh cluster
too. Worker logs come here (Ray forwards them). A failed worker ends the run as one JobFailed (exit 1; no automatic
retry, as with torchrun). When this process ends, however it ends, so does the run: Ray stops the actors of a job
whose driver has gone, and a Ray started here goes with its driver.

A worker needs Pilot installed and the run's paths (model, dataset, output_dir) at the same place on its node: a
worker changes into this process's working directory, so relative paths mean the same there.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
from pathlib import Path

from pilot_core import ray_connect
from pilot_core.errors import JobFailed, UserError

NATIVE_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}  # pyarrow resolves these itself


def require_ray() -> None:
    """Ray Train importable, and the cluster RAY_ADDRESS names, when set, answering: said before the slower checks of
    the input."""
    address = os.environ.get("RAY_ADDRESS")
    with ray_connect.restored_env():  # set for the import (Ray reads it then); the session sets it again
        os.environ.update(ray_connect.client_env(address))
        try:
            import ray.train.torch  # noqa: F401
        except ImportError as e:
            raise UserError(f"--launcher ray needs Ray Train, which is not installed ({e}): pip install '.[ray]'") \
                from None
        if address:
            ray_connect.check_reachable(address, "RAY_ADDRESS")


def run_name(cfg) -> str:
    """The run's directory on storage: the same config (output_dir included) always gets the same one, so a rerun
    finds its checkpoints, and another config never does."""
    from pilot_core.manifest import config_hash
    from pilot_core.tracking import identity

    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.name)}-{config_hash(identity(cfg))[:12]}"


def storage_location(storage: str | None, output_dir: str) -> tuple[str, object | None]:
    """RunConfig's (storage_path, storage_filesystem): a local path made absolute (the workers run elsewhere), a URL
    pyarrow knows (s3://, gs://, hdfs://, ...) as it is, any other fsspec URL through fsspec."""
    if storage is None:
        return str(Path(output_dir).resolve() / "ray"), None
    if "://" not in storage:
        return str(Path(storage).expanduser().resolve()), None
    if storage.split("://", 1)[0] in NATIVE_SCHEMES:
        return storage, None
    import fsspec
    import pyarrow.fs

    try:
        fs, path = fsspec.core.url_to_fs(storage)
    except (ValueError, ImportError) as e:
        raise UserError(f"--storage {storage}: {e}") from None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _scaling(ray, compute, nproc: int):
    """Ray Train's ScalingConfig from the compute settings: a GPU per worker (auto: when the cluster has GPUs), else a
    CPU; refused when the cluster has no room for nproc such workers (they would wait for ever)."""
    from ray.train import ScalingConfig

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = sum(n.get("GPU", 0) for n in nodes)
    if compute.device == "mps" or re.fullmatch(r"cuda:\d+", compute.device):
        raise UserError(f"compute.device {compute.device} with --launcher ray: Ray gives each worker its own device; "
                        "use auto, cuda or cpu")
    if compute.device == "cuda" and gpus < 1:
        raise UserError("compute.device cuda: the Ray cluster has no GPU (use auto or cpu)")
    gpu = compute.device == "cuda" or (compute.device == "auto" and gpus >= 1)
    per_worker = {"CPU": 1.0, "GPU": 1.0} if gpu else {"CPU": 1.0}
    room = sum(int(min(n.get(k, 0) // v for k, v in per_worker.items())) for n in nodes)
    if room < nproc:
        have = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes) or "no nodes"
        raise UserError(f"--nproc {nproc}: each worker takes {' and '.join(f'1 {k}' for k in per_worker)}; the Ray "
                        f"cluster's nodes ({have}) hold {room}")
    return ScalingConfig(num_workers=nproc, use_gpu=gpu, resources_per_worker=per_worker), gpu


def _failure(e: Exception) -> Exception:
    """One error for a failed run, naming what each failed worker raised (its traceback was forwarded above); a
    UserError when every one of them was bad input."""
    from ray.exceptions import RayError

    failures = getattr(e, "worker_failures", None) or {}
    # a worker's own exception may come inside Ray Train's wrapper (which carries its traceback as its text); a lost
    # worker as a failed health check around Ray's error (which names the process)
    causes = {rank: getattr(x, "_base_exc", None) or getattr(x, "health_check_failure", None) or x
              for rank, x in sorted(failures.items())}
    if causes and all(isinstance(c, UserError) for c in causes.values()):
        return UserError(str(next(iter(causes.values()))))
    lost = {rank: c for rank, c in causes.items() if isinstance(c, RayError)}  # the others failed for want of them
    why = "; ".join(f"rank {rank}: {_brief(c)}" for rank, c in (lost or causes).items()) or \
        _brief(getattr(e, "controller_failure", None) or e)
    if lost and len(lost) < len(causes):
        why += "; the other ranks stopped with it"
    return JobFailed(f"training on Ray failed ({why}); rerun the same command to resume from the last checkpoint")


def _brief(e: BaseException) -> str:
    """The exception's type and first line; for a dead actor (a killed worker), which one, as the logs name it."""
    text = str(e)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    actor = re.search(r"^\s*class_name: (\S+)$.*?^\s*pid: (\d+)$", text, re.M | re.S)
    where = f" [{actor[1]} pid {actor[2]}]" if actor else ""
    return f"{type(e).__name__}: {line[:200]}{where}" if line else type(e).__name__


@contextlib.contextmanager
def _sigterm_as_sigint():
    """SIGTERM (what a scheduler sends to stop a job) taken as Ctrl-C, which fit() answers by aborting the run and
    stopping its workers; a SIGKILL leaves that to Ray, which ends the actors of a job whose driver is gone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_on_ray(cfg, ds: dict, nproc: int, storage: str | None = None) -> dict[str, Path]:
    """Train on `nproc` Ray Train workers with the DeepSpeed config `ds` (checked by the caller, as is cfg); returns
    {stage: final checkpoint} here (fetched from storage when the workers' disk is not this one)."""
    path, fs = storage_location(storage, cfg.output_dir)
    # as many CPUs as workers at least, where Ray is started here, so that --nproc is honoured as torchrun honours it
    with ray_connect.ray_session(num_cpus=max(os.cpu_count() or 1, nproc), dashboard=True) as ray:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, TrainingFailedError
        from ray.train.torch import TorchTrainer

        from training.ray_worker import Store, train_loop

        scaling, gpu = _scaling(ray, cfg.compute, nproc)
        run = {"config": cfg.model_dump(mode="json"), "deepspeed": ds, "cpu": not gpu, "cwd": os.getcwd()}
        # Ray Train's print() stand-in writes even where a library captures stdout (dill prints the disassembly of
        # every function datasets fingerprints, to read it back): print stays print (read by the controller, which
        # passes it on to the workers)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
        trainer = TorchTrainer(train_loop, train_loop_config=run, scaling_config=scaling, run_config=RunConfig(
            name=run_name(cfg), storage_path=path, storage_filesystem=fs,
            # Ray registers a checkpoint once every worker has uploaded its part: the latest alone resumes a run
            checkpoint_config=CheckpointConfig(num_to_keep=1),
            failure_config=FailureConfig(max_failures=0)))  # a failure ends the run; a rerun resumes, as torchrun's
        try:
            with _sigterm_as_sigint():
                result = trainer.fit()
        except TrainingFailedError as e:
            raise _failure(e) from None
        except SystemExit:  # how fit() ends after Ctrl-C, once its handler has aborted the run (workers stopped)
            raise KeyboardInterrupt from None
        except ray.exceptions.RayError as e:  # the cluster itself failed (a node or the raylet lost)
            raise JobFailed(f"training on Ray failed ({_brief(e)}); rerun the same command to resume from the last "
                            "checkpoint") from None
        Store(result.filesystem, result.path).restore(cfg, None)  # the finals, when trained on other machines' disks
        finals = {s: Path(cfg.output_dir) / s / "final" for s in cfg.stages}
        if not all((f / "manifest.json").is_file() for f in finals.values()):  # the run was stopped from outside
            raise JobFailed("training on Ray stopped before it finished; rerun the same command to resume from the "
                            "last checkpoint")
        return finals
