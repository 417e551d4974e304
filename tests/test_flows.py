"""The Prefect flows on Prefect's test harness (a real local API server and database): the whole pipeline on
tiny models with its artifacts; a run killed (its ephemeral API up, then mid-training) and rerun; a failed gate;
the approvals."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import PIPELINE as CONFIG
from .helpers import REPO, finish, pilot_run, running, small, still_running, watch

pytestmark = [pytest.mark.slow, pytest.mark.integration]
# not what `auto` picks for the tiny models (sdpa), so the test sees the flows pass the compute section down
EAGER = ["compute.attn_implementation=eager"]


def artifacts(*keys: str) -> dict[str, object]:
    """The latest artifact under each key."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

    with get_client(sync_client=True) as c:
        got = c.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=list(keys))))
    return {a.key: a for a in got}


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flows")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the configs name data/ relative to the checkout


def test_pipeline_flow_runs_green_with_artifacts(prefect_api, shared, pair_same, pair_different, loads):
    from flows.pipeline import pipeline

    state = pipeline(config=CONFIG, overrides=small(shared) + EAGER, return_state=True)
    assert state.is_completed(), state.message
    out = state.result()
    assert Path(out.dataset).parent == shared / "demo" and Path(out.review_page).is_file()
    assert (Path(out.checkpoint) / "manifest.json").is_file()
    assert json.loads((Path(out.report) / "gate.json").read_text())["passed"]
    assert out.release.version == "v1" and (shared / "registry" / "pilot-tiny" / "v1").is_dir()

    got = artifacts(*(f"demo-{k}" for k in ("curation", "review", "preferences", "training", "training-progress",
                                           "validation", "gate", "release")))
    assert len(got) == 8, sorted(got)
    kept = json.loads(got["demo-curation"].data)[0]
    assert kept["stage"] == "kept" and kept["rows"] == json.loads(
        (Path(out.dataset) / "manifest.json").read_text())["data"]["kept"]
    assert got["demo-review"].data.startswith("[review page](file://")
    assert [r["stage"] for r in json.loads(got["demo-training"].data)] == ["sft", "dpo"]
    assert float(got["demo-training-progress"].data) == 100.0
    assert "data:image/png;base64," in got["demo-validation"].data  # the plots travel with the report
    assert got["demo-gate"].data.startswith("# Gate: passed")
    assert "published pilot-tiny v1" in got["demo-release"].data

    # the compute section reached every model: the writers, the trained pilot and the bases (in WSD and validation)
    assert {r.split()[0] for r, _ in loads} == {"model", "pilot", "base"}
    assert all(p["attn_implementation"] == "eager" for _, p in loads)
    for stage in ("sft", "dpo"):  # trained in a child process: the checkpoint records what it ran with
        assert json.loads((Path(out.checkpoint).parent.parent / stage / "final" / "manifest.json").read_text()
                          )["data"]["placement"]["attn_implementation"] == "eager"


