"""Our training wrapper against a bare TRL script: SFT tokens/s on the same tiny model and data (target >= 0.97).

Both train the briefly pretrained tiny pilot for the same steps with the same TRL arguments (assistant-only loss,
no checkpoint until the end); tokens/s is TRL's own `num_tokens` over `train_runtime`. Runs alternate, medians
are reported. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/train_speed.py [--steps 60] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from pilot_core.models.tiny import PILOT_SPEC, cached_tiny_model  # noqa: E402

WORDS = "the a model answer question water light city garden music river paper".split()


def dataset_dir(root: Path, n: int = 512) -> Path:
    """A dataset directory with an `sft` split of synthetic conversations (what `pilot preferences` writes)."""
    import datasets
    import pyarrow as pa

    from pilot_core.manifest import Manifest, write_manifest

    rng = random.Random(0)
    conv = [[{"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(5, 20)))},
             {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))}] for _ in range(n)]
    d = root / "data"
    datasets.DatasetDict({"sft": datasets.Dataset(pa.table({"messages": conv}))}).save_to_disk(str(d / "dataset"))
    write_manifest(d, Manifest(kind="dataset"))
    return d


ARGS = {"max_steps": 60, "per_device_train_batch_size": 8, "max_length": 256, "learning_rate": 1e-3,
        "save_steps": 10_000, "logging_steps": 10}


def tokens_per_s(log_history, metrics) -> float:
    tokens = max(x.get("num_tokens", 0) for x in log_history)
    return tokens / metrics["train_runtime"]


def ours(data: Path, out: Path, steps: int) -> float:
    import json

    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig(model={"name": "pilot", "tiny": PILOT_SPEC}, dataset=str(data), output_dir=str(out),
                      stages=["sft"], sft={**ARGS, "max_steps": steps})
    final = train(cfg)["sft"]
    m = json.loads((final / "manifest.json").read_text())["data"]
    return tokens_per_s(m["log_history"], m["metrics"])


def bare(data: Path, out: Path, steps: int) -> float:
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    path = str(cached_tiny_model(PILOT_SPEC))
    ds = datasets.load_from_disk(str(data / "dataset"))["sft"]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    args = SFTConfig(output_dir=str(out), use_cpu=True, bf16=False, assistant_only_loss=True, report_to="none",
                     activation_checkpointing=False, seed=0, data_seed=0, **{**ARGS, "max_steps": steps})
    t = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=AutoTokenizer.from_pretrained(path))
    r = t.train()
    t.save_model(str(out / "final"))
    return tokens_per_s(t.state.log_history, r.metrics)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        data = dataset_dir(root)
        bare(data, root / "warm", 5)  # imports, tokenizer and first-step costs outside the timing
        got = {"ours": [], "bare": []}
        for i in range(a.reps):
            got["ours"].append(ours(data, root / f"ours-{i}", a.steps))
            got["bare"].append(bare(data, root / f"bare-{i}", a.steps))
    o, b = statistics.median(got["ours"]), statistics.median(got["bare"])
    print("| steps | bare TRL tokens/s | pilot train tokens/s | ratio |")
    print("|---:|---:|---:|---:|")
    print(f"| {a.steps} | {b:,.0f} | {o:,.0f} | {o / b:.3f} |")


if __name__ == "__main__":
    main()
