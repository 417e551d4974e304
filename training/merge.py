"""Merge a LoRA adapter into its base model and export a plain checkpoint (safetensors, tokenizer, manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from pilot_core.atomic import atomic_dir
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, read_manifest, write_manifest


def merged(adapter: Path) -> Path:
    """The full-weights checkpoint of a stage trained with LoRA (`<stage>/merged` beside `<stage>/final`),
    merged once: a rerun reuses a complete one (its manifest is written last)."""
    out = adapter.with_name("merged")
    if not (out / "manifest.json").is_file():
        merge_adapter(adapter, out)
    return out


def merge_adapter(adapter: str | Path, out: str | Path, base: str | None = None) -> Path:
    from peft import PeftModel

    from pilot_core.models.compute import Compute
    from pilot_core.models.loading import load_tokenizer, load_weights

    adapter, out = Path(adapter), Path(out)
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{adapter}: not a LoRA adapter (no adapter_config.json)")
    base = base or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{adapter}: the adapter does not name its base model; give --base")
    if out.exists():
        raise UserError(f"{out} already exists; choose a new directory")
    model = load_weights(base, "base model", "causal_lm", Compute(device="cpu", dtype="float32"), place=False)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tok = load_tokenizer(str(adapter) if (adapter / "tokenizer_config.json").is_file() else base, "tokenizer")
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        source = read_manifest(adapter, kind="checkpoint") if (adapter / "manifest.json").is_file() else None
        write_manifest(tmp, Manifest(kind="checkpoint", config_hash=source.config_hash if source else None,
                                     config=source.config if source else None,
                                     inputs={"adapter": str(adapter), "base": str(base)},
                                     data={**(source.data if source else {}), "merged_from_lora": True}))
    return out
