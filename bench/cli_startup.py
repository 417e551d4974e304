"""How long `pilot --help` takes (target: under 1 s). Prints the median of several cold subprocess runs.

    .venv/bin/python bench/cli_startup.py
"""

import statistics
import subprocess
import sys
import time
from pathlib import Path

PILOT = Path(sys.executable).with_name("pilot")


def main(runs: int = 7) -> None:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([str(PILOT), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    print(f"pilot --help: median {statistics.median(times):.3f} s, max {max(times):.3f} s over {runs} runs")


if __name__ == "__main__":
    main()
