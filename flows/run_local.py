"""`pilot run`: the stages that exist today, in order. Prefect flows replace this module in issue #9.

Today: GenerAlign curation, preferences and training (when the config has those sections), then WSD with the
(trained) pilot against every base over the configured prompts (local models or vLLM servers), then validation
of the trained checkpoint and the release gate (when configured).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import click

from flows.pipeline_config import PipelineConfig
from pilot_core.names import safe_join

NOT_BUILT = "not built yet: Prefect flows (#9)"


def new_run_dir(cfg: PipelineConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = safe_join(Path(cfg.output_dir), cfg.name, stamp, what="run name")
    run.mkdir(parents=True, exist_ok=False)
    return run


def _train(cfg: PipelineConfig, dataset: str, run: Path):
    """Train the pilot on the preference data; returns the trained pilot as a model source."""
    from pilot_core.model_source import ModelSource
    from training.config import TrainConfig
    from training.train import train

    if cfg.training.distributed:
        raise click.UsageError("the local pipeline trains in one process; run `pilot train --distributed` for "
                               "a DeepSpeed preset")
    tc = TrainConfig(**cfg.training.model_dump(), name=cfg.pilot.name, model=cfg.pilot, dataset=dataset,
                     output_dir=str(run / "train"))
    outs = train(tc)
    final = outs[tc.stages[-1]]
    if tc.lora:  # WSD needs full weights
        from training.merge import merge_adapter

        final = merge_adapter(final, final.with_name("merged"))
    losses = {s: json.loads((p / "manifest.json").read_text())["data"] for s, p in outs.items()}
    click.echo("  train " + ", ".join(f"{s}: loss {d['first_loss']:.3f} -> {d['last_loss']:.3f} in {d['steps']} "
                                      f"steps" for s, d in losses.items()) + f" -> {final}")
    return ModelSource(name=f"{cfg.pilot.name}-trained", path=str(final))


def _validate_and_release(cfg: PipelineConfig, checkpoint: str, run: Path) -> None:
    from evaluation.validate import validate
    from flows.validate_cli import summary_lines

    out = run / "validation"
    report = validate(cfg.validation, checkpoint, cfg.bases, out, pilot_name=f"{cfg.pilot.name}-trained")
    click.echo("  validate:\n  " + "\n  ".join(summary_lines(report, str(out))))
    if cfg.release is not None:
        from release.publish import publish

        r = publish(checkpoint, out, cfg.release)  # a failed gate raises JobFailed with its reasons
        if r["already"]:
            click.echo(f"  release: this checkpoint is already published as {cfg.release.name} {r['version']} -> "
                       f"{r['path']}")
            return
        click.echo(f"  release: gate passed ({len(r['verdict']['passing_bases'])} of "
                   f"{len(cfg.bases)} bases), published {cfg.release.name} {r['version']} -> {r['path']}")


def run_pipeline(cfg: PipelineConfig) -> Path:
    from pilot_core.atomic import atomic_write_text
    from pilot_core.config import dump_config
    from wsd_inference.prompts import load_prompts
    from wsd_inference.runner import generate_to_file

    prompts = load_prompts(cfg.prompts)
    run = new_run_dir(cfg)
    pilot = cfg.pilot
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    click.echo(f"pipeline {cfg.name}: run directory {run}")
    if cfg.curation is not None:
        from data_curation.run import curate

        cur = cfg.curation
        if cur.tokenizer is None and not cfg.pilot.url:  # prompt length under the pilot's own chat template
            cur = cur.model_copy(update={"tokenizer": cfg.pilot})
        s = curate(cur, output=str(run / cur.name))
        click.echo(f"  curate {cur.name}: kept {s['kept']} of {s['read']} prompts, excluded "
                   + ", ".join(f"{n} at {stage}" for stage, n in
                               ((st, sum(r.values())) for st, r in s["excluded"].items())) + f" -> {s['output']}")
        if cfg.preferences is not None:
            from data_curation.preferences import build_preferences

            p = build_preferences(s["output"], cfg.preferences, run / f"{cur.name}-preferences")
            click.echo(f"  preferences: {p['sft']} sft rows, {p['dpo']} dpo pairs from {p['prompts']} prompts, "
                       f"{p['response_failures']} failed responses -> {p['output']}")
            if cfg.training is not None:
                pilot = _train(cfg, p["output"], run)
    for src in cfg.bases:
        s = generate_to_file(pilot, src, prompts, cfg.wsd, run / f"wsd-{src.name}.jsonl")
        click.echo(f"  wsd {pilot.name} -> {src.name}: {s['new']} prompts, {s['switched']} switched to the base, "
                   f"mean kept draft {s['mean_kept_draft_tokens']:.1f} tokens, mean base continuation "
                   f"{s['mean_base_tokens']:.1f} tokens -> {s['output']}")
    if cfg.validation is not None:
        _validate_and_release(cfg, pilot.path, run)
    click.echo(f"  {NOT_BUILT}")
    return run
