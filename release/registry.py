"""A file-system model registry: immutable versions and moving aliases.

  <root>/<name>/<version>/   the checkpoint's files, README.md (model card), validation/ (report, plots, gate
                             verdict), release.json, wsd.json (WSD's switch setting per base, where validation
                             chose one), checksums.sha256 (every other file's sha256)
  <root>/<name>/aliases.json {"aliases": {"champion": "v2"}, "history": [every move, with when and why]}

A version is copied under a temporary name, checked against its checksum list, made read-only and renamed into
place; an alias moves only after that, so a reader following `champion` never sees a partial copy. Publishing
and alias moves hold a lock on the model's directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from pilot_core.atomic import TMP_PREFIX, _fsync_dir, atomic_write_json, remove_stale_temps
from pilot_core.errors import UserError
from pilot_core.manifest import file_sha256
from pilot_core.names import safe_join, validate_name

CHECKSUMS = "checksums.sha256"
WSD_SETTINGS = "wsd.json"  # {"bases": {name: {threshold, window, rule, ...the sweep's figures}}}
REPORT_FILES = ("report.json", "report.md", "items.jsonl")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


class Registry:
    def __init__(self, root: str | Path, name: str):
        self.name = validate_name(name, "registry model name")
        self.dir = safe_join(Path(root), name, what="registry model name")

    # ------------------------------------------------------------------------------------------ reading
    def versions(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        vs = [p.name for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith(TMP_PREFIX)]
        return sorted(vs, key=lambda v: (int(v[1:]) if re.fullmatch(r"v\d+", v) else 1 << 62, v))

    def aliases(self) -> dict:
        p = self.dir / "aliases.json"
        if not p.is_file():
            return {"aliases": {}, "history": []}
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
            assert isinstance(data.get("aliases"), dict) and isinstance(data.get("history"), list)
        except (ValueError, AssertionError, AttributeError):
            raise UserError(f"{p}: malformed alias file") from None
        return data

    def resolve(self, version_or_alias: str) -> Path:
        v = self.aliases()["aliases"].get(version_or_alias, version_or_alias)
        path = safe_join(self.dir, v, what="version")
        if not path.is_dir():
            raise UserError(f"{self.name}: no version or alias {version_or_alias!r} in {self.dir.parent}")
        return path

    def champion(self) -> Path | None:
        v = self.aliases()["aliases"].get("champion")
        return self.resolve(v) if v else None

    # ------------------------------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def next_version(self) -> str:
        nums = [int(v[1:]) for v in self.versions() if re.fullmatch(r"v\d+", v)]
        return f"v{max(nums, default=0) + 1}"

    def publish(self, checkpoint: Path, report_dir: Path, verdict: dict, card: Callable[[str], str], release: dict,
                version: str | None = None, promote: bool = True, wsd_settings: dict | None = None) -> Path:
        """Copy, checksum, verify, freeze, rename; then move the champion alias if asked. `verdict` is the gate's
        verdict as JSON (validation/gate.json); `wsd_settings` the switch setting per base (wsd.json)."""
        with self._locked():
            remove_stale_temps(self.dir)  # copies left by a killed publish
            version = validate_name(version, "version") if version else self.next_version()
            final = self.dir / version
            if final.exists():
                raise UserError(f"{self.name} {version} already exists; published versions are immutable")
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{version}.", dir=self.dir))
            try:
                shutil.copytree(checkpoint, tmp, dirs_exist_ok=True, symlinks=False,
                                ignore=shutil.ignore_patterns(f"{TMP_PREFIX}*"))
                val = tmp / "validation"
                val.mkdir()
                for f in REPORT_FILES:
                    if (report_dir / f).is_file():
                        shutil.copy2(report_dir / f, val / f)
                if (report_dir / "plots").is_dir():
                    shutil.copytree(report_dir / "plots", val / "plots")
                (val / "gate.json").write_text(json.dumps(verdict, indent=2, sort_keys=True) + "\n")
                (tmp / WSD_SETTINGS).unlink(missing_ok=True)  # only this validation's choice, never a stray file
                if wsd_settings:  # the switch setting per base, which `pilot wsd generate|serve` reads
                    (tmp / WSD_SETTINGS).write_text(json.dumps(wsd_settings, indent=2, sort_keys=True) + "\n")
                (tmp / "README.md").write_text(card(version), encoding="utf-8")
                (tmp / "release.json").write_text(json.dumps({**release, "name": self.name, "version": version},
                                                             indent=2, sort_keys=True) + "\n")
                sums = {rel: file_sha256(tmp / rel) for rel in _files(tmp)}
                (tmp / CHECKSUMS).write_text("".join(f"{h}  {rel}\n" for rel, h in sums.items()))
                problems = verify_dir(tmp)  # the copy as written, read back
                if problems:
                    raise RuntimeError(f"publish copy failed verification: {problems}")
                for p in tmp.rglob("*"):
                    if p.is_file():
                        with open(p, "rb") as fh:
                            os.fsync(fh.fileno())
                        p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
                os.rename(tmp, final)
                _fsync_dir(self.dir)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if promote:
                self._move("champion", version, release.get("override", {}).get("reason") if release.get("override")
                           else "passed the gate")
        return final

    def _move(self, alias: str, version: str, reason: str) -> None:
        data = self.aliases()
        data["history"].append({"alias": alias, "version": version, "previous": data["aliases"].get(alias),
                                "at": _now(), "by": getpass.getuser(), "reason": reason})
        data["aliases"][alias] = version
        atomic_write_json(self.dir / "aliases.json", data)

    def set_alias(self, alias: str, version: str, reason: str) -> None:
        """Point an alias at an existing, verified version (e.g. roll the champion back)."""
        validate_name(alias, "alias")
        with self._locked():
            problems = verify_dir(self.resolve(version))
            if problems:
                raise UserError(f"{self.name} {version} fails verification: {problems[0]}")
            self._move(alias, version, reason)


def verify_dir(version_dir: Path) -> list[str]:
    """Problems found comparing a version's files with its checksum list (empty: intact)."""
    sums_path = version_dir / CHECKSUMS
    if not sums_path.is_file():
        return [f"{sums_path}: missing checksum list"]
    expected = {}
    for lineno, line in enumerate(sums_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        h, sep, rel = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", h):
            return [f"{sums_path}:{lineno}: malformed line"]
        expected[rel] = h
    problems = []
    present = set(_files(version_dir)) - {CHECKSUMS}
    for rel in sorted(set(expected) - present):
        problems.append(f"{rel}: missing")
    for rel in sorted(present - set(expected)):
        problems.append(f"{rel}: not in the checksum list (added after publishing)")
    for rel in sorted(present & set(expected)):
        p = version_dir / rel
        if p.is_symlink():
            problems.append(f"{rel}: is a symlink")
        elif file_sha256(p) != expected[rel]:
            problems.append(f"{rel}: content changed (sha256 mismatch)")
    return problems
