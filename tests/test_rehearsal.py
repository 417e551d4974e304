"""The production rehearsal (configs/pipeline/rehearsal.yaml): the production pipeline's shape with a real chat
model as the pilot, end to end on CPU, passing the gate it sets; and the production config itself through the
same checks as far as they run offline."""

import json
from pathlib import Path

import pytest

from .helpers import finish, pilot_run

REHEARSAL = "configs/pipeline/rehearsal.yaml"
PRODUCTION = "configs/pipeline/pilot-3b.yaml"


@pytest.mark.slow
def test_the_rehearsal_runs_end_to_end_and_passes_its_gate(smollm2, tmp_path):
    from transformers import AutoTokenizer

    where = [f"{key}={smollm2}" for key in ("pilot.path", "bases.0.path", "curation.tokenizer.path",
                                             "preferences.generators.0.model.path")]
    p = pilot_run([f"output_dir={tmp_path}", f"release.registry={tmp_path / 'registry'}", *where], None,
                  config=REHEARSAL)
    out, err = finish(p, patience_s=900)
    assert p.returncode == 0, err[-3000:]
    root = tmp_path / "rehearsal"
    gate = json.loads(next(root.glob("validation-*/gate.json")).read_text())
    assert gate["passed"], gate
    report = json.loads(next(root.glob("validation-*/report.json")).read_text())
    assert set(report["bases"]) == {"smollm2-plain", "tiny-llama3"}
    merged = next(root.glob("train-*/dpo/merged"))  # LoRA SFT, merged, then a DPO adapter, merged
    assert (merged / "model.safetensors").is_file() and next(root.glob("train-*/sft/merged/model.safetensors"))
    assert AutoTokenizer.from_pretrained(merged).chat_template == AutoTokenizer.from_pretrained(smollm2).chat_template
    assert (tmp_path / "registry" / "smollm2-rehearsal" / "v1").is_dir()
    shipped = json.loads((tmp_path / "registry" / "smollm2-rehearsal" / "v1" / "wsd.json").read_text())["bases"]
    for base, s in shipped.items():  # both rules measured with the real chat model as the pilot
        assert {p["rule"] for p in s["sweep"]} == {"absolute", "relative"}, base
        assert (s["rule"], s["threshold"]) == (report["switch_settings"][base]["rule"], 0.6)


def test_the_production_config_passes_the_offline_checks():
    """pilot-3b.yaml: the schema, the compute section on this machine, and TRL's own argument checks of its
    training stages (its Llama 3.2 template is matched in test_training; its hub models cannot be read here)."""
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config
    from training.config import TrainConfig
    from training.train import _trl_args

    for path in (PRODUCTION, REHEARSAL):
        cfg = load_config(PipelineConfig, path)
        cfg.compute.resolve()
        train = TrainConfig(**cfg.training.model_dump(), name=cfg.name, model=cfg.pilot, dataset="d",
                            output_dir="o", compute=cfg.compute)
        assert train.lora is not None or train.distributed == "zero3"
        for stage in train.stages:
            args = _trl_args(train, stage, Path("/nonexistent"), None)
            assert args.per_device_train_batch_size == (train.sft if stage == "sft" else train.dpo)[
                "per_device_train_batch_size"]
