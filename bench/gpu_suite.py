"""One prepared run for a lent GPU (issue #40 item 8, and #44's cost model): each part a child process with a time
bound, one table printed, JSON written after every part. `bench/gpu.sh` starts it (and carries the wheels).

Parts, each reported as ratios (a part that fails or runs out of time is reported; the others still run):
- generation: WSD, base-only and both with the pilot speculating (k = --speculate), batch 1 and 16, through the
  engine's public functions (`wsd_batch`, `base_only_batch`); tokens/s and each / base-only.
- cost: #44's cost model of the served design, from the base's own passes: a decode step at batch 1 and 16, a
  verification pass of k + 1 tokens, prefills of prompt + draft (what a served scoring request costs), the pilot's
  step against the base's; then served WSD (both draft-scoring schedules) / base-only predicted from them by
  bench/cost_model.py (`served_prediction`).
- training: a few SFT steps of the pilot through `training.train.train`, with the zero2 preset (DeepSpeed, one
  process) and without (each its own child); steps/s, tokens/s, peak memory, ZeRO-2 / plain.
- server: the WSD server's app (`create_app` over a `ContinuousBackend`, what `pilot wsd serve` runs) on uvicorn in
  the child, the models in memory, under concurrent chat requests; WSD against base-only served the same way:
  tokens/s, p50 / p95 latency.

Models: Llama configs of Llama-3-8B (base) and Llama-3.2-1B (pilot, untied head: 1.5B) with a 128,256-word
tokenizer built here (one word per token, so a draft's text re-tokenizes to the same ids), bf16 weights drawn on
the GPU: no download. Random weights make every model unsure of everything (WSD never switches, no speculated
token is kept), so by default the weights are random but shaped (`shape_weights`): each model's next token is a
fixed function of the last one, the base confident of it, the pilot agreeing with the base on a fraction
--agreement of tokens. The passes cost what a real model of that config costs (same shapes, same kernels);
--plain-random leaves the weights as drawn.

    bash bench/gpu.sh                 # on the GPU (see docs/benchmarks.md for the `run` command)
    bash bench/gpu.sh --dry-run       # the same code paths on CPU with tiny configs, about a minute
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("generation", "cost", "training", "server")
SPECIALS = ("<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|unk|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>")  # tiny.FAMILIES["llama3"]'s, pad first


@dataclass(frozen=True)
class Sizes:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int


LLAMA_8B = Sizes(4096, 32, 32, 8, 14336)  # Llama-3-8B
LLAMA_1B = Sizes(2048, 16, 32, 8, 8192)  # Llama-3.2-1B (its head untied here: 1.5B parameters)
DRY_BASE = Sizes(128, 2, 4, 2, 256)
DRY_PILOT = Sizes(64, 2, 2, 1, 128)


def make_plan(a) -> dict:
    dry = a.dry_run
    return {
        "mode": "dry-run" if dry else "gpu", "device": "cpu" if dry else "cuda",
        "dtype": "float32" if dry else "bfloat16", "vocab": 1024 if dry else 128256,
        "base": asdict(DRY_BASE if dry else LLAMA_8B), "pilot": asdict(DRY_PILOT if dry else LLAMA_1B),
        "shaped": not a.plain_random, "agreement": a.agreement, "seed": 0,
        # every prompt's answer follows the same chain (see shape_weights): one prompt at batch 1 says it all
        "generation": {"prompts": {"1": 2 if dry else 1, "16": 16}, "max_new_tokens": 32 if dry else 128,
                       "max_draft_tokens": 32 if dry else 128, "threshold": 0.8, "speculate": a.speculate,
                       "reps": 1 if dry else 2},
        "cost": {"context": 32 if dry else 256, "lengths": [16, 32, 64] if dry else [64, 128, 256, 512],
                 "steps": 3 if dry else 20, "k": a.speculate, "prompt": 16 if dry else 64,
                 "answer": 32 if dry else 256, "draft": 24 if dry else 128, "switch": [4, 16] if dry else [16, 64]},
        "training": {"max_steps": 4 if dry else 8, "per_device_train_batch_size": 2 if dry else 8,
                     "max_length": 64 if dry else 256, "rows": 16 if dry else 128},
        "server": {"loads": [[1, 2], [4, 8]] if dry else [[1, 4], [16, 32]], "max_tokens": 16 if dry else 128,
                   "threshold": 0.8},
        "limits": {"generation": 120, "cost": 60, "training": 150, "server": 120} if dry else
                  {"generation": 210, "cost": 75, "training": 150, "server": 120},
    }


# ------------------------------------------------------------------------------------------------ models
def vocab_words(n: int) -> list[str]:
    """The tokenizer's words: the specials, the words of the prompts and templates, then w0, w1, ... up to n."""
    from bench.train_speed import WORDS
    from bench.wsd_speed import QUESTIONS
    from pilot_core.models.templates import ROLE_TAGS

    text = " ".join([*QUESTIONS, *WORDS, *ROLE_TAGS.values(), *ROLE_TAGS, "u MARK"])
    fixed = list(dict.fromkeys([*SPECIALS, *re.findall(r"\w+|[^\w\s]+", text)]))
    return fixed + [f"w{i}" for i in range(n - len(fixed))]


