"""Merge a LoRA adapter into its base model and export a plain checkpoint (safetensors, tokenizer, manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from pilot_core.atomic import atomic_dir
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, read_manifest, write_manifest


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter, out = Path(adapter), Path(out)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{adapter}: not a LoRA adapter (no adapter_config.json)")
    base = base or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter}: the adapter does not name its base model; give --base")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new directory")
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, use_safetensors=True)
    except OSError as e:
        raise UserError(f"base model {base}: cannot load: {str(e).splitlines()[0]}") from None
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tok = AutoTokenizer.from_pretrained(adapter if (adapter / "tokenizer_config.json").is_file() else base)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        source = read_manifest(adapter, kind="checkpoint") if (adapter / "manifest.json").is_file() else None
        write_manifest(tmp, Manifest(kind="checkpoint", config_hash=source.config_hash if source else None,
                                     config=source.config if source else None,
                                     inputs={"adapter": str(adapter), "base": str(base)},
                                     data={**(source.data if source else {}), "merged_from_lora": True}))
    return out
