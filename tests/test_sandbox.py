"""Untrusted code cannot reach out (evaluation/sandbox.py): a corpus of hostile programs, each run through
`run_program` as validation runs a model's HumanEval solution. After each one: nothing outside changed (files
beside the canary, their modes, a file in a stand-in home directory), no connection reached a listening TCP or
Unix socket here, a process outside is still alive, no process of the sandbox is left, and neither secret planted
in this process (an API key in its environment, a marker in a file) came back in the outcome.

Half the corpus first disarms the audit hook, the second layer (rewriting its module variables found through the
garbage collector, or skipping `subprocess`'s audit call), so the kernel boundary is what stops them. Where
bubblewrap cannot be set up the programs are refused, never run unconfined (the refusal tests at the end)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from evaluation import sandbox
from evaluation.sandbox import SandboxUnavailable, isolation, run_program
from pilot_core.credentials import scrub

ROOT = Path(__file__).resolve().parents[1]
try:
    isolation()
    CONFINED = True
except SandboxUnavailable:
    CONFINED = False
needs_bwrap = pytest.mark.skipif(not CONFINED, reason="bubblewrap cannot be set up here (make sandbox installs it)")

# Disarms the audit hook from inside: its module variables are reachable through the garbage collector.
DISARM = '''
import gc
for _o in gc.get_objects():
    if isinstance(_o, dict) and "BLOCKED" in _o and "inside" in _o:
        _o["BLOCKED"] = ("\\0never",); _o["PATHS"] = dict(); _o["inside"] = lambda p: True
'''
# Skips subprocess's audit event: Popen's own `sys.audit` call, made on a stand-in module.
UNAUDITED = '''
import subprocess, sys
class _Sys:
    def __getattr__(self, k): return getattr(sys, k)
    def audit(self, *a): pass
subprocess.sys = _Sys()
'''

# Each program ends in `raise SystemExit('LEAKED ...')` where its attack got through without raising; what it
# would change outside (files, connections, processes) is observed from outside.
CORPUS = {
    # files outside the working directory
    "write": "open({canary!r}, 'w').write('pwned')",
    "write, hook disarmed": DISARM + "open({canary!r}, 'w').write('pwned')",
    "append, hook disarmed": DISARM + "open({canary!r}, 'a').write('pwned')",
    "create beside, hook disarmed": DISARM + "open({outside!r} + '/new.txt', 'w').write('pwned')",
    "dir_fd write": "import os\nfd = os.open({outside!r}, os.O_RDONLY)\n"
                    "os.write(os.open('new.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd), b'pwned')",
    "dir_fd remove": "import os\nfd = os.open({outside!r}, os.O_RDONLY)\nos.unlink('canary.txt', dir_fd=fd)",
    "dir_fd rename": "import os\nfd = os.open({outside!r}, os.O_RDONLY)\n"
                     "os.rename('canary.txt', 'moved.txt', src_dir_fd=fd, dst_dir_fd=fd)",
    "remove, hook disarmed": DISARM + "import os\nos.remove({canary!r})",
    "chmod, hook disarmed": DISARM + "import os\nos.chmod({canary!r}, 0o777)",
    "symlink out": "import os\nos.symlink({canary!r}, 'link')\nopen('link', 'w').write('pwned')",
    "symlink out, hook disarmed": DISARM + "import os\nos.symlink({canary!r}, 'link')\nopen('link', 'w').write('x')",
    "fill the disk": DISARM + "for i in range(100):\n    open(f'f{{i}}', 'wb').write(b'x' * (15 << 20))\n"
                     "raise SystemExit('LEAKED 1.5 GB written')",
    "fill the root and /dev, hook disarmed": DISARM + "import os\nfor d in ('/', '/dev', '/dev/shm', '/tmp'):\n"
                                             "    try:\n        open(os.path.join(d, 'x'), 'wb').write(b'x' * 4096)"
                                             "\n    except OSError:\n        continue\n"
                                             "    raise SystemExit('LEAKED wrote to ' + d)",
    # secrets: the evaluating process's environment, a home directory, the checkout, the host's files
    "the evaluator's environ": "env = []\nfor pid in ({ppid}, {victim}):\n"
                               "    env += open(f'/proc/{{pid}}/environ').read().split(chr(0))\n"
                               "raise SystemExit('LEAKED ' + repr([x for x in env if x.startswith('PILOT_TEST_')]))",
    "every environ": "import os\nout = []\nfor p in os.listdir('/proc'):\n    try:\n"
                     "        out += open(f'/proc/{{p}}/environ').read().split(chr(0))\n    except Exception:\n"
                     "        pass\nfound = [x for x in out + list(os.environ) if x.startswith('PILOT_TEST_')]\n"
                     "if found:\n    raise SystemExit('LEAKED ' + repr(found))",
    "home file": "raise SystemExit('LEAKED ' + open({secret_file!r}).read())",
    "home file, hook disarmed": DISARM + "raise SystemExit('LEAKED ' + open({secret_file!r}).read())",
    "checkout": "raise SystemExit('LEAKED ' + repr(open({checkout!r} + '/pyproject.toml').read()[:100]))",
    "import the checkout": "import sys\nsys.path.insert(0, {checkout!r})\nimport pilot_core.credentials\n"
                           "raise SystemExit('LEAKED imported')",
    "host passwd": "raise SystemExit('LEAKED ' + repr(open('/etc/passwd').read()[:100]))",
    # reaching out
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
              "raise SystemExit('LEAKED connected')",
    "socket, hook disarmed": DISARM + "import socket\ns = socket.socket()\ns.settimeout(2)\n"
                             "s.connect(('127.0.0.1', {port}))\nraise SystemExit('LEAKED connected')",
    "unix socket, hook disarmed": DISARM + "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix!r})\n"
                                  "raise SystemExit('LEAKED connected')",
    "dns, hook disarmed": DISARM + "import socket\nsocket.getaddrinfo('example.com', 80)\n"
                          "raise SystemExit('LEAKED resolved')",
    # processes
    "shell": "import subprocess\nsubprocess.run(['sh', '-c', 'echo pwned > {canary}'])\n"
             "raise SystemExit('LEAKED ran a shell')",
    "internal spawn primitive": UNAUDITED + "subprocess.run(['/bin/sh', '-c', 'echo pwned > {canary}'])\n"
                                "raise SystemExit('LEAKED ran a shell')",
    "python child without the hook": UNAUDITED + "import sys\nsubprocess.run([sys.executable, '-c', "
                                     "\"open({canary!r}, 'w').write('pwned'); import socket; "
                                     "socket.create_connection(('127.0.0.1', {port}), 2)\"], check=True)\n"
                                     "raise SystemExit('LEAKED child ran')",
    "ctypes system, hook disarmed": DISARM + "import ctypes\n"
                                    "assert ctypes.CDLL(None).system(b'echo pwned > {canary}') == 0\n"
                                    "raise SystemExit('LEAKED ran a shell')",
    "kill outside, hook disarmed": DISARM + "import os, signal\nos.kill({victim}, signal.SIGKILL)\n"
                                   "raise SystemExit('LEAKED killed')",
    "orphans outlive it, hook disarmed": DISARM + "import os, time\nfor _ in range(8):\n    if os.fork() == 0:\n"
                                         "        time.sleep(30)\n        open({canary!r}, 'w').write('late')\n"
                                         "        os._exit(0)",
    "fork bomb, hook disarmed": DISARM + "import os, time\nfor _ in range(6):\n    os.fork()\ntime.sleep(60)",
    "new user namespace, hook disarmed": DISARM + "import ctypes\n"
                                         "assert ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0\n"
                                         "raise SystemExit('LEAKED new user namespace')",
}


class World:
    """What lies outside the sandbox: files, a home directory with a secret, listeners, a process."""

    def __init__(self, root: Path):
        self.outside = root / "outside"
        self.outside.mkdir()
        self.canary = self.outside / "canary.txt"
        self.canary.write_text("untouched")
        self.canary.chmod(0o600)
        self.marker = f"marker-{uuid.uuid4().hex[:12]}"  # not credential-shaped: only the boundary keeps it in
        self.key = f"sk-test-{uuid.uuid4().hex}"
        home = root / "home"
        home.mkdir()
        self.secret_file = home / ".netrc"
        self.secret_file.write_text(f"machine api login me password {self.marker}\n")
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen()
        self.unix_path = str(root / "s.sock")
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.unix_path)
        self.unix.listen()
        self.accepted: list = []
        self.threads = [threading.Thread(target=self._accept, args=(s,), daemon=True) for s in (self.tcp, self.unix)]
        for t in self.threads:
            t.start()
        # a process outside with the secrets in its environment (as the evaluating process has its API keys)
        self.victim = subprocess.Popen(["/bin/sleep", "600"], env={"PILOT_TEST_API_KEY": self.key,
                                                                   "PILOT_TEST_MARKER": self.marker})

    def _accept(self, s):
        while True:
            try:
                self.accepted.append(s.accept())
            except OSError:
                return

    def values(self) -> dict:
        return {"canary": str(self.canary), "outside": str(self.outside), "secret_file": str(self.secret_file),
                "checkout": str(ROOT), "port": self.tcp.getsockname()[1], "unix": self.unix_path,
                "ppid": os.getpid(), "victim": self.victim.pid}

    def snapshot(self) -> dict:
        return {p.name: (p.read_bytes(), p.stat().st_mode) for p in sorted(self.outside.iterdir())} | {
            "home": (self.secret_file.read_bytes(), self.secret_file.stat().st_mode)}

    def close(self):
        self.victim.kill()
        self.victim.wait()
        for s in (self.tcp, self.unix):
            s.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("world"))
    yield w
    w.close()


def _sandboxed_processes() -> list[int]:
    """Processes on this machine running the sandbox's bootstrap (none may outlive `run_program`)."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and b"SCRATCH = os.path.realpath" in (p / "cmdline").read_bytes():
                out.append(int(p.name))
        except OSError:
            pass
    return out