def word_tokenizer(n: int):
    """A word-level tokenizer of n tokens with Llama-3's specials and chat template (tiny.py's, with its
    {% generation %} markers): decoding joins words with spaces, so text round-trips to the same ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from pilot_core.models.tiny import FAMILIES

    words = vocab_words(n)
    t = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<|unk|>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.add_special_tokens(list(SPECIALS))
    tok = PreTrainedTokenizerFast(tokenizer_object=t, bos_token=SPECIALS[1], eos_token=SPECIALS[4],
                                  pad_token=SPECIALS[0], unk_token=SPECIALS[3],
                                  additional_special_tokens=[SPECIALS[2], *SPECIALS[5:]],
                                  clean_up_tokenization_spaces=False)
    tok.chat_template = FAMILIES["llama3"]["template"]
    return tok


def build_model(sizes: dict, tok, plan: dict):
    """A Llama of `sizes` with weights drawn on the plan's device, in its dtype."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig, LlamaConfig

    s = Sizes(**sizes)
    eos = [tok.eos_token_id, tok.convert_tokens_to_ids(SPECIALS[2])]
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=s.hidden, intermediate_size=s.intermediate,
                      num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.kv_heads,
                      max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    torch.manual_seed(plan["seed"])
    with torch.device(plan["device"]):
        model = AutoModelForCausalLM.from_config(cfg, dtype=getattr(torch, plan["dtype"])).eval()
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tok.pad_token_id, do_sample=False)
    return model


def next_token_maps(n: int, first: int, agreement: float, seed: int):
    """(base's, pilot's) next-token function as index tensors over the vocabulary: the base's a random
    permutation of the plain words (ids >= first: never a special, so no answer ends early), the pilot's the
    same on a fraction `agreement` of tokens and another plain word elsewhere."""
    import torch

    g = torch.Generator().manual_seed(seed)
    words = torch.arange(first, n)
    base = words[torch.randint(len(words), (n,), generator=g)]
    base[first:] = words[torch.randperm(len(words), generator=g)]
    other = words[torch.randint(len(words), (n,), generator=g)]
    pilot = torch.where(torch.rand(n, generator=g) < agreement, base, other)
    return base, pilot


def shape_weights(model, next_ids, margin: float = 16.0, residual_std: float = 1e-4) -> None:
    """The next token becomes `next_ids[last token]`, `margin` logits above every other (p ~ 0.98 at 128k words):
    unit-variance embeddings, the head's row j the sum of the directions of the tokens j follows, and the
    layers' output projections (o_proj, down_proj) drawn small, so the residual stream stays the embedding. Every
    weight is still random bits of the same shape: a pass costs what it costs with trained weights."""
    import torch

    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        g = torch.Generator(device=emb.device).manual_seed(1)
        e = torch.randn(emb.shape, generator=g, device=emb.device, dtype=torch.float32)
        u = e / e.norm(dim=1, keepdim=True)
        w = torch.zeros_like(u).index_add_(0, next_ids.to(emb.device), u) * (margin / math.sqrt(emb.shape[1]))
        emb.copy_(e)
        head.copy_(w)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.normal_(0.0, residual_std, generator=g)
            layer.mlp.down_proj.weight.normal_(0.0, residual_std, generator=g)


def build_pair(plan: dict):
    """(pilot, base) as the engine takes them (HFModel), sharing one tokenizer."""
    from pilot_core.models.loading import HFModel, input_device, stop_ids

    tok = word_tokenizer(plan["vocab"])
    out = []
    for role, sizes in (("pilot", plan["pilot"]), ("base", plan["base"])):
        model = build_model(sizes, tok, plan)
        out.append(HFModel(path=f"synthetic-{role}", model=model, tokenizer=tok, pad_id=tok.pad_token_id,
                           stop_ids=stop_ids(tok, model.generation_config.eos_token_id, chat=role == "pilot"),
                           device=input_device(model)))
    if plan["shaped"]:
        base_next, pilot_next = next_token_maps(len(tok), len(vocab_words(0)), plan["agreement"], plan["seed"])
        shape_weights(out[0].model, pilot_next)
        shape_weights(out[1].model, base_next)
    return out[0], out[1]


