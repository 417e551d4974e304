"""Running untrusted code (a benchmark solution and its tests) never in-process: a separate Python process per
program, in a fresh scratch directory (its working directory, removed afterwards), with

- a wall-clock timeout (the whole process group is killed) and a CPU-time limit,
- an address-space limit (an allocation without bound fails with MemoryError) and a file-size limit,
- no network: a new network namespace where the kernel allows it (only a down loopback inside), and in any case
  an audit hook (PEP 578) installed before the program runs that refuses sockets, subprocesses, signals to
  other processes, ctypes, and any write, rename, removal or mode change outside the scratch directory,
- an empty environment (no secrets, no proxies), Python's isolated mode (no user site, no PYTHON* variables).

The program passes when the process exits 0. A refusal or any failure is reported with its last error line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNET = 0x40000000

# Runs first in the child: installs the audit hook, then runs the program from program.py in the scratch dir.
BOOTSTRAP = r'''
import os, sys
SCRATCH = os.path.realpath(os.getcwd())
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
BLOCKED = ("socket.", "subprocess.", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
           "os.forkpty", "os.kill", "os.killpg", "ctypes.", "pty.", "resource.setrlimit", "os.setuid", "os.chroot")
PATHS = {"os.remove": 1, "os.rename": 2, "os.replace": 2, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1,
         "os.chown": 1, "os.symlink": 2, "os.link": 2, "os.truncate": 1, "os.utime": 1, "shutil.rmtree": 1,
         "shutil.copyfile": 2, "shutil.move": 2, "os.chdir": 1}

def inside(p):
    if isinstance(p, int):
        return True  # an open descriptor: it was checked when opened
    p = os.path.realpath(os.fsdecode(p))
    return p == SCRATCH or p.startswith(SCRATCH + os.sep)

def hook(event, args):
    if event.startswith(BLOCKED) and event not in ("socket.gethostname", "socket.getaddrinfo"):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "socket.getaddrinfo":
        raise PermissionError("sandbox: no network")
    if event == "open":
        path, mode, flags = args
        writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (mode is None and flags & WRITE)
        if writes and not inside(path):
            raise PermissionError(f"sandbox: writing {path} outside the scratch directory")
    elif event in PATHS:
        for p in args[:PATHS[event]]:
            if p is not None and not inside(p):
                raise PermissionError(f"sandbox: {event} on {p} outside the scratch directory")

with open("program.py", encoding="utf-8") as f:
    code = compile(f.read(), "program.py", "exec")
sys.addaudithook(hook)
del f
exec(code, {"__name__": "__main__"})
'''


@dataclass(frozen=True)
class Outcome:
    passed: bool
    status: str  # passed, failed, timeout
    detail: str  # the last line of stderr (why it failed), or ""


def _limits(memory_mb: int, cpu_s: int):
    def apply() -> None:  # in the child, after fork, before exec
        import ctypes
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        try:  # where the kernel lets us: a network namespace with nothing in it
            ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
        except Exception:
            pass  # the audit hook still refuses sockets

    return apply


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> Outcome:
    """Run `program` as described above; never raises for anything the program does."""
    with tempfile.TemporaryDirectory(prefix="pilot-sandbox-") as scratch:
        Path(scratch, "program.py").write_text(program, encoding="utf-8")
        p = subprocess.Popen([sys.executable, "-I", "-B", "-c", BOOTSTRAP], cwd=scratch, env={"PATH": "/usr/bin:/bin"},
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             preexec_fn=_limits(memory_mb, max(1, int(timeout_s))), start_new_session=True)
        try:
            _, err = p.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
            return Outcome(False, "timeout", f"no result within {timeout_s:g} s")
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        if p.returncode == 0:
            return Outcome(True, "passed", "")
        if p.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            return Outcome(False, "timeout", "CPU time limit")
        lines = [x for x in err.decode("utf-8", "replace").splitlines() if x.strip()]
        return Outcome(False, "failed", (lines[-1] if lines else f"exit code {p.returncode}")[:300])


def solution_program(response: str, code: dict) -> str:
    """The program that tests a response to a HumanEval-style item: the response's last code block (or the
    response itself), after the prompt's function header when the block does not define the entry point itself,
    then the item's tests and `check(<entry point>)`."""
    import re

    blocks = re.findall(r"```(?:python|py|Python)?[ \t]*\n(.*?)```", response, re.S)
    body = blocks[-1] if blocks else response
    if re.search(rf"^\s*def {re.escape(code['entry_point'])}\s*\(", body, re.M):
        imports = [x for x in code["prompt"].splitlines() if x.startswith(("import ", "from "))]
        program = "\n".join(imports) + "\n\n" + body
    else:  # the model continued the function's body
        program = code["prompt"] + body
    return f"{program}\n\n{code['test']}\n\ncheck({code['entry_point']})\n"
