"""Local response generation (the preference stage with local generators): calls/s, one call at a time through
transformers' `generate` (what `LocalChat` did before batching) against `LocalChat` batches of 1, 8 and 32.

The demo's teacher-sized tiny model, sampled answers of up to 40 tokens (the demo's settings), each call with its
own seed. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/local_generation.py [--calls 96]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pilot_core.models.tiny import PILOT_SPEC  # noqa: E402

TOPICS = "bread rivers the moon gardens music tea bicycles paper trains clouds".split()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=96)
    args = ap.parse_args()

    import torch

    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.source import ModelSource
    from pilot_core.models.templates import chat_prompt

    chat = LocalChat.of(ModelSource(name="pilot", tiny=PILOT_SPEC))
    calls = [([{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]} ({i})."}],
              {"max_tokens": 40, "temperature": 0.7, "top_p": 1.0, "seed": i}) for i in range(args.calls)]

    def one_by_one_generate() -> int:  # before: transformers' generate, one call at a time
        n = 0
        for msgs, p in calls:
            ids = chat.m.encode(chat_prompt(chat.m.tokenizer, msgs))
            torch.manual_seed(p["seed"])
            with torch.no_grad():
                out = chat.m.model.generate(torch.tensor([ids]), max_new_tokens=p["max_tokens"], do_sample=True,
                                            temperature=p["temperature"], eos_token_id=sorted(chat.m.stop_ids),
                                            pad_token_id=chat.m.pad_id)
            n += out.shape[1] - len(ids)
        return n

    def batched(size: int):
        def run() -> int:
            return sum(r["completion_tokens"] for i in range(0, len(calls), size)
                       for r in asyncio.run(chat.chat_many(calls[i : i + size])))
        return run

    print("| calls | how | seconds | calls/s | tokens/s |\n|---:|---|---:|---:|---:|")
    for name, fn in (("generate(), one at a time (before)", one_by_one_generate), ("LocalChat, batch 1", batched(1)),
                     ("LocalChat, batch 8 (default concurrency)", batched(8)), ("LocalChat, batch 32", batched(32))):
        t0 = time.perf_counter()
        tokens = fn()
        s = time.perf_counter() - t0
        print(f"| {len(calls)} | {name} | {s:.2f} | {len(calls) / s:.1f} | {tokens / s:.0f} |", flush=True)


if __name__ == "__main__":
    main()