def params(m) -> float:
    return m.num_parameters() / 1e9


def sync(plan: dict) -> None:
    if plan["device"] == "cuda":
        import torch

        torch.cuda.synchronize()


def peak_memory_gib(plan: dict) -> float:
    if plan["device"] == "cuda":
        import torch

        return torch.cuda.max_memory_allocated() / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # the process's peak RSS (KiB on Linux)


# ------------------------------------------------------------------------------------------------ parts
class PartFailed(Exception):
    """Some of a part's measurements failed; what ran is saved, the errors are in `errors`."""


def first_error() -> str:
    return traceback.format_exc()[-2000:]


def part_generation(plan: dict, out: dict) -> None:
    from bench.wsd_speed import QUESTIONS, median_time, run_all
    from pilot_core.prompts import PromptRecord
    from wsd_inference.baselines import base_only_batch
    from wsd_inference.config import SpeculationConfig, WSDConfig
    from wsd_inference.engine import wsd_batch

    p = plan["generation"]
    pilot, base = build_pair(plan)
    out["models"] = {"pilot_b": params(pilot), "base_b": params(base)}
    out["errors"] = {}
    for bs, n in p["prompts"].items():
        bs = int(bs)
        recs = [PromptRecord(f"g{i}", ({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]},))
                for i in range(n)]
        cfg = WSDConfig(max_draft_tokens=p["max_draft_tokens"], max_new_tokens=p["max_new_tokens"],
                        threshold=p["threshold"], batch_size=bs, speculation={"tokens": 0})  # plain: no speculation
        # spec: every round run (what speculation buys on this device); auto: what users get (rounds where they pay)
        spec = cfg.model_copy(update={"speculation": SpeculationConfig(tokens=p["speculate"], pace="always")})
        auto = cfg.model_copy(update={"speculation": SpeculationConfig()})
        fns = {"base": lambda r, c: base_only_batch(base, r, c),
               "wsd": lambda r, c: wsd_batch(pilot, base, r, c),
               "base_spec": lambda r, c: base_only_batch(base, r, spec, pilot=pilot),
               "wsd_spec": lambda r, c: wsd_batch(pilot, base, r, spec),
               "wsd_auto": lambda r, c: wsd_batch(pilot, base, r, auto)}
        for k, fn in list(fns.items()):  # a method that fails is reported; the others are still timed
            try:
                run_all(fn, recs[:bs], cfg.model_copy(update={"max_new_tokens": 8, "max_draft_tokens": 8}))
            except Exception:
                out["errors"][f"batch{bs}_{k}"] = first_error()
                del fns[k]
        if "base" not in fns:
            continue
        t, o = median_time(fns, recs, cfg, p["reps"])
        tokens = {k: sum(x.completion_tokens for x in v) for k, v in o.items()}
        tps = {k: tokens[k] / t[k] for k in t}

        def acceptance(k):
            s = [x.speculation for x in o.get(k, []) if x.speculation]
            return sum(x.accepted for x in s) / max(sum(x.proposed for x in s), 1) if s else None

        def same(a, b):
            return [x.response for x in o[a]] == [x.response for x in o[b]] if a in o and b in o else None

        wsd = o.get("wsd") or o.get("wsd_spec") or []
        out[f"batch{bs}"] = {
            "prompts": n, "method_s": t, "tokens": tokens, "tokens_per_s": tps,
            "switched": sum(x.wsd.switched for x in wsd),
            "kept_draft_mean": statistics.mean(x.wsd.kept_draft_tokens for x in wsd) if wsd else None,
            "acceptance": {"wsd_spec": acceptance("wsd_spec"), "base_spec": acceptance("base_spec")},
            "same_answers": {"wsd": same("wsd", "wsd_spec"), "base": same("base", "base_spec")}}
        for k in fns.keys() - {"base"}:
            out["ratios"][f"batch{bs}_{k}_vs_base"] = tps[k] / tps["base"]
        out.save()
    if out["errors"]:
        raise PartFailed(f"failed: {', '.join(out['errors'])}")


