"""`pilot wsd generate` batched continuously against batch by batch (issue #44 item 1): tokens/s of WSD and the
base alone over the same prompts, per pair and batch size.

static: a batch of --batch-size prompts until its last answer is done, the pilot speculating where that pays
(`--speculate auto`, the default; `--speculate 0`: off); continuous: an answer joins the running batch at the next
step and leaves it when done (it does not speculate). Each run is a whole
`generate_to_file` call into a fresh output, as `pilot wsd generate` runs it (models loaded in it: the base alone
batched continuously loads no pilot); greedy, so both give the same answers up to float rounding (counted).
Median of --reps runs after a warm-up, the two alternating. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/generate_batching.py [--pair demo smollm2] [--batch-size 8 32] [--prompts 64] \
        [--speculate auto|0]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.wsd_speed import BENCH_BASE, BENCH_PILOT, QUESTIONS  # noqa: E402
from pilot_core.models.source import ModelSource  # noqa: E402
from pilot_core.models.tiny import cached_tiny_model  # noqa: E402
from pilot_core.prompts import PromptRecord  # noqa: E402
from wsd_inference.config import WSDConfig  # noqa: E402
from wsd_inference.runner import generate_to_file  # noqa: E402


def pair_dirs(pair: str, prompts: int) -> tuple[Path, Path, list[str]]:
    if pair == "smollm2":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from distilled_pilot import bench_requests, distilled_pair

        return (*distilled_pair(), bench_requests(prompts))
    questions = [QUESTIONS[i % len(QUESTIONS)] + " " * (i // 16) for i in range(prompts)]
    return cached_tiny_model(BENCH_PILOT), cached_tiny_model(BENCH_BASE), questions


def run(method: str, sources, recs, cfg: WSDConfig, where: Path) -> tuple[float, list[dict]]:
    out = Path(tempfile.mkdtemp(dir=where)) / "out.jsonl"
    t0 = time.perf_counter()
    generate_to_file(*sources, recs, cfg, out, progress=False, method=method)
    wall = time.perf_counter() - t0
    return wall, [json.loads(line) for line in open(out)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pair", choices=["demo", "smollm2"], nargs="+", default=["demo"])
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.1)
    ap.add_argument("--max-draft-tokens", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--methods", nargs="+", default=["wsd", "base_only"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--speculate", default="auto", help="static's speculation.tokens: auto (the default) or a k, "
                    "0 = off (continuous batching does not speculate)")
    args = ap.parse_args()
    import torch

    print(f"{args.prompts} prompts, gamma {args.threshold}, draft <= {args.max_draft_tokens}, total <= "
          f"{args.max_new_tokens} tokens, greedy, static with --speculate {args.speculate}, fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    print("| pair | batch | method | static s | continuous s | tokens | static tok/s | continuous tok/s | "
          "continuous / static | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pair:
            pilot, base, questions = pair_dirs(pair, args.prompts)
            sources = (ModelSource(name="pilot", path=str(pilot)), ModelSource(name="base", path=str(base)))
            recs = [PromptRecord(f"b{i}", ({"role": "user", "content": q},)) for i, q in enumerate(questions)]
            for bs in args.batch_size:
                cfg = WSDConfig(threshold=args.threshold, max_draft_tokens=args.max_draft_tokens,
                                max_new_tokens=args.max_new_tokens, batch_size=bs)
                spec = args.speculate if args.speculate == "auto" else int(args.speculate)
                modes = {"static": WSDConfig.model_validate({**cfg.model_dump(), "batching": "static",
                                                             "speculation": {"tokens": spec}}),
                         "continuous": cfg.model_copy(update={"batching": "continuous"}).without_speculation()}
                for method in args.methods:
                    for c in modes.values():  # warm-up: the costs speculation measures, the allocator
                        run(method, sources, recs[: min(len(recs), bs)], c, Path(tmp))
                    times, outs = {m: [] for m in modes}, {}
                    for _ in range(args.reps):
                        for mode, c in modes.items():
                            t, outs[mode] = run(method, sources, recs, c, Path(tmp))
                            times[mode].append(t)
                    t = {m: statistics.median(v) for m, v in times.items()}
                    tokens = sum(r["base_tokens"] + r["kept_draft_tokens"] if method != "pilot_only" else
                                 r["pilot_tokens"] for r in outs["continuous"])
                    same = sum(a["response"] == b["response"] for a, b in zip(outs["static"], outs["continuous"]))
                    print(f"| {pair} | {bs} | {method} | {t['static']:.2f} | {t['continuous']:.2f} | {tokens} | "
                          f"{tokens / t['static']:.0f} | {tokens / t['continuous']:.0f} | "
                          f"{t['static'] / t['continuous']:.2f}x | {same}/{len(recs)} |", flush=True)


if __name__ == "__main__":
    main()
