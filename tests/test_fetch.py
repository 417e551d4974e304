"""`pilot fetch` and the lock beside a recipe (#40 item 2), against the loopback stand-in of the Hub
(tests/hub_standin.py): every hub item a recipe names is resolved to a commit, downloaded into the hub cache at that
commit and checksummed; runs of the recipe read the lock; a recipe changed since is refused (exit 2, one line);
manifests and the model card carry the commits; `pilot config check` says what the lock pins; after a fetch, runs
read the locked hub datasets (hub ids with subset / data_dir / split, hf:// files with a builder) from the hub cache,
offline and with the hub gone, giving the rows datasets' online load gives."""

import hashlib
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from pilot_core.errors import UserError

from .helpers import PILOT, REPO, one_line_error
from .hub_standin import Hub

TOKEN = "hf_fetch_secret_8c1d"
MODEL = {"config.json": b'{"model_type": "llama", "vocab_size": 8}', "tokenizer.json": b'{"version": "1.0"}',
         "tokenizer_config.json": b'{"model_max_length": 64}', "model.safetensors": os.urandom(4096)}
BASE = {"config.json": b'{"model_type": "gemma"}', "tokenizer.json": b'{"version": "1.0", "base": true}',
        "tokenizer.model": b"spm", "model-00001-of-00002.safetensors": os.urandom(8192)}
DATA = {"data/train.jsonl": b'{"id": "1", "prompt": "How do I fix a leaking tap?"}\n',
        "extra.jsonl": b'{"id": "2", "prompt": "What is 7 times 9?"}\n', "README.md": b"# prompts\n"}

MULTI = {"README.md": b"""---
configs:
- config_name: a
  data_files:
  - {split: train, path: a/train.jsonl}
- config_name: b
  data_files:
  - {split: test, path: "b/*.jsonl"}
  - {split: train, path: b/train/*.jsonl}
---
# two subsets
""", "a/train.jsonl": b'{"id": "a1", "prompt": "Name a river in Africa."}\n',
         "b/one.jsonl": b'{"id": "b1", "prompt": "Explain how tides work."}\n',
         "b/two.jsonl": b'{"id": "b2", "prompt": "Write a haiku about autumn rain."}\n'
                        b'{"id": "b3", "prompt": "Summarise the plot of Hamlet in two sentences."}\n',
         "b/train/0.jsonl": b'{"id": "b4", "prompt": "Another split, not read here."}\n'}
BASELINE = [{"instruction": "Give three tips for staying healthy.", "output": "Eat well.",
             "generator": "gpt4_1106_preview", "dataset": "helpful_base"},
            {"instruction": "What is the capital of France?", "output": "Paris.", "generator": "gpt4_1106_preview",
             "dataset": "oasst"}]
ALPACA_EVAL = {"alpaca_eval_gpt4_baseline.json": json.dumps(BASELINE).encode(), "README.md": b"# alpaca_eval\n",
               "df_gamed.csv": b"unused,here\n1,2\n"}
ALPACA_URL = "hf://datasets/tatsu-lab/alpaca_eval@main/alpaca_eval_gpt4_baseline.json"
# curation sources of every shape a recipe reads from the hub: a subset (a glob of files per split), a data_dir, an
# hf:// file of a fetched repository, and an hf:// file (a JSON list) of one fetched for that file only
HUB_SOURCES = [{"name": "sub", "kind": "hf", "path": "org/multi", "subset": "b", "split": "test"},
               {"name": "dir", "kind": "hf", "path": "org/prompts", "data_dir": "data", "split": "train"},
               {"name": "file", "kind": "hf", "path": "json", "split": "train",
                "data_files": {"train": ["hf://datasets/org/prompts@main/extra.jsonl"]}},
               {"name": "evals", "kind": "hf", "path": "json", "split": "train", "data_files": ALPACA_URL,
                "columns": {"id": None, "prompt": "instruction"}}]


def _recipe(tmp_path, **changes) -> str:
    """A pipeline recipe naming a hub model (the pilot), a served base's hub tokenizer, a hub dataset (a curation
    source) and one file of it by an hf:// URL, all at `main` (the revision left out: the default branch)."""
    cfg = {"name": "locked", "prompts": "prompts.jsonl",
           "pilot": {"name": "pilot", "path": "org/tiny-model", "revision": "main"},
           "bases": [{"name": "big", "url": "http://127.0.0.1:9/v1", "served_model": "big",
                      "tokenizer": "org/base-model"}],
           "curation": {"name": "c", "sources": [
               {"name": "hub", "kind": "hf", "path": "org/prompts", "split": "train", "revision": "main"},
               {"name": "file", "kind": "hf", "path": "json", "split": "train",
                "data_files": "hf://datasets/org/prompts@main/extra.jsonl"}]}}
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    path = tmp_path / "configs" / "pipeline" / "locked.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


