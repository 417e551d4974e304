"""Checks on a local model directory before transformers touches it: safetensors only (pickled weights can run
code when loaded), and a clear error for a missing or foreign directory."""

from __future__ import annotations

import os
from pathlib import Path

from pilot_core.errors import UserError

PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")


def is_local(path: str) -> bool:
    """A path on this machine rather than a hub id: it exists, starts like a path, or its first directory is
    here (a mistyped `runs/pilot-v2` is a missing directory, not a hub repository to download)."""
    p = Path(path)
    return p.exists() or path.startswith((".", "/", "~")) or (len(p.parts) > 1 and Path(p.parts[0]).is_dir())


def check_contained(path: Path) -> None:
    """An artifact we publish or measure must hold its own files: a symlink that resolves outside it would be
    copied into the registry (a secret, another model's weights) under this artifact's name."""
    root = Path(path).resolve()
    for p in Path(path).rglob("*"):
        if p.is_symlink() and not p.resolve().is_relative_to(root):
            raise UserError(f"{path}: {p.relative_to(path)} is a symlink that points outside the directory "
                            f"({os.readlink(p)}); copy the file in instead")


def check_local_dir(path: Path, allow_pickle: bool = False) -> None:
    if not path.is_dir():
        raise UserError(f"model path not found: {path}")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a transformers model directory (no config.json)")
    if not list(path.glob("*.safetensors")) and not list(path.glob("*.safetensors.index.json")):
        pickled = [p.name for p in path.iterdir() if p.name in PICKLED_WEIGHTS or p.suffix in (".bin", ".pt")]
        if pickled and not allow_pickle:
            raise UserError(f"{path}: only pickled weights ({', '.join(sorted(pickled))}); "
                            "Pilot loads safetensors only (pickles can run code on load)")
        if not pickled:
            raise UserError(f"{path}: no model weights (*.safetensors) found")
