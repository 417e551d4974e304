"""One process of a distributed run: python -m training.worker RUN.json (started by torchrun or accelerate through
training.launch), or train_run(RUN) in a Ray Train worker (training.ray_worker)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def train_run(run: dict, callbacks: list | None = None) -> dict[str, Path]:
    """This process's part of the run: deepspeed.comm first, then the stages. deepspeed.comm goes before any model
    is loaded (ZeRO-3 partitions the model inside from_pretrained). Under Ray Train the torch process group exists
    already (TorchTrainer makes it from the MASTER_ADDR/RANK/WORLD_SIZE it sets); init_distributed then wraps that
    group instead of making another (deepspeed/comm/comm.py: torch.distributed.is_initialized())."""
    import deepspeed

    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig.model_validate(run["config"])
    deepspeed.init_distributed(dist_backend="gloo" if run["cpu"] else "nccl")
    return train(cfg, deepspeed=run["deepspeed"], callbacks=callbacks)


def main(path: str) -> None:
    from pilot_core.processes import die_with_launcher

    die_with_launcher()  # torchrun starts workers in their own session: a killed torchrun must not leave them
    train_run(json.loads(open(path).read()))


if __name__ == "__main__":
    main(sys.argv[1])
