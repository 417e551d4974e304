"""Import a GGUF file (llama.cpp's format) once into a transformers directory in safetensors.

transformers reads GGUF and dequantizes it, but a model loaded that way cannot be saved (it is marked as
quantized), and every later load would dequantize again. So the model is re-created from its config, given the
dequantized weights, and saved like any checkpoint, with the tokenizer and chat template the GGUF file carries.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from pilot_core.atomic import atomic_dir
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, write_manifest

DTYPES = ("bfloat16", "float16", "float32")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def import_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "bfloat16") -> Path:
    """Write `out` (which must not exist): config, safetensors weights in `dtype`, tokenizer, generation config
    and a manifest naming the GGUF file and its sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out = Path(gguf_file), Path(out)
    if not src.is_file():
        raise UserError(f"GGUF file not found: {src}")
    with src.open("rb") as f:
        if src.suffix != ".gguf" or f.read(4) != b"GGUF":
            raise UserError(f"{src}: not a GGUF file (a .gguf file starts with the bytes GGUF)")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose one of {', '.join(DTYPES)}")
    if out.exists():
        raise UserError(f"--out {out}: already exists; choose a new directory")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so plainly)
    except ImportError:
        raise UserError("reading GGUF needs the `gguf` package: pip install gguf") from None
    where, name = str(src.parent), src.name
    try:
        tok = AutoTokenizer.from_pretrained(where, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError, IndexError, RuntimeError, struct.error) as e:  # a truncated or foreign file
        raise UserError(f"{src}: cannot read as a GGUF model: {str(e).splitlines()[0]}") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    clean = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    clean.load_state_dict(loaded.state_dict())
    clean.tie_weights()
    clean.generation_config = loaded.generation_config
    with atomic_dir(out) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        write_manifest(tmp, Manifest(kind="model", inputs={"gguf": str(src.resolve())},
                                     data={"gguf_sha256": _sha256(src), "dtype": dtype,
                                           "architecture": type(clean).__name__,
                                           "parameters": sum(p.numel() for p in clean.parameters())}))
    return out
