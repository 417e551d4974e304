"""`pilot validate`: measure one checkpoint with WSD and the methods it is compared with (thin)."""

from __future__ import annotations

import click

from flows.compute_options import compute_from, compute_options

UNSAFE_HELP = ("where bubblewrap cannot be set up, run code benchmarks' programs without a kernel boundary (only in a "
               "disposable container; the report records it). Without it such a run refuses (exit 2)")


def summary_lines(report, out: str) -> list[str]:
    """A few lines for the terminal: the gated figures per base, then where the report is."""
    lines = []
    for base in report.metrics:
        for method in ("wsd", report.reference_method):
            figs = [f"{s}/{metric} {stat.mean:.3f}" for s, cell in sorted(report.cells(base, method).items())
                    for metric, stat in sorted(cell.items()) if stat.mean is not None]
            if figs:
                lines.append(f"  {base:<14} {method:<10} " + ", ".join(figs))
    return lines + [f"report: {out}/report.md (figures: {out}/report.json)"]


@click.command()
@click.option("--config", "config_path", required=True, help="configs/validation/*.yaml")
@click.option("--checkpoint", required=True, type=click.Path(), help="a checkpoint directory (with its manifest)")
@click.option("--output", type=click.Path(), help="report directory (default: <output_dir>/<name>/<checkpoint "
              "folder>); rerunning it resumes")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--unsafe-code-execution", is_flag=True, help=UNSAFE_HELP)
@click.option("--engine", type=click.Choice(["local", "ray"]), help="run the generation jobs here one after another "
              "(local) or as Ray tasks on the cluster at RAY_ADDRESS, else on a Ray started here (ray); default: the "
              "config's engine (local)")
@compute_options
def validate(config_path, checkpoint, output, overrides, unsafe_code_execution, engine, device, dtype,
             attn_implementation, device_map) -> None:
    """Run WSD with every base model of the config, and the compared methods, on the versioned eval sets;
    write report.json, report.md and plots."""
    from pathlib import Path

    from evaluation.config import ValidationConfig
    from evaluation.validate import validate as run
    from pilot_core.config import load_config
    from pilot_core.names import safe_join

    if unsafe_code_execution:
        overrides = (*overrides, "unsafe_code_execution=true")
    if engine:
        overrides = (*overrides, f"engine={engine}")
    cfg = load_config(ValidationConfig, config_path, overrides)
    ckpt = Path(checkpoint)
    out = Path(output) if output else safe_join(Path(cfg.output_dir), cfg.name, ckpt.resolve().parent.name
                                                if ckpt.name == "final" else ckpt.resolve().name,
                                                what="checkpoint folder name")
    report = run(cfg.spec(), ckpt, cfg.bases, out, pilot_name=cfg.name,
                 compute=compute_from(device, dtype, attn_implementation, device_map))
    click.echo("\n".join(summary_lines(report, str(out))))
