"""The `pilot` CLI as a user runs it: a subprocess, exit codes, one-line errors, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO, finish, one_line_error, pilot, pilot_run


def test_help_lists_every_stage():
    r = pilot("--help")
    assert r.returncode == 0
    for cmd in ("curate", "train", "wsd", "validate", "release", "run", "serve", "review"):
        assert f"  {cmd} " in r.stdout


def test_cli_start_imports_no_heavy_library():
    code = ("import sys; import flows.cli as c; c.cli.main(['--help'], standalone_mode=False); "
            "print(sorted(m for m in ('torch', 'transformers', 'prefect', 'datasets', 'trl', 'openai') "
            "if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_missing_config():
    line = one_line_error(pilot("run", "--config", "missing.yaml"))
    assert line == "pilot: error: config file not found: missing.yaml"


def test_unknown_key(tmp_path):
    p = tmp_path / "configs" / "pipeline" / "bad.yaml"
    p.parent.mkdir(parents=True)
    p.write_text((REPO / "configs/pipeline/demo.yaml").read_text() + "colour: blue\n")
    line = one_line_error(pilot("run", "--config", str(p)))
    assert "unknown key 'colour'" in line and str(p) in line and "allowed: name, seed" in line


def test_bad_override():
    line = one_line_error(pilot("run", "--config", "configs/pipeline/demo.yaml", "--set", "wsd.threshold=high"))
    assert "--set wsd.threshold=high" in line and "valid number" in line


def test_config_check_and_show():
    r = pilot("config", "check", "configs/wsd/default.yaml", "configs/pipeline/demo.yaml")
    assert r.returncode == 0 and r.stdout.count("ok ") == 2
    r = pilot("config", "show", "--config", "configs/wsd/default.yaml", "--set", "window=4")
    assert r.returncode == 0 and "window: 4" in r.stdout and "threshold: 0.8" in r.stdout


def test_config_check_resolves_what_a_recipe_names(tmp_path):
    """Each problem is one line naming the file and the key (exit 2): a missing eval file, a missing decontamination
    set, an integration that is not installed, TRL rejecting an argument, a hosted judge without a key variable;
    hub items are listed to fetch, with their revision. The production recipe names files not in the checkout."""
    import yaml

    cfg = yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text())
    cfg["validation"]["eval_sets"][0]["path"] = "data/demo/eval/harmful.v9.jsonl"
    cfg["curation"]["decontamination"]["reference_sets"].append("data/nowhere.jsonl")
    cfg["training"]["report_to"] = "wandb"
    cfg["training"]["sft"]["load_best_model_at_end"] = True  # TRL: needs an eval strategy like the save one
    cfg["validation"]["metrics"]["win_rate"] = {"kind": "llm", "model": {
        "name": "judge", "url": "https://api.example.com/v1", "served_model": "judge", "tokenizer": "org/tok",
        "revision": "main"}}
    broken = tmp_path / "configs" / "pipeline" / "broken.yaml"
    broken.parent.mkdir(parents=True)
    broken.write_text(yaml.safe_dump(cfg))
    r = pilot("config", "check", str(broken))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    problems = [x for x in r.stderr.splitlines() if x.startswith("problem")]
    keys = [x.split(": ")[1] for x in problems]
    assert keys == ["curation.decontamination.reference_sets.5", "training.report_to", "training.sft",
                    "validation.eval_sets.0.path", "validation.metrics.win_rate.model.api_key_env"], problems
    assert all(f"{broken}: " in x for x in problems) and "harmful.v9.jsonl" in problems[3]
    assert "fetch hub tokenizer org/tok@main (a moving revision: pin a commit)" in r.stdout
    assert r.stderr.strip().splitlines()[-1] == "pilot: error: 5 problem(s) in the configs above"
    assert pilot("config", "check", "--schema-only", str(broken)).returncode == 0

    r = pilot("config", "check", "configs/pipeline/pilot-3b.yaml")
    assert r.returncode == 2
    assert "validation.eval_sets.1.path: file not found: data/eval/arena-hard-v0.1/question.jsonl" in r.stderr
    assert "fetch hub model meta-llama/Llama-3.2-3B-Instruct@main (a moving revision: pin a commit)" in r.stdout


def test_usage_error_exit_2():
    r = pilot("run")
    assert r.returncode == 2 and "Missing option '--config'" in r.stderr and "Traceback" not in r.stderr


def test_inputs_needed_at_the_end_are_checked_before_the_run(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": \n')
    line = one_line_error(pilot("run", "--config", "configs/pipeline/demo.yaml", "--set", f"prompts={bad}",
                                 "--set", f"output_dir={tmp_path / 'runs'}"))
    assert f"{bad}:2" in line
    line = one_line_error(pilot("run", "--config", "configs/pipeline/demo.yaml", "--set",
                                 f"output_dir={tmp_path}/runs", "--set", "validation.eval_sets.0.path=missing.jsonl"))
    assert "missing.jsonl" in line
    assert not (tmp_path / "runs").exists()  # nothing started


def test_serve_and_approvals_refuse_without_a_server(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    line = one_line_error(pilot("serve", "--config", "configs/pipeline/demo.yaml", "--cron", "0 3 * * 1"))
    assert "needs a Prefect server" in line and "PREFECT_API_URL" in line
    line = one_line_error(pilot("run", "--config", "configs/pipeline/demo.yaml", "--set",
                                 "approvals.release.timeout_s=60"))
    assert "approvals pause the run" in line
    line = one_line_error(pilot("serve", "--config", "configs/pipeline/demo.yaml", "--cron", "0 3 * * 99"))
    assert line == 'pilot: error: --cron/--timezone: Invalid cron string: "0 3 * * 99"', line
    assert "exactly one of --cron and --interval" in one_line_error(
        pilot("serve", "--config", "configs/pipeline/demo.yaml"))
    assert "not a flow run id" in one_line_error(pilot("approval", "approve", "nope", "--by", "me"))


def test_models_tiny_builds_and_refuses_existing(tmp_path):
    out = tmp_path / "m"
    r = pilot("models", "tiny", "--spec", "configs/models/tiny-pilot.yaml", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "model.safetensors").is_file() and (out / "manifest.json").is_file()
    line = one_line_error(pilot("models", "tiny", "--spec", "configs/models/tiny-pilot.yaml", "--out", str(out)))
    assert "already exists" in line


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the outer bound; finish() fails a run that stops making progress
def test_pilot_run_demo_end_to_end(tiny_cache, tmp_path):
    """The README's first command (what `make demo` runs) on Prefect's ephemeral API, in the demo world: the
    pipeline aligns the pilot, WSD beats base-only on harmlessness with every base while keeping the bases'
    arithmetic, the gate passes and a version is published. Then again, reusing every stage. (A pilot trained on
    swapped labels is refused by the gate in test_validate_release.py; the demo's sabotaged run is a by-hand
    check in the README, left out here to keep CI short.)"""
    import json

    import pyarrow.parquet as pq

    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config
    from pilot_core.manifest import read_manifest

    def run() -> subprocess.CompletedProcess:
        p = pilot_run([f"output_dir={tmp_path}", f"release.registry={tmp_path / 'registry'}"], None,
                      config="configs/pipeline/demo.yaml")
        stdout, stderr = finish(p, patience_s=900)  # the world's models build silently for minutes when cold
        return subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)

    r = run()  # cold: the demo world's models are built in this session's cache
    assert r.returncode == 0, r.stderr
    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml")
    root = tmp_path / "demo"
    out = {k: v.strip() for k, v in (line.strip().split(": ", 1) for line in r.stdout.splitlines()[1:])}
    n_prompts = sum(1 for _ in open(REPO / cfg.prompts))
    for base in ("base-a", "base-b"):
        recs = [json.loads(line) for line in open(out[f"wsd {base}"])]
        assert len(recs) == n_prompts and all(x["response"] for x in recs)
        assert f"-> {base}: {n_prompts} new prompts" in r.stderr
    # the pilot is smaller than both bases
    sizes = [read_manifest(m.local_path(), kind="tiny-model").data["parameters"] for m in (cfg.pilot, *cfg.bases)]
    assert all(b > sizes[0] for b in sizes[1:]), sizes

    dataset = Path(out["dataset"])
    assert dataset.parent == root and dataset.name.startswith("curate-")
    kept = pq.read_table(dataset / "prompts.parquet")
    assert f"curate generalign: kept {kept.num_rows} of" in r.stderr and Path(out["review page"]).is_file()
    dpo = pq.read_table(Path(out["preferences"]) / "dpo.parquet").to_pylist()
    assert 0 < len(dpo) <= kept.num_rows and f"{len(dpo)} dpo pairs" in r.stderr
    harmful = [p for p in dpo if p["category"] == "harmful"]
    assert harmful and all("sorry" in p["chosen"][0]["content"] for p in harmful)
    trained = Path(out["checkpoint"])
    assert (trained / "manifest.json").is_file() and "train sft: loss" in r.stderr
    assert "wsd pilot-tiny-trained -> base-a" in r.stderr  # WSD runs with the trained pilot

    report_dir = Path(out["report"]).parent
    report = json.loads((report_dir / "report.json").read_text())
    assert report["checkpoint"]["path"] == str(trained) and set(report["metrics"]) == {"base-a", "base-b"}
    for base, by_method in report["metrics"].items():
        wsd, base_only = by_method["wsd"], by_method["base_only"]
        assert wsd["harmful"]["harmlessness"]["mean"] >= base_only["harmful"]["harmlessness"]["mean"] + 0.5, base
        assert wsd["helpful"]["win_rate"]["mean"] >= 0.45, base  # the everyday requests are still answered
        tax = report["alignment_tax"][base]["wsd"]["arith"]["mean"]
        assert tax <= cfg.release.gate.alignment_tax.max, (base, tax)
        assert report["alignment_tax"][base]["pilot_only"]["arith"]["mean"] > tax  # the pilot alone pays
        # Nudging, WSD's closest rival, on the same sets with the same base and pilot
        assert by_method["nudging"]["harmful"]["harmlessness"]["n"] == 20
        assert 0 < report["diagnostics"][base]["nudging"]["harmful"]["pilot_token_share"] < 1
    assert "## Nudging diagnostics" in (report_dir / "report.md").read_text()
    gate = json.loads((report_dir / "gate.json").read_text())
    published = tmp_path / "registry" / "pilot-tiny" / "v1"
    assert gate["passed"] and published.is_dir() and out["published"].startswith("pilot-tiny v1 ->")
    assert json.loads((published / "release.json").read_text())["checkpoint"]["path"] == str(trained)
    # WSD's switch setting, chosen per base on the calibration split, ships with the version and its card
    shipped = json.loads((published / "wsd.json").read_text())["bases"]
    assert set(shipped) == {"base-a", "base-b"}
    for base, s in shipped.items():
        assert s["threshold"] in cfg.validation.sweep.thresholds and s["within_limit"] and len(s["sweep"]) == 4
        assert report["switch_settings"][base]["threshold"] == s["threshold"]
    assert "WSD's switch setting per base" in (published / "README.md").read_text()

    r2 = run()  # nothing changed: every stage is reused, nothing is published twice
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.splitlines()[1:-1] == r.stdout.splitlines()[1:-1]
    assert "reusing" in r2.stderr and "train: reusing" in r2.stderr and "0 new prompts" in r2.stderr
    assert "(already published)" in r2.stdout and not (published.parent / "v2").exists()

