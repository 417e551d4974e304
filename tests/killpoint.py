"""Kill a `pilot` command at its commit points, then rerun it: the runner behind tests/test_kill_matrix.py.

    python -m tests.killpoint PLAN.json

PLAN: {"args": [...], "work": DIR, "points": [n, ...]}. "{out}" in args is the run's output path.
- count: the command runs uninterrupted with output DIR/full/out; the number of commit points it passed goes to
  DIR/count. A commit point is a call to os.fsync, os.replace or os.rename: where a writer makes data durable or
  visible, so a kill just before one catches the writer with its data written and not yet committed.
- for each n in points: a child runs the command with output DIR/k<n>/out and SIGKILLs itself on reaching its
  n-th commit point; what the kill left in DIR/k<n> (the output and any temporary beside it) is copied to
  DIR/k<n>.killed for the test to read; then the same command runs again, as a user reruns it.
Every run's output is named "out", so the outputs of two runs can be compared byte for byte.
The runner imports the CLI once and forks a child per run (no torch op has run in the parent, so no thread
pool is forked), so a run costs its own work rather than Python's start-up. Exit codes go to DIR/codes.json
(-9 for a kill); each run's stderr to DIR/<run>.err.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path


def _child(args: list[str], kill_at: int, count_file: Path | None, err: Path) -> None:
    """In the forked child: hook the commit points, run the CLI, exit with its code (never returns)."""
    seen = 0

    def hooked(real):
        def call(*a, **kw):
            nonlocal seen
            seen += 1
            if seen == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **kw)
        return call

    for name in ("fsync", "replace", "rename"):
        setattr(os, name, hooked(getattr(os, name)))
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    os.dup2(fd, 1)
    code = 70
    try:
        from flows.cli import main

        code = main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        if count_file is not None:
            count_file.write_text(str(seen))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run(args: list[str], out: Path, kill_at: int, err: Path, count_file: Path | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        _child([a.replace("{out}", str(out)) for a in args], kill_at, count_file, err)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    work, args = Path(plan["work"]), plan["args"]
    work.mkdir(parents=True, exist_ok=True)
    import flows.cli  # noqa: F401  (the heavy imports happen lazily inside the commands; warm the common ones)
    import datasets  # noqa: F401
    import transformers  # noqa: F401

    codes: dict[str, int] = {}
    if plan.get("count"):
        (work / "full").mkdir()
        codes["full"] = run(args, work / "full" / "out", 0, work / "full.err", work / "count")
    for n in plan.get("points", []):
        (work / f"k{n}").mkdir()
        codes[f"k{n}"] = run(args, work / f"k{n}" / "out", n, work / f"k{n}.err")
        shutil.copytree(work / f"k{n}", work / f"k{n}.killed", symlinks=True)
        codes[f"k{n}.rerun"] = run(args, work / f"k{n}" / "out", 0, work / f"k{n}.rerun.err")
    (work / "codes.json").write_text(json.dumps(codes))


if __name__ == "__main__":
    main(sys.argv[1])
