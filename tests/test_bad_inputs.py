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
    """A decisions file exported from the dataset made for the case (its export column right) with an unknown id."""
    from data_curation.review_file import export_tag
    from pilot_core.manifest import fingerprint

    ds = ctx["made"].get("dataset")
    tag = export_tag("prompts", fingerprint(ds / "prompts.parquet")) if ds else ""
    (tmp / "decisions.csv").write_text(f"id,decision,note,export\nno-such-id,reject,x,{tag}\n")
    return tmp / "decisions.csv"


def _adapter(tmp: Path, ctx) -> Path:
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    return tmp / "adapter"


def _valid_report(tmp: Path, ctx) -> Path:
    """The smallest report the contract accepts (one base, wsd against base-only)."""
    stat = {"mean": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 10, "confidence": 0.95}
    sets = {"alignment": {"version": "v1", "sha256": "a" * 64, "kind": "alignment", "n": 10}}
    body = {"kind": "validation_report", "schema": 1, "checkpoint": {"fingerprint": "f", "path": "p"},
            "eval_sets": sets, "bases": {"base-a": {}}, "methods": ["wsd", "base_only"],
            "reference_method": "base_only", "config_hash": "h", "alignment_tax": {"base-a": {}},
            "metrics": {"base-a": {m: {"alignment": {"reward": stat}} for m in ("wsd", "base_only")}}}
    return _report(json.dumps(body))(tmp, ctx)


MAKERS = {"dataset": _dataset, "checkpoint_no_manifest": lambda t, c: _copy_model(c["pilot"], t / "m"),
          "checkpoint_pickled": _pickled, "checkpoint_symlink_out": _symlink_out, "prompts": _prompts,
          "report_truncated": _report((CORPUS / "files" / "report-truncated.json").read_text()),
          "report_missing_keys": _report((CORPUS / "files" / "report-missing-keys.json").read_text()),
          "registry_bad_aliases": _registry, "registry_empty": _registry_empty, "dataset_no_manifest": _no_manifest,
          "dataset_wrong_kind": _wrong_kind, "decision_unknown_id": _unknown_id,
          "checkpoint": checkpoint, "adapter": _adapter, "report": _valid_report,
          "registry": _registry_empty}


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
    return (arg.replace("{missing}", str(tmp / "no" / "such-path")).replace("{files}", str(tmp / "files"))
            .replace("{tmp}", str(tmp)).replace("{pilot}", str(ctx["pilot"])).replace("{base}", str(ctx["base"])))


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


def _refused(args: list[str], tmp_path: Path, pair_same, monkeypatch, capfd) -> str:
    """Run `pilot ARGS` (placeholders expanded) in-process; it must exit 2 with one line, no traceback, and leave
    every file under tmp_path as it was. Returns that line."""
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    shutil.copytree(CORPUS / "files", tmp_path / "files")
    ctx = {"pilot": pair_same[0], "base": pair_same[1], "made": {}}
    argv = [_expand(a, tmp_path, ctx) for a in args]
    capfd.readouterr()
    before = snapshot(tmp_path)
    code = main(argv)
    err = capfd.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, (code, err[-2000:])
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert snapshot(tmp_path) == before, "a bad input changed or created files"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, tmp_path, pair_same, monkeypatch, capfd):
    line = _refused(case["args"], tmp_path, pair_same, monkeypatch, capfd)
    assert line.startswith("pilot: error: ") or line.startswith("Error: "), line
    assert case["expect"] in line, line
    json.dumps(case)  # the case itself stays plain data


