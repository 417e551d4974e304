"""Stage keys: what makes a rerun reuse a finished stage, and what makes it redo one."""

import json
import os

import pytest

from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, write_manifest
from pilot_core.models.source import ModelSource
from pilot_core.stages import dir_identity, files_identity, source_identity, stage_dir, stage_key


def test_key_follows_config_and_inputs_not_key_order():
    a = stage_key("curate", {"x": 1, "y": [1, 2]}, {"f": "h1"})
    assert a == stage_key("curate", {"y": [1, 2], "x": 1}, {"f": "h1"})
    assert len({a, stage_key("curate", {"x": 2, "y": [1, 2]}, {"f": "h1"}),
                stage_key("curate", {"x": 1, "y": [1, 2]}, {"f": "h2"}),
                stage_key("train", {"x": 1, "y": [1, 2]}, {"f": "h1"})}) == 4


def test_stage_dir_is_one_safe_component(tmp_path):
    assert stage_dir(tmp_path, "curate", "ab" * 32) == tmp_path / "curate-abababababab"
    with pytest.raises(UserError, match="invalid stage directory"):
        stage_dir(tmp_path, "../x", "ab" * 32)


def test_files_identity_follows_content(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"id": 1}\n')
    before = files_identity([f, tmp_path / "gone.jsonl"])
    assert before[str(tmp_path / "gone.jsonl")] == "missing"
    f.write_text('{"id": 2}\n')
    assert files_identity([f])[str(f)] != before[str(f)]


def test_dir_identity_of_an_artifact_is_its_manifest(tmp_path):
    d = tmp_path / "dataset"
    d.mkdir()
    (d / "prompts.parquet").write_bytes(b"rows")
    write_manifest(d, Manifest(kind="dataset", config_hash="h", data={"kept": 3}))
    ident = dir_identity(d)
    (d / "cache-1.arrow").write_bytes(b"a reader's tokenized cache")
    assert dir_identity(d) == ident
    m = json.loads((d / "manifest.json").read_text())
    m["data"]["reviews"] = [{"reviewer": "team", "rejected": 2}]  # a review import rewrites the manifest
    (d / "manifest.json").write_text(json.dumps(m))
    assert dir_identity(d) != ident


def test_dir_identity_of_a_plain_directory_follows_its_files(tmp_path):
    d = tmp_path / "base-model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    ident = dir_identity(d)
    assert dir_identity(d) == ident
    st = (d / "config.json").stat()
    os.utime(d / "config.json", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # rewritten, same bytes
    assert dir_identity(d) != ident


def test_source_identity_reads_local_directories_only(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    local = source_identity(ModelSource(name="p", path=str(tmp_path / "m")))
    assert "dir" in local
    hub = source_identity(ModelSource(name="p", path="org/model"))
    assert "dir" not in hub and hub["source"]["path"] == "org/model"
    served = source_identity(ModelSource(name="b", url="http://h:8000/v1", served_model="x", api_key_env="KEY"))
    assert "api_key_env" not in served["source"]  # which variable holds a key does not change the output