@pytest.fixture
def hub():
    h = Hub()
    h.commits = {"model": h.add("model", "org/tiny-model", MODEL), "base": h.add("model", "org/base-model", BASE),
                 "data": h.add("dataset", "org/prompts", DATA), "multi": h.add("dataset", "org/multi", MULTI),
                 "alpaca": h.add("dataset", "tatsu-lab/alpaca_eval", ALPACA_EVAL)}
    yield h
    h.server.shutdown()


def _env(tmp_path, endpoint: str, **extra) -> dict:
    """The child's environment: online against `endpoint` (the offline switches the suite sets are left out here
    only), its own hub cache, the token in HF_TOKEN."""
    drop = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_CACHE", "HF_HOME", "HF_TOKEN")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "HF_TOKEN": TOKEN, **extra}


def _pilot(*args, env):
    return subprocess.run([*PILOT, *args], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)


def _fetch(tmp_path, hub, recipe, **extra):
    return _pilot("fetch", "--config", recipe, env=_env(tmp_path, hub.url, **extra))


def test_fetch_locks_every_hub_item_at_its_commit_with_checksums(tmp_path, hub):
    recipe = _recipe(tmp_path)
    r = _fetch(tmp_path, hub, recipe)
    assert r.returncode == 0, r.stderr
    lock_file = tmp_path / "configs" / "pipeline" / "locked.lock.json"
    assert f"wrote {lock_file}" in r.stdout
    lock = json.loads(lock_file.read_text())
    items = {(e["kind"], e["repo"]): e for e in lock["items"]}
    assert set(items) == {("model", "org/tiny-model"), ("model", "org/base-model"), ("dataset", "org/prompts")}
    assert lock["endpoint"] == hub.url and lock["recipe"] == "locked.yaml"
    for (kind, repo), files, commit in ((("model", "org/tiny-model"), MODEL, hub.commits["model"]),
                                        (("dataset", "org/prompts"), DATA, hub.commits["data"])):
        e = items[(kind, repo)]
        assert e["revision"] == "main" and e["sha"] == commit and e["patterns"] is None
        assert e["files"] == {p: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for p, b in files.items()}
    assert items[("dataset", "org/prompts")]["keys"] == ["curation.sources.0.path", "curation.sources.1.data_files"]
    # a served base: only its tokenizer is read here, so only the tokenizer's files are fetched, not the weights
    base = items[("model", "org/base-model")]
    assert base["sha"] == hub.commits["base"] and base["revision"] == "main"
    assert set(base["files"]) == {"config.json", "tokenizer.json", "tokenizer.model"}
    # in the normal hub cache, at the commit
    snap = tmp_path / "hf" / "hub" / "models--org--tiny-model" / "snapshots" / hub.commits["model"]
    assert {p: (snap / p).read_bytes() for p in MODEL} == MODEL
    assert not list((tmp_path / "hf" / "hub").rglob("model-00001-of-00002.safetensors"))
    # the token from HF_TOKEN was sent, and is written nowhere
    assert {auth for path, auth in hub.read_auth if "/org/" in path} == {f"Bearer {TOKEN}"}
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


