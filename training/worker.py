"""One process of a distributed run (started by training.launch): python -m training.worker RUN.json."""

from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    from pilot_core.processes import die_with_launcher

    die_with_launcher()  # torchrun starts workers in their own session: a killed torchrun must not leave them
    import deepspeed

    from training.config import TrainConfig
    from training.train import train

    run = json.loads(open(path).read())
    cfg = TrainConfig.model_validate(run["config"])
    # deepspeed.comm before any model is loaded: ZeRO-3 partitions the model inside from_pretrained
    deepspeed.init_distributed(dist_backend="gloo" if run["cpu"] else "nccl")
    train(cfg, deepspeed=run["deepspeed"])


if __name__ == "__main__":
    main(sys.argv[1])
