"""`pilot run`: the stages that exist today, run in order. Prefect flows replace this module in issue #9."""

from __future__ import annotations

from pathlib import Path

import click

from flows.pipeline_config import ModelSource, PipelineConfig
from pilot_core.errors import UserError


def resolve_model(src: ModelSource) -> str:
    """A local directory (tiny models are built once and cached) or the source's path/url as given."""
    if src.tiny is not None:
        from pilot_core.tiny_models import cached_tiny_model

        return str(cached_tiny_model(src.tiny))
    if src.path is not None:
        return src.path
    return src.url  # type: ignore[return-value]


def run_pipeline(cfg: PipelineConfig) -> None:
    if not Path(cfg.prompts).is_file():
        raise UserError(f"prompts: file not found: {cfg.prompts}")
    click.echo(f"pipeline {cfg.name}: preparing models")
    for src in [cfg.pilot, *cfg.bases]:
        click.echo(f"  {src.name}: {resolve_model(src)}")
    click.echo("not built yet: curate (#5), WSD generation (#3), train (#7), validate/release (#8)")
