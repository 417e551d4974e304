"""`pilot review export|import`: the data team's review of a curated dataset directory;
`pilot review export-pairs|import-pairs`: the same for the preference pairs of a preferences directory;
`pilot review conflicts|adjudicate`: rows reviewers decided differently, and an adjudicator's decision on them."""

from __future__ import annotations

import click

from pilot_core.errors import UserError

SHARES_HELP = "comma-separated reviewer names: one share of the sample each, in OUT/<reviewer>/"
OVERLAP_HELP = "rows every reviewer gets (to measure their agreement); the rest are dealt out"
REVIEWER_HELP = "who reviewed (default: the reviewer the share names, else the current user)"
ADJUDICATOR_HELP = "import as this adjudicator: the file's decisions win over the reviewers' (and are recorded)"


def _names(reviewers: str | None) -> tuple[str, ...]:
    return tuple(n.strip() for n in (reviewers or "").split(",") if n.strip())


def _conflicts(e: dict) -> str:
    n = len(e.get("conflicts") or [])
    return f"; {n} in conflict with another reviewer (not applied: `pilot review conflicts`)" if n else ""


def _shares(r: dict) -> str:
    if not r.get("reviewers"):
        return ""
    return (" in shares for " + ", ".join(f"{n} ({k} rows)" for n, k in r["reviewers"].items())
            + f", {len(r['overlap'])} rows in every share")


@click.group()
def review() -> None:
    """Export a reviewable subset of a curated dataset or of its preference pairs (whole, or in shares for several
    reviewers), import the team's decisions (saved from the review page, or filled into review.csv), list the
    conflicts between reviewers and settle them."""


@review.command("export")
@click.argument("dataset", type=click.Path())
@click.option("--out", required=True, help="directory for review.html, review.csv, review.jsonl")
@click.option("--per-stratum", default=10, show_default=True, help="kept rows sampled per source x category")
@click.option("--rejects-per-reason", default=10, show_default=True, help="excluded rows sampled per stage x reason")
@click.option("--seed", default=0, show_default=True)
@click.option("--reviewers", default=None, help=SHARES_HELP)
@click.option("--overlap", default=0, show_default=True, help=OVERLAP_HELP)
def review_export(dataset: str, out: str, per_stratum: int, rejects_per_reason: int, seed: int,
                  reviewers: str | None, overlap: int) -> None:
    """Sample kept rows and rejects of a curated dataset into a review page (decide there, save review.csv)."""
    from data_curation.review import export_review

    r = export_review(dataset, out, per_stratum, rejects_per_reason, seed, _names(reviewers), overlap)
    click.echo(f"{r['output']}: {r['kept_sampled']} kept and {r['excluded_sampled']} excluded rows to review"
               f"{_shares(r)} (open review.html and save the decisions; or mark review.csv)")


@review.command("import")
@click.argument("dataset", type=click.Path())
@click.option("--decisions", required=True, help="the saved or filled-in review.csv (or review.jsonl)")
@click.option("--reviewer", default=None, help=REVIEWER_HELP)
@click.option("--adjudicator", default=None, help=ADJUDICATOR_HELP)
def review_import(dataset: str, decisions: str, reviewer: str | None, adjudicator: str | None) -> None:
    """Add prompt decisions: rejected kept rows move to excluded with reason review, approved excluded rows come
    back; a row reviewers decided differently stays as it was until an adjudicator decides it."""
    from data_curation.review import import_review

    e = import_review(dataset, decisions, reviewer, adjudicator)
    click.echo(f"{dataset}: {e['reviewer']}: {e['approved']} approved, {e['rejected']} rejected (excluded with "
               f"reason review), {len(e['restored'])} restored, {e['undecided']} undecided{_conflicts(e)}"
               + (" (this file was imported before: nothing changed)" if e.get("already") else
                  " (nothing new: nothing changed)" if e.get("unchanged") else "; recorded in manifest.json"))


@review.command("export-pairs")
@click.argument("preferences", type=click.Path())
@click.option("--out", required=True, help="directory for review.html, review.csv, review.jsonl")
@click.option("--per-stratum", default=10, show_default=True,
              help="pairs sampled per category x chosen generator x rejected generator")
