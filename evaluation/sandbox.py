"""Running untrusted code (a benchmark solution and its tests): never in-process, always behind a kernel boundary.

Each program runs in its own bubblewrap sandbox (`bwrap`, the Debian package `bubblewrap`):

- new user, PID, network, IPC, UTS and cgroup namespaces; uid and gid 65534 (nobody) with no capabilities, no
  way to make another user namespace, a new session (no terminal injection), killed when its parent dies;
- a file system that holds only the Python runtime, read-only (the interpreter's prefix and the shared
  libraries under /usr/lib), a private /proc and a minimal /dev; no host home, no checkout, no /tmp;
- its working directory a fresh 64 MB tmpfs, the only writable place, gone with the sandbox;
- an empty environment, Python's isolated mode without `site` (no user site, no PYTHON* variables, no .pth);
- a wall-clock timeout, a CPU-time limit, an address-space limit (an allocation without bound fails with
  MemoryError) and a file-size limit;
- inside, as a second layer, an audit hook (PEP 578) that refuses sockets, subprocesses, signals, ctypes and
  writes outside the working directory. PEP 578 says hooks are no sandbox; the boundary is the kernel's.

Where the boundary cannot be set up, `run_program` refuses (SandboxUnavailable, exit 2, saying why and how to fix
it) unless the caller opts in to running without it (`unsafe=True`, the CLI's --unsafe-code-execution, for a
disposable container): then only the limits, the audit hook and, where the kernel allows, an empty network
namespace remain. The program passes when it exits 0; otherwise `detail` is its last error line, capped and
scrubbed of anything shaped like a credential (docs/reliability.md states the threat model).
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pilot_core.credentials import scrub
from pilot_core.errors import UserError

CLONE_NEWNET = 0x40000000
SCRATCH_MB = 64  # the tmpfs the program may write to
DETAIL_CHARS = 300  # of the last error line kept per item
STDERR_TAIL = 8192  # bytes of the program's stderr read back (it may write up to the file-size limit)
INSTALL_HINT = ("install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; `make setup` does it as root) "
                "and allow user namespaces, or, in a disposable container only, pass --unsafe-code-execution")

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
    status: str  # passed, failed, timeout; error: the sandbox could not run it
    detail: str  # the last line of stderr (why it failed), capped and scrubbed; or ""


class SandboxUnavailable(UserError):
    """No kernel boundary can be set up here: code benchmarks refuse rather than run unconfined."""


def _python() -> str:
    """The interpreter itself (not a virtual environment's link to it: the environment is the checkout's)."""
    return os.path.realpath(getattr(sys, "_base_executable", sys.executable))


def _runtime_binds() -> list[str]:
    """bwrap arguments that mount the Python runtime read-only, at the paths it was built for."""
    args = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32"):
        if os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for link in ("/lib", "/lib64", "/lib32"):  # merged /usr: symlinks; otherwise real directories
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            args += ["--ro-bind", link, link]
    prefix = os.path.realpath(sys.base_prefix)
    if prefix != "/usr":  # a pyenv, conda or /usr/local build: its prefix holds the stdlib and libpython
        args += ["--ro-bind", prefix, prefix]
    exe = _python()
    if not exe.startswith((prefix + os.sep, "/usr/lib")):
        args += ["--ro-bind", exe, exe]
    return args


def _bwrap_argv(bwrap: str, program_fd: int) -> list[str]:
    return [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534", "--gid", "65534",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--clearenv",
            *_runtime_binds(), "--proc", "/proc", "--dev", "/dev",
            "--perms", "0700", "--size", str(SCRATCH_MB << 20), "--tmpfs", "/scratch",
            "--file", str(program_fd), "/scratch/program.py",
            "--remount-ro", "/", "--remount-ro", "/dev",  # bwrap's root and /dev are tmpfs: not to be filled
            "--chdir", "/scratch",
            _python(), "-I", "-S", "-B", "-c", BOOTSTRAP]


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str | None) -> tuple[str | None, str]:
    """(None, "bubblewrap <version>") where a sandbox starts here and runs Python, else (why not, ""); a failure
    is cached too, so an opted-in unsafe run does not probe again per program."""
    if bwrap is None:
        return f"cannot run untrusted code: bwrap (bubblewrap) is not installed; {INSTALL_HINT}", ""
    with tempfile.TemporaryFile() as f:
        f.write(b"probe")
        f.seek(0)
        argv = _bwrap_argv(bwrap, f.fileno())
        argv[-1] = "print(open('program.py').read())"
        try:
            p = subprocess.run(argv, pass_fds=(f.fileno(),), env={}, stdin=subprocess.DEVNULL, capture_output=True,
                               timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot run untrusted code: bubblewrap does not start ({e}); {INSTALL_HINT}", ""
    if p.returncode != 0 or p.stdout.strip() != b"probe":
        why = (p.stderr.decode("utf-8", "replace").strip().splitlines() or [f"exit {p.returncode}"])[-1][:200]
        return f"cannot run untrusted code: bubblewrap cannot set up its sandbox here ({why}); {INSTALL_HINT}", ""
    v = subprocess.run([bwrap, "--version"], capture_output=True, text=True, env={}).stdout.split()
    return None, f"bubblewrap {v[-1] if v else '?'}"


def _boundary(unsafe: bool) -> tuple[str, str | None]:
    """(how code runs, the bwrap that runs it; None when it runs without a boundary, opted in)."""
    bwrap = shutil.which("bwrap")
    why, version = _probe(bwrap)
    if why is None:
        return version, bwrap
    if not unsafe:
        raise SandboxUnavailable(why)
    return f"unsafe: no kernel boundary (--unsafe-code-execution; {why.split('; ')[0]})", None


def isolation(unsafe: bool = False) -> str:
    """How untrusted code runs here, for reports: "bubblewrap <version>", or, when the boundary is unavailable and
    the caller opted in, "unsafe: ..."; SandboxUnavailable when it is unavailable and the caller did not."""
    return _boundary(unsafe)[0]


def _limits(memory_mb: int, cpu_s: int, netns: bool):
    def apply() -> None:  # in the child, after fork, before exec (inherited through bwrap); imports nothing
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if netns:  # unsafe mode only: bwrap makes its own namespaces
            try:
                ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWNET)
            except Exception:
                pass  # the audit hook still refuses sockets

    return apply


KILLED = {-signal.SIGXCPU, -signal.SIGKILL, 128 + signal.SIGXCPU, 128 + signal.SIGKILL}  # bwrap: 128 + signal


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024, *, unsafe: bool = False) -> Outcome:
    """Run `program` as described above; never raises for anything the program does. SandboxUnavailable where
    no boundary can be set up and `unsafe` is not given."""
    _, bwrap = _boundary(unsafe)
    with tempfile.TemporaryDirectory(prefix="pilot-sandbox-") as tmp:  # host side: 0700, ours only
        source, scratch = Path(tmp, "program.py"), Path(tmp, "scratch")
        source.write_bytes(program.encode("utf-8", "surrogatepass"))  # a lone surrogate fails inside, not here
        scratch.mkdir()
        fd = os.open(source, os.O_RDONLY)
        if bwrap is not None:  # bwrap copies the program into the sandbox's tmpfs
            argv, cwd, env = _bwrap_argv(bwrap, fd), tmp, {}
        else:  # unsafe: a host directory is the scratch directory
            os.link(source, scratch / "program.py")
            argv, cwd, env = [sys.executable, "-I", "-B", "-c", BOOTSTRAP], scratch, {"PATH": "/usr/bin:/bin"}
        # stderr to a file we keep open (not a pipe: a flood costs no memory; not reopened by name: the program
        # cannot swap it for a FIFO or a link), read back at most its last STDERR_TAIL bytes
        with tempfile.TemporaryFile(dir=tmp) as err:
            try:
                p = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                     preexec_fn=_limits(memory_mb, max(1, int(timeout_s)), netns=bwrap is None))
            finally:
                os.close(fd)
            try:
                p.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                return Outcome(False, "timeout", f"no result within {timeout_s:g} s")
            finally:  # always: what the program left running in its group goes too (bwrap's goes with bwrap)
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            if p.returncode == 0:
                return Outcome(True, "passed", "")
            if p.returncode in KILLED:
                return Outcome(False, "timeout", "killed at the CPU-time limit")
            err.seek(max(0, os.fstat(err.fileno()).st_size - STDERR_TAIL))
            tail = err.read(STDERR_TAIL).decode("utf-8", "replace")
        lines = [x for x in tail.splitlines() if x.strip()]
        last = lines[-1] if lines else f"exit code {p.returncode}"
        status = "error" if last.startswith("bwrap:") else "failed"  # the sandbox itself, not the program
        return Outcome(False, status, scrub(last)[:DETAIL_CHARS])


def solution_code(response: str, code: dict) -> str:
    """The code a response to a HumanEval-style item stands for, as EvalPlus reads answers
    (evaluation/sanitize.py): the response itself where it defines the entry point, else the prompt followed by
    the response (the model continued the function's body); sanitized to the imports and the definitions the entry
    point reaches (example usage, prints and `__main__` sections dropped). "" when nothing could be read."""
    import re

    from evaluation.sanitize import sanitize

    entry = code["entry_point"]
    defines = re.search(rf"^\s*(?:async\s+)?def {re.escape(entry)}\s*\(", response, re.M)
    return sanitize(response if defines else code["prompt"] + "\n" + response, entry)


def program_with_tests(solution: str, code: dict) -> str:
    """The program that tests a solution: the prompt's import lines (ours: a chat answer often leaves out the
    imports the prompt made; EvalPlus does not add them), the solution, the item's tests, `check(<entry point>)`."""
    imports = [x for x in code["prompt"].splitlines() if x.startswith(("import ", "from "))]
    return "\n".join(imports) + f"\n\n{solution}\n\n{code['test']}\n\ncheck({code['entry_point']})\n"


def solution_program(response: str, code: dict) -> str:
    """The program that tests a response (`solution_code`, then `program_with_tests`)."""
    return program_with_tests(solution_code(response, code), code)
