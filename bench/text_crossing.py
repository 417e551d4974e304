"""The cost of crossing proposals as text (a pilot and a base of different tokenizer families): per speculation
round, the draft's tokens of the answer so far and the base's tokens of the proposed text are computed with the
tokenizers. Measured on SmolLM2-135M-Instruct continuing from the plain role template with the distilled pilot
(bench/distilled_pilot.py) as its draft model, forced through the text path (the tokenizer work is the same
whatever the vocabularies), speculating every round (min_acceptance 0, pace always). Prints the tokenizer time per
round and its share of the whole, the answers' length and whether they equal plain decoding.

    .venv/bin/python bench/text_crossing.py [--prompts 4] [--max-tokens 512] [--reps 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.distilled_pilot import bench_requests, distilled_pair  # noqa: E402
from pilot_core.models.loading import load_hf_model  # noqa: E402
from pilot_core.models.ragged import RaggedBatch  # noqa: E402
from pilot_core.models.sampling import Generation, Sampling, Stream  # noqa: E402
from pilot_core.models.speculative import Drafter, Speculation, SpeculativeGeneration  # noqa: E402
from pilot_core.models.templates import STOP_STRINGS, base_prompt, chat_prompt  # noqa: E402
from pilot_core.models.tokenization import splits_at_whitespace  # noqa: E402


def continue_all(base, prompts, budget, drafter=None):
    batch = RaggedBatch(base, len(prompts))
    batch.feed([base.encode(p) for p in prompts])
    rows = [Stream(budget) for _ in prompts]
    if drafter is None:
        Generation(batch, rows, Sampling(), STOP_STRINGS).run()
        return rows, None
    gen = SpeculativeGeneration(batch, rows, Sampling(), STOP_STRINGS, drafter,
                                Speculation(tokens=4, min_acceptance=0.0, pace="always"))
    gen.run()
    return rows, gen.stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    pilot_dir, base_dir = distilled_pair()
    pilot = load_hf_model(str(pilot_dir), need_chat_template=True)
    base = load_hf_model(str(base_dir))
    questions = [q + " Answer in detail, with examples." for q in bench_requests(args.prompts)]
    messages = [[{"role": "user", "content": q}] for q in questions]
    prompts = [base_prompt(m, base.tokenizer.bos_token) for m in messages]
    plain, _ = continue_all(base, prompts, args.max_tokens)

    spent = {"tokenizers": 0.0, "calls": 0}
    for name in ("_target", "_cross"):
        fn = getattr(Drafter, name)

        def timed(self, *a, _fn=fn, _name=name):
            t = time.perf_counter()
            spent["calls"] += _name == "_target"  # one per row and round
            try:
                return _fn(self, *a)
            finally:
                spent["tokenizers"] += time.perf_counter() - t
        setattr(Drafter, name, timed)

    lengths = [len(p.tokens) for p in plain]
    print(f"{len(prompts)} prompts, batch {len(prompts)}, answers {min(lengths)}-{max(lengths)} tokens "
          f"(mean {statistics.mean(lengths):.0f}), k 4, median of {args.reps}, the two modes alternating")
    print("| re-tokenized per round | wall s | tokenizer ms per row-round | tokenizer share of wall | acceptance "
          "| same answers |")
    print("|---|---|---|---|---|---|")
    runs = {mode: {"wall": [], "share": [], "per_round": []} for mode in ("whole text", "tail (windowed)")}
    for _ in range(args.reps):
        for mode, got in runs.items():
            drafter = Drafter(pilot, base, [chat_prompt(pilot.tokenizer, m) for m in messages])
            drafter.same_vocab = False  # the text path
            drafter.windowed = mode != "whole text" and splits_at_whitespace(base.tokenizer)
            spent["tokenizers"], spent["calls"] = 0.0, 0
            t = time.perf_counter()
            rows, stats = continue_all(base, prompts, args.max_tokens, drafter)
            got["wall"].append(time.perf_counter() - t)
            got["share"].append(spent["tokenizers"] / got["wall"][-1])
            got["per_round"].append(spent["tokenizers"] / max(spent["calls"], 1) * 1000)
            got["same"] = [r.tokens for r in rows] == [p.tokens for p in plain]
            got["acc"] = sum(st.accepted for st in stats) / max(sum(st.proposed for st in stats), 1)
    for mode, got in runs.items():
        print(f"| {mode} | {statistics.median(got['wall']):.2f} | {statistics.median(got['per_round']):.2f} | "
              f"{statistics.median(got['share']):.1%} | {got['acc']:.0%} | {got['same']} |")

if __name__ == "__main__":
    main()