def _timed(plan: dict, fn, reps: int) -> float:
    """Median seconds of fn() over reps runs, after three warm-ups (a first call of a shape sets kernels up)."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        sync(plan)
        t = time.perf_counter()
        fn()
        sync(plan)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pass_costs(model, plan: dict, batch: int, k: int) -> dict:
    """Seconds of one pass of `model` over 1 and over k + 1 new tokens per row, after `context` cached tokens."""
    import torch
    from transformers import DynamicCache

    c, steps = plan["cost"]["context"], plan["cost"]["steps"]
    dev = model.get_input_embeddings().weight.device
    ids = torch.randint(len(vocab_words(0)), model.config.vocab_size, (batch, c + k + 1), device=dev)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(input_ids=ids[:, :c], past_key_values=cache, use_cache=True)

        def step(n):
            model(input_ids=ids[:, c : c + n], past_key_values=cache, use_cache=True)
            cache.crop(-n)  # back to `c` tokens (a negative count removes from the end in every version)

        return {"decode": _timed(plan, lambda: step(1), steps), "verify": _timed(plan, lambda: step(k + 1), steps)}


def prefill_costs(model, plan: dict) -> dict[int, float]:
    import torch

    dev = model.get_input_embeddings().weight.device
    out = {}
    with torch.no_grad():
        for n in plan["cost"]["lengths"]:
            ids = torch.randint(len(vocab_words(0)), model.config.vocab_size, (1, n), device=dev)
            out[n] = _timed(plan, lambda: model(input_ids=ids, use_cache=True), 3)
    return out


def served_prediction(c: dict, prompt: int, answer: int, switch: int, draft: int) -> dict[str, float]:
    """Served WSD (draft scored once, and at 8, 16, 32, ...) / served base-only, from the measured costs
    (`bench/cost_model.py`: one answer of this shape through the served path with scripted models; its requests
    and tokens timed with these costs): the latency of one answer, and the base's time per answer token (the
    throughput where the base is the bottleneck)."""
    from bench.cost_model import cost, costs_from_measured, scenario

    k = costs_from_measured(c, "gpu suite")
    got = {label: cost(label, [r], k) for label, r in scenario(prompt, answer, draft, switch, firsts=(8,)).items()}
    alone = got.pop("base-only")
    return {f"{'once' if 'once' in label else 'doubling'}_{what}": v for label, a in got.items()
            for what, v in (("latency", a.latency_s / alone.latency_s),
                            ("base_time", alone.tokens_per_base_s / a.tokens_per_base_s))}


def part_cost(plan: dict, out: dict) -> None:
    p = plan["cost"]
    pilot, base = build_pair(plan)
    c = {}
    for bs in (1, 16):
        b = pass_costs(base.model, plan, bs, p["k"])
        c[f"base_decode_b{bs}"], c[f"base_verify_b{bs}"] = b["decode"], b["verify"]
    for bs in (1, 16):
        c[f"pilot_decode_b{bs}"] = pass_costs(pilot.model, plan, bs, p["k"])["decode"]
    c["prefill_base"], c["prefill_pilot"] = prefill_costs(base.model, plan), prefill_costs(pilot.model, plan)
    out["costs_s"] = c
    r = out["ratios"]
    r["base_decode_b16_vs_b1"] = c["base_decode_b16"] / c["base_decode_b1"]
    r["base_verify_vs_decode_b1"] = c["base_verify_b1"] / c["base_decode_b1"]
    r["base_verify_vs_decode_b16"] = c["base_verify_b16"] / c["base_decode_b16"]
    r["pilot_vs_base_decode_b1"] = c["pilot_decode_b1"] / c["base_decode_b1"]
    longest = max(p["lengths"])
    r[f"base_prefill{longest}_vs_decode_b1"] = c["prefill_base"][longest] / c["base_decode_b1"]
    for s in p["switch"]:
        pred = served_prediction(c, p["prompt"], p["answer"], s, p["draft"])
        r[f"served_wsd_vs_base_switch{s}"] = pred["once_latency"]  # the default schedule's latency, batch 1
        for k, v in pred.items():
            r[f"served_{k}_vs_base_switch{s}"] = v
    out.save()


def part_training(plan: dict, out: dict, variant: str, work: Path) -> None:
    """`variant` zero2 (the preset, DeepSpeed in this one process) or plain: SFT steps of the pilot's config."""
    import torch

    from bench.train_speed import dataset_dir
    from pilot_core.atomic import atomic_dir

    p = plan["training"]
    model_dir, data = work / "pilot", work / "data"
    if not (model_dir / "config.json").is_file():  # the first variant writes what both read
        tok = word_tokenizer(plan["vocab"])
        model = build_model(plan["pilot"], tok, plan)
        with atomic_dir(model_dir, overwrite=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
        del model
        if plan["device"] == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
    if not (data / "manifest.json").is_file():
        dataset_dir(work, p["rows"])

    import trl

    from training.config import TrainConfig
    from training.launch import load_preset
    from training.train import train

    deepspeed = None
    if variant == "zero2":
        import socket

        import deepspeed as ds

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"})
        ds.init_distributed(dist_backend="nccl" if plan["device"] == "cuda" else "gloo")  # as training.worker
        deepspeed = load_preset("zero2")
    starts: list[float] = []
    step = trl.SFTTrainer.training_step

    def timed_step(self, *a, **kw):  # a step runs from one training_step call to the next
        starts.append(time.perf_counter())
        return step(self, *a, **kw)

    trl.SFTTrainer.training_step = timed_step
    sft = {k: p[k] for k in ("max_steps", "per_device_train_batch_size", "max_length")}
    sft |= {"learning_rate": 1e-5, "save_steps": 100_000, "logging_steps": 1}
    if plan["device"] == "cuda":
        sft["bf16"] = True  # the production recipes' setting
    cfg = TrainConfig(model={"name": "pilot", "path": str(model_dir)}, dataset=str(data),
                      output_dir=str(work / f"run-{variant}"), stages=["sft"], sft=sft)
    final = train(cfg, deepspeed=deepspeed)["sft"]
    m = json.loads((final / "manifest.json").read_text())["data"]
    gaps = [b - a for a, b in zip(starts, starts[1:])][1:] or [starts[-1] - starts[0]]  # the first is warm-up
    step_s = statistics.median(gaps)
    tokens = max((x.get("num_tokens", 0) for x in m["log_history"]), default=0)
    out[variant] = {"steps": m["steps"], "step_s": step_s, "steps_per_s": 1 / step_s,
                    "tokens_per_s": tokens / m["steps"] / step_s, "first_loss": m["first_loss"],
                    "last_loss": m["last_loss"], "peak_memory_gib": peak_memory_gib(plan),
                    "memory": "GPU allocated" if plan["device"] == "cuda" else "process RSS",
                    "train_runtime_s": m["metrics"].get("train_runtime"),
                    "step_starts_s": [round(x - starts[0], 4) for x in starts]}
    out.save()


async def load(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int) -> dict:
    """All prompts with `concurrency` in flight (after a warm-up round of as many): tokens/s, latencies,
    switches."""
    import asyncio

    import httpx

    sem = asyncio.Semaphore(concurrency)
    lat, toks, switched = [], [], 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as c:
        async def one(p):
            nonlocal switched
            async with sem:
                t = time.perf_counter()
                r = await c.post("/chat/completions", json={"model": model, "max_tokens": max_tokens,
                                                            "temperature": 0,
                                                            "messages": [{"role": "user", "content": p}]})
                r.raise_for_status()
                body = r.json()
                lat.append(time.perf_counter() - t)
                toks.append(body["usage"]["completion_tokens"])
                switched += bool(body["choices"][0].get("wsd", {}).get("switched"))

        await asyncio.gather(*(one(p) for p in prompts[:concurrency]))
        lat, toks, switched = [], [], 0
        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - t0
    lat.sort()
    return {"requests": len(prompts), "tokens": sum(toks), "wall_s": wall, "tokens_per_s": sum(toks) / wall,
            "p50_s": lat[len(lat) // 2], "p95_s": lat[math.ceil(0.95 * len(lat)) - 1], "switched": switched}


def serve(method: str, pilot, base, cfg):
    """The WSD server's app on uvicorn in a thread of this process; (server, thread, url)."""
    import socket
    import threading

    import uvicorn

    from wsd_inference.api.protocol import ServerLimits
    from wsd_inference.api.router import create_app
    from wsd_inference.methods import LocalModels, get_method
    from wsd_inference.serving import ContinuousBackend

    models = LocalModels(pilot=pilot, base=base)  # continuous batching, as `pilot wsd serve` in-process
    backend = ContinuousBackend(get_method(method).continuous(models), models, cfg.batch_size)
    app = create_app(backend, cfg, method, ServerLimits(max_tokens=cfg.max_new_tokens, default_temperature=0.0))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the {method} server did not start")
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}/v1"


def part_server(plan: dict, out: dict) -> None:
    import asyncio

    from bench.wsd_speed import QUESTIONS
    from wsd_inference.config import WSDConfig

    p = plan["server"]
    pilot, base = build_pair(plan)
    most = max(c for c, _ in p["loads"])
    cfg = WSDConfig(threshold=p["threshold"], max_draft_tokens=p["max_tokens"], max_new_tokens=p["max_tokens"],
                    batch_size=most, speculation={"tokens": 0})  # the servers' own pace, not speculation's
    out["errors"] = {}
    for method in ("base_only", "wsd"):  # a method whose requests fail is reported; the other still runs
        server, thread, url = serve(method, pilot, base, cfg)
        try:
            for conc, n in p["loads"]:
                prompts = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in range(n)]
                out[f"{method}_c{conc}"] = asyncio.run(load(url, method, prompts, conc, p["max_tokens"]))
                out.save()
        except Exception:
            out["errors"][method] = first_error()
        finally:
            server.should_exit = True
            thread.join(60)
    for conc, _ in p["loads"]:
        if f"wsd_c{conc}" in out and f"base_only_c{conc}" in out:
            out["ratios"][f"c{conc}_wsd_vs_base"] = (out[f"wsd_c{conc}"]["tokens_per_s"]
                                                     / out[f"base_only_c{conc}"]["tokens_per_s"])
    out.save()
    if out["errors"]:
        raise PartFailed(f"failed: {', '.join(out['errors'])}")


# ------------------------------------------------------------------------------------------------ child
class Result(dict):
    """A part's figures, written to its file on every save (what a part that runs out of time leaves)."""

    def __init__(self, path: Path):
        super().__init__(ratios={})
        self.path = path

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self, default=str))
        tmp.replace(self.path)


