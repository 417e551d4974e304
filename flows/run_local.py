"""`pilot run`: the stages that exist today, in order. Prefect flows replace this module in issue #9.

Today: prepare the models, then run WSD with the pilot against every base over the configured prompts.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import click

from flows.pipeline_config import ModelSource, PipelineConfig
from pilot_core.errors import UserError
from pilot_core.names import safe_join

NOT_BUILT = "not built yet: curate (#5), preferences (#6), train (#7), validate + release (#8), Prefect flows (#9)"


def resolve_model(src: ModelSource) -> str:
    """A local directory (tiny models are built once and cached) or the source's path as given."""
    if src.tiny is not None:
        from pilot_core.tiny_models import cached_tiny_model

        return str(cached_tiny_model(src.tiny))
    if src.url is not None:
        raise UserError(f"model {src.name}: OpenAI-compatible servers are not supported yet (issue #3)")
    return src.path  # type: ignore[return-value]


def new_run_dir(cfg: PipelineConfig) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run = safe_join(Path(cfg.output_dir), cfg.name, stamp, what="run name")
    run.mkdir(parents=True, exist_ok=False)
    return run


def run_pipeline(cfg: PipelineConfig) -> Path:
    from pilot_core.atomic import atomic_write_text
    from pilot_core.config import dump_config
    from wsd_inference.engine import wsd_generate
    from wsd_inference.hf_backend import load_hf_model
    from wsd_inference.prompts import load_prompts
    from wsd_inference.records import ResumableJsonl

    prompts = load_prompts(cfg.prompts)
    run = new_run_dir(cfg)
    atomic_write_text(run / "config.yaml", dump_config(cfg))
    click.echo(f"pipeline {cfg.name}: run directory {run}")
    click.echo(f"  models: preparing {1 + len(cfg.bases)} (tiny models are built once, then cached)")
    pilot = load_hf_model(resolve_model(cfg.pilot), f"pilot {cfg.pilot.name}",
                          trust_remote_code=cfg.pilot.trust_remote_code, need_chat_template=True)
    for src in cfg.bases:
        base = load_hf_model(resolve_model(src), f"base {src.name}", trust_remote_code=src.trust_remote_code)
        out_path = run / f"wsd-{src.name}.jsonl"
        settings = {"method": "wsd", "pilot": cfg.pilot.name, "base": src.name, "config": cfg.wsd.model_dump()}
        with ResumableJsonl(out_path, settings) as out:
            records = list(wsd_generate(pilot, base, prompts, cfg.wsd))
            out.write(records)
            out.finish()
        sw = sum(r["switched"] for r in records)
        kept = sum(r["kept_draft_tokens"] for r in records) / len(records)
        cont = sum(r["base_tokens"] for r in records) / len(records)
        click.echo(f"  wsd {cfg.pilot.name} -> {src.name}: {len(records)} prompts, {sw} switched to the base, "
                   f"mean kept draft {kept:.1f} tokens, mean base continuation {cont:.1f} tokens -> {out_path}")
    click.echo(f"  {NOT_BUILT}")
    return run