def test_runs_read_the_lock_and_a_changed_recipe_is_refused(tmp_path, hub):
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config
    from pilot_core.manifest import Manifest

    recipe = _recipe(tmp_path)
    assert _fetch(tmp_path, hub, recipe).returncode == 0
    old = hub.commits
    hub.add("model", "org/tiny-model", {**MODEL, "config.json": b'{"model_type": "llama", "moved": 1}'})  # main moves
    cfg = load_config(PipelineConfig, recipe)
    assert cfg.pilot.revision == old["model"] and cfg.bases[0].revision == old["base"]
    src = cfg.curation.sources
    assert src[0].revision == old["data"]
    assert src[1].data_files == f"hf://datasets/org/prompts@{old['data']}/extra.jsonl"
    raw = load_config(PipelineConfig, recipe, lock=False)  # the recipe as written (what fetch resolves)
    assert raw.pilot.revision == "main" and src[1].data_files != raw.curation.sources[1].data_files
    # what a stage's manifest records, from its config: repo -> the commit read
    assert Manifest(kind="dataset", config=cfg.model_dump(mode="json")).hub == {
        "org/base-model": old["base"], "org/prompts": old["data"], "org/tiny-model": old["model"]}
    assert Manifest(kind="dataset", config=raw.model_dump(mode="json")).hub == {}

    # the recipe's revision changed since the lock was written: one line, exit 2, before anything runs
    _recipe(tmp_path, **{"pilot.revision": "v2"})
    with pytest.raises(UserError, match=r"pilot\.path: org/tiny-model@v2 is not locked .* run `pilot fetch"):
        load_config(PipelineConfig, recipe)
    out = tmp_path / "runs"
    line = one_line_error(_pilot("run", "--config", recipe, "--set", f"output_dir={out}",
                                 env=_env(tmp_path, "http://127.0.0.1:9")))
    assert "locked.lock.json does not match" in line and "pilot.path" in line and "pilot fetch --config" in line
    assert not out.exists()
    # an item added since: the same
    _recipe(tmp_path, **{"curation.sources": [
        {"name": "hub", "kind": "hf", "path": "org/prompts", "split": "train", "revision": "main"},
        {"name": "new", "kind": "hf", "path": "org/other", "split": "train"}]})
    line = one_line_error(_pilot("config", "show", "--config", recipe, env=_env(tmp_path, "http://127.0.0.1:9")))
    assert "curation.sources.1.path: org/other@main is not locked" in line
    # a removed item leaves the rest locked
    _recipe(tmp_path, **{"curation": None})
    assert load_config(PipelineConfig, recipe).pilot.revision == old["model"]


def test_config_check_says_what_the_lock_pins(tmp_path, hub):
    recipe = _recipe(tmp_path)
    env = _env(tmp_path, "http://127.0.0.1:9", HF_HUB_OFFLINE="1")
    r = _pilot("config", "check", recipe, env=env)
    assert "pilot.path: fetch hub model org/tiny-model@main (a moving revision: pin a commit)" in r.stdout
    assert _fetch(tmp_path, hub, recipe).returncode == 0
    r = _pilot("config", "check", recipe, env=env)
    lines = [x for x in r.stdout.splitlines() if "pinned to" in x]
    assert len(lines) == 4 and "moving" not in r.stdout, r.stdout
    assert (f"pilot.path: hub model org/tiny-model@main pinned to {hub.commits['model']} by locked.lock.json "
            "(in the cache here)") in r.stdout
    assert f"curation.sources.1.data_files: hub file org/prompts@main extra.jsonl pinned to {hub.commits['data']}" \
        in r.stdout
    r = _pilot("config", "check", recipe, env={**env, "HF_HOME": str(tmp_path / "elsewhere")})
    assert r.stdout.count("not in the cache here: run `pilot fetch`") == 4
    _recipe(tmp_path, **{"pilot.revision": "v2"})
    r = _pilot("config", "check", recipe, env=env)
    assert r.returncode == 2 and "lock: " in r.stderr and "org/tiny-model@v2 is not locked" in r.stderr