def child(plan_path: Path, part: str, result_path: Path, variant: str | None) -> int:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # past_key_values' rename, in every pass
    plan = json.loads(plan_path.read_text())
    os.environ["DS_ACCELERATOR"] = "cuda" if plan["device"] == "cuda" else "cpu"  # before anything imports DeepSpeed
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Result(result_path)
    out.save()
    try:
        if part == "training":
            part_training(plan, out, variant, plan_path.parent / "training")
        else:
            {"generation": part_generation, "cost": part_cost, "server": part_server}[part](plan, out)
    except PartFailed as e:
        out["error"] = f"{e}\n" + "\n".join(f"{k}:\n{v}" for k, v in out["errors"].items())
        out.save()
        print(out["error"], file=sys.stderr)
        return 1
    except BaseException:
        out["error"] = traceback.format_exc()[-4000:]
        out.save()
        raise
    return 0


# ------------------------------------------------------------------------------------------------ driver
def run_child(plan: dict, work: Path, outdir: Path, part: str, limit: float, variant: str | None = None) -> dict:
    """The part in a child process of its own session, killed at `limit` seconds; its result (partial if cut)."""
    name = part + (f"-{variant}" if variant else "")
    result_path, log = work / f"{name}.json", outdir / f"gpu_suite.{name}.log"
    cmd = [sys.executable, __file__, "--child", part, str(work / "plan.json"), str(result_path)]
    cmd += ["--variant", variant] if variant else []
    from pilot_core.processes import die_with_parent

    t0 = time.perf_counter()
    with open(log, "w") as f:  # its own session (killed whole at the limit), and it dies with this process
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO,
                                preexec_fn=die_with_parent)
        try:
            rc, status = proc.wait(timeout=max(limit, 0.01)), None
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc, status = proc.wait(), f"timeout after {limit:.0f} s"
    res = json.loads(result_path.read_text()) if result_path.is_file() else {"ratios": {}}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["status"] = status or ("ok" if rc == 0 else f"failed (exit {rc})")
    if res["status"] != "ok" and "error" not in res:
        res["error"] = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
    return res


