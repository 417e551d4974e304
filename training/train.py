"""One training stage (SFT or DPO) with TRL, resumable, ending in a complete checkpoint directory.

<run>/<stage>/ holds TRL's checkpoint-N directories while training and `final/` when done: the model in
safetensors, the tokenizer with its chat template, a generation config whose EOS matches the tokenizer, and
`manifest.json` (dataset fingerprint, config, seed, versions, metrics) written last, after a complete save.
"""

from __future__ import annotations

import json
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, config_hash, write_manifest
from pilot_core.tracking import identity
from training.chat_template import TrainingTemplate, training_template
from training.config import StagesConfig, TrainConfig
from training.data import check_chat_tokenizer, load_split

RUN_FILE = "run.json"  # identifies the run a stage directory belongs to


def _trl_args(cfg: TrainConfig, stage: str, out: Path, deepspeed: dict | None):
    from trl import DPOConfig, SFTConfig

    cls = SFTConfig if stage == "sft" else DPOConfig
    ours = {"output_dir": str(out), "seed": cfg.seed, "data_seed": cfg.seed, "report_to": cfg.report_to,
            "use_cpu": cfg.compute.resolve().device == "cpu", "save_strategy": "steps", "save_only_model": False,
            "activation_checkpointing": False,
            "deepspeed": deepspeed, "logging_steps": 1}
    if ours["use_cpu"]:
        ours["bf16"] = False  # use_cpu alone keeps bf16 autocast on: slower for small models, and not the recipe
    if stage == "sft":
        ours["assistant_only_loss"] = True
    user = cfg.sft if stage == "sft" else cfg.dpo
    try:
        return cls(**{**ours, **user})
    except TypeError as e:
        raise UserError(f"{stage}: {e} (see trl.{cls.__name__})") from None
    except ValueError as e:
        raise UserError(f"{stage}: {str(e).splitlines()[0]}") from None


def check_claim(out: Path, identity: dict) -> None:
    """A stage directory belongs to one run: another run's directory is refused, never overwritten."""
    marker = out / RUN_FILE
    if marker.exists():
        if json.loads(marker.read_text()) != identity:
            raise UserError(f"{out} holds another run (different config or dataset); choose another output_dir")
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not a Pilot training run; choose another output_dir")


def _claim(out: Path, identity: dict) -> None:
    check_claim(out, identity)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / RUN_FILE).exists():
        (out / RUN_FILE).write_text(json.dumps(identity, sort_keys=True))


def preflight(cfg: TrainConfig) -> None:
    """The checks that need no weights, for every stage: before a multi-process launch, so bad input is one
    clear error (exit 2) rather than a failed worker."""
    _, template = pilot_template(cfg, cfg.model.local_path(), cfg.model.trust_remote_code, cfg.model.revision)
    for stage in cfg.stages:
        _, data_fp = load_split(cfg.dataset, stage)
        check_claim(Path(cfg.output_dir) / stage, _identity(cfg, stage, data_fp, template))


def pilot_template(cfg: StagesConfig, model: str, trust_remote_code: bool = False,
                   revision: str | None = None) -> tuple[object, TrainingTemplate]:
    """`model`'s tokenizer and the template it trains with under `cfg`, checked (no weights are read)."""
    from pilot_core.models.loading import load_tokenizer

    tok = load_tokenizer(model, "model", trust_remote_code, revision)
    template = training_template(tok, cfg.chat_template, model)
    check_chat_tokenizer(tok, template.text, model)
    return tok, template


def _identity(cfg: TrainConfig, stage: str, data_fp: str, template: TrainingTemplate) -> dict:
    # where the run reports to does not change what it trains: switching MLflow on continues the same run
    return {"config": config_hash(identity(cfg)), "stage": stage,
            "dataset": data_fp, "chat_template": template.digest()}


def last_checkpoint(out: Path) -> str | None:
    """The newest complete checkpoint. TRL writes a checkpoint's files in place, trainer_state.json last, so one
    that a kill interrupted lacks a readable trainer_state.json for its step: it is skipped (and removed by
    `drop_incomplete`)."""
    done = [c for c in _checkpoints(out) if _complete(c)]
    return str(done[-1]) if done else None


def drop_incomplete(out: Path) -> list[Path]:
    import shutil

    bad = [c for c in _checkpoints(out) if not _complete(c)]
    for c in bad:
        shutil.rmtree(c)
    return bad


