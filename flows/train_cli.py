"""`pilot train`: SFT then DPO from a recipe (configs/training/*.yaml), one process or a DeepSpeed preset."""

from __future__ import annotations

import click


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", help="configs/training/*.yaml")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--distributed", help="a DeepSpeed preset from configs/deepspeed/ (zero2, zero3, zero3_offload)")
@click.option("--nproc", type=int, help="processes (with --distributed; default: the config's nproc)")
@click.option("--launcher", type=click.Choice(["torchrun", "accelerate", "ray"]), default="torchrun",
              show_default=True, help="ray: Ray Train workers on the cluster RAY_ADDRESS names (unset: a Ray started "
              "here); needs the ray extra")
@click.option("--storage", help="with --launcher ray: where checkpoints are kept, a path or fsspec URL every worker "
              "reaches (default: OUTPUT_DIR/ray)")
@click.pass_context
def train(ctx, config_path, overrides, distributed, nproc, launcher, storage) -> None:
    """Train a pilot (SFT, then DPO from the SFT output); rerunning resumes from the last checkpoint.
    Subcommand: merge (a LoRA adapter into its base)."""
    if ctx.invoked_subcommand is not None:
        return
    if not config_path:
        raise click.UsageError("Missing option '--config'.")
    from pilot_core.config import load_config
    from pilot_core.errors import UserError
    from training.config import TrainConfig

    if storage and launcher != "ray":
        raise UserError("--storage is for --launcher ray (torchrun and accelerate keep checkpoints in output_dir)")
    cfg = load_config(TrainConfig, config_path, overrides)
    preset = distributed or cfg.distributed
    if preset is None and launcher == "ray":
        raise UserError("--launcher ray needs a DeepSpeed preset: --distributed zero2|zero3|zero3_offload, or "
                        "distributed: in the config")
    if preset is None:
        from training.train import train as run

        outs = run(cfg)
    else:
        from training.launch import train_distributed

        outs = train_distributed(cfg, preset, nproc or cfg.nproc, launcher, storage)
    for stage, path in outs.items():
        click.echo(f"{stage}: {path}")


@train.command("merge")
@click.option("--adapter", required=True, help="a LoRA checkpoint directory (e.g. RUN/dpo/final)")
@click.option("--out", required=True, help="the merged model directory (must not exist)")
@click.option("--base", help="the base model (default: the one the adapter names)")
def merge(adapter: str, out: str, base: str | None) -> None:
    """Merge a LoRA adapter into its base and export safetensors + tokenizer."""
    from training.merge import merge_adapter

    click.echo(str(merge_adapter(adapter, out, base)))
