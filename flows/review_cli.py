"""`pilot review export|import`: the data team's review of a curated dataset directory;
`pilot review export-pairs|import-pairs`: the same for the preference pairs of a preferences directory."""

from __future__ import annotations

import getpass

import click


@click.group()
def review() -> None:
    """Export a reviewable subset of a curated dataset or of its preference pairs, or import the team's
    decisions (saved from the review page, or filled into review.csv)."""


@review.command("export")
@click.argument("dataset", type=click.Path())
@click.option("--out", required=True, help="directory for review.html, review.csv, review.jsonl")
@click.option("--per-stratum", default=10, show_default=True, help="kept rows sampled per source x category")
@click.option("--rejects-per-reason", default=10, show_default=True, help="excluded rows sampled per stage x reason")
@click.option("--seed", default=0, show_default=True)
def review_export(dataset: str, out: str, per_stratum: int, rejects_per_reason: int, seed: int) -> None:
    """Sample kept rows and rejects of a curated dataset into a review page (decide there, save review.csv)."""
    from data_curation.review import export_review

    r = export_review(dataset, out, per_stratum, rejects_per_reason, seed)
    click.echo(f"{r['output']}: {r['kept_sampled']} kept and {r['excluded_sampled']} excluded rows to review "
               "(open review.html and save the decisions; or mark review.csv)")


@review.command("import")
@click.argument("dataset", type=click.Path())
@click.option("--decisions", required=True, help="the saved or filled-in review.csv (or review.jsonl)")
@click.option("--reviewer", default=None, help="who reviewed (default: the current user)")
def review_import(dataset: str, decisions: str, reviewer: str | None) -> None:
    """Apply prompt decisions: rejected kept rows move to excluded with reason review."""
    from data_curation.review import import_review

    e = import_review(dataset, decisions, reviewer or getpass.getuser())
    click.echo(f"{dataset}: {e['approved']} approved, {e['rejected']} rejected (excluded with reason review), "
               f"{e['undecided']} undecided; recorded in manifest.json")


@review.command("export-pairs")
@click.argument("preferences", type=click.Path())
@click.option("--out", required=True, help="directory for review.html, review.csv, review.jsonl")
@click.option("--per-stratum", default=10, show_default=True,
              help="pairs sampled per category x chosen generator x rejected generator")
@click.option("--seed", default=0, show_default=True)
def review_export_pairs(preferences: str, out: str, per_stratum: int, seed: int) -> None:
    """Sample the preference pairs (dpo split) of a `pilot preferences` output for review."""
    from data_curation.pair_review import export_pair_review

    r = export_pair_review(preferences, out, per_stratum, seed)
    click.echo(f"{r['output']}: {r['rows']} of {r['pairs']} pairs to review (open review.html and save the "
               "decisions; or mark review.csv)")


@review.command("import-pairs")
@click.argument("preferences", type=click.Path())
@click.option("--decisions", required=True, help="the saved or filled-in review.csv (or review.jsonl)")
@click.option("--reviewer", default=None, help="who reviewed (default: the current user)")
def review_import_pairs(preferences: str, decisions: str, reviewer: str | None) -> None:
    """Apply pair decisions: rejected pairs leave the dpo split, flipped ones swap chosen and rejected."""
    from data_curation.pair_review import import_pair_review

    e = import_pair_review(preferences, decisions, reviewer or getpass.getuser())
    rate = e["so_far"]["judge_disagreement"]
    click.echo(f"{preferences}: {e['approved']} approved, {e['flipped']} flipped, {e['rejected']} rejected, "
               f"{e['undecided']} undecided" + (" (this file was imported before: nothing changed)"
                                                if e.get("already") else "")
               + f"; judge disagreement so far: {'n/a' if rate is None else f'{rate:.0%}'} of "
               f"{e['so_far']['pairs_reviewed']} reviewed pairs")