def _checkpoints(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def _complete(c: Path) -> bool:
    try:
        state = json.loads((c / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    return state.get("global_step") == int(c.name.split("-")[-1])


def train_stage(cfg: TrainConfig, stage: str, start: str, deepspeed: dict | None = None,
                callbacks: list | None = None) -> Path:
    """Train `stage` from the model at `start` (`callbacks`: transformers TrainerCallbacks added to the trainer's);
    returns <output_dir>/<stage>/final."""
    from transformers import set_seed

    from pilot_core.models.loading import check_head, load_config, load_weights

    out = Path(cfg.output_dir) / stage
    final = out / "final"
    trust = cfg.model.trust_remote_code
    rev = cfg.model.revision if start == cfg.model.local_path() else None  # later stages start from our output
    tok, template = pilot_template(cfg, start, trust, rev)
    data, data_fp = load_split(cfg.dataset, stage)
    identity = _identity(cfg, stage, data_fp, template)
    check_claim(out, identity)
    if (final / "manifest.json").is_file():
        return final  # this stage finished in an earlier run of the same config
    check_head(load_config(start, "model", trust, revision=rev), start, "model", "causal_lm", trust)
    own_template = tok.chat_template
    tok.chat_template = template.text  # TRL renders and masks with it; the checkpoint ships the model's own
    args = _trl_args(cfg, stage, out, deepspeed)
    if args.process_index == 0:
        _claim(out, identity)
    set_seed(cfg.seed)
    # the model object is loaded before the trainer (ZeRO-3 with several processes needs deepspeed.comm first),
    # as compute says (auto: bf16 on a GPU, fp32 on CPU) and left where it is: the trainer places it
    model = load_weights(start, "model", "causal_lm", cfg.compute, trust, place=False, revision=rev)
    peft = None
    if cfg.lora:
        from peft import LoraConfig

        peft = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")
    if stage == "sft":
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft,
                             callbacks=callbacks)
    else:
        from trl import DPOTrainer

        trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=data, processing_class=tok,
                             peft_config=peft, callbacks=callbacks)
    if args.process_index == 0:
        drop_incomplete(out)  # a checkpoint a kill cut short would make the trainer fail to resume
    trainer.accelerator.wait_for_everyone()
    resume = last_checkpoint(out) if cfg.resume else None
    with _tracked(cfg, stage, out, identity, args.process_index == 0):
        result = trainer.train(resume_from_checkpoint=resume)  # the trainer's MLflow callback logs into the run
        tok.chat_template = own_template
        _save(trainer, tok, final, cfg, stage, start, identity, result, resume)
        if cfg.report_to == "mlflow" and args.process_index == 0:
            from pilot_core.tracking import mlflow

            mlflow().log_artifact(str(final / "manifest.json"), "checkpoint")
    return final


def _tracked(cfg: TrainConfig, stage: str, out: Path, identity: dict, rank0: bool):
    """With report_to mlflow, the stage's MLflow run (rank 0 only): named for the stage, tagged with the config
    and dataset it trains on, and continued when the stage resumes."""
    import contextlib

    if cfg.report_to != "mlflow" or not rank0:
        return contextlib.nullcontext()
    from pilot_core.tracking import run

    return run(out, cfg.name, f"{cfg.name}-{stage}", {"pilot.stage": stage, "pilot.config_hash": identity["config"],
                                                       "pilot.dataset": identity["dataset"]})


def _save(trainer, tok, final: Path, cfg, stage, start, identity, result, resume) -> None:
    """Save to final/.tmp then rename; the manifest is the last file written."""
    import shutil

    tmp = final.with_name(".tmp-final")
    if trainer.args.process_index == 0 and tmp.exists():
        shutil.rmtree(tmp)  # left by a run killed while saving
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # under ZeRO-3 this gathers the 16-bit weights (see the presets)
    if trainer.args.process_index == 0:
        _finish(trainer, tok, tmp, final, cfg, stage, start, identity, result, resume)
    trainer.accelerator.wait_for_everyone()  # no rank starts the next stage before final/ exists


def _finish(trainer, tok, tmp: Path, final: Path, cfg, stage, start, identity, result, resume) -> None:
    import shutil

    from pilot_core.models.compute import placement_of

    tok.save_pretrained(tmp)
    (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle; the manifest holds the config
    gen = tmp / "generation_config.json"
    if gen.exists():  # the pilot stops where its tokenizer's turn ends
        g = json.loads(gen.read_text())
        eos = g.get("eos_token_id")
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        if tok.eos_token_id not in eos:
            g["eos_token_id"] = [tok.eos_token_id, *eos]
        g["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        gen.write_text(json.dumps(g, indent=2))
    logs = trainer.state.log_history
    losses = [x["loss"] for x in logs if "loss" in x]
    write_manifest(tmp, Manifest(
        kind="checkpoint", config_hash=identity["config"], config=cfg.model_dump(mode="json"),
        inputs={"dataset": identity["dataset"], "start": str(start)},
        data={"stage": stage, "seed": cfg.seed, "lora": cfg.lora is not None, "steps": trainer.state.global_step,
              "train_loss": result.training_loss, "first_loss": losses[0] if losses else None,
              "last_loss": losses[-1] if losses else None, "resumed_from": resume,
              "training_chat_template": identity["chat_template"], "placement": placement_of(trainer.model),
              "metrics": result.metrics, "log_history": logs}))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def train(cfg: TrainConfig, deepspeed: dict | None = None, callbacks: list | None = None) -> dict[str, Path]:
    """Run the configured stages in order; DPO starts from the SFT output when both run. `callbacks`: added to each
    stage's trainer (Ray Train's worker reports checkpoints so)."""
    start = cfg.model.local_path()
    outs = {}
    for stage in cfg.stages:
        outs[stage] = train_stage(cfg, stage, start, deepspeed, callbacks)
        start = str(outs[stage])
        if cfg.lora and stage != cfg.stages[-1]:  # the next stage trains a fresh adapter on the merged model
            from training.merge import merged

            if _rank() == 0:
                merged(outs[stage])
            _barrier()
            start = str(outs[stage].with_name("merged"))
    return outs
