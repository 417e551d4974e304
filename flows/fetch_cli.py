"""`pilot fetch`: download every hub item a recipe names and lock it (thin; library: pilot_core/lock.py)."""

from __future__ import annotations

import click


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(),
              help="a recipe under configs/<kind>/ (e.g. configs/pipeline/pilot-3b.yaml)")
@click.option("--out", type=click.Path(), help="where to write the lock (default: beside the recipe, "
              "<name>.lock.json, where runs read it)")
def fetch(config_path: str, out: str | None) -> None:
    """Resolve every hub model, tokenizer, dataset and dataset file the recipe names to the commit its revision
    names now, download it into the hub cache at that commit, and write the lock: per item the revision asked,
    the commit, each file's sha256 and size. Runs of the recipe then read every item at its locked commit, from
    the hub cache (offline too: HF_HUB_OFFLINE=1); a recipe changed since (an item added, a revision changed) is
    refused until it is fetched again. The hub is
    HF_ENDPOINT's (default huggingface.co); a token is read from HF_TOKEN only. Offline: exit 2, naming what
    must be fetched."""
    from flows.schemas import check_config
    from pilot_core.lock import fetch as fetch_lock

    path = fetch_lock(check_config(config_path, lock=False), config_path, out, echo=click.echo)
    click.echo(f"wrote {path}" if path else f"{config_path} names no hub item: nothing to fetch, no lock written")
