"""Training on tiny models: SFT and DPO (full and LoRA) change every trainable parameter and log a loss; a run
killed mid-way resumes to the same weights; LoRA merge keeps the logits; bad input is one clear error."""

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from pilot_core.errors import UserError
from training.config import TrainConfig
from training.train import train

from .helpers import FAST, REPO, TINY, without_chat_template


def cfg(prefs, out, **kw) -> TrainConfig:
    base = {"model": TINY, "dataset": str(prefs), "output_dir": str(out),
            "sft": {**FAST, "learning_rate": 1e-3}, "dpo": {**FAST, "learning_rate": 1e-3}}
    return TrainConfig.model_validate({**base, **kw})


def weights(path) -> dict:
    name = "adapter_model.safetensors" if (path / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(path / name)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sft_then_dpo_change_every_trainable_parameter(prefs, tmp_path, lora):
    c = cfg(prefs, tmp_path / "run", lora={"r": 4, "alpha": 8, "dropout": 0.0} if lora else None)
    outs = train(c)
    start = weights(type(tmp_path)(c.model.local_path()))
    for stage in ("sft", "dpo"):
        final = outs[stage]
        m = json.loads((final / "manifest.json").read_text())
        assert m["kind"] == "checkpoint" and m["data"]["steps"] == 4 and m["data"]["lora"] == lora
        assert all(x["loss"] == x["loss"] for x in m["data"]["log_history"] if "loss" in x)  # logged, finite
        assert sum("loss" in x for x in m["data"]["log_history"]) == 4
        assert not (final / "training_args.bin").exists() and not list(final.glob("*.bin"))
        w = weights(final)
        if lora:
            lora_b = {k: v for k, v in w.items() if "lora_B" in k}
            assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # B starts at zero
        else:
            before = start if stage == "sft" else weights(outs["sft"])
            same = [k for k, v in w.items() if torch.equal(v, before[k])]
            assert not same, same
        tok_cfg = json.loads((final / "tokenizer_config.json").read_text())
        gen = json.loads((final / "generation_config.json").read_text()) if not lora else None
        if gen:
            from transformers import AutoTokenizer

            assert AutoTokenizer.from_pretrained(final).eos_token_id in gen["eos_token_id"]
        assert tok_cfg
    if lora:
        assert (tmp_path / "run" / "sft" / "merged" / "model.safetensors").is_file()  # DPO started from it


def test_merge_gives_the_adapter_logits(prefs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.merge import merge_adapter

    c = cfg(prefs, tmp_path / "run", stages=["sft"], lora={"r": 4, "alpha": 8, "dropout": 0.0})
    adapter = train(c)["sft"]
    merged = merge_adapter(adapter, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 9, 42, 7, 3]])
    base = AutoModelForCausalLM.from_pretrained(c.model.local_path())
    with torch.no_grad():
        want = PeftModel.from_pretrained(base, str(adapter)).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged).eval()(ids).logits
    assert torch.allclose(want, got, atol=1e-5)
    assert json.loads((merged / "manifest.json").read_text())["data"]["merged_from_lora"]
    with pytest.raises(UserError, match="already exists"):
        merge_adapter(adapter, tmp_path / "merged")


def test_a_killed_run_resumes_to_the_same_weights(prefs, tmp_path):
    steps = {"max_steps": 8, "per_device_train_batch_size": 2, "max_length": 96, "save_steps": 2,
             "learning_rate": 1e-3}
    full = train(cfg(prefs, tmp_path / "uninterrupted", stages=["sft"], sft=steps))["sft"]
    c = cfg(prefs, tmp_path / "killed", stages=["sft"], sft=steps)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(c.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "flows.cli", "train", "--config", str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "sft" / "checkpoint-4"
    deadline = time.time() + 300
    while time.time() < deadline and not (ckpt / "trainer_state.json").exists() and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "sft" / "final").exists(), "killed too late to test resuming"
    # a kill can also land while a checkpoint is being written: plant one cut short after the last complete one
    from training.train import last_checkpoint

    done = last_checkpoint(tmp_path / "killed" / "sft")
    cut = tmp_path / "killed" / "sft" / f"checkpoint-{int(done.rsplit('-', 1)[1]) + 2}"
    if not cut.exists():
        cut.mkdir()
        shutil.copy(ckpt / "model.safetensors", cut / "model.safetensors")
    (cut / "trainer_state.json").unlink(missing_ok=True)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    final = tmp_path / "killed" / "sft" / "final"
    m = json.loads((final / "manifest.json").read_text())
    assert m["data"]["resumed_from"] and m["data"]["steps"] == 8
    a, b = weights(full), weights(final)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_bad_input_is_one_clear_error(prefs, small_dataset, tmp_path, pair_same):  # noqa: F811
    with pytest.raises(UserError, match="no 'sft' split"):
        train(cfg(small_dataset, tmp_path / "a"))
    no_template = without_chat_template(pair_same[0], tmp_path / "no-template")
    with pytest.raises(UserError, match="no chat template"):
        train(cfg(prefs, tmp_path / "b", model={"name": "m", "path": str(no_template)}))
    from training.launch import load_preset

    with pytest.raises(UserError, match="unknown DeepSpeed preset 'zero9'"):
        load_preset("zero9")
    bad = tmp_path / "presets"
    bad.mkdir()
    (bad / "zero2.json").write_text(json.dumps({"zero_optimization": {"stage": 7}}))
    with pytest.raises(UserError, match="invalid zero_optimization"):
        load_preset("zero2", bad)
    # an output directory that holds another run is refused and left as it was
    first = cfg(prefs, tmp_path / "run", stages=["sft"])
    train(first)
    before = sorted(p.name for p in (tmp_path / "run" / "sft").iterdir())
    other = cfg(prefs, tmp_path / "run", stages=["sft"], sft={**FAST, "learning_rate": 5e-4, "max_steps": 5})
    with pytest.raises(UserError, match="holds another run"):  # even though that run finished
        train(other)
    assert sorted(p.name for p in (tmp_path / "run" / "sft").iterdir()) == before