@click.option("--seed", default=0, show_default=True)
@click.option("--reviewers", default=None, help=SHARES_HELP)
@click.option("--overlap", default=0, show_default=True, help=OVERLAP_HELP)
def review_export_pairs(preferences: str, out: str, per_stratum: int, seed: int, reviewers: str | None,
                        overlap: int) -> None:
    """Sample the preference pairs (dpo split) of a `pilot preferences` output for review."""
    from data_curation.pair_review import export_pair_review

    r = export_pair_review(preferences, out, per_stratum, seed, _names(reviewers), overlap)
    click.echo(f"{r['output']}: {r['rows']} of {r['pairs']} pairs to review{_shares(r)} (open review.html and save "
               "the decisions; or mark review.csv)")


@review.command("import-pairs")
@click.argument("preferences", type=click.Path())
@click.option("--decisions", required=True, help="the saved or filled-in review.csv (or review.jsonl)")
@click.option("--reviewer", default=None, help=REVIEWER_HELP)
@click.option("--adjudicator", default=None, help=ADJUDICATOR_HELP)
def review_import_pairs(preferences: str, decisions: str, reviewer: str | None, adjudicator: str | None) -> None:
    """Add pair decisions: rejected pairs leave the dpo and sft splits, flipped ones swap chosen and rejected; a pair
    reviewers decided differently stays as the judge ranked it until an adjudicator decides it."""
    from data_curation.pair_review import import_pair_review

    e = import_pair_review(preferences, decisions, reviewer, adjudicator)
    rate = e["so_far"]["judge_disagreement"]
    click.echo(f"{preferences}: {e['reviewer']}: {e['approved']} approved, {e['flipped']} flipped, {e['rejected']} "
               f"rejected, {e['undecided']} undecided{_conflicts(e)}"
               + (" (this file was imported before: nothing changed)" if e.get("already") else
                  " (nothing new: nothing changed)" if e.get("unchanged") else "")
               + f"; judge disagreement so far: {'n/a' if rate is None else f'{rate:.0%}'} of "
               f"{e['so_far']['pairs_reviewed']} reviewed pairs")


@review.command("conflicts")
@click.argument("directory", type=click.Path())
def review_conflicts(directory: str) -> None:
    """List the rows (or pairs) reviewers decided differently that no adjudicator has decided yet."""
    from data_curation.reviewers import open_conflicts

    kind, found = open_conflicts(directory)
    for c in found:
        click.echo(f"{c['id']}\t" + ", ".join(f"{n}: {d}" for n, d in c["votes"].items()))
    click.echo(f"{directory}: {len(found)} {kind} conflict(s)" + (" (settle each with `pilot review adjudicate`)"
                                                                   if found else ""))


@review.command("adjudicate")
@click.argument("directory", type=click.Path())
@click.option("--id", "rid", required=True, help="the row (or pair) to decide")
@click.option("--decision", required=True, help="approve or reject (pairs: approve, reject or flip)")
@click.option("--adjudicator", required=True, help="who decides (recorded with the reviewers' decisions)")
@click.option("--note", default="", help="why")
@click.option("--judge-wrong", is_flag=True, help="pairs: the judge's verdict was wrong")
def review_adjudicate(directory: str, rid: str, decision: str, adjudicator: str, note: str,
                      judge_wrong: bool) -> None:
    """Decide a reviewed row as adjudicator: the decision wins over the reviewers' and is applied."""
    from data_curation.pair_review import adjudicate_pairs
    from data_curation.review import adjudicate_review
    from data_curation.reviewers import review_kind

    kind, _ = review_kind(directory)
    if kind == "prompts" and judge_wrong:
        raise UserError("--judge-wrong: only pairs have a judge; leave it out for a prompt review")
    e = (adjudicate_pairs(directory, rid, decision.strip().lower(), adjudicator, note, judge_wrong)
         if kind == "pairs" else adjudicate_review(directory, rid, decision.strip().lower(), adjudicator, note))
    click.echo(f"{directory}: {rid}: {adjudicator} decided {decision}"
               + (" (already so: nothing changed)" if e.get("unchanged") else "; recorded in manifest.json"))
