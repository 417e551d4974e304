"""`pilot curate`: a configs/curation recipe, or quick mode with no config (--source FILE ... --output DIR)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from pilot_core.errors import UserError

KINDS = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv"}


def quick_config(sources: tuple[str, ...], eval_sets: tuple[str, ...], language: str | None, tokenizer: str | None):
    """The default recipe for ad-hoc use: each file a source (rows with `prompt` or `messages`), default filters."""
    from data_curation.config import Columns, CurationConfig, LanguageFilter, SourceConfig
    from pilot_core.models.source import ModelSource

    srcs, names = [], set()
    for path in sources:
        p = Path(path)
        if not p.exists():
            raise UserError(f"--source {path}: not found")
        kind = "hf" if p.is_dir() else KINDS.get(p.suffix.lower())
        if kind is None:
            raise UserError(f"--source {path}: unknown file type {p.suffix!r} (use .jsonl, .parquet, .csv or a "
                            "datasets directory)")
        name = re.sub(r"[^A-Za-z0-9._-]", "-", p.stem).strip("-.") or "source"
        while name in names:
            name += "-2"
        names.add(name)
        srcs.append(SourceConfig(name=name, kind=kind, path=path, columns=Columns(messages="messages")))
    cfg = {"sources": srcs, "decontamination": {"reference_sets": list(eval_sets)}}
    if language:
        cfg["filters"] = {"language": LanguageFilter(keep=[c.strip() for c in language.split(",")])}
    if tokenizer:
        cfg["tokenizer"] = ModelSource(name="tokenizer", path=tokenizer)
    return CurationConfig.model_validate(cfg)


@click.command()
@click.option("--config", "config_path", help="configs/curation/*.yaml (omit for quick mode)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key (repeatable)")
@click.option("--source", "sources", multiple=True, help="quick mode: an input file (repeatable)")
@click.option("--eval-set", "eval_sets", multiple=True, help="quick mode: prompts that must not leak (repeatable)")
@click.option("--language", help="quick mode: languages to keep, e.g. en or en,de (default en)")
@click.option("--tokenizer", help="quick mode: the pilot's tokenizer, to measure length in tokens (default: words)")
@click.option("--output", help="the dataset directory (default for a config: output_dir/name/vN)")
@click.option("--previous", multiple=True, help="earlier versions to dedup against (default for a config: auto)")
@click.option("--replay", help="a finished run whose stored scores are re-decided with this config's thresholds")
@click.option("--overwrite", is_flag=True, help="replace --output if it exists")
@click.option("--num-proc", type=int, help="worker processes for the per-row stages")
@click.option("--quiet", is_flag=True, help="no progress bars")
def curate(config_path, overrides, sources, eval_sets, language, tokenizer, output, previous, replay, overwrite,
           num_proc, quiet) -> None:
    """Curate prompts into a GenerAlign dataset directory: prompts.parquet, excluded.parquet (stage, reason,
    score of every dropped row), dataset/ (datasets), manifest.json, README.md (data card)."""
    from pilot_core.config import load_config

    if config_path and (sources or eval_sets or language or tokenizer):
        raise UserError("--source/--eval-set/--language/--tokenizer are quick mode; with --config, set sources "
                        "and filters in the config (or --set)")
    if config_path:
        from data_curation.config import CurationConfig

        cfg = load_config(CurationConfig, config_path, overrides)
    elif sources:
        if not output:
            raise UserError("quick mode needs --output DIR")
        if overrides:
            raise UserError("--set needs --config")
        cfg = quick_config(sources, eval_sets, language, tokenizer)
    else:
        raise UserError("give --config FILE, or --source FILE ... --output DIR (quick mode)")
    if num_proc:
        cfg = cfg.model_copy(update={"num_proc": num_proc})
    from data_curation.run import curate as run_curation

    summary = run_curation(cfg, output=output, previous=list(previous) or None, replay=replay,
                           overwrite=overwrite, progress=not quiet)
    done = " (already complete: same config and inputs; nothing to do)" if summary.already_done else ""
    click.echo(f"{summary.output}: kept {summary.kept} of {summary.read} rows{done}")
    for stage, reasons in summary.excluded.items():
        click.echo(f"  excluded at {stage}: " + ", ".join(f"{r} {n}" for r, n in
                                                           sorted(reasons.items(), key=lambda kv: -kv[1])))
