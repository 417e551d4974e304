"""A real local Ray cluster for the tests: `ray start --head` on loopback, 2 CPUs, stopped at the end.

Ray turns 127.0.0.1 into the machine's routable address on Linux ("so other nodes can reach it") and binds its
GCS and raylet to every interface; RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes it treat this as a one-machine cluster
and keep every server on loopback (ray/_private/services.py, get_node_ip_address). The workers' ports stay out of
Ray's default range, which the head's own --port may not enter (reference/env_probe.md §8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from wsd_inference.server_process import free_port

LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclass
class RayHead:
    address: str  # what RAY_ADDRESS takes: 127.0.0.1:PORT
    dashboard: str  # the Jobs API: http://127.0.0.1:PORT
    temp_dir: Path

    @property
    def env(self) -> dict[str, str]:
        """What a process that talks to this cluster needs in its environment."""
        return {**LOOPBACK_ENV, "RAY_ADDRESS": self.address}


def ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def start_head(num_cpus: int = 2) -> RayHead:
    # short: Ray's socket paths live under it (a Unix socket path holds 107 characters)
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port, dash = free_port(), free_port()
    cmd = [ray_bin(), "start", "--head", "--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1",
           "--port", str(port), "--min-worker-port", "20000", "--max-worker-port", "20400",
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--temp-dir", str(temp),
           "--disable-usage-stats"]
    subprocess.run(cmd, check=True, env={**os.environ, **LOOPBACK_ENV}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE, timeout=120)
    return RayHead(f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}", temp)


def stop_head(head: RayHead) -> None:
    subprocess.run([ray_bin(), "stop", "--force"], env={**os.environ, **LOOPBACK_ENV}, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
