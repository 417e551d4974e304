"""Run a decoding method (WSD or one it is compared with) over a prompt list into a resumable JSONL file.

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


METHODS = ("wsd", "base_only", "pilot_only", "urial", "bon", "cbs", "eft")
NEEDS_UNTUNED = ("cbs", "eft")  # and bon with the implicit-reward scorer
SERVER_METHODS = ("wsd", "base_only", "urial", "pilot_only", "bon", "cbs")  # base (or pilot) on a server
LOCAL_SCORERS = ("bon", "cbs")  # the pilot scores in-process even when the base is served


def _batch_fn(method: str, pilot, base, untuned, reward, cfg: WSDConfig):
    """The in-process function for one batch of prompts."""
    from wsd_inference import baselines, eft, search
    from wsd_inference.engine import wsd_batch

    # checks that can fail run here, before any output is opened
    prefix = baselines.urial_prefix(cfg.urial_prefix) if method == "urial" else None
    if method == "eft":
        eft.check_same_vocabulary(base, pilot, untuned)
    return {
        "wsd": lambda recs: wsd_batch(pilot, base, recs, cfg),
        "base_only": lambda recs: baselines.base_only_batch(base, recs, cfg),
        "pilot_only": lambda recs: baselines.pilot_only_batch(pilot, recs, cfg),
        "urial": lambda recs: baselines.urial_batch(base, recs, cfg, prefix),
        "bon": lambda recs: search.bon_batch(base, pilot, untuned, recs, cfg, reward),
        "cbs": lambda recs: search.cbs_batch(base, pilot, untuned, recs, cfg),
        "eft": lambda recs: eft.eft_batch(base, pilot, untuned, recs, cfg),
    }[method]


def _implicit(method: str, cfg: WSDConfig) -> bool:
    """Whether the method scores with the implicit reward (pilot vs its untuned reference)."""
    return method in NEEDS_UNTUNED or (method == "bon" and cfg.bon.scorer == "implicit")


def _prepare(method: str, pilot: ModelSource, base: ModelSource, untuned: ModelSource | None, remote: bool,
             cfg: WSDConfig, device: str, dtype: str):
    """Load what the method needs and return run(prompts, save). Everything that can fail on bad models
    fails here, before any output is opened."""
    from wsd_inference.hf_backend import load_hf_model
    from wsd_inference.openai_backend import OpenAIServer, load_tokenizer

    def local(src: ModelSource | None, role: str, chat: bool = False):
        return src and load_hf_model(src.local_path(), f"{role} {src.name}", device, dtype, src.trust_remote_code,
                                     need_chat_template=chat)

    reward = None
    if method == "bon" and cfg.bon.scorer == "reward_model":
        from pilot_core.reward_model import RewardModel

        reward = RewardModel(cfg.bon.reward_model, device, dtype)
    pilot_m = OpenAIServer.of(pilot) if pilot.url else local(pilot, "pilot", chat=True)
    untuned_m = local(untuned, "untuned") if _implicit(method, cfg) else None
    if remote:
        from wsd_inference.remote_engine import run_remote

        base_tok = base_server = None
        if method != "pilot_only":
            base_tok = load_tokenizer(base.tokenizer or base.served_model, f"base {base.name} tokenizer",
                                      base.trust_remote_code)
            base_server = OpenAIServer.of(base)
        return lambda todo, save: run_remote(pilot_m, base_server, base_tok, todo, cfg, save, method=method,
                                             untuned=untuned_m, reward=reward)
    base_m = None if method == "pilot_only" else local(base, "base")
    batch = _batch_fn(method, pilot_m, base_m, untuned_m, reward, cfg)

    def run(todo, save):
        for i in range(0, len(todo), cfg.batch_size):
            save(batch(todo[i : i + cfg.batch_size]))

    return run


def generate_to_file(pilot: ModelSource, base: ModelSource, prompts: list[PromptRecord], cfg: WSDConfig,
                     output: str | Path, device: str = "cpu", dtype: str = "float32", progress: bool = True,
                     method: str = "wsd", untuned: ModelSource | None = None) -> dict:
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    remote = bool(pilot.url if method == "pilot_only" else base.url)  # the model that writes is served
    if pilot.url and not remote:
        raise UserError("a pilot on a server needs a base on a server too (or give a local pilot)")
    if remote and method not in SERVER_METHODS:
        raise UserError(f"method {method} runs on local models only for now "
                        f"(over a server: {', '.join(SERVER_METHODS)})")
    implicit = _implicit(method, cfg)
    if untuned is None and implicit:
        raise UserError(f"method {method} needs the pilot's untuned reference model (--untuned)")
    if method in LOCAL_SCORERS and implicit and (pilot.url or (untuned and untuned.url)):
        raise UserError(f"method {method} scores with the pilot and its untuned reference in-process: give both as "
                        "local models (the base may be on a server)")
    settings = {"method": method, "pilot": pilot.model_dump(mode="json"), "base": base.model_dump(mode="json"),
                "untuned": untuned.model_dump(mode="json") if untuned else None, "config": cfg.model_dump(mode="json")}
    out = ResumableJsonl(output, settings)
    done = out.done_ids()
    todo = [p for p in prompts if p.id not in done]
    new: list[dict] = []
    if todo or not out.path.exists():
        from tqdm import tqdm

        run = _prepare(method, pilot, base, untuned, remote, cfg, device, dtype)
        with out, tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=f"{method} {base.name}",
                       unit="prompt", disable=not progress) as bar:

            def save(records: list[dict]) -> None:
                out.write(records)
                new.extend(records)
                bar.update(len(records))

            run(todo, save)
            out.finish()
    n = max(len(new), 1)
    return {"new": len(new), "already_done": len(prompts) - len(todo), "switched": sum(r["switched"] for r in new),
            "mean_kept_draft_tokens": sum(r["kept_draft_tokens"] for r in new) / n,
            "mean_base_tokens": sum(r["base_tokens"] for r in new) / n, "output": str(out.path)}
