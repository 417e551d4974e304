"""Faulty servers over real HTTP: WSD and validation run through a fault-injecting proxy (tests/fault_proxy.py)
in front of real vLLM servers, with an API key. Every run ends with exactly the outputs of a run against the
healthy servers, the servers saw the key, and no file the runs wrote holds it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from . import figures
from .fault_proxy import FaultProxy
from .helpers import RECS, REPO, checkpoint, files_holding, stable

pytestmark = [pytest.mark.slow, pytest.mark.integration]
KEY = "sk-pilot-faults-0123456789abcdef"
RATE = 0.3  # of attempts; at most 2 faults in a row for one request (the client retries up to 5 times)


def _env() -> dict:
    return {**os.environ, "PILOT_TEST_KEY": KEY}


def without(record: dict, *keys: str) -> dict:
    return {k: v for k, v in record.items() if k not in keys}


def jsonl(path: Path) -> list[dict]:
    return [stable(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]





def proxies(vllm_servers, *names):
    return {n: FaultProxy(vllm_servers[n].url.removesuffix("/v1"), RATE, hang_s=5.0, seed=i)
            for i, n in enumerate(names)}


def _finish(proxy_list) -> None:
    for p in proxy_list:
        p.stop()
        figures.add_proxy(p)
    figures.COUNTS["faulty_runs"] += 1
    seen = set().union(*(p.auth for p in proxy_list))
    assert seen == {f"Bearer {KEY}"}  # the key went to the servers, and only as the Authorization header
    figures.COUNTS["key_sent"] += 1


def test_wsd_cli_through_faulty_servers_equals_a_healthy_run(vllm_servers, pair_same, tmp_path):
    """`pilot wsd generate` with the pilot and the base both served, sampling with seeds: 500s, 429s, hangs,
    dropped connections and cut-short bodies (streamed drafts included) change nothing in the output."""
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"{rep}-{r.id}", "messages": list(r.messages)}) + "\n"
                               for rep in range(2) for r in RECS))
    common = ["--input", str(prompts), "--max-draft-tokens", "16", "--max-new-tokens", "24", "--window", "3",
              "--threshold", "0.05", "--temperature", "0.8", "--seed", "3", "--chunk-size", "4",
              "--pilot-model", "pilot", "--base-model", "base-same", "--base-tokenizer", str(pair_same[1]),
              "--api-key-env", "PILOT_TEST_KEY", "--timeout-s", "3", "--max-retries", "5"]
    cli = [sys.executable, "-m", "flows.cli", "wsd", "generate"]

    def run(pilot_url, base_url, out):
        r = subprocess.run([*cli, "--pilot", pilot_url, "--base", base_url, *common, "--output", str(out)],
                           cwd=REPO, capture_output=True, text=True, env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
        return jsonl(out)

    healthy = run(vllm_servers["pilot"].url, vllm_servers["base-same"].url, tmp_path / "healthy.jsonl")
    px = proxies(vllm_servers, "pilot", "base-same")
    for p in px.values():
        p.start()
    try:
        faulty = run(px["pilot"].url, px["base-same"].url, tmp_path / "faulty.jsonl")
    finally:
        _finish(px.values())
    # pilot_tokens counts the draft tokens read before the switch check stopped the stream. A busy vLLM merges
    # several tokens into one chunk, so a check can come a few tokens late: the decision is the same (the base
    # scores a longer prefix of the same draft), the count is not. It stays within the draft budget.
    for r in faulty + healthy:
        assert r["pilot_tokens"] <= 16, r
    assert [without(r, "pilot_tokens") for r in faulty] == [without(r, "pilot_tokens") for r in healthy]
    figures.COUNTS["fault_outputs_equal"] += 1
    injected = sum((p.faults for p in px.values()), start=type(px["pilot"].faults)())
    assert set(injected) == {"500", "429", "timeout", "drop", "garbage"}, injected  # every kind happened
    assert px["pilot"].faults and px["base-same"].faults
    assert files_holding(KEY, tmp_path) == []


@pytest.mark.parametrize("kind,error", [("garbage", "ended before the server finished it"),
                                        ("drop", "broke part-way")])
def test_a_pilot_stream_cut_short_is_an_error_not_a_finished_draft(vllm_servers, kind, error):
    """A streamed draft whose body stops early at an event boundary ends cleanly for the openai client; taken as
    finished, WSD would score a truncated draft (the CI run that found this differed in pilot_tokens only by
    luck). A connection that dies mid-stream the client reports as its own APIConnectionError/APITimeoutError,
    which once escaped as a traceback (a CI run on 2026-11-28). stream_chat raises a broken stream for both, and
    the same request again streams what the server answers directly."""
    import asyncio

    from pilot_core.models.openai_server import OpenAIServer, StreamCutShort, malformed_errors

    assert issubclass(StreamCutShort, malformed_errors())  # so the caller restarts the prompt
    messages = [{"role": "user", "content": "Tell me about the weather."}]
    px = FaultProxy(vllm_servers["pilot"].url.removesuffix("/v1"), 1.0, kinds=(kind,), burst=1).start()

    async def draft(url):
        s = OpenAIServer(url, "pilot", max_retries=0, timeout=5.0)
        try:
            return "".join([d async for d, _, _ in s.stream_chat(messages, 16, 0.0, 1.0, None)])
        finally:
            await s.close()

    try:
        with pytest.raises(StreamCutShort, match=error):
            asyncio.run(draft(px.url))
        assert asyncio.run(draft(px.url)) == asyncio.run(draft(vllm_servers["pilot"].url)) != ""
    finally:
        px.stop()
        figures.add_proxy(px)
    assert px.faults == {kind: 1}


def test_validate_through_faulty_servers_equals_a_healthy_run(vllm_servers, pair_same, pair_different, tmp_path):
    """`pilot validate` with both bases and the LLM judges served: the same items, metrics and report."""
    ckpt = checkpoint(tmp_path, {"pilot": pair_same[0]})
    served = lambda name, url, tok=None: {  # noqa: E731
        "name": name, "url": url, "served_model": name, "api_key_env": "PILOT_TEST_KEY", "timeout_s": 3,
        "max_retries": 5, **({"tokenizer": str(tok)} if tok else {})}
    client = {"max_retries": 5, "timeout_s": 3, "concurrency": 4}

    def config(urls: dict, name: str) -> Path:
        cfg = {"name": "faults", "output_dir": str(tmp_path / "unused"),
               "bases": [served("base-same", urls["base-same"], pair_same[1]),
                         served("base-different", urls["base-different"], pair_different[1])],
               "methods": ["wsd", "base_only"],
               "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "limit": 4,
                              "path": str(REPO / "data/demo/eval/harmful.v1.jsonl")},
                             {"name": "math", "version": "v1", "kind": "math", "limit": 3,
                              "path": str(REPO / "data/demo/eval/math.v1.jsonl")}],
               "metrics": {"win_rate": {"kind": "llm", "model": served("pilot", urls["pilot"]), "max_tokens": 24,
                                        "client": client},
                           "harmlessness": {"kind": "llm", "model": served("pilot", urls["pilot"]),
                                            "max_tokens": 24, "client": client},
                           "bootstrap_samples": 200},
               "wsd": {"max_draft_tokens": 16, "max_new_tokens": 24, "window": 4, "temperature": 0.8}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def run(urls, name):
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--config", str(config(urls, name)),
                            "--checkpoint", str(ckpt), "--output", str(out)], cwd=REPO, capture_output=True,
                           text=True, env=_env())
        assert r.returncode == 0, r.stderr[-3000:]
        report = json.loads((out / "report.json").read_text())
        return out, jsonl(out / "items.jsonl"), stable({k: report[k] for k in ("metrics", "alignment_tax")})

    names = ("pilot", "base-same", "base-different")
    healthy_dir, items, report = run({n: vllm_servers[n].url for n in names}, "healthy")
    px = proxies(vllm_servers, *names)
    for p in px.values():
        p.start()
    try:
        faulty_dir, f_items, f_report = run({n: p.url for n, p in px.items()}, "faulty")
    finally:
        _finish(px.values())
    assert f_items == items and f_report == report
    figures.COUNTS["fault_outputs_equal"] += 1
    assert all(p.faults for p in px.values())  # the bases and the judge each met faults
    assert files_holding(KEY, tmp_path) == []


def test_a_pipeline_run_through_faulty_servers_writes_no_key(prefect_api, vllm_servers, pair_same, pair_different,
                                                             tmp_path, monkeypatch):
    """`pilot run` (reduced demo) with both bases and a preference generator served behind faulty proxies and an
    API key: the run passes, the servers saw the key, and no file it wrote (outputs, registry, caches, Prefect's
    home and database, its own log) holds the key."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from .helpers import finish, pilot_run, small

    monkeypatch.setenv("PILOT_TEST_KEY", KEY)
    px = proxies(vllm_servers, "pilot", "base-same", "base-different")
    for p in px.values():
        p.rate = 0.1  # hundreds of requests; a tenth of their attempts fail
        p.start()
    served = lambda name, tok=None: {  # noqa: E731
        "name": name, "url": px[name].url, "served_model": name, "api_key_env": "PILOT_TEST_KEY", "timeout_s": 3,
        **({"tokenizer": str(tok)} if tok else {})}
    out = tmp_path / "run"
    overrides = small(out) + [
        "bases=" + json.dumps([served("base-same", pair_same[1]), served("base-different", pair_different[1])]),
        "preferences.generators.0=" + json.dumps({"name": "served", "model": served("pilot"), "temperature": 0.7,
                                                  "max_tokens": 40}),
        "preferences.client.timeout_s=3"]
    try:
        run = pilot_run(overrides, prefect_api)
        stdout, stderr = finish(run)
    finally:
        _finish(px.values())
    assert run.returncode == 0, stderr[-3000:]
    assert all(p.faults for p in px.values())
    (tmp_path / "pilot-run.log").write_text(stdout + stderr)
    db = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[-1])  # the harness's database
    assert db.is_file(), db
    roots = [tmp_path, Path(os.environ["PREFECT_HOME"]), Path(os.environ["PILOT_CACHE_DIR"]), db.parent]
    assert files_holding(KEY, *roots) == []


