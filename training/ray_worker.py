"""Inside each Ray Train worker (started by training.ray_launch): the torchrun worker's code, with the run's
checkpoints kept on storage every worker reaches.

On storage, under the run's name:
  <stage>-checkpoint-<step>/  each checkpoint the trainer saves, reported to Ray Train (which keeps the latest). Each
                              node's local rank 0 uploads its node's copy (the ranks of a node write one directory)
                              and Ray merges the nodes' copies into one.
  <stage>-final/              a stage's final model, uploaded by rank 0 once the stage is done (manifest.json last)
  <stage>-run.json            the stage directory's claim (training.train.RUN_FILE)
Before training, each node's local rank 0 fetches what its output_dir lacks (claims, finished stages' finals, Ray's
latest checkpoint), so a rerun continues where storage says the run was, on a fresh node too; from there
training.train resumes from output_dir as it does under torchrun.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from pilot_core.errors import UserError

MANIFEST = "manifest.json"


class Store:
    """The run's directory on storage: a pyarrow filesystem and the directory's path on it."""

    def __init__(self, fs, root: str):
        self.fs, self.root = fs, root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        from pyarrow.fs import FileType

        return self.fs.get_file_info(self._path(rel)).type != FileType.NotFound

    def put_file(self, local: Path, rel: str) -> None:
        from pyarrow.fs import LocalFileSystem, copy_files

        self.fs.create_dir(self._path(rel).rsplit("/", 1)[0], recursive=True)
        copy_files(str(local), self._path(rel), source_filesystem=LocalFileSystem(), destination_filesystem=self.fs)

    def put_dir(self, local: Path, rel: str) -> None:
        """Every file of `local`, its manifest last: a copy with a manifest is complete, as on local disk."""
        files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: p.name == MANIFEST)
        for f in files:
            self.put_file(f, f"{rel}/{f.relative_to(local).as_posix()}")

    def get_dir(self, rel: str, local: Path) -> None:
        """`rel` to `local` through a temporary beside it, renamed when complete. Several nodes fetching into one
        shared directory each use their own temporary; the first rename wins."""
        from pyarrow.fs import LocalFileSystem, copy_files

        tmp = local.with_name(f".fetch-{socket.gethostname()}-{os.getpid()}-{local.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        copy_files(self._path(rel), str(tmp), source_filesystem=self.fs, destination_filesystem=LocalFileSystem())
        shutil.rmtree(local, ignore_errors=True)
        try:
            tmp.rename(local)
        except OSError:
            if not local.is_dir():
                raise
            shutil.rmtree(tmp)  # another node's copy got there first

    def read(self, rel: str) -> bytes | None:
        if not self.exists(rel):
            return None
        with self.fs.open_input_stream(self._path(rel)) as f:
            return f.read()

    def keep_finals(self, cfg) -> None:
        """Rank 0: upload each stage's claim and finished final that storage lacks."""
        from training.train import RUN_FILE

        for stage in cfg.stages:
            d = Path(cfg.output_dir) / stage
            if (d / RUN_FILE).is_file() and not self.exists(f"{stage}-run.json"):
                self.put_file(d / RUN_FILE, f"{stage}-run.json")
            if (d / "final" / MANIFEST).is_file() and not self.exists(f"{stage}-final/{MANIFEST}"):
                self.put_dir(d / "final", f"{stage}-final")

    def restore(self, cfg, latest) -> None:
        """A node's local rank 0: fetch what output_dir lacks. A stage directory that holds another run, or is no
        Pilot run, is left alone (training.train refuses it with one clear error)."""
        from training.train import RUN_FILE, drop_incomplete, last_checkpoint

        ours = set()
        for stage in cfg.stages:
            d, claim = Path(cfg.output_dir) / stage, self.read(f"{stage}-run.json")
            if claim is None:
                continue
            if (d / RUN_FILE).is_file():
                if (d / RUN_FILE).read_bytes() != claim:
                    continue
            elif d.exists() and any(d.iterdir()):
                continue
            else:
                d.mkdir(parents=True, exist_ok=True)
                (d / RUN_FILE).write_bytes(claim)
            ours.add(stage)
            if not (d / "final" / MANIFEST).is_file() and self.exists(f"{stage}-final/{MANIFEST}"):
                print(f"pilot: fetching {stage}'s final model from {self._path(stage + '-final')}", flush=True)
                self.get_dir(f"{stage}-final", d / "final")
        m = re.fullmatch(r"(\w+)-checkpoint-(\d+)", Path(latest.path).name) if latest is not None else None
        if m is None or m[1] not in ours:
            return
        d, step = Path(cfg.output_dir) / m[1], int(m[2])
        have = last_checkpoint(d)
        if (d / "final" / MANIFEST).is_file() or (have and int(have.rsplit("-", 1)[1]) >= step):
            return
        drop_incomplete(d)
        print(f"pilot: fetching {m[1]} checkpoint {step} from {latest.path}", flush=True)
        self.get_dir(Path(latest.path).name, d / f"checkpoint-{step}")


def _report_saves(store: Store, cfg):
    """A trainer callback: each checkpoint the trainer saves is reported to Ray Train (which uploads it), and rank 0
    uploads the finals of the stages before when training begins."""
    import ray.train
    from transformers import TrainerCallback

    class KeepOnStorage(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if args.process_index == 0:
                store.keep_finals(cfg)

        def on_save(self, args, state, control, **kwargs):
            out, step = Path(args.output_dir), state.global_step
            local0 = ray.train.get_context().get_local_rank() == 0
            losses = [x["loss"] for x in state.log_history if "loss" in x]
            # every rank calls report (it is a barrier: the other ranks' files are written when the upload starts)
            ray.train.report({"stage": out.name, "step": step, "loss": losses[-1] if losses else None},
                             checkpoint=ray.train.Checkpoint.from_directory(out / f"checkpoint-{step}") if local0
                             else None, checkpoint_dir_name=f"{out.name}-checkpoint-{step}",
                             delete_local_checkpoint_after_upload=False)

    return KeepOnStorage()


def _enter(cwd: str) -> None:
    if not Path(cwd).is_dir():
        raise UserError(f"Ray node {socket.gethostname()} has no directory {cwd} (where `pilot train` ran): the run's "
                        "paths must be on storage every node mounts at the same path")
    os.chdir(cwd)


def train_loop(run: dict) -> None:
    """Ray Train's train_loop_per_worker: fetch what storage has and output_dir lacks, then train as a torchrun
    worker does, reporting checkpoints to Ray Train."""
    import ray.train
    import torch.distributed as dist

    from training.config import TrainConfig
    from training.worker import train_run

    _enter(run["cwd"])
    if run["cpu"]:
        os.environ["DS_ACCELERATOR"] = "cpu"  # before deepspeed is imported: this worker was given no GPU
    cfg = TrainConfig.model_validate(run["config"])
    ctx = ray.train.get_context()
    storage = ctx.get_storage()
    store = Store(storage.storage_filesystem, storage.experiment_fs_path)
    if cfg.resume and ctx.get_local_rank() == 0:
        store.restore(cfg, ray.train.get_checkpoint())
    dist.barrier()  # the node's other ranks start from what was fetched
    train_run(run, callbacks=[_report_saves(store, cfg)])
    if ctx.get_world_rank() == 0:
        store.keep_finals(cfg)
