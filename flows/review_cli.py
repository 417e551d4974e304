"""`pilot review export|import`: the data team's review of a curated dataset directory."""

from __future__ import annotations

import getpass

import click


@click.group()
def review() -> None:
    """Export a reviewable subset of a curated dataset, or import the team's decisions."""


@review.command("export")
@click.argument("dataset", type=click.Path())
@click.option("--out", required=True, help="directory for review.html, review.csv, review.jsonl")
@click.option("--per-stratum", default=10, show_default=True, help="kept rows sampled per source x category")
@click.option("--rejects-per-reason", default=10, show_default=True, help="excluded rows sampled per stage x reason")
@click.option("--seed", default=0, show_default=True)
def review_export(dataset: str, out: str, per_stratum: int, rejects_per_reason: int, seed: int) -> None:
    from data_curation.review import export_review

    r = export_review(dataset, out, per_stratum, rejects_per_reason, seed)
    click.echo(f"{r['output']}: {r['kept_sampled']} kept and {r['excluded_sampled']} excluded rows to review "
               "(open review.html; mark review.csv or review.jsonl)")


@review.command("import")
@click.argument("dataset", type=click.Path())
@click.option("--decisions", required=True, help="the filled-in review.csv or review.jsonl")
@click.option("--reviewer", default=None, help="who reviewed (default: the current user)")
def review_import(dataset: str, decisions: str, reviewer: str | None) -> None:
    from data_curation.review import import_review

    e = import_review(dataset, decisions, reviewer or getpass.getuser())
    click.echo(f"{dataset}: {e['approved']} approved, {e['rejected']} rejected (excluded with reason review), "
               f"{e['undecided']} undecided; recorded in manifest.json")
