"""Validation through lm-evaluation-harness: a GSM8K-format task read from a local file, run by lm-eval's
`local-chat-completions` model against `pilot wsd serve` (WSD, and the base alone served the same way).

The demo world's models make the figures mean something: its base knows the times tables, its pilot knows only
the small ones. The harness's answers must be the answers validation gets in-process (same template, greedy)."""

import json
import shutil

import pytest
import yaml

from evaluation.config import EvalSpec
from evaluation.validate import validate
from pilot_core.manifest import Manifest, write_manifest
from pilot_core.models.source import ModelSource
from pilot_core.models.tiny import TinyModelSpec, cached_tiny_model

from .helpers import REPO

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TASK = """task: arith_gsm8k
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: generate_until
test_split: test
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
    ignore_punctuation: false
    regexes_to_ignore: [",", "\\\\$", "(?s).*#### ", "\\\\.$"]
generation_kwargs:
  until: ["Question:"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 48
num_fewshot: 0
filter_list:
  - name: flexible-extract
    filter:
      - function: regex
        group_select: -1
        regex_pattern: "(-?[$0-9.,]{{2,}})|(-?[0-9]+)"
      - function: take_first
metadata:
  version: 1.0
"""


def test_validation_scores_a_local_gsm8k_task_through_lm_eval_against_the_wsd_server(lm_eval_bin, tmp_path):
    demo = yaml.safe_load((REPO / "configs/pipeline/demo.yaml").read_text())
    ckpt = shutil.copytree(cached_tiny_model(TinyModelSpec(**demo["pilot"]["tiny"])), tmp_path / "ckpt")
    write_manifest(ckpt, Manifest(kind="checkpoint", config_hash="h", inputs={"dataset": "d"}))
    base = ModelSource(name="base-a", tiny=demo["bases"][0]["tiny"])
    arith = [json.loads(x) for x in (REPO / "data/demo/eval/arith.v1.jsonl").read_text().splitlines()]
    data = tmp_path / "gsm8k-arith.jsonl"  # the demo's arithmetic in GSM8K's columns
    data.write_text("".join(json.dumps({"question": a["prompt"], "answer": f"It is {a['answer']}.\n#### "
                                        f"{a['answer']}"}) + "\n" for a in arith))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arith_gsm8k.yaml").write_text(TASK.format(data=data))
    spec = EvalSpec.model_validate({
        "eval_sets": [{"name": "arith", "version": "v1", "kind": "math", "path": str(REPO / "data/demo/eval/"
                                                                                     "arith.v1.jsonl")}],
        "methods": ["wsd", "base_only"], "wsd": demo["validation"]["wsd"],
        "harness": {"tasks": [{"name": "arith_gsm8k"}], "include_path": str(tmp_path / "tasks"),
                    "lm_eval": str(lm_eval_bin), "num_concurrent": 4, "parallel": True}})
    report = validate(spec, ckpt, [base], tmp_path / "out", progress=False)

    rows = [json.loads(x) for x in (tmp_path / "out" / "items.jsonl").read_text().splitlines()]
    native = {(r["method"], r["id"]): r for r in rows if r["set"] == "arith"}
    harness = {(r["method"], r["id"]): r for r in rows if r["set"] == "arith_gsm8k"}
    assert len(harness) == 2 * len(arith)
    for (method, doc), r in harness.items():  # lm-eval got what validation gets in-process, item by item
        assert r["response"] == native[(method, arith[int(doc)]["id"])]["response"], (method, doc)
    m = report.metrics["base-a"]
    acc = {k: m[k]["arith_gsm8k"]["accuracy"] for k in ("wsd", "base_only")}
    assert acc["base_only"].n == len(arith) and acc["base_only"].mean >= 0.5  # the base knows its tables
    assert acc["base_only"].mean == pytest.approx(m["base_only"]["arith"]["accuracy"].mean)
    tax = report.alignment_tax["base-a"]["wsd"]["arith_gsm8k"]
    assert tax.mean == pytest.approx(acc["base_only"].mean - acc["wsd"].mean)
    assert report.eval_sets["arith_gsm8k"].kind == "harness" and report.eval_sets["arith_gsm8k"].n == len(arith)
    assert "arith_gsm8k" in (tmp_path / "out" / "report.md").read_text()
    assert list((tmp_path / "out" / "harness" / "base-a" / "wsd").rglob("results_*.json"))


def test_a_base_served_by_replicas_reaches_the_wsd_server_whole(tmp_path):
    """Validation's lm-eval run starts `pilot wsd serve` with the base's options: every replica URL travels (as one
    comma-separated --base), and the server reads them back as the same replicas."""
    from evaluation.harness import server_args
    from flows.wsd_cli import resolve_models

    base = ModelSource(name="b", url=["http://a.test:8001/v1", "http://b.test:8001/v1"], served_model="m",
                       tokenizer="tok")
    argv = server_args(tmp_path, base, "wsd", tmp_path / "c.yaml")
    got = argv[argv.index("--base") + 1]
    assert got == "http://a.test:8001/v1,http://b.test:8001/v1"
    _, served, *_ = resolve_models(str(tmp_path), got, None, None, (), "cpu", "auto", None, None, False, None, "m",
                                   "tok", None, None, 30.0, 2)
    assert served.urls == base.urls and served.served_model == "m"
