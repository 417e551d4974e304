"""Child processes that end when their parent ends, however it ends (SIGKILL, the OOM killer, a lost node); and
free loopback ports for the servers and rendezvous they open.

Linux only: prctl(PR_SET_PDEATHSIG). The kernel sends the signal when the thread that started the child exits,
so start such children from a thread that lives as long as they should (the main thread)."""

from __future__ import annotations

import os
import signal
import sys


def _set_parent_death_signal(sig: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False  # not Linux: such a child may outlive a killed parent (stop it by hand before a rerun)


def free_port() -> int:
    """A port nothing listens on now on loopback (two runs on one machine never share one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    """preexec_fn for a child that must not outlive its parent (a killed orchestrator, a killed launcher)."""
    _set_parent_death_signal(signal.SIGKILL)


LAUNCHED_BY = "PILOT_LAUNCHED_BY"  # the pid of the command that started the launcher


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def die_with_launcher() -> None:
    """Called first thing in a process started by a launcher we do not control (torchrun and accelerate start
    workers in a session of their own): end with the launcher. If the launcher, or the command that started it
    (LAUNCHED_BY in the environment), died before this call, end now."""
    parent = os.getppid()
    if not _set_parent_death_signal(signal.SIGKILL):
        return
    started_by = os.environ.get(LAUNCHED_BY, "")
    if os.getppid() != parent or parent == 1 or (started_by.isdigit() and _gone(int(started_by))):
        sys.exit(1)
