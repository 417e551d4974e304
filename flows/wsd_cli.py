"""`pilot wsd generate`: run WSD over a prompt file (thin: parsing and progress only)."""

from __future__ import annotations

import click

from pilot_core.errors import UserError

FLAG_TO_KEY = {"window": "window", "threshold": "threshold", "max_draft_tokens": "max_draft_tokens",
               "max_new_tokens": "max_new_tokens", "batch_size": "batch_size", "chunk_size": "chunk_size",
               "temperature": "temperature", "top_p": "top_p", "seed": "seed"}


@click.group()
def wsd() -> None:
    """Weak-to-Strong Decoding and the methods it is compared with."""


@wsd.command()
@click.option("--pilot", required=True, help="pilot model: a local directory or hub id (a chat model)")
@click.option("--base", required=True, help="base model: a local directory or hub id")
@click.option("--input", "input_path", required=True, help="JSONL: {id, messages} or {id, prompt} per line")
@click.option("--output", "output_path", required=True, help="JSONL of results; rerunning resumes it")
@click.option("--config", "config_path", help="configs/wsd/*.yaml (flags below override it)")
@click.option("--window", type=int, help="w, default 6")
@click.option("--threshold", type=float, help="gamma, default 0.8")
@click.option("--max-draft-tokens", type=int, help="default 512")
@click.option("--max-new-tokens", type=int, help="total budget in base tokens, default 2048")
@click.option("--batch-size", type=int, help="default 8")
@click.option("--chunk-size", type=int, help="draft tokens scored per base pass, default 8")
@click.option("--temperature", type=float, help="0 = greedy (default)")
@click.option("--top-p", type=float)
@click.option("--seed", type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="allow model repos to run their own code (off by default)")
def generate(pilot, base, input_path, output_path, config_path, device, dtype, trust_remote_code, **flags) -> None:
    """Generate answers with Weak-to-Strong Decoding: the pilot drafts, the base takes over once confident."""
    from pilot_core.config import load_config, validate_config
    from wsd_inference.config import WSDConfig
    from wsd_inference.prompts import load_prompts

    data = load_config(WSDConfig, config_path).model_dump() if config_path else {}
    data.update({FLAG_TO_KEY[k]: v for k, v in flags.items() if v is not None})
    cfg = validate_config(WSDConfig, data, source="options")
    prompts = load_prompts(input_path)
    if pilot.startswith(("http://", "https://")) or base.startswith(("http://", "https://")):
        raise UserError("OpenAI-compatible server backends are not built yet (issue #3); give local model paths")

    from wsd_inference.records import ResumableJsonl

    settings = {"method": "wsd", "pilot": pilot, "base": base, "config": cfg.model_dump(mode="json")}
    out = ResumableJsonl(output_path, settings)
    done = out.done_ids()
    todo = [p for p in prompts if p.id not in done]
    if not todo and out.path.exists():
        click.echo(f"{output_path}: all {len(prompts)} prompts already done", err=True)
        return

    from tqdm import tqdm

    from wsd_inference.engine import wsd_batch
    from wsd_inference.hf_backend import load_hf_model

    pilot_m = load_hf_model(pilot, "pilot", device, dtype, trust_remote_code, need_chat_template=True)
    base_m = load_hf_model(base, "base", device, dtype, trust_remote_code)
    switched = 0
    with out, tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="wsd", unit="prompt") as bar:
        for i in range(0, len(todo), cfg.batch_size):
            records = wsd_batch(pilot_m, base_m, todo[i : i + cfg.batch_size], cfg)
            out.write(records)
            switched += sum(r["switched"] for r in records)
            bar.update(len(records))
        out.finish()
    click.echo(f"{output_path}: {len(todo)} new answers ({switched} switched to the base), "
               f"{len(prompts) - len(todo)} already done", err=True)