def test_fetch_exit_codes(tmp_path, hub):
    lock_file = tmp_path / "configs" / "pipeline" / "locked.lock.json"
    # offline: says what must be fetched, touches no network, writes nothing
    r = _pilot("fetch", "--config", _recipe(tmp_path), env=_env(tmp_path, hub.url, HF_HUB_OFFLINE="1"))
    line = one_line_error(r)
    assert "offline" in line and "3 hub item(s)" in line
    assert "model org/tiny-model@main" in line and "dataset org/prompts@main" in line
    assert hub.log == [] and not lock_file.exists()
    # a revision the hub does not have; a repository it does not have: bad input
    line = one_line_error(_fetch(tmp_path, hub, _recipe(tmp_path, **{"pilot.revision": "nope"})))
    assert "pilot.path: model org/tiny-model@nope: the hub has no revision 'nope'" in line
    line = one_line_error(_fetch(tmp_path, hub, _recipe(tmp_path, **{"pilot.path": "org/missing"})))
    assert "pilot.path: model org/missing@main: no such repository" in line
    line = one_line_error(_fetch(tmp_path, hub, _recipe(tmp_path, **{
        "curation.sources.1.data_files": "hf://datasets/org/prompts@main/absent.jsonl"})))
    assert "curation.sources.1.data_files: org/prompts has no file 'absent.jsonl'" in line
    assert not lock_file.exists()
    # the hub unreachable: the job failed (exit 1), one line, nothing written
    r = _pilot("fetch", "--config", _recipe(tmp_path), env=_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode == 1 and "fetch failed" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not lock_file.exists()
    # a recipe that names no hub item (the demo): nothing to fetch, no lock
    r = _pilot("fetch", "--config", "configs/pipeline/demo.yaml", env=_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode == 0 and "nothing to fetch" in r.stdout
    assert not (REPO / "configs" / "pipeline" / "demo.lock.json").exists()


def test_the_production_recipe_names_its_hub_items_once():
    """The rules config check and fetch share, on the production recipe: every hub item with its key, an hf://
    data file as one file of its dataset repository, a served base as its tokenizer only; pinning rewrites the
    revision field or the URL's @revision, and reading a config dump back finds every pin."""
    from flows.pipeline_config import PipelineConfig
    from pilot_core.config import load_config
    from pilot_core.hub_items import hub_items, pin, pinned_in

    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/pilot-3b.yaml", lock=False)
    items = hub_items(cfg)
    by_key = {i.key: i.ref for i in items}
    assert by_key["pilot.path"].repo == "meta-llama/Llama-3.2-3B-Instruct" and by_key["pilot.path"].what == "model"
    assert by_key["bases.0.tokenizer"].what == "tokenizer" and by_key["bases.1.tokenizer"].repo == "google/gemma-2-27b"
    glm = by_key["validation.metrics.alpaca_eval.glm_data.data_files"]
    assert (glm.what, glm.kind, glm.repo, glm.revision, glm.file) == ("file", "dataset", "tatsu-lab/alpaca_eval",
                                                                      "main", "df_gamed.csv")
    assert by_key["curation.sources.1.path"].repo == "Anthropic/hh-rlhf"
    assert by_key["validation.metrics.reward.model.path"].repo == "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"
    assert len(items) == 13 and not any(i.ref.pinned for i in items)
    for n, item in enumerate(items):
        pin(item, f"{n:040x}")
    assert all(i.ref.pinned for i in hub_items(cfg))
    assert cfg.validation.metrics.alpaca_eval.glm_data.data_files == \
        f"hf://datasets/tatsu-lab/alpaca_eval@{11:040x}/df_gamed.csv"
    pins = pinned_in(cfg.model_dump(mode="json"))
    assert pins["Skywork/Skywork-Reward-Llama-3.1-8B-v0.2"] == f"{10:040x}" and len(pins) == 10


def test_best_of_n_reward_model_is_a_hub_item_too():
    from pilot_core.hub_items import hub_items, pin
    from wsd_inference.config import WSDConfig

    cfg = WSDConfig(bon={"scorer": "reward_model", "reward_model": "org/rm"})
    assert "reward_model_revision" not in cfg.model_dump()["bon"]  # unset, it is out of the config's hash
    [item] = hub_items(cfg)
    assert item.key == "bon.reward_model" and item.ref.repo == "org/rm" and item.ref.revision is None
    pin(item, "a" * 40)
    assert cfg.bon.reward_model_revision == "a" * 40


def test_the_model_card_lists_the_commits(tmp_path):
    from pilot_core.manifest import Manifest
    from pilot_core.report import CheckpointRef, GateVerdict, ValidationReport
    from release.config import CardConfig
    from release.model_card import build_card

    a, b, c = "a" * 40, "b" * 40, "c" * 40
    report = ValidationReport(config_hash="h", checkpoint=CheckpointRef(path="ck", fingerprint="f"),
                              bases={"big": {"name": "big", "url": "http://x/v1", "tokenizer": "org/base",
                                             "revision": b}},
                              methods=["wsd", "base_only"], eval_sets={}, metrics={}, alignment_tax={},
                              config={"wsd": {"window": 6, "threshold": 0.8}, "eval_sets": [
                                  {"hub": {"path": "json", "data_files": f"hf://datasets/org/evals@{c}/e.json"}}]})
    verdict = GateVerdict(passed=True, method="wsd", required_bases=1, passing_bases=["big"], failing_bases=[],
                          checks=[], reasons=[], champion=None, candidate="f")
    manifest = Manifest(kind="checkpoint", config={"model": {"name": "pilot", "path": "org/pilot", "revision": a}})
    card = build_card(report, verdict, manifest, CardConfig(), "pilot", "v1")
    assert "## Hub revisions" in card
    assert f"- `org/pilot`: `{a}`" in card and f"- `org/base`: `{b}`" in card and f"- `org/evals`: `{c}`" in card
    unpinned = Manifest(kind="checkpoint", config={"model": {"name": "pilot", "path": "org/pilot", "revision": "main"}})
    report.bases, report.config = {}, {"wsd": {"window": 6, "threshold": 0.8}}
    assert "Hub revisions" not in build_card(report, verdict, unpinned, CardConfig(), "pilot", "v1")


# ------------------------------------------------------------------------------------------ locked datasets offline
def _curation_recipe(tmp_path, sources=HUB_SOURCES) -> str:
    path = tmp_path / "configs" / "curation" / "locked.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"name": "locked", "output_dir": str(tmp_path / "datasets"), "sources": sources},
                                   sort_keys=False))
    return str(path)


