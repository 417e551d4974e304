"""Loading a model and its tokenizer with transformers, in one place for every stage: the checks on a local
directory (safetensors only), the architecture check, device, dtype and attention implementation, and one clear
UserError for anything the user can fix (a missing path, a foreign config, pickled weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pilot_core.errors import UserError
from pilot_core.models.files import check_local_dir, is_local
from pilot_core.models.templates import PILOT_STOP_TOKENS

Head = Literal["causal_lm", "reward"]


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def load_tokenizer(name: str, role: str = "tokenizer", trust_remote_code: bool = False):
    """A tokenizer from a local directory or hub id; a missing one is a UserError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {name}: cannot load: {_first_line(e)}") from None


def load_config(path: str, role: str, trust_remote_code: bool = False, allow_pickle: bool = False):
    """The model's transformers config, after the checks on a local directory (safetensors only)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if is_local(path):
        check_local_dir(Path(path), allow_pickle)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: cannot read the model config: {_first_line(e)}") from None


def check_head(config, path: str, role: str, head: Head, trust_remote_code: bool = False) -> None:
    """A UserError unless the config describes the kind of model the caller needs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if head == "reward":
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise UserError(f"{role} {path}: architecture {', '.join(archs) or config.model_type!r} is not a "
                            "sequence-classification model")
        if config.num_labels != 1:
            raise UserError(f"{role} {path}: has {config.num_labels} outputs; a reward model has one")
        return
    causal_arch = any("CausalLM" in a or "LMHeadModel" in a for a in archs)
    if (archs and not causal_arch) or config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if not (trust_remote_code and causal_arch):
            what = f"{config.model_type!r} ({', '.join(archs)})" if archs else repr(config.model_type)
            raise UserError(f"{role} {path}: model type {what} is not a causal LM")


def load_weights(path: str, role: str = "model", head: Head = "causal_lm", dtype: str = "float32",
                 device: str | None = "cpu", trust_remote_code: bool = False, attn_implementation: str | None = None,
                 allow_pickle: bool = False):
    """The model's weights (safetensors unless `allow_pickle`) in `dtype`, on `device` (None: leave placement to
    the caller, e.g. a trainer), in eval mode when placed. `attn_implementation` None is transformers' default."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = cls.from_pretrained(path, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
                                    use_safetensors=not allow_pickle or None, **extra)
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: cannot load: {_first_line(e)}") from None
    if device is not None:
        model.to(device).eval()
    return model


@dataclass
class HFModel:
    """A causal LM and its tokenizer, with the token ids it stops at."""

    path: str
    model: object
    tokenizer: object
    stop_ids: frozenset[int]
    pad_id: int
    device: str = "cpu"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def load_hf_model(path: str, role: str = "model", device: str = "cpu", dtype: str = "float32",
                  trust_remote_code: bool = False, allow_pickle: bool = False, need_chat_template: bool = False,
                  attn_implementation: str | None = None) -> HFModel:
    """Load a causal LM for decoding. Bad paths, non-causal-LM configs and pickled weights are UserErrors."""
    config = load_config(path, role, trust_remote_code, allow_pickle)
    check_head(config, path, role, "causal_lm", trust_remote_code)
    tok = load_tokenizer(path, role, trust_remote_code)
    model = load_weights(path, role, "causal_lm", dtype, device, trust_remote_code, attn_implementation, allow_pickle)
    if need_chat_template and not getattr(tok, "chat_template", None):
        raise UserError(f"{role} {path}: the tokenizer has no chat template (a pilot must be a chat model)")
    stop = set()
    for tid in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        stop.update(tid if isinstance(tid, list) else [tid] if tid is not None else [])
    if need_chat_template:  # a chat pilot also stops at any end-of-turn token it knows (authors' list)
        vocab = tok.get_vocab()
        stop.update(vocab[t] for t in PILOT_STOP_TOKENS if t in vocab)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(stop) if stop else 0)
    return HFModel(path=path, model=model, tokenizer=tok, stop_ids=frozenset(stop), pad_id=pad, device=device)
