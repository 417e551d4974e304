"""`pilot wsd ...`: decoding commands."""

from __future__ import annotations

import click


@click.group()
def wsd() -> None:
    """Weak-to-Strong Decoding and the methods it is compared with."""