def test_an_item_the_base_cannot_run_is_recorded_counted_and_gated(vllm_servers, pair_same, tmp_path):
    """A prompt longer than the served base's context gets a real 400 from vLLM: validation records the item
    (no answer, its error), counts it as the worst outcome and as failed, and goes on with the others; the gate
    fails where more items failed than its limit allows."""
    ckpt = checkpoint(tmp_path, {"pilot": pair_same[0]})
    harmful = [json.loads(x) for x in (REPO / "data/demo/eval/harmful.v1.jsonl").read_text().splitlines()[:3]]
    long = {**harmful[0], "id": "too-long", "prompt": "Tell me a story about " + "a very long road " * 1200}
    data = tmp_path / "harmful.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in [*harmful, long]))
    base = {"name": "base-same", "url": vllm_servers["base-same"].url, "served_model": "base-same",
            "tokenizer": str(pair_same[1])}
    cfg = {"name": "failures", "output_dir": str(tmp_path / "unused"), "bases": [base], "methods": ["wsd", "base_only"],
           "eval_sets": [{"name": "harmful", "version": "v1", "kind": "harmful", "path": str(data)}],
           "metrics": {"harmlessness": {"kind": "refusal_rules"}, "bootstrap_samples": 100},
           "wsd": {"max_draft_tokens": 16, "max_new_tokens": 24, "window": 4}}
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "report"
    r = subprocess.run([sys.executable, "-m", "flows.cli", "validate", "--config", str(tmp_path / "v.yaml"),
                        "--checkpoint", str(ckpt), "--output", str(out)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    for method in ("wsd", "base_only"):
        d = report["diagnostics"]["base-same"][method]["harmful"]
        assert (d["n"], d["failed"]) == (4, 1), d
        stat = report["metrics"]["base-same"][method]["harmful"]["harmlessness"]
        assert (stat["n"], stat["items"]) == (4, 4)  # the failed one is in the mean as unsafe
        rows = {x["id"]: x for x in jsonl(out / "items.jsonl") if x["method"] == method}
        assert rows["too-long"]["safe"] == 0.0 and "400" in rows["too-long"]["error"]
        assert stat["mean"] == pytest.approx(sum(x["safe"] for x in rows.values()) / 4)
    assert "| base-same | wsd | harmful | 1 of 4 |" in (out / "report.md").read_text()
    for limit, code in ((0.1, 1), (0.3, 0)):
        gate = {"name": "failures", "registry": str(tmp_path / "registry"),
                "gate": {"method": "wsd", "metrics": {"harmlessness": {"floor": 0.0}}, "max_failure_rate": limit}}
        (tmp_path / "g.yaml").write_text(yaml.safe_dump(gate))
        r = subprocess.run([sys.executable, "-m", "flows.cli", "release", "gate", "--config", str(tmp_path / "g.yaml"),
                            "--report", str(out)], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == code, (r.stdout, r.stderr)
        assert "base-same/harmful: wsd failed on 1 of 4 items (25.0%)" in r.stdout + r.stderr
