"""The registry: versions are immutable and verified, aliases move only to complete versions and keep their
history, a publish killed half-way leaves nothing a reader would trust."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pilot_core.errors import UserError
from release.registry import Registry, verify_dir


@pytest.fixture
def artifacts(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(os.urandom(4096))
    (ckpt / "config.json").write_text("{}")
    rep = tmp_path / "report"
    (rep / "plots").mkdir(parents=True)
    (rep / "report.json").write_text("{}")
    (rep / "plots" / "x.png").write_bytes(b"png")
    (rep / "generations").mkdir()  # not part of a release
    return ckpt, rep


def publish(reg, ckpt, rep, version=None, promote=True):
    return reg.publish(ckpt, rep, {"passed": True}, lambda v: f"card {v}", {"override": None}, version, promote)


def test_publish_verify_and_tamper(tmp_path, artifacts):
    reg = Registry(tmp_path / "reg", "m")
    v1 = publish(reg, *artifacts)
    assert v1.name == "v1" and reg.champion() == v1 and verify_dir(v1) == []
    files = sorted(p.relative_to(v1).as_posix() for p in v1.rglob("*") if p.is_file())
    assert files == ["README.md", "checksums.sha256", "config.json", "model.safetensors", "release.json",
                     "validation/gate.json", "validation/plots/x.png", "validation/report.json"]
    assert (v1 / "README.md").read_text() == "card v1" and not os.access(v1 / "config.json", os.W_OK) \
        or os.geteuid() == 0  # read-only (root may write anyway)
    (v1 / "config.json").chmod(0o644)
    (v1 / "config.json").write_text('{"x": 1}')
    (v1 / "validation" / "plots" / "x.png").unlink()
    (v1 / "extra.bin").write_bytes(b"1")
    assert verify_dir(v1) == ["validation/plots/x.png: missing", "extra.bin: not in the checksum list (added after "
                              "publishing)", "config.json: content changed (sha256 mismatch)"]


def test_versions_are_immutable_and_aliases_keep_history(tmp_path, artifacts):
    reg = Registry(tmp_path / "reg", "m")
    publish(reg, *artifacts)
    publish(reg, *artifacts)
    with pytest.raises(UserError, match="v2 already exists; published versions are immutable"):
        publish(reg, *artifacts, version="v2")
    assert reg.versions() == ["v1", "v2"] and reg.aliases()["aliases"]["champion"] == "v2"
    reg.set_alias("champion", "v1", "roll back: v2 regressed in production")
    hist = reg.aliases()["history"]
    assert [(h["previous"], h["version"]) for h in hist] == [(None, "v1"), ("v1", "v2"), ("v2", "v1")]
    assert hist[-1]["reason"].startswith("roll back")
    with pytest.raises(UserError, match="no version or alias 'v9'"):
        reg.set_alias("champion", "v9", "typo")
    with pytest.raises(UserError, match="invalid version"):
        publish(reg, *artifacts, version="../v3")


def test_killed_publish_leaves_no_version(tmp_path, artifacts):
    """SIGKILL while copying: no version appears, the champion stays, the next publish cleans up."""
    ckpt, rep = artifacts
    (ckpt / "big.safetensors").write_bytes(os.urandom(200 << 20))  # long enough a copy to kill it mid-way
    code = ("import sys; from release.registry import Registry; r = Registry(sys.argv[1], 'm'); "
            "r.publish(__import__('pathlib').Path(sys.argv[2]), __import__('pathlib').Path(sys.argv[3]), "
            "{'passed': True}, lambda v: 'card', {'override': None})")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "reg"), str(ckpt), str(rep)])
    tmp = None
    for _ in range(400):
        time.sleep(0.01)
        tmps = list((tmp_path / "reg" / "m").glob(".tmp-*")) if (tmp_path / "reg" / "m").is_dir() else []
        if tmps:
            tmp = tmps[0]
            break
    p.send_signal(signal.SIGKILL)
    p.wait()
    reg = Registry(tmp_path / "reg", "m")
    assert tmp is not None and reg.versions() == [] and reg.champion() is None
    (ckpt / "big.safetensors").unlink()
    assert publish(reg, ckpt, rep).name == "v1" and not list(reg.dir.glob(".tmp-*"))
    assert json.loads((reg.dir / "v1" / "release.json").read_text())["version"] == "v1"
