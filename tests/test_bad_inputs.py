"""The bad-input corpus (tests/bad_inputs/cases.yaml): every case exits 2 with one line naming the problem, no
traceback, and leaves every file in its directory byte-identical (nothing created, nothing half-written)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from flows.cli import main

from .helpers import REPO, checkpoint

CORPUS = REPO / "tests" / "bad_inputs"
CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())


def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _dataset(tmp: Path, ctx) -> Path:
    out = tmp / "dataset"
    assert main(["curate", "--source", str(REPO / "data/demo/generalign/prompts.jsonl"), "--output", str(out)]) == 0
    return out


def _pickled(tmp: Path, ctx) -> Path:
    import torch
    from safetensors.torch import load_file

    d = _copy_model(ctx["pilot"], tmp / "pickled")
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    return d


def _symlink_out(tmp: Path, ctx) -> Path:
    d = checkpoint(tmp, ctx)
    outside = tmp.parent / f"{tmp.name}-outside.txt"
    outside.write_text("a file outside the checkpoint")
    (d / "notes.txt").symlink_to(outside)
    return d


def _report(body: str):
    def make(tmp: Path, ctx) -> Path:
        (tmp / "report").mkdir()
        (tmp / "report" / "report.json").write_text(body)
        return tmp / "report"
    return make


def _registry(tmp: Path, ctx) -> Path:
    (tmp / "reg" / "pilot-tiny").mkdir(parents=True)
    shutil.copy(CORPUS / "files" / "aliases-truncated.json", tmp / "reg" / "pilot-tiny" / "aliases.json")
    return tmp / "reg"


def _registry_empty(tmp: Path, ctx) -> Path:
    (tmp / "reg" / "pilot-tiny").mkdir(parents=True)
    return tmp / "reg"


def _no_manifest(tmp: Path, ctx) -> Path:
    (tmp / "ds").mkdir()
    (tmp / "ds" / "prompts.parquet").write_bytes(b"")
    return tmp / "ds"


def _wrong_kind(tmp: Path, ctx) -> Path:
    from pilot_core.manifest import Manifest, write_manifest

    (tmp / "ds").mkdir()
    write_manifest(tmp / "ds", Manifest(kind="checkpoint", config_hash="h"))
    return tmp / "ds"


def _prompts(tmp: Path, ctx) -> Path:
    (tmp / "prompts.jsonl").write_text('{"id": "a", "prompt": "hello"}\n')
    return tmp / "prompts.jsonl"


def _unknown_id(tmp: Path, ctx) -> Path:
    (tmp / "decisions.csv").write_text("id,decision,note\nno-such-id,reject,x\n")
    return tmp / "decisions.csv"


MAKERS = {"dataset": _dataset, "checkpoint_no_manifest": lambda t, c: _copy_model(c["pilot"], t / "m"),
          "checkpoint_pickled": _pickled, "checkpoint_symlink_out": _symlink_out, "prompts": _prompts,
          "report_truncated": _report((CORPUS / "files" / "report-truncated.json").read_text()),
          "report_missing_keys": _report((CORPUS / "files" / "report-missing-keys.json").read_text()),
          "registry_bad_aliases": _registry, "registry_empty": _registry_empty, "dataset_no_manifest": _no_manifest,
          "dataset_wrong_kind": _wrong_kind, "decision_unknown_id": _unknown_id}


def snapshot(root: Path) -> dict[str, str]:
    """Every file (and link) under root with its content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def _expand(arg: str, tmp: Path, ctx: dict) -> str:
    if arg.startswith("{made:"):
        name = arg[len("{made:"):-1]
        if name not in ctx["made"]:
            (tmp / "made" / name).mkdir(parents=True)
            ctx["made"][name] = MAKERS[name](tmp / "made" / name, ctx)
        return str(ctx["made"][name])
    return (arg.replace("{files}", str(tmp / "files")).replace("{tmp}", str(tmp))
            .replace("{pilot}", str(ctx["pilot"])).replace("{base}", str(ctx["base"])))


def test_a_symlink_inside_an_artifact_is_fine(tmp_path):
    from pilot_core.errors import UserError
    from pilot_core.models.files import check_contained

    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").symlink_to(tmp_path / "a.txt")
    check_contained(tmp_path)
    (tmp_path / "sub" / "c.txt").symlink_to("/etc/hostname")
    with pytest.raises(UserError, match="sub/c.txt is a symlink that points outside"):
        check_contained(tmp_path)


def test_the_corpus_is_big_enough_and_unique():
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)
    assert {i.split("-")[0] for i in ids} >= {"config", "cli", "prompts", "dataset", "checkpoint", "report",
                                              "registry", "review"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, tmp_path, pair_same, monkeypatch, capfd):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    shutil.copytree(CORPUS / "files", tmp_path / "files")
    ctx = {"pilot": pair_same[0], "base": pair_same[1], "made": {}}
    args = [_expand(a, tmp_path, ctx) for a in case["args"]]
    capfd.readouterr()
    before = snapshot(tmp_path)
    code = main(args)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("pilot: error: ") or lines[0].startswith("Error: "), lines[0]
    assert case["expect"] in lines[0], lines[0]
    assert snapshot(tmp_path) == before, "a bad input changed or created files"
    json.dumps(case)  # the case itself stays plain data
