import json
import os
import signal
import subprocess
import sys

import pytest

from pilot_core.atomic import atomic_dir, atomic_write_json, remove_stale_temps
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, config_hash, fingerprint, read_manifest, write_manifest
from pilot_core.names import safe_join, validate_name


def test_atomic_dir_commits_only_on_success(tmp_path):
    final = tmp_path / "artifact"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("crash")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("whole")
    assert (final / "a.txt").read_text() == "whole"
    with pytest.raises(FileExistsError):
        with atomic_dir(final):
            pass
    with atomic_dir(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


def test_sigkill_mid_write_leaves_old_file_intact(tmp_path):
    target = tmp_path / "data.json"
    atomic_write_json(target, {"v": "old"})
    code = (
        "import os, sys\n"
        "from pilot_core.atomic import atomic_dir\n"
        f"with atomic_dir({str(tmp_path / 'newdir')!r}) as t:\n"
        "    (t / 'x').write_text('partial')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code])
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "newdir").exists()
    assert json.loads(target.read_text()) == {"v": "old"}
    stale = remove_stale_temps(tmp_path)
    assert len(stale) == 1 and sorted(os.listdir(tmp_path)) == ["data.json"]


def test_config_hash_ignores_key_order_and_sees_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_fingerprint_and_manifest_roundtrip(tmp_path):
    d = tmp_path / "art"
    d.mkdir()
    (d / "x.txt").write_text("1")
    fp1 = fingerprint(d)
    write_manifest(d, Manifest(kind="dataset", config_hash="h", data={"rows": 3}))
    assert fingerprint(d) == fp1  # the manifest is not part of the content
    (d / "cache-3f2a.arrow").write_bytes(b"tokenized by a reader")  # datasets' map() cache beside the data
    assert fingerprint(d) == fp1
    (d / "x.txt").write_text("2")
    assert fingerprint(d) != fp1
    m = read_manifest(d, kind="dataset")
    assert m.data == {"rows": 3} and "torch" in m.versions
    with pytest.raises(UserError, match="expected a 'checkpoint' artifact"):
        read_manifest(d, kind="checkpoint")
    with pytest.raises(UserError, match="not a complete artifact"):
        read_manifest(tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="malformed manifest"):
        read_manifest(d)


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "a..b", "x" * 200, "a b"])
def test_bad_names_rejected(bad, tmp_path):
    with pytest.raises(UserError, match="invalid"):
        validate_name(bad)
    with pytest.raises(UserError):
        safe_join(tmp_path, "ok", bad)


def test_good_names(tmp_path):
    assert safe_join(tmp_path, "pilot-3b", "v1.2_0") == tmp_path / "pilot-3b" / "v1.2_0"
