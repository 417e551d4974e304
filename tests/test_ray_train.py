"""Training on Ray Train for real: `pilot train --launcher ray --distributed zero2 --nproc 2` on a local Ray cluster
(`ray start --head`, 2 CPUs: the session's ray_head) trains to the losses torchrun trains to on the same config; a
worker killed mid-run fails the command with one clear error, and rerunning it, on a Ray the command starts itself
(no RAY_ADDRESS: on loopback) and with the workers' disk lost, resumes from the checkpoint on storage."""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from .helpers import FAST, PILOT, PREF_PROMPTS, REPO, RUNNING, TINY, descendants, processes, still_running

STEPS = 12  # checkpoints every 2 steps: a kill after the first registered one leaves steps to resume


@pytest.fixture(scope="module")
def chats(tmp_path_factory) -> Path:
    """A small dataset with an `sft` split, written directly (the preferences pipeline costs minutes here)."""
    import datasets

    from pilot_core.manifest import Manifest, write_manifest

    d = tmp_path_factory.mktemp("chats")
    rows = [{"messages": [{"role": "user", "content": prompt},
                          {"role": "assistant", "content": f"Answer {i}: {prompt}"}]}
            for i, (_, prompt) in enumerate(PREF_PROMPTS * 2)]
    datasets.DatasetDict({"sft": datasets.Dataset.from_list(rows)}).save_to_disk(str(d / "dataset"))
    write_manifest(d, Manifest(kind="dataset", data={"sft": len(rows)}))
    return d


def _config(tmp: Path, chats: Path, name: str) -> Path:
    c = {"model": TINY, "dataset": str(chats), "output_dir": str(tmp / name), "stages": ["sft"],
         "sft": {**FAST, "max_steps": STEPS, "learning_rate": 1e-3}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(c))
    return path


def _args(config: Path, launcher: str) -> list[str]:
    return [*PILOT, "train", "--config", str(config), "--distributed", "zero2", "--nproc", "2", "--launcher", launcher]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, **extra}


def _losses(run: Path) -> dict[int, float]:
    """{step: loss} of the run's SFT stage, as its checkpoint's manifest records them."""
    m = json.loads((run / "sft" / "final" / "manifest.json").read_text())
    return {x["step"]: x["loss"] for x in m["data"]["log_history"] if "loss" in x}