@needs_bwrap
@pytest.mark.parametrize("name", list(CORPUS))
def test_a_hostile_program_changes_nothing_outside_and_takes_nothing_back(name, world, monkeypatch):
    monkeypatch.setenv("PILOT_TEST_API_KEY", world.key)  # in the evaluating process's environment
    monkeypatch.setenv("PILOT_TEST_MARKER", world.marker)
    before = world.snapshot()
    program = CORPUS[name].format(**world.values())
    out = run_program(program, timeout_s=3, memory_mb=512)
    time.sleep(0.05)  # a connection or a late write would have landed by now
    assert world.snapshot() == before, name
    assert world.accepted == [], name
    assert world.victim.poll() is None, name
    assert _sandboxed_processes() == [], name
    assert world.key not in out.detail and world.marker not in out.detail, (name, out.detail)
    assert "LEAKED" not in out.detail, (name, out.detail)


@needs_bwrap
def test_the_boundary_holds_where_the_hook_is_gone():
    """With the audit hook disarmed, what stops a program is the kernel: no network, no host files, nobody."""
    probe = DISARM + ("import os, socket\nfacts = [os.getuid(), os.getgid(), sorted(os.listdir('/')), dict(os.environ),"
                      " open('/proc/self/status').read().split('CapEff:')[1].split()[0], socket.gethostname()]\n"
                      "facts.append([name for _, name in socket.if_nameindex()])\n"  # no traffic sent anywhere
                      "open('w.txt', 'w').write('scratch is writable')\n"
                      "raise SystemExit(repr(facts))")
    out = run_program(probe)
    facts = eval(out.detail)  # noqa: S307 - our own probe's repr
    assert facts[:2] == [65534, 65534]  # nobody
    assert set(facts[2]) <= {"scratch", "proc", "dev", "usr", "lib", "lib64", "lib32", "root"}
    assert "home" not in facts[2] and "tmp" not in facts[2] and "etc" not in facts[2]
    assert facts[3] == {} or set(facts[3]) <= {"PWD", "LC_CTYPE"}  # an empty environment (Python adds these)
    assert facts[4] == "0000000000000000"  # no capabilities
    assert facts[5] == "sandbox" and facts[6] == ["lo"]  # an empty network namespace: its own loopback only


