"""The tiny-model factory: round-trips through save_pretrained/from_pretrained, is deterministic, trains-ready."""

import hashlib

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pilot_core.manifest import read_manifest
from pilot_core.models.tiny import TinyModelSpec, TokenizerSpec, build_tiny_model, cached_tiny_model

MSGS = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "It is 4."}]


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("spec", [
    TinyModelSpec(),
    TinyModelSpec(arch="qwen2", hidden_size=128, num_heads=4, num_kv_heads=2,
                  tokenizer=TokenizerSpec(family="llama3", vocab_size=700)),
], ids=["llama-chatml", "qwen2-llama3"])
def test_roundtrip_and_chat_template(spec, tmp_path):
    out = build_tiny_model(spec, tmp_path / "m")
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == spec.arch
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    assert model.config.vocab_size == len(tok)
    enc = tok.apply_chat_template(MSGS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    assistant_text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert assistant_text == "It is 4." + tok.eos_token  # loss goes on the answer and its end-of-turn only
    assert ids[0] == tok.bos_token_id
    assert tok.eos_token_id in model.generation_config.eos_token_id
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    m = read_manifest(out, kind="tiny-model")
    assert m.config == spec.model_dump(mode="json") and m.data["parameters"] == model.num_parameters()


def test_deterministic_for_a_seed_and_different_across_seeds(tmp_path):
    """Pretraining included: two builds on one machine are the same bytes (the demo's figures rest on it)."""
    spec = TinyModelSpec(seed=5, pretrain_steps=30, pretrain_format="chat")
    a = build_tiny_model(spec, tmp_path / "a")
    b = build_tiny_model(spec, tmp_path / "b")
    c = build_tiny_model(spec.model_copy(update={"seed": 6}), tmp_path / "c")
    assert _sha(a / "model.safetensors") == _sha(b / "model.safetensors")
    assert _sha(a / "tokenizer.json") == _sha(b / "tokenizer.json")
    assert _sha(a / "model.safetensors") != _sha(c / "model.safetensors")


def test_cache_builds_once(tmp_path):
    spec = TinyModelSpec(seed=11)
    first = cached_tiny_model(spec, cache_dir=tmp_path)
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    again = cached_tiny_model(spec, cache_dir=tmp_path)
    assert again == first and (again / "model.safetensors").stat().st_mtime_ns == mtime
    assert cached_tiny_model(TinyModelSpec(seed=12), cache_dir=tmp_path) != first


def test_pairs(pair_same, pair_different):
    pilot, base_same = pair_same
    pilot2, base_other = pair_different
    assert pilot == pilot2
    tp, ts, to = (AutoTokenizer.from_pretrained(p) for p in (pilot, base_same, base_other))
    assert tp.get_vocab() == ts.get_vocab()
    assert tp.get_vocab() != to.get_vocab()
    text = "The answer is: sorry, I cannot help with that."
    assert tp.tokenize(text) != to.tokenize(text)
    n = {p: AutoModelForCausalLM.from_pretrained(p).num_parameters() for p in (pilot, base_same, base_other)}
    assert n[base_same] > 4 * n[pilot] and n[base_other] > 4 * n[pilot]
