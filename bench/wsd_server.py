"""The WSD server under load: requests/s and tokens/s at concurrency 1, 8 and 32, WSD against the base alone
served the same way (`pilot wsd serve --method base_only`) and, with --backend served, against the vLLM base
server itself.

The pair is bench/wsd_speed.py's (a base ~10x the pilot, briefly pretrained). --backend local: both models in the
server's process (dynamic batching). --backend served: the pilot and the base each on a vLLM server (CPU here),
`pilot wsd serve` in front. Every request is a chat completion with max_tokens = --max-tokens, greedy; tokens/s
counts the answers' tokens (`usage.completion_tokens`). Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/wsd_server.py [--backend local|served|both] [--prompts 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wsd_speed import BENCH_BASE, BENCH_PILOT, QUESTIONS  # noqa: E402
from pilot_core.models.tiny import cached_tiny_model  # noqa: E402
from wsd_inference.server_process import WSDServer  # noqa: E402


async def load(url: str, model: str, prompts: list[str], concurrency: int, max_tokens: int,
               completions_of=None) -> dict:
    """All prompts with `concurrency` in flight; wall time, answers' tokens, switches."""
    import openai

    sem = asyncio.Semaphore(concurrency)
    tokens, switched, latencies = 0, 0, []
    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600) as c:
        async def one(p):
            nonlocal tokens, switched
            async with sem:
                t = time.perf_counter()
                if completions_of is None:
                    r = await c.chat.completions.create(model=model, messages=[{"role": "user", "content": p}],
                                                        max_tokens=max_tokens, temperature=0)
                    switched += bool((r.choices[0].model_extra or {}).get("wsd", {}).get("switched"))
                else:  # the vLLM base itself: the same plain role template WSD's base reads
                    r = await c.completions.create(model=model, prompt=completions_of(p), max_tokens=max_tokens,
                                                   temperature=0, stop=["[User]", "[Assistant]", "[System]"])
                latencies.append(time.perf_counter() - t)
                tokens += r.usage.completion_tokens

        await one(prompts[0])  # warm-up
        tokens, switched, latencies = 0, 0, []
        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - t0
    return {"req_s": len(prompts) / wall, "tok_s": tokens / wall, "tokens": tokens, "wall": wall,
            "p50": sorted(latencies)[len(latencies) // 2], "switched": switched / len(prompts)}


def row(label: str, c: int, r: dict, ref: dict | None) -> str:
    ratio = f"{r['tok_s'] / ref['tok_s']:.2f}x" if ref else "–"
    return (f"| {label} | {c} | {r['req_s']:.2f} | {r['tok_s']:.1f} | {ratio} | {r['p50']:.2f} s | "
            f"{r['tokens']} | {r['switched']:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", choices=["local", "served", "both"], default="local")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    pilot, base = cached_tiny_model(BENCH_PILOT), cached_tiny_model(BENCH_BASE)
    prompts = [QUESTIONS[i % len(QUESTIONS)] + ("" if i < len(QUESTIONS) else f" ({i})") for i in
               range(args.prompts)]
    decoding = ["--threshold", str(args.threshold), "--max-new-tokens", str(args.max_tokens), "--batch-size", "32",
                "--max-concurrent-requests", "256"]
    print(f"{args.prompts} prompts, max_tokens {args.max_tokens}, greedy, threshold {args.threshold}\n")
    print("| server | concurrency | requests/s | tokens/s | tokens/s vs base-only | p50 latency | tokens | switched |")
    print("|---|---|---|---|---|---|---|---|")
    if args.backend in ("local", "both"):
        with WSDServer(["--pilot", str(pilot), "--base", str(base), *decoding]) as wsd, \
                WSDServer(["--pilot", str(pilot), "--base", str(base), "--method", "base_only", *decoding]) as alone:
            for c in args.concurrency:
                ref = asyncio.run(load(alone.url, "base_only", prompts, c, args.max_tokens))
                got = asyncio.run(load(wsd.url, "wsd", prompts, c, args.max_tokens))
                print(row("in-process base-only", c, ref, None))
                print(row("in-process WSD", c, got, ref), flush=True)
    if args.backend in ("served", "both"):
        from pilot_core.models.templates import base_prompt
        from tests.vllm_server import VLLMServer

        logs = Path(tempfile.mkdtemp(prefix="bench-vllm-"))
        servers = {"pilot": VLLMServer(pilot, "pilot", logs), "base": VLLMServer(base, "base", logs)}
        try:
            for s in servers.values():
                s.wait()
            served = ["--pilot", servers["pilot"].url, "--pilot-model", "pilot", "--base", servers["base"].url,
                      "--base-model", "base", "--base-tokenizer", str(base), *decoding]
            with WSDServer(served) as wsd, WSDServer([*served, "--method", "base_only"]) as alone:
                for c in args.concurrency:
                    direct = asyncio.run(load(servers["base"].url, "base", prompts, c, args.max_tokens,
                                              completions_of=lambda p: base_prompt([{"role": "user", "content": p}],
                                                                                   None)))
                    ref = asyncio.run(load(alone.url, "base_only", prompts, c, args.max_tokens))
                    got = asyncio.run(load(wsd.url, "wsd", prompts, c, args.max_tokens))
                    print(row("vLLM base itself", c, direct, None))
                    print(row("base-only via pilot wsd serve", c, ref, direct))
                    print(row("WSD via pilot wsd serve", c, got, direct), flush=True)
        finally:
            for s in servers.values():
                s.stop()


if __name__ == "__main__":
    main()