@pytest.fixture(scope="module")
def torchrun_losses(chats, tmp_path_factory):
    """The per-step losses of the same config trained by the torchrun launcher."""
    tmp = tmp_path_factory.mktemp("torchrun")
    r = subprocess.run(_args(_config(tmp, chats, "run"), "torchrun"), cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    losses = _losses(tmp / "run")
    assert list(losses) == list(range(1, STEPS + 1))
    return losses


@pytest.mark.slow
@pytest.mark.integration
def test_ray_trains_to_the_torchrun_losses(ray_head, torchrun_losses, chats, tmp_path):
    r = subprocess.run(_args(_config(tmp_path, chats, "run"), "ray"), cwd=REPO, capture_output=True, text=True,
                       env=_env(**ray_head.env), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _losses(tmp_path / "run") == pytest.approx(torchrun_losses, rel=1e-6, abs=0)
    out = r.stdout + r.stderr
    assert re.search(r"\(RayTrainWorker pid=\d+\).*'loss'", out)  # the workers' logs came back to the caller
    [kept] = list((tmp_path / "run" / "ray").iterdir())  # storage: the latest checkpoint (Ray keeps one) and final
    assert (kept / f"sft-checkpoint-{STEPS}" / "trainer_state.json").is_file()
    assert (kept / "sft-final" / "manifest.json").is_file() and (kept / "sft-run.json").is_file()
    assert not (kept / "sft-checkpoint-2").exists()


def _workers(p: subprocess.Popen, *logs: Path, timeout_s: float = 300) -> dict[int, int]:
    """{rank: pid} of the run's Ray Train workers, read from what Ray's controller logs to the caller."""
    deadline = time.monotonic() + timeout_s
    while p.poll() is None and time.monotonic() < deadline:
        text = "".join(f.read_text() for f in logs)
        ranks = {int(r): int(pid) for pid, r in re.findall(r"pid=(\d+)\) world_rank=(\d+)", text)}
        if len(ranks) == 2:
            return ranks
        time.sleep(0.1)
    raise AssertionError("".join(f.read_text() for f in logs)[-3000:])


@pytest.mark.slow
@pytest.mark.integration
def test_stopping_the_caller_stops_its_workers(ray_head, chats, tmp_path):
    """SIGTERM to `pilot train` (what a scheduler sends to stop it) ends its Ray job: the workers and Ray Train's
    controller end, the cluster stays (and has its CPUs back: the next test needs both)."""
    config = _config(tmp_path, chats, "run")
    config.write_text(config.read_text().replace(f"max_steps: {STEPS}", "max_steps: 100000"))
    err = tmp_path / "output"
    p = subprocess.Popen(_args(config, "ray"), cwd=REPO, stdout=open(err, "w"), stderr=subprocess.STDOUT,
                         env=_env(**ray_head.env))
    RUNNING.append(p)
    ranks = _workers(p, err)
    controller = {int(pid) for pid in re.findall(r"\(TrainController pid=(\d+)\)", err.read_text())}
    procs = processes()
    actors = {pid: procs[pid][1:] for pid in {*ranks.values(), *controller} if pid in procs}
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == 130, err.read_text()[-3000:]  # taken as Ctrl-C: the run aborted, then ended
    assert len(actors) == 3 and not still_running(actors, patience_s=60), still_running(actors)


def _registered(run: Path) -> list[str]:
    """The checkpoints Ray Train has registered for the run (its snapshot on storage)."""
    for snap in (run / "ray").glob("*/checkpoint_manager_snapshot.json"):
        return re.findall(r"sft-checkpoint-\d+", snap.read_text())
    return []


def _listening(pid: int) -> set[str]:
    """The addresses a process listens on (an IPv4 address on an IPv6 socket as IPv4)."""
    import ipaddress

    import psutil

    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return set()
    ips = (ipaddress.ip_address(c.laddr.ip) for c in conns if c.status == "LISTEN")
    return {str(getattr(ip, "ipv4_mapped", None) or ip) for ip in ips}


@pytest.mark.slow
@pytest.mark.integration
def test_a_killed_worker_fails_the_run_and_a_rerun_resumes_from_storage(ray_head, torchrun_losses, chats, tmp_path):
    config, run = _config(tmp_path, chats, "run"), tmp_path / "run"
    out, err = tmp_path / "killed.out", tmp_path / "killed.err"
    # the controller polls the workers every 2 s by default: sooner, so a checkpoint is registered well before the end
    p = subprocess.Popen(_args(config, "ray"), cwd=REPO, stdout=open(out, "w"), stderr=open(err, "w"),
                         env=_env(**ray_head.env, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2"))
    RUNNING.append(p)
    ranks = _workers(p, out, err)
    deadline = time.monotonic() + 300
    while p.poll() is None and not _registered(run) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.poll() is None and _registered(run), err.read_text()[-3000:]
    procs = processes()
    workers = {pid: procs[pid][1:] for pid in ranks.values() if pid in procs}
    os.kill(ranks[1], signal.SIGKILL)  # the rank-1 worker actor's process
    assert p.wait(timeout=120) == 1, err.read_text()[-3000:]
    last = err.read_text().strip().splitlines()[-1]
    assert last.startswith("pilot: training on Ray failed (") and f"pid {ranks[1]}" in last, last
    assert last.endswith("rerun the same command to resume from the last checkpoint"), last
    assert not still_running(workers, patience_s=30)  # rank 0 too: the job's actors end with it

    kept = _registered(run)[-1]
    shutil.rmtree(run / "sft")  # the workers' disk is lost: the rerun has only what storage kept
    out, err = tmp_path / "rerun.out", tmp_path / "rerun.err"
    p = subprocess.Popen(_args(config, "ray"), cwd=REPO, stdout=open(out, "w"), stderr=open(err, "w"), env=_env())
    RUNNING.append(p)
    seen, bound, titles = {}, {}, {}  # every process of the Ray it starts, where each listens, what it was called
    while p.poll() is None:
        seen.update(descendants(p.pid))
        for pid, (_, cmd) in seen.items():
            bound.setdefault(pid, set()).update(_listening(pid))
            titles.setdefault(pid, set()).add(cmd.split()[0] if cmd.strip() else "")
        time.sleep(0.5)
    assert p.wait(timeout=600) == 0, err.read_text()[-3000:]
    # Ray's own servers; not the training workers, where rank 0 also serves torch's rendezvous store (TCPStore), which
    # listens on every interface whatever MASTER_ADDR says, under torchrun too
    servers = {" | ".join(sorted(titles[pid])): ips for pid, ips in bound.items()
               if ips and not any("RayTrainWorker" in t or "torch_process_group" in t for t in titles[pid])}
    assert any("gcs_server" in t for t in servers) and any("raylet" in t for t in servers), servers
    assert set().union(*servers.values()) == {"127.0.0.1"}, servers  # on loopback only
    # the Ray it started ended with it (Ray's agents leave on their own once they see the raylet gone: slowly on a busy
    # machine)
    assert not still_running(seen, patience_s=90), still_running(seen)
    m = json.loads((run / "sft" / "final" / "manifest.json").read_text())
    assert m["data"]["resumed_from"].endswith(kept.replace("sft-", "sft/")), m["data"]["resumed_from"]
    assert _losses(run) == pytest.approx(torchrun_losses, rel=1e-6, abs=0)


def test_ray_missing_or_unreachable_is_one_clear_error(tmp_path):
    """Said before anything else is checked or started (the dataset here does not exist)."""
    from pilot_core.processes import free_port

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": TINY, "dataset": str(tmp_path / "none"),
                                      "output_dir": str(tmp_path / "run")}))
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    r = subprocess.run(_args(config, "ray"), cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=_env(PYTHONPATH=str(stub)))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "pilot: error: --launcher ray needs Ray Train, which is not installed (No module named 'ray'): "
        "pip install '.[ray]'"]
    address = f"127.0.0.1:{free_port()}"
    r = subprocess.run(_args(config, "ray"), cwd=REPO, capture_output=True, text=True, timeout=120,
                       env=_env(RAY_ADDRESS=address))
    assert r.returncode == 2, r.stderr
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"pilot: error: RAY_ADDRESS {address}: no Ray cluster answers there"), line
