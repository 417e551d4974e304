"""The WSD server under load: requests/s and tokens/s at concurrency 1, 8 and 32, WSD against the base alone
served the same way (`pilot wsd serve --method base_only`) and, with --backend served, against the vLLM base
server itself, and what each served answer asked of the model servers.

The pair is bench/wsd_speed.py's (a base ~10x the pilot, briefly pretrained). --backend local: both models in the
server's process, with each --batching in turn (static: a batch runs until its last answer is done; continuous:
answers join and leave the running batch at every step). --backend served: the pilot and the base each on a vLLM
server (CPU here, automatic prefix caching on, as vLLM's default, with --vllm-block-size tokens per KV block),
`pilot wsd serve` in front, WSD run twice: with the draft scored at 8, 16, 32, ... tokens (`--draft-scoring
doubling`, the schedule before issue #44) and once per answer (`once`, the default now). Every request is a chat
completion with max_tokens = --max-tokens, greedy; tokens/s counts the answers' tokens (`usage.completion_tokens`).
Per served answer, from each choice's `wsd.calls` (what the server counted as it asked): requests to the pilot, to
the base (of them scoring), the base's prompt (prefill) tokens and of them the ones the continuation could reuse
from the scoring request; from the vLLM base's own /metrics: the prompt tokens it counted, of them from its prefix
cache.
Prints the tables; copy them into docs/benchmarks.md (bench/cost_model.py turns such counts into GPU time).

    .venv/bin/python bench/wsd_server.py [--backend local|served|both] [--prompts 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wsd_speed import BENCH_BASE, BENCH_PILOT, QUESTIONS  # noqa: E402
from pilot_core.models.tiny import cached_tiny_model  # noqa: E402
from wsd_inference.server_process import WSDServer  # noqa: E402

CALLS = ("pilot_requests", "base_requests", "base_scoring_requests", "base_prefill_tokens", "base_reusable_tokens",
         "pilot_decode_tokens", "base_decode_tokens")


async def load(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
               completions_of=None) -> dict:
    """All prompts with `concurrency` in flight; wall time, answers' tokens, switches, and per answer the calls the
    server made (where it counts them: served models)."""
    import openai

    sem = asyncio.Semaphore(concurrency)
    tokens, switched, latencies, calls = 0, 0, [], []
    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600) as c:
        async def one(p):
            nonlocal tokens, switched
            async with sem:
                t = time.perf_counter()
                if completions_of is None:
                    r = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                        max_tokens=max_tokens, temperature=0)
                    wsd = (r.choices[0].model_extra or {}).get("wsd") or {}
                    switched += bool(wsd.get("switched"))
                    if wsd.get("calls"):
                        calls.append(wsd["calls"])
                else:  # the vLLM base itself: the same plain role template WSD's base reads
                    r = await c.completions.create(model=model, prompt=completions_of(p), max_tokens=max_tokens,
                                                   temperature=0, stop=["[User]", "[Assistant]", "[System]"])
                latencies.append(time.perf_counter() - t)
                tokens += r.usage.completion_tokens

        await one(prompts[0])  # warm-up
        tokens, switched, latencies, calls = 0, 0, [], []
        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - t0
    out = {"req_s": len(prompts) / wall, "tok_s": tokens / wall, "tokens": tokens, "wall": wall,
           "p50": sorted(latencies)[len(latencies) // 2],
           "p95": sorted(latencies)[math.ceil(0.95 * len(latencies)) - 1], "switched": switched / len(prompts)}
    if calls:
        out["calls"] = {k: sum(c[k] for c in calls) / len(calls) for k in CALLS}
    return out


def vllm_counters(url: str) -> dict[str, float]:
    """The vLLM server's prompt-token and prefix-cache counters (summed over its engines)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    want = ("vllm:prompt_tokens", "vllm:prompt_tokens_cached", "vllm:request_success")
    out = dict.fromkeys(want, 0.0)
    for f in text_string_to_metric_families(text):
        if f.name in want:
            out[f.name] += sum(s.value for s in f.samples if s.name.endswith("_total"))
    return out


def row(label: str, c: int, r: dict, ref: dict | None) -> str:
    ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref else "–"
    return (f"| {label} | {c} | {r['req_s']:.2f} | {r['tok_s']:.1f} | {ratio} | {r['p50']:.2f} / {r['p95']:.2f} s | "
            f"{r['tokens']} | {r['switched']:.0%} |")


