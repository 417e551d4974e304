"""lm-evaluation-harness for the harness tests, in a virtual environment of its own (the project's stays clean).

Built once under ~/.cache/pilot (or $PILOT_LM_EVAL_VENV) from the local package index: `lm_eval[api]` pinned, on
top of this environment's packages (a .pth file makes torch, transformers, datasets ... visible to it, so only
lm-eval's own dependencies are installed there, ~30 s)."""

from __future__ import annotations

import fcntl
import os
import site
import subprocess
import sys
import threading
from pathlib import Path

LM_EVAL_SPEC = "lm_eval[api]==0.4.13"
DEFAULT_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pilot" / "lm-eval-0.4.13"


def lm_eval_venv() -> Path:
    """The venv (built if missing); its bin/lm_eval runs lm-eval."""
    venv = Path(os.environ.get("PILOT_LM_EVAL_VENV", DEFAULT_VENV))
    ready = venv / ".pilot-ready"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time
        if not ready.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        py = venv / "bin" / "python"
        ver = subprocess.run([str(py), "-c", "import sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}')"],
                             capture_output=True, text=True, check=True).stdout.strip()
        # this checkout's packages under lm-eval's (rewritten each time: the checkout may have moved)
        (venv / "lib" / f"python{ver}" / "site-packages" / "pilot-main.pth").write_text(
            "\n".join(site.getsitepackages()) + "\n")
        if not ready.exists():
            subprocess.run([str(py), "-m", "pip", "install", "--quiet", LM_EVAL_SPEC], check=True,
                           capture_output=True)
            ready.touch()
    return venv


_EARLY: dict = {}


def start_building() -> None:
    """Build it in the background (the tests before the first that needs it overlap the install)."""
    def build():
        try:
            _EARLY["venv"] = lm_eval_venv()
        except Exception as e:  # noqa: BLE001 - the fixture builds again and reports why
            _EARLY["error"] = e

    _EARLY["thread"] = threading.Thread(target=build, daemon=True)
    _EARLY["thread"].start()


def lm_eval_bin() -> Path:
    if "thread" in _EARLY:
        _EARLY["thread"].join()
    return (_EARLY.get("venv") or lm_eval_venv()) / "bin" / "lm_eval"