def environment(plan: dict) -> dict:
    from importlib import metadata

    env = {"python": sys.version.split()[0], "device": "cpu"}
    if plan["device"] == "cuda":  # nvidia-smi: this process keeps no CUDA context (memory) through the parts
        try:
            env["device"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=30).stdout.strip() or "cpu"
        except (OSError, subprocess.TimeoutExpired):
            pass
    for n in ("torch", "transformers", "tokenizers", "trl", "peft", "accelerate", "datasets", "deepspeed",
              "huggingface_hub", "fastapi", "uvicorn", "pydantic"):
        try:
            env[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            env[n] = None
    return env


def fmt(x: float, unit: str = "") -> str:
    return f"{x:.3g}{unit}" if isinstance(x, (int, float)) and math.isfinite(x) else "–"


def table(report: dict) -> str:
    """One table: part | setting | reference | measured | ratio | notes."""
    rows = []
    P = report["parts"]
    g = P.get("generation", {})
    names = {"wsd": "WSD", "wsd_spec": "WSD+spec", "base_spec": "base-only+spec"}
    for key in sorted((k for k in g if k.startswith("batch")), key=lambda k: int(k[5:])):
        b = g[key]
        tps = b["tokens_per_s"]
        for k, label in names.items():
            if k not in tps or "base" not in tps:
                continue
            if k == "wsd":
                note = f"switched {b['switched']}/{b['prompts']}, kept draft {fmt(b['kept_draft_mean'])}"
            else:
                rate = b["acceptance"][k]
                note = (f"acceptance {fmt(100 * rate if rate is not None else math.nan, '%')}, same answers "
                        f"{b['same_answers'][k.split('_')[0]]}")
            rows.append(("generation", f"batch {key[5:]}", f"base-only {fmt(tps['base'])} tok/s",
                         f"{label} {fmt(tps[k])} tok/s", fmt(tps[k] / tps['base'], "x"), note))
    c = P.get("cost", {})
    if "costs_s" in c and c.get("ratios"):
        s, r = c["costs_s"], c["ratios"]
        ms = lambda x: fmt(1000 * x, " ms")  # noqa: E731
        rows += [("cost", "base decode step, batch 16 / batch 1", ms(s["base_decode_b1"]), ms(s["base_decode_b16"]),
                  fmt(r["base_decode_b16_vs_b1"], "x"), "per step, all rows"),
                 ("cost", f"base pass over k+1 = {report['plan']['cost']['k'] + 1} tokens / 1 token, batch 1",
                  ms(s["base_decode_b1"]), ms(s["base_verify_b1"]), fmt(r["base_verify_vs_decode_b1"], "x"), ""),
                 ("cost", "the same, batch 16", ms(s["base_decode_b16"]), ms(s["base_verify_b16"]),
                  fmt(r["base_verify_vs_decode_b16"], "x"), ""),
                 ("cost", "pilot decode step / base decode step, batch 1", ms(s["base_decode_b1"]),
                  ms(s["pilot_decode_b1"]), fmt(r["pilot_vs_base_decode_b1"], "x"), "c, the pilot's relative cost")]
        longest = max(s["prefill_base"], key=int)
        rows.append(("cost", f"base prefill of {longest} tokens / decode step", ms(s["base_decode_b1"]),
                     ms(s["prefill_base"][longest]), fmt(r[f"base_prefill{longest}_vs_decode_b1"], "x"),
                     "a served scoring request"))
        cp = report["plan"]["cost"]
        what = {"once_latency": "latency, draft scored once", "doubling_latency": "latency, scored at 8, 16, ...",
                "once_base_time": "base time per token, scored once",
                "doubling_base_time": "base time per token, scored at 8, 16, ..."}
        for k in sorted((k for k in r if k.startswith("served_") and k.split("_vs_")[0][7:] in what),
                        key=lambda k: (int(k.rsplit("switch", 1)[1]), k)):
            rows.append(("cost", f"predicted served WSD / base-only, {what[k.split('_vs_')[0][7:]]}, switch at "
                         f"{k.rsplit('switch', 1)[1]}", f"prompt {cp['prompt']}, draft {cp.get('draft', '?')}",
                         f"answer {cp['answer']}", fmt(r[k], "x"), "bench/cost_model.py with the costs above"))
    t = P.get("training", {})
    z, p, tr = t.get("zero2", {}), t.get("plain", {}), t.get("ratios", {})
    if z.get("status") == "ok" or p.get("status") == "ok":
        nan = math.nan
        rows.append(("training", "SFT steps/s, ZeRO-2 vs plain", f"plain {fmt(p.get('steps_per_s', nan))}",
                     f"ZeRO-2 {fmt(z.get('steps_per_s', nan))}", fmt(tr.get("zero2_vs_plain", nan), "x"),
                     f"tokens/s {fmt(z.get('tokens_per_s', nan))} vs {fmt(p.get('tokens_per_s', nan))}"))
        rows.append(("training", f"peak memory ({z.get('memory') or p.get('memory')}), GiB",
                     f"plain {fmt(p.get('peak_memory_gib', nan))}", f"ZeRO-2 {fmt(z.get('peak_memory_gib', nan))}",
                     fmt(tr.get("zero2_vs_plain_memory", nan), "x"),
                     f"ZeRO-2 loss {fmt(z.get('first_loss', nan))} -> {fmt(z.get('last_loss', nan))}"))
    sv = P.get("server", {})
    for conc, _ in report["plan"]["server"]["loads"]:
        a, w = sv.get(f"base_only_c{conc}"), sv.get(f"wsd_c{conc}")
        if a and w:
            rows.append(("server", f"concurrency {conc}, {w['requests']} requests",
                         f"base-only {fmt(a['tokens_per_s'])} tok/s", f"WSD {fmt(w['tokens_per_s'])} tok/s",
                         fmt(w["tokens_per_s"] / a["tokens_per_s"], "x"),
                         f"p50/p95 {fmt(w['p50_s'])}/{fmt(w['p95_s'])} s vs {fmt(a['p50_s'])}/{fmt(a['p95_s'])} s, "
                         f"switched {w['switched']}/{w['requests']}"))
    for name, part in P.items():
        if part.get("status") != "ok":
            last = (part.get("error") or "").strip().splitlines()[-1:] or [""]
            rows.append((name, part.get("status", "?"), "", "", "", last[0][:120].replace("|", "/")))
    lines = ["| part | setting | reference | measured | ratio | notes |", "|---|---|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def driver(a) -> int:
    plan = make_plan(a)
    outdir = Path(a.out or os.environ.get("OUT") or REPO / "runs" / "gpu_suite")
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    (work / "plan.json").write_text(json.dumps(plan))
    report = {"plan": plan, "environment": environment(plan), "parts": {}}
    if plan["device"] == "cuda" and report["environment"]["device"] == "cpu":
        print("no CUDA GPU here: run with --dry-run", file=sys.stderr)
        return 2
    print(f"{plan['mode']}: {report['environment']}", flush=True)
    t_end = time.monotonic() + a.budget_s
    for part in a.parts:
        left = t_end - time.monotonic()
        if left < 10:
            report["parts"][part] = {"status": "skipped (the run's budget is spent)", "ratios": {}}
            continue
        limit = min(plan["limits"][part], left)
        print(f"-- {part} (at most {limit:.0f} s)", flush=True)
        if part == "training":
            res = {"ratios": {}, "seconds": 0.0}
            for variant in ("plain", "zero2"):
                left = min(limit - res["seconds"], t_end - time.monotonic())
                got = run_child(plan, work, outdir, part, left, variant)
                res[variant] = got.get(variant, {}) | {"status": got["status"]}
                res["seconds"] = round(res["seconds"] + got["seconds"], 1)
                if got["status"] != "ok":
                    res["status"], res["error"] = f"{variant}: {got['status']}", got.get("error")
                    break
            else:
                res["status"] = "ok"
                res["ratios"] = {"zero2_vs_plain": res["zero2"]["steps_per_s"] / res["plain"]["steps_per_s"],
                                 "zero2_vs_plain_memory": res["zero2"]["peak_memory_gib"]
                                 / res["plain"]["peak_memory_gib"]}
        else:
            res = run_child(plan, work, outdir, part, limit)
        report["parts"][part] = res
        print(f"   {res['status']} in {res['seconds']} s: "
              + ", ".join(f"{k} {v:.3g}" for k, v in res.get("ratios", {}).items()), flush=True)
        (outdir / "gpu_suite.json").write_text(json.dumps(report, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)  # the training part's checkpoints: GBs on the GPU
    text = table(report)
    (outdir / "gpu_suite.md").write_text(text + "\n")
    print("\n" + text, flush=True)
    print(f"\nJSON: {outdir / 'gpu_suite.json'}")
    return 0 if all(p.get("status") == "ok" for p in report["parts"].values()) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny configs: the same code paths, about a minute")
    ap.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    ap.add_argument("--out", help="where the JSON, the table and the parts' logs go (default: $OUT, else "
                    "runs/gpu_suite)")
    ap.add_argument("--budget-s", type=float, default=None, help="the whole run's seconds (default: 540 on the GPU, "
                    "the 10-minute command limit less a margin; 300 in a dry run)")
    ap.add_argument("--agreement", type=float, default=0.7, help="the fraction of tokens the shaped pilot predicts "
                    "as the shaped base does (the speculation acceptance, roughly)")
    ap.add_argument("--speculate", type=int, default=4, metavar="K", help="tokens the pilot proposes at first")
    ap.add_argument("--plain-random", action="store_true", help="leave the weights as drawn (no agreement: "
                    "WSD never switches, no proposal is kept)")
    ap.add_argument("--child", nargs=3, metavar=("PART", "PLAN", "RESULT"), help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(REPO))
    if a.child:
        return child(Path(a.child[1]), a.child[0], Path(a.child[2]), a.variant)
    if a.budget_s is None:
        a.budget_s = 300.0 if a.dry_run else 540.0
    return driver(a)


if __name__ == "__main__":
    sys.exit(main())
