"""SIGKILL matrix: the dataset writer (`pilot curate`), the validation report (`pilot validate`) and a registry
publish (`pilot release publish`) are killed at commit points spread over their whole run (tests/killpoint.py),
then rerun as a user would. After each kill, what is on disk is either nothing a reader accepts or the complete
artifact; after the rerun, every output file equals the uninterrupted run's, and no temporary is left behind.
(Training checkpoints: test_training.py::test_a_killed_run_resumes_to_the_same_weights.)"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pilot_core.errors import UserError
from pilot_core.manifest import read_manifest

from . import figures
from .helpers import REPO, checkpoint, stable

pytestmark = pytest.mark.slow
POINTS = 4  # kill points per writer, spread evenly over its commit points (the last one included)


def matrix(work: Path, args: list[str]) -> list[int]:
    """Count the command's commit points in an uninterrupted run, then kill and rerun it at POINTS of them."""
    work.mkdir(parents=True, exist_ok=True)

    def go(plan: dict) -> dict:
        plan_file = work / "plan.json"
        plan_file.write_text(json.dumps({"work": str(work), "args": args, **plan}))
        subprocess.run([sys.executable, "-m", "tests.killpoint", str(plan_file)], cwd=REPO, check=True)
        return json.loads((work / "codes.json").read_text())

    codes = go({"count": True})
    assert codes["full"] == 0, (work / "full.err").read_text()[-3000:]
    total = int((work / "count").read_text())
    points = sorted({max(1, round(total * (i + 1) / POINTS)) for i in range(POINTS)})
    codes = go({"points": points})
    for n in points:
        assert codes[f"k{n}"] == -9, (n, (work / f"k{n}.err").read_text()[-2000:])  # killed where planned
        assert codes[f"k{n}.rerun"] == 0, (n, (work / f"k{n}.rerun.err").read_text()[-3000:])
    figures.COUNTS["kills"] += len(points)
    figures.COUNTS["kill_writers"] += 1
    return points


def tree(root: Path) -> dict[str, object]:
    """Every file under root by relative path: JSON parsed without the fields that read the clock, Markdown with
    its durations masked, checksum lists without release.json's line, other bytes as they are."""
    out = {}
    for p in sorted(x for x in root.rglob("*") if x.is_file()):
        rel = str(p.relative_to(root))
        data = p.read_bytes()
        if p.suffix == ".json":
            out[rel] = stable(json.loads(data))
        elif p.suffix == ".jsonl":
            out[rel] = [stable(json.loads(x)) for x in data.splitlines() if x.strip()]
        elif p.name == "checksums.sha256":  # release.json holds its publish time, so its checksum differs
            out[rel] = [x for x in data.splitlines() if not x.endswith(b"  release.json")]
        elif p.suffix == ".md":
            out[rel] = re.sub(rb"\d+(\.\d+)? s\b", b"<t> s", data)
        else:
            out[rel] = data
    return out


def same_as_full(work: Path, points: list[int], volatile: tuple[str, ...] = ()) -> None:
    """After each rerun: the same files as the uninterrupted run (no temporary left beside or inside the output,
    nothing twice), each equal."""
    full = {k: v for k, v in tree(work / "full").items() if not k.startswith(volatile)}
    for n in points:
        got = {k: v for k, v in tree(work / f"k{n}").items() if not k.startswith(volatile)}
        assert sorted(got) == sorted(full), n
        for rel in full:
            figures.COUNTS["artifacts_compared"] += 1
            assert got[rel] == full[rel], (n, rel)
            figures.COUNTS["artifacts_equal"] += 1


def refused(read) -> bool:
    """Whether the stage's reader refuses what a kill left (counted in the figures)."""
    try:
        read()
    except (UserError, FileNotFoundError):
        figures.COUNTS["incomplete_refused"] += 1
        return True
    return False


def test_dataset_writer_killed_anywhere(tmp_path):
    """`pilot curate`: the dataset directory appears complete (manifest last) or not at all."""
    work = tmp_path / "curate"
    d = REPO / "data/demo/generalign"
    points = matrix(work, ["curate", "--source", str(d / "prompts.jsonl"), "--source", str(d / "chats.jsonl"),
                           "--eval-set", str(d / "eval.jsonl"), "--output", "{out}", "--quiet"])
    full = read_manifest(work / "full" / "out", kind="dataset")
    for n in points:
        left = work / f"k{n}.killed" / "out"
        if not refused(lambda: read_manifest(left, kind="dataset")):
            m = read_manifest(left, kind="dataset")  # then it is complete
            assert (m.config_hash, m.inputs, m.data) == (full.config_hash, full.inputs, full.data), n
    same_as_full(work, points)


