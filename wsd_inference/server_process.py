"""`pilot wsd serve` as a child process on a free loopback port, for whatever points a client at it (validation's
harness runs, the benchmarks, the tests): started, waited for until healthy, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pilot_core.errors import UserError
from pilot_core.processes import die_with_parent, free_port


class WSDServer:
    """`pilot wsd serve <args>` on 127.0.0.1:<free port>; `url` is its OpenAI base URL (…/v1)."""

    def __init__(self, args: list[str], env: dict | None = None, startup_s: float = 300.0, log_dir=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.args, self.env, self.startup_s = args, env, startup_s
        fd, name = tempfile.mkstemp(prefix="pilot-wsd-serve-", suffix=".log", dir=log_dir)
        os.close(fd)
        self.log = Path(name)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "WSDServer":
        cmd = [sys.executable, "-m", "flows.cli", "wsd", "serve", *self.args, "--port", str(self.port),
               "--log-level", "warning"]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise UserError(f"the WSD server did not start (exit {self.proc.returncode}): " + " | ".join(tail))
            try:
                self.health()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise UserError(f"the WSD server was not healthy within {self.startup_s:g} s (log: {self.log})")

    def health(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (requests in flight finish), then SIGKILL if it does not end in time; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc and self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def __enter__(self) -> "WSDServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
