"""`pilot release`: gate, publish, verify and list registry versions (thin)."""

from __future__ import annotations

import click

from pilot_core.errors import JobFailed, UserError

CONFIG = click.option("--config", "config_path", required=True, help="configs/release/*.yaml")
SET = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config key")


def _cfg(path, overrides):
    from pilot_core.config import load_config
    from release.config import ReleaseConfig

    return load_config(ReleaseConfig, path, overrides)


def _registry(registry: str, name: str):
    """The registry entry to read; a registry directory or a name that is not there is bad input (exit 2)."""
    from pathlib import Path

    from release.registry import Registry

    reg = Registry(registry, name)  # validates the name first: it becomes a path
    if not Path(registry).is_dir():
        raise UserError(f"--registry {registry}: no such directory")
    if not reg.dir.is_dir():
        names = sorted(p.name for p in Path(registry).iterdir() if p.is_dir())
        raise UserError(f"--name {name}: not in the registry {registry} (there: {', '.join(names) or 'nothing'})")
    return reg


def _print_verdict(v) -> None:
    click.echo(f"gate {'PASSED' if v.passed else 'FAILED'}")
    for r in v.reasons:
        click.echo(f"  {r}")


@click.group()
def release() -> None:
    """Gate a validated checkpoint and publish it to the registry (immutable versions, a champion alias)."""


@release.command()
@CONFIG
@click.option("--report", "report_dir", required=True, type=click.Path(), help="the `pilot validate` output")
@click.option("--champion-report", type=click.Path(), help="compare with this report instead of the registry's "
              "champion")
@SET
def gate(config_path, report_dir, champion_report, overrides) -> None:
    """Decide from the report (and the champion's) by the thresholds; exit 1 if it fails."""
    from release.publish import gate_report

    v = gate_report(report_dir, _cfg(config_path, overrides), champion_report)
    _print_verdict(v)
    if not v.passed:
        raise JobFailed("gate failed")


@release.command()
@CONFIG
@click.option("--checkpoint", required=True, type=click.Path())
@click.option("--report", "report_dir", required=True, type=click.Path(), help="the `pilot validate` output")
@click.option("--version", help="version name (default: the next vN)")
@click.option("--override-reason", help="publish although the gate failed; the reason is recorded in the "
              "version and the alias history")
@click.option("--push", is_flag=True, help="also push to the Hub repo of the config (token from its token_env)")
@SET
def publish(config_path, checkpoint, report_dir, version, override_reason, push, overrides) -> None:
    """Gate the checkpoint against the current champion; publish it if it passes."""
    from release.publish import publish as run

    cfg = _cfg(config_path, overrides)
    r = run(checkpoint, report_dir, cfg, version=version, override_reason=override_reason, push=push)
    if r.already:
        click.echo(f"{checkpoint} is already published as {cfg.name} {r.version} -> {r.path}")
        return
    _print_verdict(r.verdict)
    click.echo(f"published {cfg.name} {r.version} -> {r.path}"
               + (" (champion)" if cfg.promote else "")
               + (f"; pushed to {r.pushed['repo_id']}@{r.pushed['tag']}" if r.pushed else ""))


@release.command()
@click.option("--registry", required=True, type=click.Path())
@click.option("--name", required=True, help="the model's name in the registry")
@click.option("--version", "versions", multiple=True, help="a version or alias (default: every version)")
def verify(registry, name, versions) -> None:
    """Check published files against their checksum lists; exit 1 naming every changed, missing or extra file."""
    from release.registry import verify_dir

    reg = _registry(registry, name)
    targets = [reg.resolve(v) for v in versions] if versions else [reg.resolve(v) for v in reg.versions()]
    if not targets:
        raise JobFailed(f"{name}: nothing published in {registry}")
    bad = 0
    for path in targets:
        problems = verify_dir(path)
        bad += bool(problems)
        click.echo(f"{'ok  ' if not problems else 'BAD '} {name} {path.name}")
        for p in problems:
            click.echo(f"       {p}")
    for alias, v in reg.aliases()["aliases"].items():
        if v not in reg.versions():
            bad += 1
            click.echo(f"BAD  alias {alias} -> {v}: no such version")
    if bad:
        raise JobFailed(f"{bad} problem(s) found in {reg.dir}")


@release.command("list")
@click.option("--registry", required=True, type=click.Path())
@click.option("--name", required=True)
def list_versions(registry, name) -> None:
    """Versions, aliases and the alias history."""
    import json

    reg = _registry(registry, name)
    al = reg.aliases()
    by_version = {}
    for a, v in al["aliases"].items():
        by_version.setdefault(v, []).append(a)
    for v in reg.versions():
        rel = json.loads((reg.dir / v / "release.json").read_text())
        tags = ", ".join(by_version.get(v, []))
        click.echo(f"{v:<8} {rel['created_at']}  gate {'passed' if rel['gate_passed'] else 'OVERRIDDEN'}"
                   + (f"  [{tags}]" if tags else ""))
    for h in al["history"]:
        click.echo(f"  {h['at']} {h['alias']}: {h['previous']} -> {h['version']} by {h['by']} ({h['reason']})")
