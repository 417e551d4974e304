"""The compute flags of the commands that load models in-process; they build the same `compute:` section a
pipeline config carries (pilot_core/models/compute.py)."""

from __future__ import annotations

import click


def compute_options(f):
    """--device, --dtype, --attn-implementation and --device-map, the command's keyword arguments."""
    from pilot_core.models.compute import ATTENTION, DTYPES

    options = [
        click.option("--device", default="auto", show_default=True,
                     help="auto (the GPU when there is one), cpu, cuda, cuda:N or mps"),
        click.option("--dtype", type=click.Choice(DTYPES), default="auto", show_default=True,
                     help="weights' dtype; auto: bfloat16 on a GPU, float32 on CPU"),
        click.option("--attn-implementation", type=click.Choice(ATTENTION),
                     help="default: transformers' choice for the model"),
        click.option("--device-map", help="spread a model over devices (accelerate's 'auto', 'balanced', ...)"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def compute_from(device: str, dtype: str, attn_implementation: str | None, device_map: str | None):
    from pilot_core.config import validate_config
    from pilot_core.models.compute import Compute

    return validate_config(Compute, {"device": device, "dtype": dtype, "attn_implementation": attn_implementation,
                                     "device_map": device_map}, source="options")
