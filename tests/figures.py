"""The reliability figures a test run prints at its end (conftest's terminal summary); docs/reliability.md
records them. Tests add to these counters as they go (one process: pytest runs the tests in sequence)."""

from collections import Counter

FAULTS: Counter = Counter()  # faults injected by the proxies, by kind
COUNTS: Counter = Counter()  # requests, faulty runs, kills, artifacts compared, files scanned for secrets


def add_proxy(proxy) -> None:
    FAULTS.update(proxy.faults)
    COUNTS["requests"] += proxy.requests


def lines() -> list[str]:
    out = []
    if COUNTS["faulty_runs"]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(FAULTS.items()))
        out.append(f"faults: {sum(FAULTS.values())} injected ({kinds}) in {COUNTS['requests']} requests over "
                   f"{COUNTS['faulty_runs']} runs; {COUNTS['fault_outputs_equal']} outputs equal to a healthy run's")
    if COUNTS["kills"]:
        out.append(f"kills: {COUNTS['kills']} SIGKILLs at {COUNTS['kill_writers']} writers' commit points; "
                   f"{COUNTS['artifacts_compared']} artifacts compared with an uninterrupted run, "
                   f"{COUNTS['artifacts_equal']} equal; {COUNTS['incomplete_refused']} incomplete outputs refused "
                   "by their readers")
    if COUNTS["files_scanned"]:
        out.append(f"secrets: {COUNTS['files_scanned']} files ({COUNTS['bytes_scanned'] >> 10} KiB) scanned for the "
                   f"test key, {COUNTS['key_found']} hold it; the servers saw it in {COUNTS['key_sent']} runs")
    return out