@needs_bwrap
def test_what_comes_back_is_capped_and_scrubbed():
    """A program that prints credential-shaped text of its own, or floods its error stream: the outcome keeps
    at most 300 characters of its last line, with the credentials masked."""
    key = "sk-proj-" + "a1B2c3D4" * 6
    out = run_program(f"raise SystemExit('failed with key {key} and hf_{'x' * 30} Bearer abcdefghijklmnop')")
    assert not out.passed and key not in out.detail and "hf_x" not in out.detail
    assert "abcdefghijklmnop" not in out.detail
    assert out.detail.startswith("failed with key [redacted]")
    flood = run_program("import sys\nwhile True:\n    sys.stderr.write('no secret here ' * 1000 + '\\n')", timeout_s=3)
    assert not flood.passed and len(flood.detail) <= sandbox.DETAIL_CHARS


def test_scrub_masks_the_environments_secrets_and_credential_shapes():
    env = {"OPENAI_API_KEY": "plainvalue-not-shaped", "HOME": "/root"}
    assert scrub("key plainvalue-not-shaped in /root", env) == "key [redacted] in /root"
    for text in ("AKIAABCDEFGHIJKLMNOP", "ghp_" + "a" * 36, "xoxb-1234567890-abc", "api_key=abcdef123456",
                 "access_token=abcdef123456", "DB_PASSWORD=hunter2hunter2", "postgres://admin:hunter2pass@db/x",
                 "Authorization: Basic YWRtaW46aHVudGVyMg==", "sk_live_abcdefghijkl12", "glpat-abcdefghijklmnopqrst",
                 "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefghijk", "-----BEGIN RSA PRIVATE KEY-----"):
        assert "[redacted]" in scrub(f"error: {text}", {}), text
    assert scrub("AssertionError: expected 3, got 4", {}) == "AssertionError: expected 3, got 4"


