"""Loading a model and its tokenizer with transformers, in one place for every stage: the checks on a local
directory (safetensors only), the architecture check, placement (`compute.py`), and one clear
UserError for anything the user can fix (a missing path, a foreign config, pickled weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pilot_core.errors import UserError
from pilot_core.models.compute import Compute
from pilot_core.models.files import check_local_dir, is_local
from pilot_core.models.templates import PILOT_STOP_TOKENS

Head = Literal["causal_lm", "reward", "classifier"]


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _revision(path: str, revision: str | None) -> dict:
    """A hub id is read at `revision` (a commit, pinned in production configs); a local directory has none."""
    return {"revision": revision} if revision and not is_local(path) else {}


def load_tokenizer(name: str, role: str = "tokenizer", trust_remote_code: bool = False, revision: str | None = None):
    """A tokenizer from a local directory or hub id; a missing one is a UserError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, **_revision(name, revision))
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {name}: cannot load: {_first_line(e)}") from None


def load_config(path: str, role: str, trust_remote_code: bool = False, allow_pickle: bool = False,
                revision: str | None = None):
    """The model's transformers config, after the checks on a local directory (safetensors only)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if is_local(path):
        check_local_dir(Path(path), allow_pickle)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, **_revision(path, revision))
    except (OSError, ValueError) as e:
        raise UserError(f"{role} {path}: cannot read the model config: {_first_line(e)}") from None


def check_head(config, path: str, role: str, head: Head, trust_remote_code: bool = False) -> None:
    """A UserError unless the config describes the kind of model the caller needs."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = getattr(config, "architectures", None) or []
    if head == "classifier":
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise UserError(f"{role} {path}: architecture {', '.join(archs) or config.model_type!r} is not a "
                            "text-classification model")
        return
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


def load_weights(path: str, role: str = "model", head: Head = "causal_lm", compute: Compute | None = None,
                 trust_remote_code: bool = False, allow_pickle: bool = False, place: bool = True,
                 revision: str | None = None):
    """The model's weights (safetensors unless `allow_pickle`) as `compute` says (default: auto), in eval mode on
    its device; with `place=False` the caller places it (a trainer)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cls = AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification
    where = (compute or Compute()).resolve()
    kwargs = {**where.from_pretrained_kwargs(), **_revision(path, revision)}
    if not place:
        kwargs.pop("device_map", None)
    try:
        model = cls.from_pretrained(path, trust_remote_code=trust_remote_code, use_safetensors=not allow_pickle or None,
                                    **kwargs)
    except (OSError, ValueError, ImportError) as e:  # ImportError: an attention implementation not installed
        raise UserError(f"{role} {path}: cannot load: {_first_line(e)}") from None
    if place:
        if not where.device_map:
            model.to(where.device)
        model.eval()
    return model


def input_device(model) -> str:
    """Where a loaded model's inputs go: its device, or with a device map, where its embeddings are."""
    return str(model.get_input_embeddings().weight.device)


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


def load_hf_model(path: str, role: str = "model", compute: Compute | None = None, trust_remote_code: bool = False,
                  allow_pickle: bool = False, need_chat_template: bool = False, revision: str | None = None) -> HFModel:
    """Load a causal LM for decoding. Bad paths, non-causal-LM configs and pickled weights are UserErrors."""
    config = load_config(path, role, trust_remote_code, allow_pickle, revision)
    check_head(config, path, role, "causal_lm", trust_remote_code)
    tok = load_tokenizer(path, role, trust_remote_code, revision)
    model = load_weights(path, role, "causal_lm", compute, trust_remote_code, allow_pickle, revision=revision)
    if need_chat_template and not getattr(tok, "chat_template", None):
        raise UserError(f"{role} {path}: the tokenizer has no chat template (a pilot must be a chat model)")
    stop = stop_ids(tok, getattr(model.generation_config, "eos_token_id", None), chat=need_chat_template)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(stop) if stop else 0)
    return HFModel(path=path, model=model, tokenizer=tok, stop_ids=stop, pad_id=pad, device=input_device(model))


def stop_ids(tok, extra_eos=None, chat: bool = False) -> frozenset[int]:
    """The token ids a model stops at: the tokenizer's EOS and `extra_eos` (an id or a list, e.g. the generation
    config's); a chat model also stops at any end-of-turn token it knows (authors' list)."""
    stop = set()
    for tid in (tok.eos_token_id, extra_eos):
        stop.update(tid if isinstance(tid, list) else [tid] if tid is not None else [])
    if chat:
        vocab = tok.get_vocab()
        stop.update(vocab[t] for t in PILOT_STOP_TOKENS if t in vocab)
    return frozenset(stop)
