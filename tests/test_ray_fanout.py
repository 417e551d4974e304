"""Validation's generation jobs fanned out as Ray tasks (`validation.engine: ray`) on a real local Ray cluster
(`ray_head`: `ray start --head`, 2 CPUs, loopback), through `pilot validate` as a user runs it: the same report as
the local engine; a rerun runs only the job that is missing; a failed job is one error naming it, the other jobs'
generations kept; a job no node can hold is refused before anything runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .helpers import PILOT, REPO, checkpoint, stable

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def world(tmp_path_factory, pair_same):
    """A tiny checkpoint, a validation config with two bases (the same tiny base under two names: one model to
    build) and three methods (pilot_only shared by both), and the local engine's report of it."""
    tmp = tmp_path_factory.mktemp("fanout")
    cfg = {"name": "fanout",
           "bases": [{"name": "base-same", "path": str(pair_same[1])},
                     {"name": "base-other", "path": str(pair_same[1])}],
           "methods": ["wsd", "base_only", "pilot_only"],
           "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "limit": 3,
                          "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")},
                         {"name": "math", "version": "v1", "kind": "math", "limit": 3,
                          "path": str(REPO / "data/demo/eval/math.v1.jsonl")}],
           "metrics": {"harmlessness": {"kind": "refusal_rules"}, "win_rate": {"kind": "rules"},
                       "bootstrap_samples": 100},
           "wsd": {"max_draft_tokens": 8, "max_new_tokens": 12, "window": 4}}
    (tmp / "v.yaml").write_text(yaml.safe_dump(cfg))
    w = {"tmp": tmp, "cfg": cfg, "config": tmp / "v.yaml", "ckpt": checkpoint(tmp, {"pilot": pair_same[0]})}
    r = validate(w, tmp / "local", env={})
    assert r.returncode == 0, r.stderr[-3000:]
    return w


def validate(world, out: Path, *extra: str, env: dict, config: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*PILOT, "validate", "--config", str(config or world["config"]), "--checkpoint",
                           str(world["ckpt"]), "--output", str(out), *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def figures(out: Path) -> dict:
    """What a report says, without clock readings: report.json, items.jsonl, report.md and every generation."""
    gens = {str(p.relative_to(out)): [stable(json.loads(x)) for x in p.read_text().splitlines()]
            for p in sorted((out / "generations").rglob("*.jsonl"))}
    md = re.sub(r"\d+\.\d+ s\b", "T s", (out / "report.md").read_text())  # the time-per-item column
    return {"report": stable(json.loads((out / "report.json").read_text())), "items": (out / "items.jsonl")
            .read_text(), "md": md, "generations": gens}


def test_the_ray_engine_writes_the_local_engines_report_and_resumes_by_job(world, ray_head):
    out = world["tmp"] / "ray"
    r = validate(world, out, "--engine", "ray", env=ray_head.env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "generation jobs (ray)" in r.stderr or "base-same" in r.stdout
    local = figures(world["tmp"] / "local")
    assert len(local["generations"]) == 10  # 2 sets x (2 bases x 2 methods + pilot_only once)
    assert figures(out) == local

    # a crash after all but one job: the rerun runs that job only, and the report is the same again
    missing = out / "generations" / "math" / "base-other" / "wsd.jsonl"
    for p in (missing, missing.with_name("wsd.jsonl.meta.json"), out / "report.json"):
        p.unlink()
    kept = {p: p.stat().st_mtime_ns for p in (out / "generations").rglob("*.jsonl")}
    r = validate(world, out, "--engine", "ray", env=ray_head.env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept and missing.is_file()
    assert figures(out) == local


def test_a_failed_job_is_one_error_naming_it_and_the_others_are_kept(world, ray_head):
    broken = shutil.copytree(world["cfg"]["bases"][1]["path"], world["tmp"] / "broken-base")
    (broken / "config.json").write_text("{")
    cfg = {**world["cfg"], "bases": [*world["cfg"]["bases"], {"name": "broken", "path": str(broken)}],
           "eval_sets": world["cfg"]["eval_sets"][:1], "methods": ["wsd", "base_only"]}  # 6 jobs
    (config := world["tmp"] / "broken.yaml").write_text(yaml.safe_dump(cfg))
    out = world["tmp"] / "with-broken"
    r = validate(world, out, "--engine", "ray", env=ray_head.env, config=config)
    assert r.returncode == 2, r.stderr[-3000:]  # the job's UserError: bad input, as in-process
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pilot: error: 2 of 6 generation jobs failed on Ray (harmful/broken/base_only, "
                           "harmful/broken/wsd: UserError: base broken "), last  # one line for the same error
    assert "config.json' is not a valid JSON file" in last and "Traceback" not in r.stderr
    local = figures(world["tmp"] / "local")["generations"]
    got = {str(p.relative_to(out)): [stable(json.loads(x)) for x in p.read_text().splitlines()]
           for p in sorted((out / "generations").rglob("*.jsonl"))}
    assert len(got) == 4 and got == {k: local[k] for k in got}  # the other jobs finished, as the local engine's
    assert not (out / "report.json").exists()


def test_a_job_no_node_can_hold_is_refused_before_anything_runs(world, ray_head):
    out = world["tmp"] / "too-big"
    r = validate(world, out, "--engine", "ray", "--set", "ray.bases.base-other.num_gpus=2", env=ray_head.env)
    assert r.returncode == 2, r.stderr[-3000:]
    # our last line; Ray's own processes may log to the driver's stderr after it (a raylet's disk warning, say)
    last = [line for line in r.stderr.strip().splitlines() if "(raylet)" not in line][-1]
    assert "validation.ray.bases.base-other: job harmful/base-other/wsd asks for 1 CPU and 2 GPU" in last, last
    assert "2 CPU/0 GPU" in last and not (out / "generations").exists()


def test_resources_name_bases_the_run_has(world):
    r = validate(world, world["tmp"] / "unused", "--set", "ray.bases.base-typo.num_gpus=1", env={})
    assert r.returncode == 2 and "ray.bases: no base named 'base-typo'" in r.stderr, r.stderr
