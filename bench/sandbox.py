"""What the kernel boundary costs per program: a passing HumanEval fixture solution run through
`evaluation.sandbox.run_program` in bubblewrap, and the same without the boundary (no bwrap on the PATH,
`unsafe=True`: the audit hook and the limits only, as before issue #38). Prints the median and p90 wall time per
program over --runs runs of each. Then the HumanEval sanitizer on a chat answer of 300 lines (prose, a fenced
block of 75 small functions, prose): EvalPlus's all-pairs `code_extract` (tests/evalplus_reference.py) against
ours (evaluation/sanitize.py), the same run found.

    .venv/bin/python bench/sandbox.py [--runs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    args = ap.parse_args()
    from evaluation.sandbox import isolation, run_program, solution_program

    item = json.loads((ROOT / "tests/fixtures/benchmarks/humaneval.jsonl").read_text().splitlines()[0])
    program = solution_program("    return a + b\n", {k: item[k] for k in ("prompt", "test", "entry_point")})

    def times(unsafe: bool) -> list[float]:
        out = []
        for _ in range(args.runs):
            t = time.perf_counter()
            assert run_program(program, unsafe=unsafe).passed
            out.append(time.perf_counter() - t)
        return sorted(out)

    boundary = isolation()
    confined = times(False)
    os.environ["PATH"] = "/nonexistent"  # no bwrap: the old path, opted in
    bare = times(True)
    for name, t in ((boundary, confined), ("no boundary (--unsafe-code-execution)", bare)):
        print(f"{name:<40} median {statistics.median(t) * 1e3:6.1f} ms  p90 {t[int(0.9 * len(t))] * 1e3:6.1f} ms")
    print(f"ratio (boundary / none): {statistics.median(confined) / statistics.median(bare):.2f}")

    from evaluation.sanitize import code_extract
    from tests import evalplus_reference

    block = "def helper_{i}(x):\n    y = x * 2\n    return y + {i}\n\n"
    answer = "Here is the code:\n```python\n" + "".join(block.format(i=i) for i in range(75)) + "```\nThat is all."
    for name, f in (("EvalPlus's code_extract (all pairs)", evalplus_reference.code_extract),
                    ("ours (pruned)", code_extract)):
        t = time.perf_counter()
        got = f(answer)
        print(f"{name:<40} {time.perf_counter() - t:7.3f} s for {len(answer.splitlines())} lines, "
              f"{len(got.splitlines())} kept")


if __name__ == "__main__":
    main()
