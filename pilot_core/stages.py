"""Stage directories named by what made them, so that a rerun of the pipeline reuses every finished stage and
redoes only what is missing.

A stage's key hashes its config and the identity of its inputs (files by content, directories by their manifest
and file list, upstream stages by their keys). Its directory is `<root>/<stage>-<key[:12]>`; every stage writer
is atomic (temp + rename, the manifest or report last), so a directory that is complete was finished, and one that
is not is resumed or rebuilt by the stage itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pilot_core.manifest import MANIFEST, config_hash, file_sha256
from pilot_core.names import validate_name


def stage_key(stage: str, config: Any, inputs: dict[str, Any]) -> str:
    """sha256 of the stage name, its config and its inputs' identities (key order ignored)."""
    return config_hash({"stage": stage, "config": config, "inputs": inputs})


def stage_dir(root: str | Path, stage: str, key: str) -> Path:
    return Path(root) / validate_name(f"{stage}-{key[:12]}", "stage directory")


def files_identity(paths: list[str | Path]) -> dict[str, str]:
    """{path: sha256} of small input files (prompt sets, eval sets, source files); a missing file is named so
    that the stage itself reports it."""
    return {str(p): file_sha256(p) if Path(p).is_file() else "missing" for p in paths}


def dir_identity(path: str | Path) -> str:
    """A cheap identity of a directory. One of ours (a dataset, a checkpoint) is named by its manifest, which
    every writer rewrites with the content (a review import, a retrained checkpoint's metrics); caches that
    readers add beside the data (datasets' cache-*.arrow) do not change it. Any other directory (a base model)
    by every file's name, size and mtime: no weights are read, and a rewritten file changes it."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return hashlib.sha256((path / MANIFEST).read_bytes()).hexdigest()
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")) if path.is_dir() else []:
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_identity(src) -> dict:
    """A ModelSource's identity: its config, plus the directory's identity when it is a local path (a tiny
    spec builds deterministically, a hub id names its revision, a served model is whatever the server holds)."""
    ident = {"source": src.model_dump(mode="json", exclude={"api_key_env"})}
    if src.path and Path(src.path).is_dir():
        ident["dir"] = dir_identity(src.path)
    return ident
