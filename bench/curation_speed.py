"""Curation throughput on synthetic prompts with planted duplicates: the non-model stages (read, normalise +
PII + quality + tags, filter checks, exact + MinHash LSH dedup, decontamination, write), each timed, and the
language-identification stage (lingua) separately. Prints one table; copy it into docs/benchmarks.md.

    .venv/bin/python bench/curation_speed.py [--sizes 100000 1000000] [--num-proc 2] [--langid-rows 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_curation.config import CurationConfig, SourceConfig  # noqa: E402
from data_curation.filters import languages  # noqa: E402
from data_curation.pipeline import decide, load_and_score  # noqa: E402
from data_curation.run import curate  # noqa: E402

VERBS = ["Explain", "Describe", "Summarize", "Compare", "Write about", "Give tips on", "How do I approach",
         "What is known about"]
WORDS = [f"{a}{b}" for a in ("ba", "ke", "lo", "mi", "nu", "pe", "ri", "so", "tu", "va", "we", "zo")
         for b in ("rn", "st", "ld", "mp", "nt", "sk", "ft", "lk", "rd", "nd")]


def synthetic(path: Path, n: int, seed: int = 0) -> None:
    """n prompts of 8-40 words; 10% exact duplicates (case/punctuation changed), 5% near duplicates."""
    rng = random.Random(seed)
    made: list[str] = []
    with open(path, "w") as f:
        for i in range(n):
            r = rng.random()
            if made and r < 0.10:
                text = rng.choice(made).upper() + "!"
            elif made and r < 0.15:
                ws = rng.choice(made).split()
                ws[rng.randrange(len(ws))] = rng.choice(WORDS)
                text = " ".join(ws)
            else:
                text = f"{rng.choice(VERBS)} " + " ".join(rng.choices(WORDS, k=rng.randint(8, 40))) + "?"
                made.append(text)
                if len(made) > 50_000:
                    made = made[-25_000:]
            f.write(json.dumps({"id": f"p{i}", "prompt": text}) + "\n")


def bench(n: int, num_proc: int, tmp: Path) -> dict:
    src = tmp / f"synthetic-{n}.jsonl"
    synthetic(src, n)
    ref = tmp / "eval.jsonl"
    ref.write_text("".join(json.dumps({"id": f"e{i}", "prompt": " ".join(random.Random(i).choices(WORDS, k=12))})
                           + "\n" for i in range(500)))
    cfg = CurationConfig(sources=[SourceConfig(name="syn", path=str(src))], num_proc=num_proc,
                         filters={"language": None}, decontamination={"reference_sets": [str(ref)]})
    times = {}
    t = time.perf_counter()
    ds, _, _, _ = load_and_score(cfg, progress=False)
    times["read + normalise + score"] = time.perf_counter() - t
    t = time.perf_counter()
    d = decide(cfg, ds.with_format("arrow")[:], [], progress=False)
    times["checks + dedup + decontam"] = time.perf_counter() - t
    t = time.perf_counter()
    s = curate(cfg, output=str(tmp / f"out-{n}"), progress=False)  # the whole run, written
    times["whole run (written)"] = time.perf_counter() - t
    dropped = sum(x is not None for x in d.drops)
    return {"n": n, "times": times, "kept": s.kept, "dropped": dropped, "excluded": s.excluded}


def langid(rows: int) -> float:
    rng = random.Random(1)
    texts = [" ".join(rng.choices(["the", "weather", "is", "nice", "today", "how", "do", "I", "bake", "bread",
                                   "please", "explain", "why"], k=12)) for _ in range(rows)]
    languages(texts[:10], ("en", "de"), 10)  # build the detector outside the timing
    cands = tuple(CurationConfig.model_fields["filters"].default.language.candidates)
    languages(texts[:10], cands, 10)
    t = time.perf_counter()
    languages(texts, cands, 10)
    return rows / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--num-proc", type=int, default=2)
    ap.add_argument("--langid-rows", type=int, default=20_000)
    a = ap.parse_args()
    print(f"cpus: {os.cpu_count()}, num_proc: {a.num_proc}")
    print("| prompts | stage | seconds | prompts/s |")
    print("|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as d:
        for n in a.sizes:
            r = bench(n, a.num_proc, Path(d))
            for stage, sec in r["times"].items():
                print(f"| {n:,} | {stage} | {sec:.1f} | {n / sec:,.0f} |")
            print(f"| {n:,} | (kept {r['kept']:,}; excluded {r['excluded']}) | | |")
    print(f"| {a.langid_rows:,} | language id (lingua, 20 candidates) | | {langid(a.langid_rows):,.0f} |")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB")


if __name__ == "__main__":
    main()