def test_failed_gate_fails_the_run_with_reasons(prefect_api, shared, pair_same, pair_different):
    """Same stages as above (all reused), a gate no pilot passes: exit 1, the reasons on stderr and as an
    artifact, the flow run Failed (not Crashed), nothing published."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    before = sorted(p.name for p in (shared / "registry" / "pilot-tiny").iterdir())
    p = pilot_run(small(shared) + EAGER + ["release.gate.metrics.win_rate.floor=100"], prefect_api)
    stdout, stderr = finish(p)
    assert p.returncode == 1, stderr
    assert "curate generalign: reusing" in stderr and "train: reusing" in stderr
    last = stderr.strip().splitlines()
    assert "pilot: gate failed; nothing published:" in stderr and "Traceback" not in stderr
    assert any("win_rate" in line and "floor" in line for line in last[-6:]), last[-6:]
    assert sorted(p.name for p in (shared / "registry" / "pilot-tiny").iterdir()) == before
    got = artifacts("demo-gate", "demo-training-progress")
    assert got["demo-gate"].data.startswith("# Gate: FAILED") and "floor" in got["demo-gate"].data
    assert float(got["demo-training-progress"].data) == 100.0  # reused training is finished training
    with get_client(sync_client=True) as c:
        (run,) = c.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["pilot-pipeline"])),
                                  sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert run.state.is_failed() and "gate failed" in run.state.message


def test_a_killed_run_leaves_no_process_behind_and_its_rerun_resumes(tmp_path, pair_same, pair_different):
    """`pilot run` on its own ephemeral API, SIGKILLed (the OOM killer, a lost node) twice: while the API server
    is up, and mid-training. Nothing it started outlives it (PR_SET_PDEATHSIG on the API server and the trainer).
    The rerun resumes training from the last checkpoint without redoing curation."""
    overrides = small(tmp_path) + ["training.sft.max_steps=600", "training.sft.save_steps=20",
                                   "training.sft.per_device_train_batch_size=2"]
    p = pilot_run(overrides, None)
    seen = watch(p, lambda seen: running(seen, "prefect.server.api.server:create_app"))
    assert running(seen, "uvicorn"), finish(p)[1][-3000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not still_running(seen), still_running(seen)

    p = pilot_run(overrides, None)

    def mid_training(seen) -> bool:
        return any((c / "trainer_state.json").is_file() for c in tmp_path.glob("demo/train-*/sft/checkpoint-*"))

    seen = watch(p, mid_training)
    ckpts = list(tmp_path.glob("demo/train-*/sft/checkpoint-*"))
    assert ckpts, finish(p)[1][-3000:]
    (train_dir,) = {c.parent.parent for c in ckpts}
    assert not (train_dir / "sft" / "final").exists()  # killed mid-training, not after
    assert running(seen, str(train_dir / "train.json")) and running(seen, "uvicorn"), seen
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not still_running(seen), still_running(seen)
    (dataset,) = tmp_path.glob("demo/curate-*")
    stamp = (dataset / "manifest.json").stat().st_mtime_ns

    p = pilot_run(overrides, None)
    stdout, stderr = finish(p)
    assert p.returncode == 0, stderr[-3000:]
    assert "curate generalign: reusing" in stderr and (dataset / "manifest.json").stat().st_mtime_ns == stamp
    sft = json.loads((train_dir / "sft" / "final" / "manifest.json").read_text())["data"]
    assert sft["steps"] == 600 and Path(sft["resumed_from"]).name.startswith("checkpoint-")
    assert f"(resumed from {Path(sft['resumed_from']).name})" in stderr
    assert (tmp_path / "registry" / "pilot-tiny" / "v1").is_dir()
    assert "Error logging to API" not in stderr


def _wait_paused(what: str, timeout: float = 600) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as c:
            runs = c.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
                type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
        for r in runs:
            if r.state.state_details.pause_key == what:
                return str(r.id)
        time.sleep(1)
    raise AssertionError(f"no run paused for {what}")


def pilot_cli(*args, api: str):
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PREFECT_API_URL": api}, timeout=120)


def test_approvals_pause_for_the_data_team_and_the_release_owner(prefect_api, tmp_path, pair_same,
                                                                 pair_different):
    import pyarrow.parquet as pq

    overrides = small(tmp_path) + ["approvals.curation.poll_s=1", "approvals.preferences.poll_s=1",
                                   "approvals.release.poll_s=1"]
    p = pilot_run(overrides, prefect_api)
    run_id = _wait_paused("curation")
    r = pilot_cli("approval", "list", api=prefect_api)
    assert run_id in r.stdout and "waits for: curation" in r.stdout
    (dataset,) = tmp_path.glob("demo/curate-*")
    with open(next(tmp_path.glob("demo/review-curate-*/review.csv")), newline="") as f:
        kept = [r for r in csv.DictReader(f) if r["set"] == "kept"][:2]
    decisions = tmp_path / "decisions.csv"  # the data team's answers: two sampled prompts rejected
    decisions.write_text("id,decision,note,export\n" + "".join(f"{r['id']},reject,off-topic,{r['export']}\n"
                                                                for r in kept))
    r = pilot_cli("approval", "approve", run_id, "--by", "data team", "--decisions", str(decisions), api=prefect_api)
    assert r.returncode == 0, r.stderr

    run_id = _wait_paused("preferences")  # the pairs, before anything trains on them
    (prefs,) = [d for d in tmp_path.glob("demo/preferences-*") if d.is_dir()]  # not the call cache beside it
    assert not list(tmp_path.glob("demo/train-*"))
    with open(next(tmp_path.glob("demo/review-preferences-*/review.csv")), newline="") as f:
        pairs = list(csv.DictReader(f))
    flip, drop = pairs[0], pairs[1]
    decisions = tmp_path / "pairs.csv"  # one pair flipped, one rejected with the judge marked wrong
    decisions.write_text(f"id,decision,judge_wrong,export\n{flip['id']},flip,,{flip['export']}\n"
                         f"{drop['id']},reject,yes,{drop['export']}\n")
    r = pilot_cli("approval", "approve", run_id, "--by", "data team", "--decisions", str(decisions), api=prefect_api)
    assert r.returncode == 0, r.stderr

    run_id = _wait_paused("release")  # the gate passed; nothing is published before the owner says so
    assert not (tmp_path / "registry" / "pilot-tiny").exists()
    r = pilot_cli("approval", "reject", run_id, "--by", "owner", "--note", "not this week", api=prefect_api)
    assert r.returncode == 0, r.stderr
    _, stderr = finish(p)
    assert p.returncode == 1 and "pilot: release rejected by owner: not this week" in stderr
    assert not (tmp_path / "registry" / "pilot-tiny").exists()
    excluded = pq.read_table(dataset / "excluded.parquet").to_pylist()
    assert sorted(r["id"] for r in excluded if r["stage"] == "review") == sorted(r["id"] for r in kept)
    assert json.loads(next(tmp_path.glob("demo/approvals/curation-*.json")).read_text())["by"] == "data team"
    # the trainer read the reviewed pairs: the flipped one flipped, the rejected one gone
    from pilot_core.manifest import fingerprint
    from training.data import load_split

    split, data_fp = load_split(prefs, "dpo")
    trained = {r["prompt"][-1]["content"]: r for r in split}
    assert trained[flip["prompt"]]["chosen"][0]["content"] == flip["rejected"]
    assert trained[flip["prompt"]]["rejected"][0]["content"] == flip["chosen"] and drop["prompt"] not in trained
    (dpo_final,) = tmp_path.glob("demo/train-*/dpo/final")
    assert json.loads((dpo_final / "manifest.json").read_text())["inputs"]["dataset"] == data_fp == \
        fingerprint(prefs / "dataset")
    (report,) = tmp_path.glob("demo/validation-*/report.json")
    assert json.loads(report.read_text())["checkpoint"]["pair_review"] == {
        "pairs_reviewed": 2, "judge_wrong": 2, "judge_disagreement": 1.0}
    assert "Training pairs reviewed by the data team: 2; they found the preference judge wrong on 2 (100% judge " \
        "disagreement)" in report.with_name("report.md").read_text()

    p = pilot_run(overrides, prefect_api)  # asks the owner again, not the data team
    run_id = _wait_paused("release")
    r = pilot_cli("approval", "approve", run_id, "--by", "owner", "--note", "ship it", api=prefect_api)
    assert r.returncode == 0, r.stderr
    stdout, stderr = finish(p)
    assert p.returncode == 0, stderr[-3000:]
    assert "curation: approved earlier by data team" in stderr
    assert "preferences: approved earlier by data team" in stderr
    release = json.loads((tmp_path / "registry" / "pilot-tiny" / "v1" / "release.json").read_text())
    assert release["sign_off"]["by"] == "owner" and release["sign_off"]["note"] == "ship it"
