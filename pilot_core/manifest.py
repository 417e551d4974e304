"""Manifests: what an artifact is, what made it, from which inputs. Written last, so its presence means complete."""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pilot_core.atomic import atomic_write_json
from pilot_core.errors import UserError
from pilot_core.hub_items import pinned_in

MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("torch", "transformers", "tokenizers", "trl", "peft", "datasets", "accelerate", "deepspeed",
                    "prefect", "openai", "pydantic", "pilot-wsd")


def canonical_json(obj: Any) -> str:
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(obj: Any) -> str:
    """Stable sha256 of a config (pydantic model or plain data): equal configs hash equal, key order ignored."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes (eval sets in reports, checksum lists in the registry)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(path: str | Path) -> str:
    """sha256 over a file, or over every file of a directory (relative paths and contents, sorted).

    Temporaries and the manifest itself are excluded, so a directory's fingerprint is the same before and
    after its manifest is written; so are the cache-*.arrow files that `datasets` map() writes beside a saved
    dataset when a reader (TRL) tokenizes it, so reading a dataset does not change its fingerprint.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted(
            (p.relative_to(path).as_posix(), p)
            for p in path.rglob("*")
            if p.is_file() and p.name != MANIFEST and not any(part.startswith(".tmp-") for part in p.parts)
            and not (p.name.startswith("cache-") and p.suffix == ".arrow")
        )
    else:
        raise UserError(f"cannot fingerprint {path}: no such file or directory")
    for rel, p in files:
        h.update(rel.encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def package_versions(names: tuple[str, ...] = TRACKED_PACKAGES) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # "dataset", "checkpoint", "report", "wsd-output", "tiny-model", ...
    created_at: str = Field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    config_hash: str | None = None
    config: dict[str, Any] | None = None
    inputs: dict[str, str] = Field(default_factory=dict)  # name -> fingerprint
    versions: dict[str, str] = Field(default_factory=package_versions)
    data: dict[str, Any] = Field(default_factory=dict)  # counts, metrics: whatever the stage reports
    hub: dict[str, str] = Field(default_factory=dict)  # hub repo -> the commit read (a locked or pinned recipe)

    @model_validator(mode="after")
    def _hub(self) -> "Manifest":
        """With the hub items `config` reads at a commit (every one, when the run's recipe had a lock)."""
        if self.config:
            self.hub = dict(sorted({**self.hub, **pinned_in(self.config)}.items()))
        return self


def write_manifest(directory: str | Path, manifest: Manifest) -> Path:
    return atomic_write_json(Path(directory) / MANIFEST, manifest.model_dump(mode="json"))


def read_manifest(directory: str | Path, kind: str | None = None) -> Manifest:
    """Read a directory's manifest; a missing or malformed one means the artifact is incomplete or foreign."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserError(f"{directory}: not a complete artifact (no {MANIFEST})")
    try:
        m = Manifest.model_validate_json(path.read_bytes())
    except ValueError as e:
        raise UserError(f"{path}: malformed manifest: {str(e).splitlines()[0]}") from None
    if kind is not None and m.kind != kind:
        raise UserError(f"{path}: expected a {kind!r} artifact, found kind {m.kind!r}")
    return m
