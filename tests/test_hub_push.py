"""Hub push: one commit with every file of a published version, tagged with the version, authenticated with the
token from the environment, which appears in no written file. Run against a loopback stand-in of the Hub API."""

import json
import os

import pytest

from pilot_core.errors import JobFailed, UserError
from release.config import HubConfig
from release.hub import push_version
from release.registry import Registry

from .hub_standin import Hub

TOKEN = "hf_test_secret_5f2b9c"


@pytest.fixture
def offline_off(monkeypatch):
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("PILOT_TEST_HF_TOKEN", TOKEN)


def test_push_uploads_every_file_and_tags_the_version(tmp_path, offline_off):
    ckpt, rep = tmp_path / "ckpt", tmp_path / "rep"
    ckpt.mkdir(), rep.mkdir()
    (ckpt / "model.safetensors").write_bytes(os.urandom(2048))
    (rep / "report.json").write_text("{}")
    v1 = Registry(tmp_path / "reg", "m").publish(ckpt, rep, {"passed": True}, lambda v: "---\nlicense: mit\n---\n",
                                                 {"override": None})
    hub = Hub()
    cfg = HubConfig(repo_id="org/pilot", token_env="PILOT_TEST_HF_TOKEN", endpoint=hub.url)
    r = push_version(v1, cfg)
    assert r == {"repo_id": "org/pilot", "tag": "v1", "commit": "a" * 40}
    local = {p.relative_to(v1).as_posix(): p.read_bytes() for p in v1.rglob("*") if p.is_file()}
    assert hub.files == local and list(hub.tags) == ["v1"] and "private" in json.dumps(hub.repos["org/pilot"])
    assert set(hub.auth) == {f"Bearer {TOKEN}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert written == []


def test_push_errors(tmp_path, offline_off, monkeypatch):
    hub = Hub()
    with pytest.raises(UserError, match="PILOT_TEST_NO_TOKEN .* is not set"):
        push_version(tmp_path, HubConfig(repo_id="org/x", token_env="PILOT_TEST_NO_TOKEN", endpoint=hub.url))
    (tmp_path / "f.txt").write_text("x")
    bad = HubConfig(repo_id="org/x", token_env="PILOT_TEST_HF_TOKEN", endpoint=hub.url + "/nowhere")
    with pytest.raises(JobFailed, match="hub push to org/x failed") as e:
        push_version(tmp_path, bad)
    assert TOKEN not in str(e.value)
    with pytest.raises(ValueError, match="owner/name"):
        HubConfig(repo_id="../x")