def test_cli_exit_codes(tmp_path, small_dataset):  # noqa: F811
    c = {"model": TINY, "dataset": str(small_dataset), "output_dir": str(tmp_path / "o")}
    d = tmp_path / "configs" / "training"
    d.mkdir(parents=True)
    (d / "c.yaml").write_text(yaml.safe_dump(c))
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "c.yaml")], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no 'sft' split" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "flows.cli", "train", "--config", str(d / "c.yaml"), "--distributed",
                        "nope", "--nproc", "2"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown DeepSpeed preset 'nope'" in r.stderr


def test_the_trainer_process_reports_its_outcome_as_json(tmp_path, small_dataset):  # noqa: F811
    """The child process writes result.json: its bad input comes back as the very error it raised (no log
    scraping), and an earlier run's outcome is never read as this one's."""
    from training.process import run_training

    c = TrainConfig(model=TINY, dataset=str(small_dataset), output_dir=str(tmp_path / "o"))
    with pytest.raises(UserError) as direct:
        train(c)
    (tmp_path / "o").mkdir(exist_ok=True)
    (tmp_path / "o" / "result.json").write_text(json.dumps({"finals": {"sft": "stale"}}))
    with pytest.raises(UserError) as child:
        run_training(c, tmp_path / "o", poll_s=0.1)
    assert str(child.value) == str(direct.value) and "no 'sft' split" in str(child.value)
    assert json.loads((tmp_path / "o" / "result.json").read_text()) == {"error": "bad_input",
                                                                        "message": str(direct.value)}


def test_the_training_template_is_found_or_refused_clearly(pair_same, tmp_path):
    """Tokenizers only: which template a pilot trains with, and one clear error when none fits."""
    from pathlib import Path

    import trl
    from transformers import AutoTokenizer

    from training.chat_template import training_template
    from training.data import check_chat_tokenizer

    tok = AutoTokenizer.from_pretrained(pair_same[0])
    marked = tok.chat_template
    assert training_template(tok, None, "tiny").origin == "model"
    plain = marked.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    files = {"marked.jinja": marked, "plain.jinja": plain, "other.jinja": marked.replace("'\n'", "'\n\n'"),
             "eos-outside.jinja": marked.replace("+ '<|im_end|>' }}{% endgeneration %}",
                                                 "}}{% endgeneration %}{{ '<|im_end|>' }}")}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert files["eos-outside.jinja"] != marked and files["other.jinja"] != marked
    tok.chat_template = plain
    with pytest.raises(UserError, match="neither TRL nor Pilot has a training variant"):
        training_template(tok, None, "tiny")
    assert training_template(tok, str(tmp_path / "marked.jinja"), "tiny").origin.endswith("marked.jinja")
    with pytest.raises(UserError, match="file not found"):
        training_template(tok, str(tmp_path / "none.jinja"), "tiny")
    with pytest.raises(UserError, match="has no {% generation %} markers"):
        training_template(tok, str(tmp_path / "plain.jinja"), "tiny")
    with pytest.raises(UserError, match="renders a conversation differently"):
        training_template(tok, str(tmp_path / "other.jinja"), "tiny")
    outside = training_template(tok, str(tmp_path / "eos-outside.jinja"), "tiny")
    with pytest.raises(UserError, match="outside the template's {% generation %} block"):
        check_chat_tokenizer(tok, outside.text, "tiny")

    # Llama 3.x: TRL knows Llama 3; for 3.2 (the production pilot) Pilot's own variant is matched
    templates = Path(trl.__file__).parent / "chat_templates"
    tok.add_special_tokens({"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]})
    tok.chat_template = (templates / "llama3.jinja").read_text()
    assert training_template(tok, None, "llama3").origin == "trl"
    tok.chat_template = (templates / "llama3_2.jinja").read_text()
    found = training_template(tok, None, "llama3.2")
    assert found.origin == "training/chat_templates/llama3_2_training.jinja"
    check_chat_tokenizer(tok, found.text, "llama3.2")
