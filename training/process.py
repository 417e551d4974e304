"""Training in a child process that the caller starts and polls.

A multi-hour run must not live inside an orchestrator's process (its heartbeat, its memory, its restarts), and a
killed orchestrator must not leave a trainer writing behind it: the child gets SIGKILL when its parent dies
(Linux), and a rerun resumes from the last complete checkpoint (training.train does that).

Parent: run_training(cfg, run_dir, on_poll=...). Child: python -m training.process RUN_DIR/train.json, which
writes its outcome as RUN_DIR/result.json (the final checkpoints, or the error and its kind) for the parent to
read; a child that died before it could write one (killed, out of memory) is a failure to resume from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pilot_core.errors import JobFailed, UserError
from pilot_core.processes import die_with_parent
from training.config import TrainConfig

LOG = "train.log"
RESULT = "result.json"


def progress(cfg: TrainConfig) -> dict:
    """Where training stands on disk: {stage: {step, max_steps, loss, done}} from the checkpoints' trainer
    states (read by the poller; no trainer involved)."""
    from pilot_core.manifest import read_manifest
    from training.train import last_checkpoint

    out = {}
    for stage in cfg.stages:
        d = Path(cfg.output_dir) / stage
        if (d / "final" / "manifest.json").is_file():
            m = read_manifest(d / "final", kind="checkpoint").data
            out[stage] = {"step": m["steps"], "max_steps": m["steps"], "loss": m["last_loss"], "done": True}
            continue
        ckpt = last_checkpoint(d) if d.is_dir() else None
        if ckpt is None:
            continue
        try:
            st = json.loads((Path(ckpt) / "trainer_state.json").read_text())
        except (OSError, ValueError):
            continue
        losses = [x["loss"] for x in st.get("log_history", []) if "loss" in x]
        out[stage] = {"step": st.get("global_step"), "max_steps": st.get("max_steps"),
                      "loss": losses[-1] if losses else None, "done": False}
    return out


def run_training(cfg: TrainConfig, run_dir: str | Path, *, poll_s: float = 5.0,
                 on_poll: Callable[[dict], None] | None = None) -> dict[str, Path]:
    """Train in a child process (one process, or cfg.distributed with cfg.nproc processes) and wait for it,
    calling on_poll(progress) every poll_s seconds. Returns {stage: final checkpoint}. Bad input in the child is
    a UserError here; any other failure a JobFailed that says a rerun resumes."""
    from pilot_core.atomic import atomic_write_text

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    job, result = run_dir / "train.json", run_dir / RESULT
    atomic_write_text(job, json.dumps({"config": cfg.model_dump(mode="json")}, indent=2))
    result.unlink(missing_ok=True)  # an earlier run's outcome is not this one's
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(run_dir / LOG, "ab") as log:
        child = subprocess.Popen([sys.executable, "-m", "training.process", str(job)], stdout=log,
                                 stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)
        try:
            while child.poll() is None:
                try:
                    child.wait(timeout=poll_s)  # back as soon as the trainer exits, not at the next tick
                except subprocess.TimeoutExpired:
                    pass
                if on_poll is not None:
                    on_poll(progress(cfg))
        except BaseException:  # interrupted: the trainer must not run on unattended
            child.kill()
            child.wait()
            raise
    if on_poll is not None:
        on_poll(progress(cfg))
    outcome = json.loads(result.read_text()) if result.is_file() else {}
    if outcome.get("error") == "bad_input":
        raise UserError(outcome["message"])
    if child.returncode != 0 or "finals" not in outcome:
        why = outcome.get("message") or f"exit {child.returncode}"
        raise JobFailed(f"training failed ({why}); see {run_dir / LOG}; rerunning resumes from the last checkpoint")
    return {s: Path(p) for s, p in outcome["finals"].items()}


def main(job_path: str) -> int:
    """The child: one process trains in place; a preset goes through the distributed launcher. Its outcome goes
    to result.json beside the job (and its error to the log too)."""
    from pilot_core.atomic import atomic_write_text

    result = Path(job_path).with_name(RESULT)
    try:
        job = json.loads(Path(job_path).read_text())
        cfg = TrainConfig.model_validate(job["config"])
        if cfg.distributed is None:
            from training.train import train

            finals = train(cfg)
        else:
            from training.launch import train_distributed

            finals = train_distributed(cfg, cfg.distributed, cfg.nproc)
    except (UserError, JobFailed) as e:
        bad = isinstance(e, UserError)
        print(f"pilot: error: {e}" if bad else f"pilot: {e}", file=sys.stderr, flush=True)
        atomic_write_text(result, json.dumps({"error": "bad_input" if bad else "failed", "message": str(e)}))
        return 2 if bad else 1
    atomic_write_text(result, json.dumps({"finals": {s: str(p) for s, p in finals.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