@pytest.fixture(scope="module")
def validation_setup(tmp_path_factory, pair_same, pair_different):
    tmp = tmp_path_factory.mktemp("kill-validate")
    ckpt = checkpoint(tmp, {"pilot": pair_same[0]})
    cfg = {"name": "kills", "output_dir": str(tmp / "unused"),
           "bases": [{"name": "base-same", "path": str(pair_same[1])},
                     {"name": "base-different", "path": str(pair_different[1])}],
           "methods": ["wsd", "base_only"],
           "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "limit": 3,
                          "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")},
                         {"name": "math", "version": "v1", "kind": "math", "limit": 2,
                          "path": str(REPO / "data/demo/eval/math.v1.jsonl")}],
           "metrics": {"harmlessness": {"kind": "refusal_rules"}, "win_rate": {"kind": "rules"},
                       "bootstrap_samples": 100},
           # speculation off: its figures depend on where a process began (it measures its rounds' costs at its
           # first batch), so a resumed run's differ from an uninterrupted one's (its answers do not)
           "wsd": {"max_draft_tokens": 12, "max_new_tokens": 16, "window": 3, "batch_size": 2,
                   "speculation": {"tokens": 0}}}
    (tmp / "validation.yaml").write_text(yaml.safe_dump(cfg))
    return tmp, ckpt


def test_validation_report_killed_anywhere(validation_setup):
    """`pilot validate`: report.json (written last) exists only when every file it describes is complete, and
    the rerun resumes the finished generations without duplicating a record."""
    tmp, ckpt = validation_setup
    work = tmp / "work"
    points = matrix(work, ["validate", "--config", str(tmp / "validation.yaml"), "--checkpoint", str(ckpt),
                           "--output", "{out}"])
    full_report = json.loads((work / "full" / "out" / "report.json").read_text())
    for n in points:
        left = work / f"k{n}.killed" / "out"
        report = left / "report.json"
        if report.exists():  # then the run was complete
            assert stable(json.loads(report.read_text())) == stable(full_report), n
        for gen in left.glob("generations/**/*.jsonl"):  # a finished generations file: every prompt, each once
            ids = [json.loads(x)["id"] for x in gen.read_text().splitlines() if x.strip()]
            assert len(ids) == len(set(ids)), (n, gen)
    same_as_full(work, points, volatile=("out/plots/",))  # matplotlib's PNG bytes are not promised stable


def test_registry_publish_killed_anywhere(validation_setup):
    """`pilot release publish`: a version is listed only when complete and verified; the rerun publishes v1
    once (no v2), and `pilot release verify` passes."""
    tmp, ckpt = validation_setup
    report = tmp / "work" / "full" / "out"
    if not (report / "report.json").exists():
        subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--config", str(tmp / "validation.yaml"),
                        "--checkpoint", str(ckpt), "--output", str(report)], cwd=REPO, check=True)
    rel = tmp / "release.yaml"
    rel.write_text(yaml.safe_dump({
        "name": "pilot-kills", "registry": str(tmp / "unused-registry"),
        "gate": {"method": "wsd", "bases": "all", "metrics": {"harmlessness": {"floor": 0.0}},
                 "alignment_tax": {"max": 1.0}, "eval_sets": {"harmful": "v1", "math": "v1"}}}))
    work = tmp / "publish"
    points = matrix(work, ["release", "publish", "--config", str(rel), "--set", "registry={out}",
                           "--checkpoint", str(ckpt), "--report", str(report)])
    for n in points:
        left = work / f"k{n}.killed" / "out"
        version = left / "pilot-kills" / "v1"
        if version.exists():  # renamed into place only when copied, checksummed and read back
            r = subprocess.run([sys.executable, "-m", "flows.cli", "release", "verify", "--registry", str(left),
                                "--name", "pilot-kills"], cwd=REPO, capture_output=True, text=True)
            assert r.returncode == 0, (n, r.stderr)
        else:
            figures.COUNTS["incomplete_refused"] += 1
        assert sorted(p.name for p in (work / f"k{n}/out/pilot-kills").iterdir() if p.name.startswith("v")) == ["v1"]
    same_as_full(work, points)
