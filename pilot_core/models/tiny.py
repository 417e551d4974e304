"""Tiny causal LMs (and reward models) built in-process: a BPE tokenizer trained locally, a chat template with
{% generation %} markers, a Llama or Qwen2 of a chosen size with seeded random weights, saved with `save_pretrained`.

Used by tests, benchmarks and the demo: no network, deterministic for a seed (same bytes on disk).
Two tokenizer families make cross-tokenizer pilot/base pairs possible, as in the paper (Llama-3.2 pilot,
Gemma-2 base).
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pilot_core.atomic import atomic_dir
from pilot_core.config import BaseConfig
from pilot_core.demo_world import CORPORA, corpus
from pilot_core.manifest import Manifest, config_hash, package_versions, read_manifest, write_manifest
from pilot_core.models.templates import base_prompt

# Part of every cache key: bump it whenever a change here changes what gets built for the same spec.
FACTORY_VERSION = 2

# head sizes vLLM's CPU attention accepts (reference/openai_servers.md): keep tiny models servable.
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)

# Special tokens and chat template of each family. Both templates wrap assistant turns in {% generation %}
# so TRL's assistant_only_loss works, and end every turn with an end-of-turn token the pilot must learn to emit.
FAMILIES = {
    "chatml": {
        "bos": "<s>", "eos": "<|im_end|>", "pad": "<pad>", "unk": "<unk>", "eod": "</s>",
        "extra": ["<|im_start|>"],
        "template": (
            "{{ bos_token }}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
            "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}"
            "{% endgeneration %}{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
        ),
    },
    "llama3": {
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": "<|finetune_right_pad_id|>", "unk": "<|unk|>",
        "eod": "<|end_of_text|>", "extra": ["<|start_header_id|>", "<|end_header_id|>"],
        "template": (
            "{{ bos_token }}{% for message in messages %}"
            "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
            "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|eot_id|>' }}"
            "{% endgeneration %}{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
        ),
    },
}


class TokenizerSpec(BaseConfig):
    family: Literal["chatml", "llama3"] = "chatml"
    vocab_size: int = Field(512, ge=300, le=65536, description="BPE target size (byte alphabet + merges + specials)")


class TinyModelSpec(BaseConfig):
    """A tiny causal LM. Defaults give ~0.1M parameters; head_dim must be one vLLM's CPU backend accepts."""

    arch: Literal["llama", "qwen2"] = "llama"
    hidden_size: int = Field(64, ge=32)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    num_kv_heads: int | None = Field(None, ge=1, description="defaults to num_heads")
    intermediate_size: int | None = Field(None, ge=1, description="defaults to 2 * hidden_size")
    max_position_embeddings: int = Field(4096, ge=64)
    tie_word_embeddings: bool = False
    init_std: float = Field(0.02, gt=0, description="weight init std; larger gives more confident random models")
    seed: int = 0
    tokenizer: TokenizerSpec = TokenizerSpec()
    pretrain_steps: int = Field(0, ge=0, description="AdamW steps of language modelling on the corpus (0 = random)")
    pretrain_format: Literal["text", "chat"] = Field("text", description="chat: corpus lines as user/assistant turns")
    learning_rate: float = Field(3e-3, gt=0)
    corpus: str = Field("default", description="pretraining corpus: default (English-like filler), or one of the "
                        "demo world's (pilot_core.demo_world.CORPORA)")
    head: Literal["causal_lm", "reward"] = Field(
        "causal_lm", description="reward: the pretrained backbone under a seeded one-output sequence-classification "
        "head (a tiny reward model)")

    @model_validator(mode="after")
    def _check_heads(self) -> "TinyModelSpec":
        if self.corpus not in CORPORA:
            raise ValueError(f"unknown corpus {self.corpus!r}; known: {', '.join(CORPORA)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(f"head_dim {head_dim} (hidden_size / num_heads) must be one of {VLLM_CPU_HEAD_DIMS}")
        if self.num_heads % (self.num_kv_heads or self.num_heads):
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self


def spec_corpus(spec: "TinyModelSpec") -> list:
    """The spec's pretraining corpus: plain lines (str) and (request, response) conversations."""
    return corpus(spec.corpus)


def _flat(corpus: list) -> list[str]:
    return [x if isinstance(x, str) else f"{x[0]}\n{x[1]}" for x in corpus]


def train_tokenizer(spec: TokenizerSpec, corpus: list):
    """Train a byte-level BPE tokenizer with the family's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    fam = FAMILIES[spec.family]
    specials = [fam["pad"], fam["bos"], fam["eod"], fam["unk"], fam["eos"], *fam["extra"]]
    tok = Tokenizer(models.BPE(unk_token=fam["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_flat(corpus), trainer)
    bos_id = tok.token_to_id(fam["bos"])
    # Like Llama: plain encoding adds BOS, so a base model sees BOS before raw text.
    tok.post_processor = processors.TemplateProcessing(single=f"{fam['bos']} $A", pair=f"{fam['bos']} $A $B",
                                                       special_tokens=[(fam["bos"], bos_id)])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=fam["bos"], eos_token=fam["eos"],
                                 pad_token=fam["pad"], unk_token=fam["unk"],
                                 additional_special_tokens=[fam["eod"], *fam["extra"]])
    hf.chat_template = fam["template"]
    return hf


def build_tiny_model(spec: TinyModelSpec, out_dir: str | Path, corpus: list | None = None,
                     overwrite: bool = False) -> Path:
    """Build and save a tiny model + tokenizer into `out_dir` (atomically, with a manifest)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    corpus = spec_corpus(spec) if corpus is None else corpus
    tok = train_tokenizer(spec.tokenizer, corpus)
    fam = FAMILIES[spec.tokenizer.family]
    eos_ids = [tok.convert_tokens_to_ids(fam["eos"]), tok.convert_tokens_to_ids(fam["eod"])]
    common = dict(
        vocab_size=len(tok), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads or spec.num_heads,
        intermediate_size=spec.intermediate_size or 2 * spec.hidden_size,
        max_position_embeddings=spec.max_position_embeddings, initializer_range=spec.init_std,
        tie_word_embeddings=spec.tie_word_embeddings, bos_token_id=tok.bos_token_id, eos_token_id=eos_ids,
        pad_token_id=tok.pad_token_id,
    )
    cfg_cls, model_cls = (LlamaConfig, LlamaForCausalLM) if spec.arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    torch.manual_seed(spec.seed)
    model = model_cls(cfg_cls(**common)).eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos_ids,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    if spec.pretrain_steps:
        _pretrain(model, tok, spec, corpus)
    if spec.head == "reward":
        model = _reward_head(model, spec)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, Manifest(
            kind="tiny-model", config_hash=config_hash(spec), config=spec.model_dump(mode="json"),
            inputs={"corpus": _corpus_hash(corpus)},
            data={"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok)},
        ))
    return Path(out_dir)


def _documents(tok, spec: TinyModelSpec, corpus: list) -> list[str]:
    """Pretraining documents. Plain lines are grouped several to a document, so generations run for a while
    before the end token; a conversation is one document, in the chat template (format chat) or in the base's
    plain role format (format text: `templates.base_prompt`, as WSD prompts a base)."""
    lines = [x for x in corpus if isinstance(x, str)]
    convs = [x for x in corpus if not isinstance(x, str)]
    eod = FAMILIES[spec.tokenizer.family]["eod"]
    if spec.pretrain_format == "chat":  # a chat model never opens its answer with a plain-text role marker
        lines = [line for line in lines if not line.startswith("[")]
        docs = [tok.apply_chat_template([{"role": "user", "content": lines[i]},
                                         {"role": "assistant", "content": " ".join(lines[i + 1 : i + 4])}],
                                        tokenize=False) for i in range(0, len(lines) - 3, 4)]
        docs += [tok.apply_chat_template([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                         tokenize=False) for q, a in convs]
    else:
        docs = [tok.bos_token + " ".join(lines[i : i + 6]) + eod for i in range(0, len(lines), 6)]
        docs += [base_prompt([{"role": "user", "content": q}], tok.bos_token) + a + eod for q, a in convs]
    if convs:  # interleave, so every batch sees both kinds
        random.Random(spec.seed).shuffle(docs)
    return docs


def _pretrain(model, tok, spec: TinyModelSpec, corpus: list, seq_len: int = 64, batch: int = 16) -> None:
    """A few hundred steps of next-token training, so a tiny model writes corpus-like text and is confident on
    common continuations (random weights give p ~ 1/vocab everywhere, which no WSD threshold ever reaches)."""
    import torch

    docs = _documents(tok, spec, corpus)
    ids = [i for d in docs for i in tok(d, add_special_tokens=False).input_ids]
    data = torch.tensor(ids[: len(ids) // seq_len * seq_len]).view(-1, seq_len)
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.0)
    model.train()
    for _ in range(spec.pretrain_steps):
        x = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()


def _reward_head(lm, spec: TinyModelSpec):
    """The language model's backbone under a seeded score head with one output."""
    import torch
    from transformers import AutoModelForSequenceClassification

    fields = {k: v for k, v in lm.config.to_dict().items() if k not in ("id2label", "label2id")}
    cfg = lm.config.__class__(**fields, num_labels=1)
    torch.manual_seed(spec.seed + 1)
    rm = AutoModelForSequenceClassification.from_config(cfg).eval()
    rm.model.load_state_dict(lm.model.state_dict())
    torch.nn.init.normal_(rm.score.weight, std=1.0 / spec.hidden_size**0.5)  # rewards of order 1
    return rm


def _corpus_hash(corpus: list) -> str:
    return hashlib.sha256("\n".join(_flat(corpus)).encode("utf-8")).hexdigest()


def cache_root() -> Path:
    """$PILOT_CACHE_DIR, else $XDG_CACHE_HOME/pilot, else ~/.cache/pilot."""
    if os.environ.get("PILOT_CACHE_DIR"):
        return Path(os.environ["PILOT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pilot"


def cached_tiny_model(spec: TinyModelSpec, corpus: list | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """Build once per (spec, corpus, library versions); later calls return the cached directory."""
    corpus = spec_corpus(spec) if corpus is None else corpus
    v = package_versions(("transformers", "tokenizers", "torch"))
    key = config_hash({"spec": spec.model_dump(mode="json"), "corpus": _corpus_hash(corpus), "versions": v,
                       "factory": FACTORY_VERSION})[:16]
    out = Path(cache_dir or cache_root() / "tiny-models") / key
    if (out / "manifest.json").is_file():
        read_manifest(out, kind="tiny-model")
        return out
    # a first run sits here for minutes on a small CPU: say what it does (and that it happens once)
    print(f"building a tiny {spec.arch} model ({spec.hidden_size}x{spec.num_layers}, {spec.pretrain_steps} "
          f"pretraining steps) once, cached in {out}", file=sys.stderr, flush=True)
    try:
        return build_tiny_model(spec, out, corpus)
    except FileExistsError:  # another process finished it first
        read_manifest(out, kind="tiny-model")
        return out


# Two pilot/base pairs: the same tokenizer, and different tokenizer families (WSD must work across both).
# Briefly pretrained, so the base is confident on some draft tokens and WSD switches at realistic thresholds.
PILOT_SPEC = TinyModelSpec(hidden_size=64, num_layers=2, num_heads=2, seed=1, pretrain_steps=150,
                           pretrain_format="chat")
# The pilot "before chat tuning": same architecture, tokenizer and seed, pretrained on plain text only.
UNTUNED_SPEC = PILOT_SPEC.model_copy(update={"pretrain_format": "text"})
BASE_SPEC_SAME_TOKENIZER = TinyModelSpec(hidden_size=128, num_layers=3, num_heads=4, seed=2, pretrain_steps=150)
BASE_SPEC_OTHER_TOKENIZER = TinyModelSpec(arch="qwen2", hidden_size=128, num_layers=3, num_heads=4, seed=3,
                                          pretrain_steps=150, tokenizer=TokenizerSpec(family="llama3", vocab_size=700))


def tiny_pair(kind: Literal["same", "different"], cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(pilot_dir, base_dir) for a pilot/base pair sharing a tokenizer ("same") or not ("different")."""
    base = BASE_SPEC_SAME_TOKENIZER if kind == "same" else BASE_SPEC_OTHER_TOKENIZER
    return cached_tiny_model(PILOT_SPEC, cache_dir=cache_dir), cached_tiny_model(base, cache_dir=cache_dir)


REWARD_SPEC = PILOT_SPEC.model_copy(update={"head": "reward"})


def tiny_reward_model(cache_dir: str | Path | None = None) -> Path:
    """A tiny reward model on the pilot's backbone and tokenizer (for best-of-N, judges and metrics)."""
    return cached_tiny_model(REWARD_SPEC, cache_dir=cache_dir)


def tiny_untuned(cache_dir: str | Path | None = None) -> Path:
    """The untuned reference of the tiny pilot (for weak-to-strong search, best-of-N and EFT)."""
    return cached_tiny_model(UNTUNED_SPEC, cache_dir=cache_dir)