def calls_row(label: str, c: int, r: dict, server: dict | None) -> str:
    """Per answer: requests (pilot / base, of which scoring), the base's prefill tokens (reusable), and what the
    vLLM base counted: its prompt tokens per answer, of them served from its prefix cache."""
    k = r.get("calls")
    if k is None:
        return f"| {label} | {c} | – | – | – | – | – | – |"
    seen = "–"
    if server and server["vllm:request_success"]:
        seen = (f"{server['vllm:prompt_tokens'] / server['answers']:.1f} "
                f"({server['vllm:prompt_tokens_cached'] / server['answers']:.1f} cached)")
    return (f"| {label} | {c} | {k['pilot_requests']:.2f} / {k['base_requests']:.2f} | "
            f"{k['base_scoring_requests']:.2f} | {k['base_prefill_tokens']:.1f} | {k['base_reusable_tokens']:.1f} | "
            f"{seen} | "
            f"{k['pilot_decode_tokens']:.1f} / {k['base_decode_tokens']:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["local", "served", "both"], default="local")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--batching", nargs="+", choices=["static", "continuous"], default=["static", "continuous"],
                    help="--backend local: the in-process server's batching, each in turn (static: issue #44's before)")
    ap.add_argument("--vllm-block-size", type=int, default=32, help="KV block of the vLLM servers (prefix caching "
                    "reuses whole blocks; vLLM-CPU's default is 128, GPUs' 16)")
    args = ap.parse_args()
    pilot, base = cached_tiny_model(BENCH_PILOT), cached_tiny_model(BENCH_BASE)
    prompts = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in
               range(args.prompts)]
    decoding = ["--threshold", str(args.threshold), "--max-new-tokens", str(args.max_tokens), "--batch-size", "32",
                "--max-concurrent-requests", "256"]
    print(f"{args.prompts} prompts, max_tokens {args.max_tokens}, greedy, threshold {args.threshold}\n")
    head = ("| server | concurrency | requests/s | tokens/s | tokens/s vs base-only | p50 / p95 latency | tokens | "
            "switched |\n|---|---|---|---|---|---|---|---|")
    if args.backend in ("local", "both"):
        print(head)
        for batching in args.batching:
            local = ["--pilot", str(pilot), "--base", str(base), "--batching", batching, *decoding]
            with WSDServer(local) as wsd, WSDServer([*local, "--method", "base_only"]) as alone:
                for c in args.concurrency:
                    ref = asyncio.run(load(alone.url, "base_only", prompts, c, args.max_tokens))
                    got = asyncio.run(load(wsd.url, "wsd", prompts, c, args.max_tokens))
                    print(row(f"in-process ({batching}) base-only", c, ref, None))
                    print(row(f"in-process ({batching}) WSD", c, got, ref), flush=True)
    if args.backend in ("served", "both"):
        served_tables(args, pilot, base, prompts, decoding, head)


def served_tables(args, pilot, base, prompts: list[str], decoding: list[str], head: str) -> None:
    from pilot_core.models.templates import base_prompt
    from tests.vllm_server import VLLMServer

    logs = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
    extra = ("--block-size", str(args.vllm_block_size))
    servers = {"pilot": VLLMServer(pilot, "pilot", logs, extra), "base": VLLMServer(base, "base", logs, extra)}
    results: dict[tuple[str, int], tuple[dict, dict | None]] = {}
    try:
        for s in servers.values():
            s.wait()
        served = ["--pilot", servers["pilot"].url, "--pilot-model", "pilot", "--base", servers["base"].url,
                  "--base-model", "base", "--base-tokenizer", str(base), *decoding]
        modes = {"base-only via pilot wsd serve": [*served, "--method", "base_only"],
                 "WSD, scored at 8, 16, 32, ... (before)": [*served, "--draft-scoring", "doubling"],
                 "WSD, scored once (after)": [*served, "--draft-scoring", "once"]}
        print(head)
        with WSDServer(modes["base-only via pilot wsd serve"]) as alone, \
                WSDServer(modes["WSD, scored at 8, 16, 32, ... (before)"]) as before, \
                WSDServer(modes["WSD, scored once (after)"]) as after:
            urls = dict(zip(modes, (alone.url, before.url, after.url)))
            for c in args.concurrency:
                direct = asyncio.run(load(servers["base"].url, "base", prompts, c, args.max_tokens,
                                          completions_of=lambda p: base_prompt([{"role": "user", "content": p}],
                                                                               None)))
                print(row("vLLM base itself", c, direct, None), flush=True)
                for label, url in urls.items():
                    start = vllm_counters(servers["base"].url)
                    got = asyncio.run(load(url, "base_only" if "base-only" in label else "wsd", prompts, c,
                                           args.max_tokens))
                    end = vllm_counters(servers["base"].url)
                    seen = {k: end[k] - start[k] for k in end}
                    seen["answers"] = len(prompts) + 1  # the warm-up's too
                    results[label, c] = got, seen
                    print(row(label, c, got, direct), flush=True)
        print("\nPer answer (served): requests pilot / base, of them scoring, the base's prompt tokens sent and of "
              "them reusable by the continuation, the vLLM base's own count (of them from its prefix cache), decode "
              "tokens pilot / base\n")
        print("| server | concurrency | requests pilot / base | scoring requests | base prefill tokens | reusable | "
              "vLLM base counted | decode pilot / base |\n|---|---|---|---|---|---|---|---|")
        for (label, c), (got, seen) in results.items():
            print(calls_row(label, c, got, seen))
    finally:
        for s in servers.values():
            s.stop()


if __name__ == "__main__":
    main()
