"""Distribution presets chosen by name (configs/deepspeed/<name>.json) and the multi-process launch.

`pilot train --distributed zero3 --nproc 2` writes the resolved config next to the run and starts
`torchrun --nproc_per_node 2 -m training.worker RUN.json` (or `accelerate launch`; or, with `--launcher ray`,
Ray Train workers on a cluster: training.ray_launch); each worker initialises deepspeed.comm before loading the
model (ZeRO-3 partitions it at load). On CPU the backend is gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from pilot_core.config import BaseConfig
from pilot_core.errors import JobFailed, UserError
from pilot_core.processes import LAUNCHED_BY, die_with_parent, free_port

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "deepspeed"


def load_preset(name: str, presets: Path = PRESETS) -> dict:
    """A DeepSpeed config by preset name, validated (ZeRO section by DeepSpeed's own model)."""
    from pilot_core.names import validate_name

    path = presets / f"{validate_name(name, 'DeepSpeed preset')}.json"
    if not path.is_file():
        known = sorted(p.stem for p in presets.glob("*.json"))
        raise UserError(f"unknown DeepSpeed preset {name!r} (known: {', '.join(known)})")
    try:
        cfg = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path}: invalid JSON: {e}") from None
    try:
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        DeepSpeedZeroConfig(**cfg.get("zero_optimization", {}))
    except Exception as e:  # pydantic ValidationError: unknown key, bad stage
        raise UserError(f"{path}: invalid zero_optimization: {str(e).splitlines()[0:3]}") from None
    return cfg


def launch(cfg_json: Path, nproc: int, launcher: str = "torchrun", port: int | None = None,
           preset: str | None = None) -> None:
    """Run training.worker on `nproc` processes; a failed worker is a JobFailed (exit 1)."""
    port = port or free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), LAUNCHED_BY: str(os.getpid())}
    try:
        import torch

        if not torch.cuda.is_available():
            env.setdefault("DS_ACCELERATOR", "cpu")
    except ImportError:
        pass
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_port", str(port), "-m", "training.worker", str(cfg_json)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--use_deepspeed",
               "--deepspeed_config_file", str(PRESETS / f"{preset}.json"), "--main_process_port", str(port),
               "-m", "training.worker", str(cfg_json)]
    r = subprocess.run(cmd, env=env, preexec_fn=die_with_parent)
    if r.returncode != 0:
        raise JobFailed(f"distributed training failed (exit {r.returncode}); rerun the same command to resume "
                        "from the last checkpoint")


def train_distributed(cfg, preset: str, nproc: int, launcher: str = "torchrun",
                      storage: str | None = None) -> dict[str, Path]:
    """Check the input in this process, write the run file, then train on `nproc` processes with a preset
    (launcher ray: on a Ray cluster, checkpoints kept on `storage` too; see training.ray_launch)."""
    import torch

    from pilot_core.atomic import atomic_write_text
    from training.train import preflight

    ds = load_preset(preset)
    if launcher == "ray":
        from training.ray_launch import require_ray, train_on_ray

        require_ray()  # a missing extra or an address where no cluster answers: said before the slower checks
        preflight(cfg)
        return train_on_ray(cfg, ds, nproc, storage)
    preflight(cfg)  # bad input fails here, before any process starts
    run_file = Path(cfg.output_dir) / f"launch-{preset}.json"
    atomic_write_text(run_file, json.dumps({"config": cfg.model_dump(mode="json"), "deepspeed": ds,
                                            "cpu": not torch.cuda.is_available()}))
    launch(run_file, nproc, launcher, preset=preset)
    return {s: Path(cfg.output_dir) / s / "final" for s in cfg.stages}


class _DeepSpeedSection(BaseConfig):
    deepspeed_config_file: str
    zero3_init_flag: bool = False

    @field_validator("deepspeed_config_file")
    @classmethod
    def _preset(cls, v: str) -> str:
        load_preset(Path(v).stem)  # one of our presets, and valid
        return v


class AccelerateConfig(BaseConfig):
    """An `accelerate launch --config_file` config (configs/accelerate/) that points at a DeepSpeed preset."""

    compute_environment: Literal["LOCAL_MACHINE"] = "LOCAL_MACHINE"
    distributed_type: Literal["DEEPSPEED"] = "DEEPSPEED"
    deepspeed_config: _DeepSpeedSection
    machine_rank: int = 0
    num_machines: int = 1
    num_processes: int = 2
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    use_cpu: bool = False
