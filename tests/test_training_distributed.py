"""DeepSpeed ZeRO-2 and ZeRO-3 for real: 2 processes on CPU (gloo), launched by `pilot train --distributed` through
accelerate and torchrun."""

import json
import socket
import subprocess
import sys

import pytest
import torch
import yaml

from .helpers import FAST, REPO, TINY

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize("preset,stages,launcher", [("zero2", ["sft"], "accelerate"),
                                                     ("zero3", ["sft", "dpo"], "torchrun")])
def test_two_processes_save_a_loadable_checkpoint(prefs, tmp_path, preset, stages, launcher):  # noqa: F811
    from transformers import AutoModelForCausalLM, AutoTokenizer

    c = {"model": TINY, "dataset": str(prefs), "output_dir": str(tmp_path / "run"), "stages": stages,
         "sft": {**FAST, "learning_rate": 1e-3}, "dpo": {**FAST, "learning_rate": 1e-3}}
    d = tmp_path / "configs" / "training"
    d.mkdir(parents=True)
    (d / "c.yaml").write_text(yaml.safe_dump(c))
    with socket.socket() as busy:  # another run's rendezvous on the port the launcher once always took
        busy.bind(("127.0.0.1", 29531))
        busy.listen()
        r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "c.yaml"),
                            "--distributed", preset, "--nproc", "2", "--launcher", launcher], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for stage in stages:
        final = tmp_path / "run" / stage / "final"
        m = json.loads((final / "manifest.json").read_text())
        assert m["data"]["steps"] == 4 and (final / "model.safetensors").is_file()
        model = AutoModelForCausalLM.from_pretrained(final)  # full weights (ZeRO-3: gathered on save)
        tok = AutoTokenizer.from_pretrained(final)
        with torch.no_grad():
            logits = model(torch.tensor([tok("hello there").input_ids])).logits
        assert torch.isfinite(logits).all()


def test_a_killed_launch_leaves_no_worker_behind(prefs, tmp_path):
    """torchrun starts its workers in a session of their own; when `pilot train` is SIGKILLed, torchrun dies with
    it (PR_SET_PDEATHSIG) and so does each worker (it asks to, first thing)."""
    import signal

    from .helpers import RUNNING, still_running, watch

    c = {"model": TINY, "dataset": str(prefs), "output_dir": str(tmp_path / "run"), "stages": ["sft"],
         "sft": {**FAST, "max_steps": 100000}}
    d = tmp_path / "configs" / "training"
    d.mkdir(parents=True)
    (d / "c.yaml").write_text(yaml.safe_dump(c))
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "c.yaml"), "--distributed",
                          "zero2", "--nproc", "2", "--launcher", "torchrun"], cwd=REPO, stdout=subprocess.DEVNULL,
                         stderr=open(tmp_path / "stderr", "w"))
    RUNNING.append(p)  # killed after the test whatever happens (a leftover would hold the rendezvous port)

    def workers(seen) -> int:
        return sum("training.worker" in cmd and "torch.distributed.run" not in cmd for _, cmd in seen.values())

    seen = watch(p, lambda seen: workers(seen) == 2, timeout_s=300)
    assert workers(seen) == 2, (tmp_path / "stderr").read_text()[-3000:]
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not still_running(seen), still_running(seen)
