"""`pilot preferences`: candidate responses, judgments and SFT/DPO splits for a curated dataset."""

from __future__ import annotations

import click

from flows.compute_options import compute_from, compute_options


@click.command()
@click.option("--dataset", required=True, help="a curated dataset directory (pilot curate)")
@click.option("--config", "config_path", required=True, help="configs/preferences/*.yaml")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--output", required=True, help="the new dataset directory (prompts, excluded, sft, dpo)")
@click.option("--overwrite", is_flag=True, help="replace --output if it exists")
@click.option("--quiet", is_flag=True, help="no progress bars")
@click.option("--engine", type=click.Choice(["local", "ray"]), default=None,
              help="where the calls are sent from (default: the config's `engine`, local): ray runs them as a Ray "
                   "Data pipeline on the cluster RAY_ADDRESS names, else on a local Ray")
@compute_options
def preferences(dataset: str, config_path: str, overrides: tuple[str, ...], output: str, overwrite: bool,
                quiet: bool, engine: str | None, device: str, dtype: str, attn_implementation: str | None,
                device_map: str | None) -> None:
    """Generate candidate responses, judge them, and build SFT targets and DPO pairs. Calls are cached
    (<output>.cache.sqlite by default): rerunning after a crash or failures pays only for what is missing."""
    from data_curation.preferences import build_preferences
    from data_curation.preferences_config import PreferencesConfig
    from pilot_core.config import load_config

    cfg = load_config(PreferencesConfig, config_path, (*overrides, *([f"engine={engine}"] if engine else [])))
    s = build_preferences(dataset, cfg, output, overwrite, progress=not quiet,
                          compute=compute_from(device, dtype, attn_implementation, device_map))
    click.echo(f"{s.output}: {s.sft} sft rows, {s.dpo} dpo pairs from {s.prompts} prompts; "
               f"{s.response_failures} failed responses; judgments {s.judgments}")
    for who, u in sorted(s.usage.items()):
        click.echo(f"  {who}: {u['requests']} requests, {u['cache_hits']} cached, {u['failures']} failed, "
                   f"{u['prompt_tokens']}+{u['completion_tokens']} tokens, ${u['cost_usd']}")