@needs_bwrap
def test_a_secret_in_the_environment_or_a_file_never_reaches_validations_items(tmp_path, monkeypatch):
    """The rows validation writes to items.jsonl: a solution that reads the planted key and file and raises them
    stores only its scrubbed, capped failure."""
    from evaluation.validate import _run_code

    key, marker = f"sk-test-{uuid.uuid4().hex}", f"marker-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("PILOT_TEST_API_KEY", key)
    (tmp_path / "secret.txt").write_text(marker)
    item = type("Item", (), {"answer": {"prompt": "def add(a, b):\n", "entry_point": "add",
                                        "test": "def check(f):\n    assert f(1, 2) == 3\n"}})
    response = ("```python\nimport os\ndef add(a, b):\n    env = open(f'/proc/{os.getppid()}/environ').read() "
                f"if os.path.exists(f'/proc/{os.getppid()}/environ') else ''\n"
                f"    raise SystemExit(env + open({str(tmp_path / 'secret.txt')!r}).read() + {key!r})\n```")
    rows = [{"set": "he", "id": "0", "response": response}]
    _run_code(rows, {("he", "0"): item}, unsafe=False)
    stored = json.dumps(rows[0]["code_status"])
    assert rows[0]["correct"] == 0.0 and key not in stored and marker not in stored


