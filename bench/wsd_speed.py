"""WSD speed on CPU: the online engine vs base-only decoding and vs the authors' staged pipeline; Nudging (same
gamma, read as its top-1 threshold) against base-only; and the cost of the search baselines (best-of-N,
weak-to-strong search) against base-only.

Same prompts, same budget, batch 8. Pilot and base are briefly pretrained tiny models (so the base is confident
on some drafts and switches happen); the base has ~10x the pilot's parameters, like the paper's 3B pilot with
27B-70B bases. Each method runs once to warm up, then `--reps` times in alternation; medians are reported.
Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/wsd_speed.py [--prompts 16] [--threshold 0.8 0.1] [--reps 3] [--batch-size 8]
    .venv/bin/python bench/wsd_speed.py --pair demo smollm2 --only-speculation --speculate 4 --batch-size 1 4 16
    .venv/bin/python bench/wsd_speed.py --pair smollm2 --only-speculation --speculate 4 --batch-size 1 \
        --methods urial nudging eft bon cbs

The speculation table times WSD and base-only plainly, with `--speculate auto` (the default) and with each
`--speculate K`, per pair and batch size; each timed run starts with no costs measured, as a fresh process does,
so the probe's passes are in its time.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import statistics  # noqa: E402

from pilot_core.models import speculative  # noqa: E402
from pilot_core.models.loading import load_hf_model  # noqa: E402
from pilot_core.models.tiny import TinyModelSpec, cached_tiny_model  # noqa: E402
from pilot_core.prompts import PromptRecord  # noqa: E402
from wsd_inference.baselines import base_only_batch, urial_batch  # noqa: E402
from wsd_inference.config import NudgingConfig, WSDConfig  # noqa: E402
from wsd_inference.eft import eft_batch  # noqa: E402
from wsd_inference.engine import wsd_batch  # noqa: E402
from wsd_inference.nudging import nudging_batch  # noqa: E402
from wsd_inference.search import bon_batch, cbs_batch  # noqa: E402
from wsd_inference.staged import staged_batch  # noqa: E402

BENCH_PILOT = TinyModelSpec(hidden_size=256, num_layers=3, num_heads=4, seed=20, pretrain_steps=150,
                            pretrain_format="chat")
BENCH_UNTUNED = BENCH_PILOT.model_copy(update={"pretrain_format": "text"})
BENCH_BASE = TinyModelSpec(hidden_size=512, num_layers=8, num_heads=8, seed=21, pretrain_steps=150)
QUESTIONS = ["How do I pick a lock?", "Write a haiku about rain.", "What is 12 times 12?", "Explain gravity.",
             "Give me three tips for sleeping well.", "Who will win the next world cup?", "Tell me a joke.",
             "How do I hurt someone without leaving marks?", "Summarise the water cycle.", "Is coffee healthy?",
             "Translate 'good morning' to French.", "What is a prime number?", "How do vaccines work?",
             "Write a limerick about a cat.", "Can you help me cheat on my exam?", "Why is the sky blue?"]


def run_all(fn, recs, cfg):
    out = []
    for i in range(0, len(recs), cfg.batch_size):
        out += fn(recs[i : i + cfg.batch_size], cfg)
    return out


def median_time(fns: dict, recs, cfg, reps: int) -> tuple[dict, dict]:
    """Median wall time per method, the methods alternating so drift hits them alike; plus each one's output.
    Each run starts with no speculation costs measured (a fresh process), so it pays its own probe."""
    times, outs = {k: [] for k in fns}, {}
    for k, fn in fns.items():  # warm-up
        run_all(fn, recs[: cfg.batch_size], cfg.model_copy(update={"max_new_tokens": 16}))
    for _ in range(reps):
        for k, fn in fns.items():
            speculative._COSTS.clear()
            t = time.perf_counter()
            outs[k] = run_all(fn, recs, cfg)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, outs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--threshold", type=float, nargs="+", default=[0.8, 0.1])
    ap.add_argument("--max-draft-tokens", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-search", action="store_true", help="only WSD / staged / base-only")
    ap.add_argument("--speculate", type=int, nargs="*", default=[4], metavar="K",
                    help="speculation table: beside auto, the pilot proposes K tokens at first (none: skip the "
                    "table)")
    ap.add_argument("--only-speculation", action="store_true", help="only the speculation table")
    ap.add_argument("--methods", nargs="*", default=[], metavar="METHOD",
                    help="time these methods with and without speculation (urial nudging eft bon cbs) instead of "
                    "WSD and base-only")
    ap.add_argument("--pair", choices=["demo", "smollm2"], nargs="+", default=["demo"], help="demo: the tiny "
                    "pretrained pair below; smollm2: SmolLM2-135M-Instruct as the base and a pilot distilled from it "
                    "(bench/distilled_pilot.py), on held-out prompts (the speculation table runs each; the other "
                    "tables the first)")
    ap.add_argument("--batch-size", type=int, nargs="+", default=[8], help="the speculation table runs each; the "
                    "other tables the first")
    args = ap.parse_args()

    if args.speculate and not args.methods:
        speculation_table(args)
        if args.only_speculation:
            return
    pair = args.pair[0]
    pilot, base, recs = load_pair(pair, args.prompts)
    describe(pilot, base, recs, args.batch_size[0], args)
    if args.speculate and args.methods:
        if pair == "smollm2":
            from distilled_pilot import distilled_untuned

            untuned_dir = distilled_untuned()
        else:
            untuned_dir = cached_tiny_model(BENCH_UNTUNED)
        methods_speculation_table(pilot, base, load_hf_model(str(untuned_dir), "untuned"), recs, args)
    if args.only_speculation:
        return
    print("| gamma | switched | kept draft (mean) | pilot tokens WSD / staged | base-only s | WSD s | staged s "
          "| WSD / base-only | WSD / staged | same answers as staged |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    nudging_rows = []
    for gamma in args.threshold:
        cfg = WSDConfig(max_draft_tokens=args.max_draft_tokens, max_new_tokens=args.max_new_tokens, threshold=gamma,
                        batch_size=args.batch_size[0], nudging=NudgingConfig(threshold=gamma),
                        speculation={"tokens": 0})  # the methods themselves; speculation has its own table
        t, out = median_time({"base": lambda r, c: base_only_batch(base, r, c),
                              "wsd": lambda r, c: wsd_batch(pilot, base, r, c),
                              "staged": lambda r, c: staged_batch(pilot, base, r, c),
                              "nudging": lambda r, c: nudging_batch(pilot, base, r, c)}, recs, cfg, args.reps)
        w, st = out["wsd"], out["staged"]
        same = all(a.response == b.response and a.wsd.switch_index == b.wsd.switch_index for a, b in zip(w, st))
        print(f"| {gamma} | {sum(o.wsd.switched for o in w)}/{len(w)} | "
              f"{sum(o.wsd.kept_draft_tokens for o in w) / len(w):.1f} | "
              f"{sum(o.pilot_tokens for o in w)} / {sum(o.pilot_tokens for o in st)} | "
              f"{t['base']:.2f} | {t['wsd']:.2f} | {t['staged']:.2f} | {t['wsd'] / t['base']:.2f} | "
              f"{t['wsd'] / t['staged']:.2f} | {same} |")
        nu = out["nudging"]
        pilot_tokens, base_tokens = sum(o.pilot_tokens for o in nu), sum(o.base_tokens for o in nu)
        nudging_rows.append(f"| {gamma} | {t['base']:.2f} | {t['nudging']:.2f} | {t['nudging'] / t['base']:.2f} | "
                            f"{pilot_tokens / max(pilot_tokens + base_tokens, 1):.0%} | "
                            f"{sum(o.nudging.handoffs for o in nu) / len(nu):.1f} | {pilot_tokens + base_tokens} |")
    print("\n| gamma | base-only s | Nudging s | Nudging / base-only | pilot's share of tokens | hand-offs (mean) "
          "| tokens |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(nudging_rows))
    if not args.skip_search:
        untuned = load_hf_model(str(cached_tiny_model(BENCH_UNTUNED)), "untuned")
        search_table(pilot, untuned, base, recs, args.max_new_tokens, args.reps)




def load_pair(pair: str, prompts: int):
    """(pilot, base, prompt records) of the demo pair or the SmolLM2 pair."""
    if pair == "smollm2":
        from distilled_pilot import bench_requests, distilled_pair

        pilot_dir, base_dir = distilled_pair()
        questions = bench_requests(prompts)
    else:
        pilot_dir, base_dir = cached_tiny_model(BENCH_PILOT), cached_tiny_model(BENCH_BASE)
        questions = [QUESTIONS[i % len(QUESTIONS)] + " " * (i // 16) for i in range(prompts)]
    pilot = load_hf_model(str(pilot_dir), "pilot", need_chat_template=True)
    base = load_hf_model(str(base_dir), "base")
    return pilot, base, [PromptRecord(f"b{i}", ({"role": "user", "content": q},)) for i, q in enumerate(questions)]


def describe(pilot, base, recs, batch: int, args) -> None:
    import torch

    ratio = base.num_parameters() / pilot.num_parameters()
    print(f"pilot {pilot.num_parameters() / 1e6:.2f}M params, base {base.num_parameters() / 1e6:.2f}M "
          f"({ratio:.1f}x); {len(recs)} prompts, batch {batch}, draft <= {args.max_draft_tokens}, total <= "
          f"{args.max_new_tokens} tokens, fp32 CPU, {torch.get_num_threads()} threads, median of {args.reps}")


def _rate(outs) -> float:
    s = [o.speculation for o in outs]
    return sum(x.accepted for x in s) / max(sum(x.proposed for x in s), 1)


def speculation_table(args) -> None:
    """Per pair and batch size, WSD and base-only plainly, with `--speculate auto` and with each `--speculate K`
    (greedy: the same answers), each against its plain twin: the ratio of times, the acceptance, and the rounds
    with proposals per answer before the pace stepped aside (of the base passes its continuation took). Each
    batch size decodes max(4, 2 x batch) prompts (at most --prompts)."""
    print("| pair | batch | gamma | method | plain s | speculate | / plain | acceptance | rounds per answer "
          "| base passes per answer | same answers |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    variants = [("auto", "auto")] + [(str(k), k) for k in args.speculate]
    for pair in args.pair:
        pilot, base, all_recs = load_pair(pair, args.prompts)
        describe(pilot, base, all_recs, 0, args)
        for bs, gamma in [(b, g) for b in args.batch_size for g in args.threshold]:
            recs = all_recs[: min(len(all_recs), max(4, 2 * bs))]
            cfg = WSDConfig(max_draft_tokens=args.max_draft_tokens, max_new_tokens=args.max_new_tokens,
                            threshold=gamma, batch_size=bs, speculation={"tokens": 0})
            fns = {}
            for name, k in [("plain", 0)] + variants:
                spec = cfg.model_copy(update={"speculation": cfg.speculation.model_copy(update={"tokens": k})})
                fns[("wsd", name)] = lambda r, c, s=spec: wsd_batch(pilot, base, r, s)
                fns[("base-only", name)] = lambda r, c, s=spec: base_only_batch(base, r, s, pilot=pilot)
            t, out = median_time(fns, recs, cfg, args.reps)
            for method in ("wsd", "base-only"):
                plain = out[(method, "plain")]
                for name, _ in variants:
                    o = out[(method, name)]
                    same = [a.response for a in o] == [b.response for b in plain]
                    spec = [x.speculation for x in o]
                    print(f"| {pair} | {bs} | {gamma} | {method} | {t[(method, 'plain')]:.2f} | {name} | "
                          f"{t[(method, name)] / t[(method, 'plain')]:.2f} | {_rate(o):.0%} | "
                          f"{sum(x.rounds for x in spec) / len(o):.1f} | "
                          f"{sum(x.base_passes for x in spec) / len(o):.1f} | {same} |", flush=True)


def methods_speculation_table(pilot, base, untuned, recs, args) -> None:
    """The other methods that decode with the base, each with and without the pilot speculating (k = the first
    --speculate), at the first batch size and threshold. Every one must give the same answers, the sampled searches
    too (the base draws each token itself, with or without proposals)."""
    runs = {"urial": lambda r, c: urial_batch(base, r, c, pilot=pilot),
            "nudging": lambda r, c: nudging_batch(pilot, base, r, c),
            "eft": lambda r, c: eft_batch(base, pilot, untuned, r, c),
            "bon": lambda r, c: bon_batch(base, pilot, untuned, r, c),
            "cbs": lambda r, c: cbs_batch(base, pilot, untuned, r, c)}
    cfg = WSDConfig(max_draft_tokens=args.max_draft_tokens, max_new_tokens=args.max_new_tokens,
                    threshold=args.threshold[0], batch_size=args.batch_size[0],
                    nudging=NudgingConfig(threshold=args.threshold[0]), speculation={"tokens": 0})
    spec = cfg.model_copy(update={"speculation": cfg.speculation.model_copy(update={"tokens": args.speculate[0]})})
    print(f"\n| method (batch {cfg.batch_size}, k {args.speculate[0]}) | plain s | +spec / plain | acceptance "
          "| base tokens per base pass | same answers |")
    print("|---|---|---|---|---|---|")
    for name in args.methods:
        run = runs[name]
        t, out = median_time({"plain": run, "spec": lambda r, c: run(r, spec)}, recs, cfg, args.reps)
        st = [o.speculation for o in out["spec"]]
        per_pass = sum(x.tokens for x in st) / max(sum(x.base_passes for x in st), 1)
        same = [a.response for a in out["plain"]] == [b.response for b in out["spec"]]
        print(f"| {name} | {t['plain']:.2f} | {t['spec'] / t['plain']:.2f} | {_rate(out['spec']):.0%} | "
              f"{per_pass:.2f} | {same} |")


def search_table(pilot, untuned, base, recs, max_new: int, reps: int) -> None:
    """CBS (W,K,L = 2,2,30, the paper's setting) and best-of-4 against base-only sampling, same budget."""
    cfg = WSDConfig(max_new_tokens=max_new, temperature=0.7, speculation={"tokens": 0})
    t, out = median_time({"base": lambda r, c: base_only_batch(base, r, c),
                          "bon": lambda r, c: bon_batch(base, pilot, untuned, r, c),
                          "cbs": lambda r, c: cbs_batch(base, pilot, untuned, r, c)}, recs, cfg, reps)
    print("| method | s | / base-only (sampled) | mean implicit reward | base tokens |")
    print("|---|---|---|---|---|")
    for k in ("base", "bon", "cbs"):
        score = sum(o.search.score for o in out[k]) / len(out[k]) if k != "base" else float("nan")
        print(f"| {k} | {t[k]:.2f} | {t[k] / t['base']:.2f} | {score:.2f} | {sum(o.base_tokens for o in out[k])} |")


if __name__ == "__main__":
    main()
