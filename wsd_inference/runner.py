"""Run WSD for one (pilot, base) pair over a prompt list into a resumable JSONL file.

The one entry point shared by `pilot wsd generate` and the pipeline: it picks the backend from the model
sources (in-process transformers, or OpenAI-compatible servers), persists every finished batch, and returns a
summary of the new records.
"""

from __future__ import annotations

from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.model_source import ModelSource
from wsd_inference.config import WSDConfig
from wsd_inference.prompts import PromptRecord
from wsd_inference.records import ResumableJsonl


def generate_to_file(pilot: ModelSource, base: ModelSource, prompts: list[PromptRecord], cfg: WSDConfig,
                     output: str | Path, device: str = "cpu", dtype: str = "float32",
                     progress: bool = True) -> dict:
    if pilot.url and not base.url:
        raise UserError("a pilot on a server needs a base on a server too (or give a local pilot)")
    settings = {"method": "wsd", "pilot": pilot.model_dump(mode="json"), "base": base.model_dump(mode="json"),
                "config": cfg.model_dump(mode="json")}
    out = ResumableJsonl(output, settings)
    done = out.done_ids()
    todo = [p for p in prompts if p.id not in done]
    new: list[dict] = []
    if todo or not out.path.exists():
        from tqdm import tqdm

        from wsd_inference.engine import wsd_batch
        from wsd_inference.hf_backend import load_hf_model
        from wsd_inference.openai_backend import OpenAIServer, load_tokenizer

        # load everything before the output is opened: a bad model must not leave a settings file behind
        if pilot.url:
            pilot_m = OpenAIServer(pilot.url, pilot.served_model, pilot.api_key_env)
        else:
            pilot_m = load_hf_model(pilot.local_path(), f"pilot {pilot.name}", device, dtype,
                                    pilot.trust_remote_code, need_chat_template=True)
        if base.url:
            base_tok = load_tokenizer(base.tokenizer or base.served_model, f"base {base.name} tokenizer",
                                      base.trust_remote_code)
            base_server = OpenAIServer(base.url, base.served_model, base.api_key_env)
        else:
            base_m = load_hf_model(base.local_path(), f"base {base.name}", device, dtype, base.trust_remote_code)
        with out, tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"wsd {base.name}",
                       unit="prompt", disable=not progress) as bar:

            def save(records: list[dict]) -> None:
                out.write(records)
                new.extend(records)
                bar.update(len(records))

            if base.url:
                from wsd_inference.remote_engine import run_remote

                run_remote(pilot_m, base_server, base_tok, todo, cfg, save)
            else:
                for i in range(0, len(todo), cfg.batch_size):
                    save(wsd_batch(pilot_m, base_m, todo[i : i + cfg.batch_size], cfg))
            out.finish()
    n = max(len(new), 1)
    return {"new": len(new), "already_done": len(prompts) - len(todo), "switched": sum(r["switched"] for r in new),
            "mean_kept_draft_tokens": sum(r["kept_draft_tokens"] for r in new) / n,
            "mean_base_tokens": sum(r["base_tokens"] for r in new) / n, "output": str(out.path)}
