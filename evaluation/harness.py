"""Capability tasks through lm-evaluation-harness: the field's own harness scores WSD and base-only.

For each base, `pilot wsd serve` serves the checkpoint as pilot with that base (WSD), and the base alone with the
same template (`--method base_only`); lm-eval's `local-chat-completions` model runs the tasks against each, with
its samples logged. Each item's score becomes a row like the native capability sets' (`correct`), so accuracy,
its interval and the paired alignment tax are computed the same way.

Output: harness/<base>/<method>/ (lm-eval's results and samples, the server's log); a finished run is reused.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from evaluation.config import EvalSpec, HarnessConfig
from pilot_core.atomic import atomic_write_json
from pilot_core.errors import JobFailed, UserError
from pilot_core.models.source import ModelSource
from pilot_core.names import safe_join
from pilot_core.report import EvalSetIdentity
from wsd_inference.server_process import WSDServer

METHODS = ("wsd", "base_only")  # what the WSD server serves


def server_args(checkpoint: Path, base: ModelSource, method: str, config: Path) -> list[str]:
    """`pilot wsd serve` options for the checkpoint with `base`, decoding as `config` says."""
    if base.url:
        where = ["--base", ",".join(base.urls), "--base-model", base.served_model]  # replicas: comma-separated
        where += ["--base-tokenizer", base.tokenizer] if base.tokenizer else []
        where += ["--api-key-env", base.api_key_env] if base.api_key_env else []
    else:
        where = ["--base", str(Path(base.local_path()).resolve()) if Path(base.local_path()).exists()
                 else base.local_path()]  # a hub id stays as it is
    return ["--pilot", str(checkpoint.resolve()), *where, "--method", method, "--served-model-name", method,
            "--config", str(config.resolve()), *(["--trust-remote-code"] if base.trust_remote_code else [])]


def check_harness(h: HarnessConfig) -> None:
    """Found before any work starts: the lm_eval command and the task directory."""
    import shutil

    if shutil.which(h.lm_eval) is None:
        raise UserError(f"harness.lm_eval {h.lm_eval!r} was not found: install lm-eval[api] (its own virtual "
                        "environment keeps this one clean) and give the path of its lm_eval")
    if h.include_path and not Path(h.include_path).is_dir():
        raise UserError(f"harness.include_path {h.include_path}: not a directory of lm-eval task YAMLs")


def _lm_eval(h: HarnessConfig, url: str, method: str, out: Path, seed: int) -> None:
    args = [h.lm_eval, "--model", "local-chat-completions", "--model_args",
            f"model={method},base_url={url}/chat/completions,num_concurrent={h.num_concurrent},max_retries=3,"
            "tokenized_requests=False", "--tasks", ",".join(t.name for t in h.tasks), "--apply_chat_template",
            "--output_path", str(out), "--log_samples", "--seed", str(seed)]
    args += ["--include_path", str(Path(h.include_path).resolve())] if h.include_path else []
    args += ["--limit", str(h.limit)] if h.limit else []
    log = out / "lm_eval.log"
    try:
        with open(log, "wb") as f:
            r = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, timeout=h.timeout_s)
    except FileNotFoundError:
        raise UserError(f"harness.lm_eval {h.lm_eval!r} was not found: install lm-eval[api] (its own virtual "
                        "environment keeps this one clean) and give the path of its lm_eval") from None
    except subprocess.TimeoutExpired:
        raise JobFailed(f"lm-eval ran past harness.timeout_s ({h.timeout_s:g} s); log: {log}") from None
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise JobFailed(f"lm-eval failed (exit {r.returncode}): {' | '.join(tail)} (log: {log})")


def _samples(out: Path, task: str) -> Path:
    found = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    if not found:
        raise JobFailed(f"lm-eval wrote no samples for task {task} under {out}")
    return found[-1]


def _rows(h: HarnessConfig, out: Path, base: str, method: str) -> list[dict]:
    rows = []
    for t in h.tasks:
        path = _samples(out, t.name)
        for line in path.read_text(encoding="utf-8").splitlines():
            s = json.loads(line)
            if s.get("filter") != t.filter:
                continue
            if t.metric not in s:
                raise UserError(f"harness task {t.name}: lm-eval logged no metric {t.metric!r} (it has "
                                f"{', '.join(s.get('metrics', []))})")
            resp = s.get("resps") or [[""]]
            rows.append({"set": t.name, "kind": "harness", "base": base, "method": method, "id": str(s["doc_id"]),
                         "response": resp[0][0] if resp and resp[0] else "", "correct": float(s[t.metric]),
                         "doc_hash": s.get("doc_hash")})
        if not any(r["set"] == t.name for r in rows):
            raise UserError(f"harness task {t.name}: no samples with filter {t.filter!r} in {path}")
    return rows


def run_harness(spec: EvalSpec, checkpoint: Path, bases: list[ModelSource], output: Path,
                settings: dict | None = None) -> list[dict]:
    """Every harness task with every base, for WSD and base-only; one row per (task, base, method, item). WSD
    serves with `settings[base name]` (the switch setting the sweep chose) where given."""
    h = spec.harness
    root = output / "harness"
    root.mkdir(parents=True, exist_ok=True)
    configs = {}
    for base in bases:  # each base's decoding config (JSON is YAML)
        cfg = {**spec.wsd.model_dump(mode="json"), **(settings or {}).get(base.name, {})}
        configs[base.name] = safe_join(root, f"wsd-{base.name}.yaml", what="base name")
        configs[base.name].write_text(json.dumps(cfg, sort_keys=True), encoding="utf-8")
    runs = [(base, method, safe_join(root, base.name, method, what="base name")) for base in bases
            for method in METHODS]

    def run(base: ModelSource, method: str, out: Path) -> None:
        done, config = out / "done.json", configs[base.name]
        served_with = json.loads(config.read_text(encoding="utf-8"))
        if done.is_file() and json.loads(done.read_text()).get("wsd") == served_with:  # finished with this config
            return
        out.mkdir(parents=True, exist_ok=True)
        with WSDServer(server_args(checkpoint, base, method, config), log_dir=out) as server:
            _lm_eval(h, server.url, method, out, spec.seed)
        atomic_write_json(done, {"tasks": [t.name for t in h.tasks], "wsd": served_with})

    with ThreadPoolExecutor(max_workers=len(runs) if h.parallel else 1) as pool:
        for f in [pool.submit(run, *r) for r in runs]:
            f.result()
    return [row for base, method, out in runs for row in _rows(h, out, base.name, method)]


def task_identities(h: HarnessConfig, rows: list[dict]) -> dict[str, EvalSetIdentity]:
    """What the report records about each task: the items lm-eval scored (by its document hashes)."""
    out = {}
    for t in h.tasks:
        hashes = sorted({(r["id"], r["doc_hash"] or "") for r in rows if r["set"] == t.name})
        digest = hashlib.sha256(json.dumps(hashes).encode()).hexdigest()
        out[t.name] = EvalSetIdentity(version=f"lm-eval:{t.name}", kind="harness", path=h.include_path,
                                      sha256=digest, n=len({i for i, _ in hashes}), limit=h.limit)
    return out
