"""A real local Ray cluster for the tests: `ray start --head` on loopback, 2 CPUs, token authentication with a token
of its own, stopped at the end (its processes only: `ray stop` would stop every Ray on the machine).

Ray turns 127.0.0.1 into the machine's routable address on Linux ("so other nodes can reach it") and binds its
GCS and raylet to every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it treat this as a one-machine cluster
and keep every server on loopback (ray/_private/services.py, get_node_ip_address). Every port it opens is chosen
here (its dashboard agent's default, 52365, is fixed: a second Ray on the machine would collide); the workers'
ports stay out of Ray's default range, which the head's own --port may not enter (reference/env_probe.md §8).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pilot_core.processes import free_port

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayHead:
    address: str  # what RAY_ADDRESS takes: 127.0.0.1:PORT
    dashboard: str  # the Jobs API: http://127.0.0.1:PORT
    temp_dir: Path
    token: str

    @property
    def env(self) -> dict[str, str]:
        """What a process that talks to this cluster needs in its environment."""
        return {**LOOPBACK_ENV, "RAY_ADDRESS": self.address, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_head(num_cpus: int = 2) -> RayHead:
    # short: Ray's socket paths live under it (a Unix socket path holds 107 characters)
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, dash, token = free_port(), free_port(), secrets.token_hex(32)
    ports = {f"--{name}": str(free_port()) for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port",
        "ray-client-server-port", "object-manager-port", "node-manager-port")}
    cmd = [ray_bin(), "start", "--head", "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--min-worker-port", "20000", "--max-worker-port", "20400",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(temp),
           "--disable-usage-stats", *[x for kv in ports.items() for x in kv]]
    env = {**os.environ, **LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)
    return RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", temp, token)


def head_pids(head: RayHead) -> list[int]:
    """The processes of this head: every one of them names its temp dir (its session directory) on its command line,
    or has its environment's token."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            env = (proc / "environ").read_bytes()
        except OSError:
            continue
        if str(head.temp_dir).encode() in cmd or f"RAY_AUTH_TOKEN={head.token}".encode() in env.split(b"\0"):
            pids.append(int(proc.name))
    return pids


def stop_head(head: RayHead) -> None:
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = head_pids(head)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while head_pids(head) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
