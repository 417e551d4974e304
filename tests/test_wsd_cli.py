"""`pilot wsd generate` as a user runs it: outputs, resume after a kill, and bad input -> exit 2 + one line."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest

from wsd_inference.methods import METHODS

from .helpers import REPO, without_chat_template

# timings, and speculation's figures: a process measures its rounds' costs once, at its first batch, so a resumed
# run's rounds (never its answers) differ from an uninterrupted one's
VOLATILE = ("time_s", "timing", "speculation")


def run_wsd(pair, inp, out, *extra, env=None, wait=True):
    cmd = [sys.executable, "-m", "flows.cli", "wsd", "generate", "--pilot", str(pair[0]), "--base", str(pair[1]),
           "--input", str(inp), "--output", str(out), "--max-draft-tokens", "16", "--max-new-tokens", "24",
           "--window", "3", "--threshold", "0.05", *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE} for line in open(path)]


@pytest.fixture
def prompts(tmp_path):
    p = tmp_path / "prompts.jsonl"
    lines = [{"id": f"q{i}", "prompt": f"Question number {i}: what is {i} plus {i}?"} for i in range(10)]
    lines.append({"id": "chat", "messages": [{"role": "user", "content": "Hello"}]})
    p.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return p


def test_generate_writes_records_and_resumes(pair_different, prompts, tmp_path):
    out = tmp_path / "out.jsonl"
    r = run_wsd(pair_different, prompts, out)
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert [x["id"] for x in recs] == [f"q{i}" for i in range(10)] + ["chat"]
    for x in recs:
        assert set(x) >= {"response", "draft_text", "switch_index", "switched", "pilot_tokens", "base_tokens"}
        assert x["kept_draft_tokens"] + x["base_tokens"] <= 24
    assert not (tmp_path / "out.jsonl.partial").exists()
    before = out.read_bytes()
    r = run_wsd(pair_different, prompts, out)
    assert r.returncode == 0 and "already done" in r.stderr and out.read_bytes() == before
    # new prompts are appended, the old ones are not recomputed
    with open(prompts, "a") as f:
        f.write(json.dumps({"id": "late", "prompt": "One more?"}) + "\n")
    r = run_wsd(pair_different, prompts, out)
    assert r.returncode == 0 and "1 new answers" in r.stderr
    assert out.read_bytes().startswith(before) and records(out)[-1]["id"] == "late"


def test_sigkill_then_resume_equals_uninterrupted_run(pair_same, prompts, tmp_path):
    clean = tmp_path / "clean.jsonl"
    assert run_wsd(pair_same, prompts, clean, "--batch-size", "1").returncode == 0
    out = tmp_path / "out.jsonl"
    proc = run_wsd(pair_same, prompts, out, "--batch-size", "1", wait=False)
    partial = tmp_path / "out.jsonl.partial"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count("\n") >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip("the run finished before it could be killed")
    assert not out.exists()  # an unfinished run is never mistaken for a finished one
    with open(partial, "a") as f:
        f.write('{"id": "q9", "respo')  # a torn last line, as a kill mid-write leaves it
    r = run_wsd(pair_same, prompts, out, "--batch-size", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(records(out), key=lambda x: x["id"]) == sorted(records(clean), key=lambda x: x["id"])


def test_other_settings_are_refused(pair_same, prompts, tmp_path):
    out = tmp_path / "out.jsonl"
    assert run_wsd(pair_same, prompts, out).returncode == 0
    before = out.read_bytes()
    r = run_wsd(pair_same, prompts, out, "--threshold", "0.5")
    assert r.returncode == 2 and "other settings (config)" in r.stderr
    assert out.read_bytes() == before


def _err(r):
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [line for line in r.stderr.splitlines() if line.startswith("pilot:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


@pytest.mark.parametrize("content,expected", [
    ('{"id": "a", "prompt": "ok"}\n{"id": "b", "prompt": \n', "prompts.jsonl:2: malformed JSON"),
    ('{"prompt": "no id"}\n', "prompts.jsonl:1: missing field 'id'"),
    ('{"id": "a", "prompt": "   "}\n', "prompts.jsonl:1: field 'prompt' must be a non-empty string"),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "prompts.jsonl:2: duplicate id 'a'"),
    ('{"id": "a", "messages": [{"role": "bot", "content": "x"}]}\n', "messages[0].role 'bot' is not one of"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}\n',
     "the last message must be from the user"),
    ("", "no prompts (the file is empty)"),
    ("[1, 2]\n", "prompts.jsonl:1: expected a JSON object"),
])
def test_bad_prompt_files(pair_same, tmp_path, content, expected):
    p = tmp_path / "prompts.jsonl"
    p.write_text(content)
    assert expected in _err(run_wsd(pair_same, p, tmp_path / "o.jsonl"))
    assert not (tmp_path / "o.jsonl").exists()


def test_non_utf8_prompt_file(pair_same, tmp_path):
    p = tmp_path / "prompts.jsonl"
    p.write_bytes(b'{"id": "a", "prompt": "\xff"}\n')
    assert "not valid UTF-8" in _err(run_wsd(pair_same, p, tmp_path / "o.jsonl"))


def test_bad_models(pair_same, prompts, tmp_path):
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=1, intermediate_size=32,
                         vocab_size=50)).save_pretrained(bert)
    shutil.copy(pair_same[0] / "tokenizer.json", bert)
    shutil.copy(pair_same[0] / "tokenizer_config.json", bert)
    line = _err(run_wsd((pair_same[0], bert), prompts, tmp_path / "o.jsonl"))
    assert "base" in line and "'bert' (BertModel) is not a causal LM" in line

    no_template = without_chat_template(pair_same[0], tmp_path / "no-template")
    assert "has no chat template" in _err(run_wsd((no_template, pair_same[1]), prompts, tmp_path / "o.jsonl"))

    assert "model path not found" in _err(run_wsd((tmp_path / "nope", pair_same[1]), prompts, tmp_path / "o.jsonl"))

    pickled = tmp_path / "pickled"
    shutil.copytree(pair_same[1], pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    assert "only pickled weights" in _err(run_wsd((pair_same[0], pickled), prompts, tmp_path / "o.jsonl"))


def test_bad_option_value(pair_same, prompts, tmp_path):
    line = _err(run_wsd(pair_same, prompts, tmp_path / "o.jsonl", "--threshold", "1.5"))
    assert "threshold" in line and "1.5" in line


def test_failed_model_load_leaves_no_output_behind(pair_same, prompts, tmp_path):
    out = tmp_path / "o.jsonl"
    _err(run_wsd((pair_same[0], tmp_path / "missing-base"), prompts, out))
    assert list(tmp_path.glob("o.jsonl*")) == []
    assert run_wsd(pair_same, prompts, out).returncode == 0  # the corrected command just works


@pytest.mark.parametrize("method", [m for m in METHODS if m != "wsd"])  # every registered method
def test_every_method_from_the_cli(pair_same, untuned_path, prompts, tmp_path, method):
    """Each method runs with `--speculate`: those that decode with the base take the pilot as their draft model
    (their records say so), the others ignore it."""
    out = tmp_path / "o.jsonl"
    r = run_wsd(pair_same, prompts, out, "--method", method, "--untuned", str(untuned_path),
                "--set", "cbs.chunk_length=8", "--set", "bon.n=2", "--speculate", "2")
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert len(recs) == 11 and {x["method"] for x in recs} == {method}
    assert all(x["kept_draft_tokens"] + x["base_tokens"] <= 24 for x in recs)
    assert all(("speculation" in json.loads(x)) == METHODS[method].speculates for x in open(out))
    meta = json.loads((tmp_path / "o.jsonl.meta.json").read_text())
    assert meta["method"] == method and meta["config"]["cbs"]["chunk_length"] == 8


def test_the_authors_staged_pipeline_gives_wsds_answers(pair_different, prompts, tmp_path):
    """`--method wsd_staged` (whole draft, one scoring pass, a fresh prefill) decides and answers as the online
    engine does, here across two tokenizer families (in-process, test_wsd_engine.py holds both pairs to it);
    only the records' method differs."""
    keys = ("id", "response", "draft_text", "switch_index", "switched", "kept_draft_tokens", "base_tokens")
    got = {}
    for method in ("wsd", "wsd_staged"):
        out = tmp_path / f"{method}.jsonl"
        r = run_wsd(pair_different, prompts, out, "--method", method, "--threshold", "0.01")
        assert r.returncode == 0, r.stderr
        got[method] = records(out)
    assert [{k: r[k] for k in keys} for r in got["wsd"]] == [{k: r[k] for k in keys} for r in got["wsd_staged"]]
    switched = [r["switched"] for r in got["wsd"]]
    assert any(switched) and not all(switched)  # both decisions are exercised
    assert {r["method"] for r in got["wsd_staged"]} == {"wsd_staged"}


def test_method_errors(pair_same, pair_different, untuned_path, prompts, tmp_path):
    out = tmp_path / "o.jsonl"
    assert "needs the pilot's untuned reference model (--untuned)" in _err(run_wsd(pair_same, prompts, out,
                                                                                   "--method", "cbs"))
    assert "EFT needs one shared vocabulary" in _err(run_wsd(pair_different, prompts, out, "--method", "eft",
                                                             "--untuned", str(untuned_path)))
    line = _err(run_wsd(pair_same, prompts, out, "--method", "cbs", "--untuned", str(untuned_path),
                        "--set", "cbs.beam_width=0"))
    assert "--set cbs.beam_width=0" in line and "greater than or equal to 1" in line
    assert list(tmp_path.glob("o.jsonl*")) == []