# Every command, each path it reads given as one that does not exist ({missing}); the other arguments valid, so
# that the error can only be about that path. A command added to the CLI must be added here.
W = ["wsd", "generate", "--output", "{tmp}/o.jsonl"]
SRC = ["curate", "--source", "data/demo/generalign/prompts.jsonl", "--output", "{tmp}/c"]
MISSING = {
    "config check": [["config", "check", "{missing}"]],
    "config show": [["config", "show", "--config", "{missing}"]],
    "models tiny": [["models", "tiny", "--spec", "{missing}", "--out", "{tmp}/m"]],
    "models import": [["models", "import", "{missing}", "--out", "{tmp}/m"]],
    "run": [["run", "--config", "{missing}"]],
    "serve": [["serve", "--config", "{missing}", "--interval", "60"]],
    "approval list": [],  # no path arguments
    "approval reject": [],
    "approval approve": [["approval", "approve", "5f0e2a52-8f5e-4c9c-9a51-3d4bb7a2f4a1", "--by", "kim",
                          "--decisions", "{missing}"]],
    "wsd generate": [[*W, "--pilot", "{missing}", "--base", "{base}", "--input", "{made:prompts}"],
                     [*W, "--pilot", "{pilot}", "--base", "{missing}", "--input", "{made:prompts}"],
                     [*W, "--pilot", "{pilot}", "--base", "{base}", "--input", "{missing}"],
                     [*W, "--pilot", "{pilot}", "--base", "{base}", "--input", "{made:prompts}", "--config",
                      "{missing}"],
                     [*W, "--pilot", "{pilot}", "--base", "{base}", "--input", "{made:prompts}", "--method", "eft",
                      "--untuned", "{missing}"],
                     [*W, "--pilot", "{pilot}", "--base", "http://127.0.0.1:9/v1", "--base-model", "b",
                      "--base-tokenizer", "{missing}", "--input", "{made:prompts}"]],
    "wsd serve": [["wsd", "serve", "--pilot", "{missing}", "--base", "{base}"],
                  ["wsd", "serve", "--pilot", "{pilot}", "--base", "{missing}"],
                  ["wsd", "serve", "--pilot", "{pilot}", "--base", "{base}", "--config", "{missing}"]],
    "curate": [["curate", "--config", "{missing}"],
               ["curate", "--source", "{missing}", "--output", "{tmp}/c"],
               [*SRC, "--eval-set", "{missing}"],
               [*SRC, "--tokenizer", "{missing}"],
               [*SRC, "--previous", "{missing}"],
               [*SRC, "--replay", "{missing}"]],
    "review export": [["review", "export", "{missing}", "--out", "{tmp}/r"]],
    "review import": [["review", "import", "{missing}", "--decisions", "{files}/decision-unknown.csv"],
                      ["review", "import", "{made:dataset}", "--decisions", "{missing}"]],
    "review export-pairs": [["review", "export-pairs", "{missing}", "--out", "{tmp}/r"]],
    "review import-pairs": [["review", "import-pairs", "{missing}", "--decisions", "{made:decision_unknown_id}"],
                            ["review", "import-pairs", "{made:dataset}", "--decisions", "{missing}"]],
    "review conflicts": [["review", "conflicts", "{missing}"]],
    "review adjudicate": [["review", "adjudicate", "{missing}", "--id", "x", "--decision", "reject",
                           "--adjudicator", "dana"]],
    "preferences": [["preferences", "--dataset", "{missing}", "--config", "configs/preferences/demo.yaml",
                     "--output", "{tmp}/p"],
                    ["preferences", "--dataset", "{made:dataset}", "--config", "{missing}", "--output", "{tmp}/p"]],
    "train": [["train", "--config", "{missing}"]],
    "train merge": [["train", "merge", "--adapter", "{missing}", "--out", "{tmp}/m"],
                    ["train", "merge", "--adapter", "{made:adapter}", "--base", "{missing}", "--out", "{tmp}/m"]],
    "validate": [["validate", "--config", "{missing}", "--checkpoint", "{made:checkpoint}"],
                 ["validate", "--config", "configs/validation/demo.yaml", "--checkpoint", "{missing}"]],
    "release gate": [["release", "gate", "--config", "{missing}", "--report", "{made:report}"],
                     ["release", "gate", "--config", "configs/release/demo.yaml", "--report", "{missing}"],
                     ["release", "gate", "--config", "configs/release/demo.yaml", "--report", "{made:report}",
                      "--champion-report", "{missing}"]],
    "release publish": [["release", "publish", "--config", "{missing}", "--checkpoint", "{made:checkpoint}",
                         "--report", "{made:report}"],
                        ["release", "publish", "--config", "configs/release/demo.yaml", "--checkpoint", "{missing}",
                         "--report", "{made:report}"],
                        ["release", "publish", "--config", "configs/release/demo.yaml", "--checkpoint",
                         "{made:checkpoint}", "--report", "{missing}"]],
    "release verify": [["release", "verify", "--registry", "{missing}", "--name", "pilot-tiny"]],
    "release list": [["release", "list", "--registry", "{missing}", "--name", "pilot-tiny"]],
    "score": [["score", "--format", "gsm8k", "--input", "{missing}", "--output", "{tmp}/s.jsonl"]],
    "fetch": [["fetch", "--config", "{missing}"]],
}


def _commands(group, prefix=()) -> set[str]:
    import click

    out = set()
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out |= _commands(cmd, (*prefix, name))
        if not isinstance(cmd, click.Group) or cmd.invoke_without_command:
            out.add(" ".join((*prefix, name)))
    return out


def test_every_command_is_walked_with_a_missing_path():
    from flows.cli import cli

    assert set(MISSING) == _commands(cli)
    assert all(sum("{missing}" in a for a in args) == 1 for cases in MISSING.values() for args in cases)


@pytest.mark.parametrize("args", [a for cases in MISSING.values() for a in cases],
                         ids=[f"{c}:{a[a.index('{missing}') - 1]}" for c, cases in MISSING.items() for a in cases])
def test_a_path_that_does_not_exist_is_bad_input(args, tmp_path, pair_same, monkeypatch, capfd):
    """Exit 2 (bad input, not 1: the job never ran), one line that names the path, nothing written."""
    line = _refused(args, tmp_path, pair_same, monkeypatch, capfd)
    assert "such-path" in line, line