# ------------------------------------------------------------------------------------------ fail closed
def test_without_bubblewrap_code_refuses_and_says_how_to_fix_it(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    with pytest.raises(SandboxUnavailable, match="bubblewrap.*not installed.*apt-get install bubblewrap.*"
                                                 "--unsafe-code-execution"):
        run_program("print(1)")
    assert isolation(unsafe=True).startswith("unsafe: no kernel boundary")
    assert run_program("print(1)", unsafe=True).passed  # opted in: runs with the limits and the hook only


def test_a_bubblewrap_that_cannot_set_up_its_sandbox_refuses(monkeypatch, tmp_path):
    """bwrap present but the kernel refuses its namespaces (as where user namespaces are off): a fault we cannot
    cause on this machine, so a stand-in bwrap fails the way the real one does."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(SandboxUnavailable, match=r"cannot set up its sandbox here \(bwrap: setting up uid map"):
        run_program("print(1)")



def test_validate_refuses_code_benchmarks_before_generating_and_records_an_opt_in(pair_same, tmp_path):
    """`pilot validate` with HumanEval where bwrap is missing: exit 2, one line, no output; with
    --unsafe-code-execution it runs and the report says the programs ran without a kernel boundary."""
    import yaml

    from tests.helpers import PILOT, checkpoint, one_line_error

    he = ROOT / "tests" / "fixtures" / "benchmarks" / "humaneval.jsonl"
    cfg = tmp_path / "validation.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "sandbox", "bases": [{"name": "base", "path": str(pair_same[1])}],
        "eval_sets": [{"name": "humaneval", "version": "fixture", "format": "humaneval", "path": str(he), "limit": 1}],
        "methods": ["base_only"], "wsd": {"max_new_tokens": 8}}))
    ckpt = checkpoint(tmp_path, {"pilot": pair_same[0]})
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no bwrap on it

    def validate(out, *extra):
        return subprocess.run([*PILOT, "validate", "--config", str(cfg), "--checkpoint", str(ckpt), "--output",
                               str(out), *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    line = one_line_error(validate(tmp_path / "refused"))
    assert "bubblewrap" in line and "--unsafe-code-execution" in line
    assert not (tmp_path / "refused").exists()
    r = validate(tmp_path / "opted-in", "--unsafe-code-execution")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "opted-in" / "report.json").read_text())
    assert report["code_execution"].startswith("unsafe: no kernel boundary")
    assert "WITHOUT a kernel boundary" in (tmp_path / "opted-in" / "report.md").read_text()


@needs_bwrap
def test_limits_are_reported_as_such_and_odd_programs_do_not_break_the_run():
    """A program killed at its CPU-time limit is a timeout (bwrap reports 128 + the signal); a program holding a
    lone surrogate fails inside, not in the evaluator."""
    out = run_program("import signal\nsignal.raise_signal(signal.SIGXCPU)", timeout_s=5)
    assert out.status == "timeout" and "CPU-time" in out.detail
    out = run_program("x = '\ud800'\nprint(x)")
    assert not out.passed and out.status == "failed"


def test_unsafe_mode_keeps_its_stderr_and_leaves_nothing_running(monkeypatch, tmp_path):
    """Without the boundary (opted in): a program that swaps its error file for a FIFO cannot hang the evaluator,
    and children it leaves behind die with it."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap
    marker = tmp_path / "late.txt"
    swap = ("import os, sys\nfor d in ('.', '..'):\n    for name in os.listdir(d):\n"
            "        p = os.path.join(d, name)\n        if os.path.isfile(p) and name != 'program.py':\n"
            "            os.remove(p)\n            os.mkfifo(p)\nsys.stderr.write('boom\\n')\nraise SystemExit(3)")
    out = run_program(DISARM + swap, unsafe=True, timeout_s=10)  # hung on reopening its stderr by name before
    assert out.status == "failed" and out.detail == "boom"
    out = run_program(DISARM + "import os, time\nif os.fork() == 0:\n    time.sleep(2)\n"
                      f"    open({str(marker)!r}, 'w').write('late')\n    os._exit(0)\n", unsafe=True)
    assert out.passed
    time.sleep(3)
    assert not marker.exists()  # the child was killed with its group
