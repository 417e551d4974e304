"""Gate a validated checkpoint against the current champion and publish it if it passes.

A failed gate publishes nothing. The only way past it is an override with a reason, which is recorded in the
version's release.json and in the alias history; there is no silent bypass.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pilot_core.atomic import atomic_write_json, atomic_write_text
from pilot_core.errors import UserError
from pilot_core.manifest import fingerprint, read_manifest
from pilot_core.models.files import check_contained, check_local_dir
from pilot_core.report import GateVerdict, load_report, load_verdict, markdown
from pilot_core.switch_settings import wsd_json
from release.config import ReleaseConfig
from release.gate import decide
from release.model_card import build_card
from release.registry import Registry


@dataclass(frozen=True)
class Published:
    """What publish() did: the gate's verdict, the registry version and its directory, the Hub push (None without
    one), and already=True when the checkpoint was published before (then nothing new is written)."""

    verdict: GateVerdict
    version: str
    path: str
    pushed: dict | None  # push_version's answer: repo_id, tag, commit
    already: bool


def gate_report(report_dir: str | Path, cfg: ReleaseConfig, champion_report: str | Path | None = None) -> GateVerdict:
    """The verdict for a report against the registry's champion (or an explicit champion report); written
    next to the report as gate.json, and into report.md."""
    report_dir = Path(report_dir)
    report = load_report(report_dir)
    if champion_report is not None:
        champ = load_report(champion_report)
    else:
        cur = Registry(cfg.registry, cfg.name).champion()
        champ = load_report(cur / "validation") if cur else None
        if champ is not None and champ.checkpoint.fingerprint == report.checkpoint.fingerprint:
            champ = None  # re-gating the champion itself: nothing to regress against
    verdict = decide(report, champ, cfg.gate)
    if report_dir.is_dir():
        atomic_write_json(report_dir / "gate.json", verdict.model_dump(mode="json"))
        atomic_write_text(report_dir / "report.md", markdown(report, verdict))
    return verdict


def publish(checkpoint: str | Path, report_dir: str | Path, cfg: ReleaseConfig, *, version: str | None = None,
            override_reason: str | None = None, push: bool = False, sign_off: dict | None = None) -> Published:
    """Raises JobFailed (exit 1) when the gate says no; a checkpoint already published returns that version
    (already=True) and publishes nothing. `sign_off` (who approved the release, when, why) is recorded in
    release.json."""
    checkpoint, report_dir = Path(checkpoint), Path(report_dir)
    manifest = read_manifest(checkpoint, kind="checkpoint")
    check_local_dir(checkpoint)
    check_contained(checkpoint)
    report = load_report(report_dir)
    if report.checkpoint.fingerprint != fingerprint(checkpoint):
        raise UserError(f"{report_dir}: the report was made for another checkpoint ({report.checkpoint.path}, "
                        f"sha256 {report.checkpoint.fingerprint[:12]}), not {checkpoint}")
    if override_reason is not None and not override_reason.strip():
        raise UserError("--override-reason must say why the gate is overridden")
    if push and cfg.hub is None:
        raise UserError("--push needs a hub section in the release config")
    registry = Registry(cfg.registry, cfg.name)
    for v in registry.versions():  # the same weights twice would be two names for one model: a rerun is a no-op
        if report.checkpoint.fingerprint in (registry.dir / v / "release.json").read_text():
            verdict = load_verdict(registry.dir / v / "validation" / "gate.json")
            _track(cfg, registry, v)  # registered now if an earlier run could not
            return Published(verdict, v, str(registry.dir / v), pushed=None, already=True)
    verdict = gate_report(report_dir, cfg)
    if not verdict.passed and override_reason is None:
        raise verdict.failure(report_dir)
    override = None if verdict.passed else {
        "reason": override_reason.strip(), "by": getpass.getuser(),
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    release = {"created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "checkpoint": {"path": str(checkpoint), "fingerprint": report.checkpoint.fingerprint,
                              "config_hash": manifest.config_hash},
               "report_config_hash": report.config_hash, "gate_passed": verdict.passed, "override": override,
               "sign_off": sign_off}
    path = registry.publish(checkpoint, report_dir, verdict.model_dump(mode="json"),
                            lambda v: build_card(report, verdict, manifest, cfg.card, cfg.name, v,
                                                cfg.hub.repo_id if cfg.hub else None), release, version,
                            promote=cfg.promote,
                            wsd_settings=wsd_json(report.switch_settings, report.bases) if report.switch_settings
                            else None)
    pushed = None
    if push:
        from release.hub import push_version

        pushed = push_version(path, cfg.hub)
    _track(cfg, registry, path.name)  # last: a rerun (already published) registers what failed here, not the push
    return Published(verdict, path.name, str(path), pushed, already=False)


def _track(cfg: ReleaseConfig, registry: Registry, version: str) -> None:
    if cfg.report_to == "mlflow":
        from pilot_core.tracking import register_version

        register_version(registry.dir / version, cfg.name, version,
                         champion=registry.aliases()["aliases"].get("champion") == version)