# each source of a curation recipe, loaded with the lock applied: by the rule runs use (pilot_core/hub_data), or
# (argv[2] == "datasets") by datasets.load_dataset itself, as the source names it at its locked commit
READ = """
import json, sys
import datasets
from data_curation.config import CurationConfig
from data_curation.sources import _hf_table
from pilot_core.config import load_config
from pilot_core.errors import UserError

out = {}
for s in load_config(CurationConfig, sys.argv[1]).sources:
    try:
        if sys.argv[2] == "datasets":
            ds = datasets.load_dataset(s.path, s.subset, data_dir=s.data_dir, data_files=s.data_files, split=s.split,
                                       revision=s.revision)
            out[s.name] = {"rows": ds.to_list(), "features": str(ds.features)}
        else:
            table = _hf_table(s)
            out[s.name] = {"rows": table.to_pylist(), "features": str(datasets.Features.from_arrow_schema(
                table.schema))}
    except UserError as e:
        out[s.name] = {"error": str(e)}
print(json.dumps(out))
"""


def _read(recipe, env, how="pilot") -> dict:
    r = subprocess.run([sys.executable, "-c", READ, recipe, how], cwd=REPO, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def _rows(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.decode().splitlines()]


def test_locked_hub_datasets_read_offline_as_online(tmp_path, hub):
    recipe = _curation_recipe(tmp_path)
    r = _fetch(tmp_path, hub, recipe)
    assert r.returncode == 0, r.stderr
    lock = json.loads((tmp_path / "configs" / "curation" / "locked.lock.json").read_text())
    alpaca = next(e for e in lock["items"] if e["repo"] == "tatsu-lab/alpaca_eval")
    assert alpaca["patterns"] == ["alpaca_eval_gpt4_baseline.json"]  # that file only, not the repository
    # the reference: datasets' own online load, from the hub, into another cache
    online = _read(recipe, _env(tmp_path, hub.url, HF_HOME=str(tmp_path / "online")), "datasets")
    expected = {"sub": _rows(MULTI["b/one.jsonl"]) + _rows(MULTI["b/two.jsonl"]),
                "dir": _rows(DATA["data/train.jsonl"]), "file": _rows(DATA["extra.jsonl"]), "evals": BASELINE}
    assert {k: v["rows"] for k, v in online.items()} == expected
    hub.server.shutdown()
    hub.server.server_close()
    # the hub gone: offline, and (no offline switch) online, the locked items are read from the hub cache
    offline = _env(tmp_path, hub.url, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    assert _read(recipe, offline) == online
    assert _read(recipe, _env(tmp_path, hub.url)) == online
    # and a run reads them: `pilot curate` offline reads every row of every source
    r = _pilot("curate", "--config", recipe, "--output", str(tmp_path / "out"), "--quiet", env=offline)
    assert r.returncode == 0, r.stderr
    assert f"of {sum(map(len, expected.values()))} rows" in r.stdout

    # a locked item not in this machine's cache: one error naming it, saying to fetch (`pilot curate`: exit 2)
    elsewhere = {**offline, "HF_HOME": str(tmp_path / "elsewhere")}
    errors = {k: v["error"] for k, v in _read(recipe, elsewhere).items()}
    assert errors["sub"].startswith(f"source sub: hub dataset org/multi@{hub.commits['multi']} is not in the hub "
                                    "cache here (offline): run `pilot fetch --config RECIPE`")
    assert f"source evals: hf://datasets/tatsu-lab/alpaca_eval@{hub.commits['alpaca']}/alpaca_eval_gpt4_baseline" \
           ".json is not in the hub cache here (offline)" in errors["evals"]
    line = one_line_error(_pilot("curate", "--config", recipe, "--output", str(tmp_path / "out2"), env=elsewhere))
    assert "org/multi@" in line and "pilot fetch" in line
    # part of a commit in the cache (what one file's download leaves) is not the commit: the dataset is not read
    # from it (offline: the same error), while the file that is there is
    cache = tmp_path / "partial"
    shutil.copytree(tmp_path / "hf", cache, symlinks=True)
    snap = cache / "hub" / "datasets--org--prompts" / "snapshots" / hub.commits["data"]
    (snap / "data" / "train.jsonl").unlink()
    errors = _read(recipe, {**offline, "HF_HOME": str(cache)})
    assert "hub dataset org/prompts@" in errors["dir"]["error"] and errors["file"] == online["file"]
