"""The `pilot` command. Start-up stays fast: heavy libraries (torch, transformers, prefect) are imported inside
the commands that need them, never at module level.

Exit codes: 0 success; 1 the job ran and failed; 2 bad input or config (one line on stderr, no traceback).
"""

from __future__ import annotations

import sys

import click

from flows.curate_cli import curate
from flows.fetch_cli import fetch
from flows.preferences_cli import preferences
from flows.release_cli import release
from flows.review_cli import review
from flows.run_cli import approval, run, serve
from flows.score_cli import score
from flows.train_cli import train
from flows.validate_cli import validate
from flows.wsd_cli import wsd
from pilot_core.errors import JobFailed, UserError

CONFIG_HELP = "YAML config file"
SET_HELP = "override a config key, e.g. --set wsd.threshold=0.7 (repeatable)"


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="pilot-wsd", prog_name="pilot")
def cli() -> None:
    """Pilot: curate GenerAlign, train pilot models, validate them with Weak-to-Strong Decoding, release them."""


# ------------------------------------------------------------------------------------------------ config
@cli.group()
def config() -> None:
    """Check and show configs."""


@config.command("check")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("--schema-only", is_flag=True, help="only validate against the schema (do not resolve files, hub "
              "items, keys and integrations)")
def config_check(paths: tuple[str, ...], schema_only: bool) -> None:
    """Validate YAML configs against the schema of their configs/<kind>/ directory, then resolve what each names:
    local files, hub models and datasets (listed to fetch, offline), API key variables, integrations, TRL's
    arguments. Problems: one line each naming the file and key, exit 2."""
    from flows.config_check import Finding, resolve
    from flows.schemas import check_config
    from pilot_core.lock import apply_lock

    problems = 0
    for p in paths:
        cfg = check_config(p, lock=False)
        try:
            locked, stale = apply_lock(cfg, p), []
        except UserError as e:  # the lock beside it no longer matches: said as one problem, the rest still checked
            locked, stale = [], [Finding("lock", str(e), True)]
        found = [] if schema_only else stale + resolve(cfg, locked, p)
        for f in found:
            click.echo(f"{'problem' if f.problem else 'note   '}  {p}: {f.key}: {f.text}", err=f.problem)
        bad = sum(f.problem for f in found)
        problems += bad
        if not bad:
            click.echo(f"ok  {p}" + (f" ({len(found)} notes: to fetch or set before a run)" if found else ""))
    if problems:
        raise UserError(f"{problems} problem(s) in the configs above")


@config.command("show")
@click.option("--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def config_show(config_path: str, overrides: tuple[str, ...]) -> None:
    """Print a config with defaults filled in and overrides applied."""
    from flows.schemas import check_config
    from pilot_core.config import dump_config

    click.echo(dump_config(check_config(config_path, overrides)), nl=False)


# ------------------------------------------------------------------------------------------------ models
@cli.group()
def models() -> None:
    """Build tiny local models (tests, benchmarks, demo); import GGUF files."""


@models.command("tiny")
@click.option("--spec", "spec_path", required=True, help="configs/models/*.yaml (a TinyModelSpec)")
@click.option("--out", required=True, type=click.Path(), help="output directory (must not exist)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
def models_tiny(spec_path: str, out: str, overrides: tuple[str, ...]) -> None:
    """Build a tiny causal LM with a locally trained tokenizer and save it with save_pretrained."""
    from pathlib import Path

    from pilot_core.config import load_config
    from pilot_core.models.tiny import TinyModelSpec, build_tiny_model

    spec = load_config(TinyModelSpec, spec_path, overrides)
    if Path(out).exists():
        raise UserError(f"--out {out}: already exists; choose a new directory")
    click.echo(str(build_tiny_model(spec, out)))


@models.command("import")
@click.argument("gguf_file", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="output directory (must not exist)")
@click.option("--dtype", default="bfloat16", show_default=True, help="bfloat16, float16 or float32")
def models_import(gguf_file: str, out: str, dtype: str) -> None:
    """Import a GGUF model file once into a transformers directory (safetensors, tokenizer, chat template), usable
    as a `path:` model everywhere. Quantized weights are dequantized to --dtype."""
    from pilot_core.models.gguf import import_gguf

    click.echo(str(import_gguf(gguf_file, out, dtype)))


cli.add_command(run)
cli.add_command(serve)
cli.add_command(approval)
cli.add_command(wsd)
cli.add_command(curate)
cli.add_command(review)
cli.add_command(preferences)
cli.add_command(train)
cli.add_command(validate)
cli.add_command(release)
cli.add_command(score)
cli.add_command(fetch)


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="pilot", standalone_mode=False)
    except (UserError, JobFailed) as e:
        click.echo(f"pilot: error: {e}" if isinstance(e, UserError) else f"pilot: {e}", err=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.Abort:
        click.echo("pilot: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("pilot: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
