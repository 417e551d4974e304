"""SmolLM2-135M-Instruct, a real chat model: a 49k tokenizer, 30 layers, and a chat template without generation
markers, like Llama 3.x Instruct. Imported from GGUF as a user would, trained (full and LoRA, SFT then DPO) from a
recipe that names no template, then drafting in `pilot wsd generate` from the prompt as the original renders it."""

import hashlib
import json

import pytest
import yaml

from training.chat_template import OURS, PROBES, has_markers

from .helpers import one_line_error, pilot, smollm2_gguf

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def greedy(model_dir, messages, max_new_tokens: int, tokenizer_dir=None) -> list[int]:
    """The model's greedy tokens for `messages` rendered by the tokenizer in `tokenizer_dir` (default its own)."""
    import torch
    from transformers import AutoTokenizer

    from pilot_core.models.loading import load_weights

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    model = load_weights(str(model_dir))
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def test_a_gguf_import_is_a_real_chat_model(smollm2, tmp_path):
    from transformers import AutoTokenizer

    m = json.loads((smollm2 / "manifest.json").read_text())
    assert m["kind"] == "model" and m["data"]["architecture"] == "LlamaForCausalLM"
    assert m["data"]["gguf_sha256"] == hashlib.sha256(smollm2_gguf().read_bytes()).hexdigest()
    assert (smollm2 / "model.safetensors").is_file() and not list(smollm2.glob("*.gguf"))
    tok = AutoTokenizer.from_pretrained(smollm2)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and not has_markers(tok.chat_template)
    answer = tok.decode(greedy(smollm2, QUESTION, 12), skip_special_tokens=True)
    assert "Paris" in answer, answer
    # bad input: an existing output, a file that is not GGUF, a missing file
    assert "already exists" in one_line_error(pilot("models", "import", str(smollm2_gguf()), "--out", str(smollm2)))
    (tmp_path / "x.gguf").write_bytes(b"GGUF but not really")
    err = one_line_error(pilot("models", "import", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "o")))
    assert "x.gguf" in err and "cannot read" in err and not (tmp_path / "o").exists()
    err = one_line_error(pilot("models", "import", str(tmp_path / "none.gguf"), "--out", str(tmp_path / "o")))
    assert "not found" in err


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_smollm2_trains_from_a_recipe_with_no_template_and_drafts_as_the_original_renders(
        smollm2, prefs, tmp_path, lora):
    from transformers import AutoTokenizer

    steps = {"max_steps": 2, "per_device_train_batch_size": 2, "max_length": 192, "save_steps": 2}
    recipe = {"name": "smol", "model": {"name": "smollm2", "path": str(smollm2)}, "dataset": str(prefs),
              "output_dir": str(tmp_path / "run"), "sft": {**steps, "learning_rate": 1e-4},
              "dpo": {**steps, "learning_rate": 1e-5}}
    if lora:
        recipe["lora"] = {"r": 8, "alpha": 16, "dropout": 0.0}
    d = tmp_path / "configs" / "training"
    d.mkdir(parents=True)
    (d / "smol.yaml").write_text(yaml.safe_dump(recipe))
    r = pilot("train", "--config", str(d / "smol.yaml"), timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    final = tmp_path / "run" / "dpo" / "final"
    m = json.loads((final / "manifest.json").read_text())
    ours = hashlib.sha256((OURS / "smollm2_training.jinja").read_bytes()).hexdigest()[:16]
    assert m["data"]["training_chat_template"] == ours and m["data"]["steps"] == 2
    if lora:
        r = pilot("train", "merge", "--adapter", str(final), "--out", str(tmp_path / "merged"), timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        final = tmp_path / "merged"

    # the pilot ships with the original template: every probe renders to the original's token ids
    original, trained = AutoTokenizer.from_pretrained(smollm2), AutoTokenizer.from_pretrained(final)
    assert trained.chat_template == original.chat_template
    for messages in PROBES:
        agp = messages[-1]["role"] == "user"
        assert (trained.apply_chat_template(messages, add_generation_prompt=agp)
                == original.apply_chat_template(messages, add_generation_prompt=agp))

    # it drafts in `pilot wsd generate` from the prompt as the original model renders it
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "q", "messages": QUESTION}) + "\n")
    common = ["--pilot", str(final), "--base", str(smollm2), "--input", str(tmp_path / "in.jsonl"),
              "--max-draft-tokens", "12", "--max-new-tokens", "20", "--batch-size", "1"]
    r = pilot("wsd", "generate", *common, "--method", "pilot_only", "--output", str(tmp_path / "p.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    drafted = json.loads((tmp_path / "p.jsonl").read_text())
    expected = original.decode(greedy(final, QUESTION, drafted["pilot_tokens"], tokenizer_dir=smollm2),
                               skip_special_tokens=True)
    assert drafted["pilot_tokens"] > 0 and drafted["response"].strip() == expected.strip(), (drafted, expected)
    r = pilot("wsd", "generate", *common, "--output", str(tmp_path / "w.jsonl"))
    assert r.returncode == 0, r.stderr[-3000:]
    wsd = json.loads((tmp_path / "w.jsonl").read_text())
    assert wsd["pilot_tokens"] > 0 and wsd["response"].strip()
    assert expected.strip().startswith(wsd["draft_text"].strip())  # the kept draft is the pilot's own beginning


def test_nudging_with_smollm2_as_the_pilot(smollm2, pair_different):
    """Nudging as its authors run it with a real chat pilot (SmolLM2's 49k tokenizer and its own template, its
    completions split into words as their code splits them) beside a base of another tokenizer family: at their
    γ (0.4) and at one where both write, the batch equals the batch-1 reference written from their code."""
    from pilot_core.models.loading import load_hf_model
    from wsd_inference.config import NudgingConfig, WSDConfig
    from wsd_inference.nudging import nudging_batch

    from . import wsd_reference
    from .helpers import RECS

    pilot, base = load_hf_model(str(smollm2), need_chat_template=True), load_hf_model(str(pair_different[1]))
    recs, handoffs = RECS[:3], 0
    for gamma in (0.4, 0.15):
        cfg = WSDConfig(max_new_tokens=24, nudging=NudgingConfig(threshold=gamma))
        got = nudging_batch(pilot, base, recs, cfg)
        for rec, g in zip(recs, got):
            want = wsd_reference.nudging(pilot, base, rec.messages, cfg)
            assert {k: g.to_json()[k] for k in want} == want, (gamma, rec.id)
        handoffs += sum(g.nudging.handoffs for g in got)
    assert handoffs > 0


def test_continuous_batching_with_smollm2_as_the_pilot(smollm2, pair_different):
    """The server's continuous batching with a real chat pilot (SmolLM2's 49k tokenizer and template) beside a base
    of another tokenizer family, answers joining at different steps: the batch engine's answers."""
    from pilot_core.models.loading import load_hf_model
    from wsd_inference.config import WSDConfig
    from wsd_inference.continuous import ContinuousEngine
    from wsd_inference.engine import wsd_batch

    from .helpers import RECS

    pilot, base = load_hf_model(str(smollm2), need_chat_template=True), load_hf_model(str(pair_different[1]))
    recs = RECS[:4]
    cfg = WSDConfig(window=3, threshold=0.05, max_draft_tokens=24, max_new_tokens=32, speculation={"tokens": 0})
    want = {r.id: r for r in wsd_batch(pilot, base, recs, cfg)}
    engine, got = ContinuousEngine("wsd", base, pilot), {}
    for rec in recs:  # one joins per step
        engine.add(rec, cfg)
        got.update((a.rec.id, a.record) for a in engine.step())
    while engine.running:
        got.update((a.rec.id, a.record) for a in engine.step())
    fields = ("response", "draft_text", "switch_index", "switched", "base_tokens", "kept_draft_tokens")
    for rec in recs:
        assert {k: got[rec.id].to_json()[k] for k in fields} == {k: want[rec.id].to_json()[k] for k in fields}
    assert any(g.wsd.kept_draft_tokens for g in got.values())  # the pilot's words were kept
