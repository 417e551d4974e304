"""The `compute:` section: every model Pilot loads in-process is placed as it says (device, dtype, attention
implementation), checked on what the loaded weights really are; a GPU asked for where there is none is bad input."""

import json

import pytest

from pilot_core.errors import UserError
from pilot_core.models.compute import Compute, placement_of
from pilot_core.models.source import ModelSource

from .helpers import FAST, RECS, TINY, local_cfg

# not what `auto` gives on this CPU machine (float32, sdpa), so honouring it shows
ASKED = Compute(device="cpu", dtype="bfloat16", attn_implementation="eager")
WANT = {"device": "cpu", "dtype": "bfloat16", "attn_implementation": "eager"}


def test_auto_and_bad_placements():
    import torch

    here = Compute().resolve()
    assert (here.device, here.dtype) == (("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32"))
    with pytest.raises(ValueError, match="use auto, cpu, cuda, cuda:N or mps"):
        Compute(device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU on this machine"):
            Compute(device="cuda:0").resolve()


def test_every_in_process_model_honours_it(loads, pair_same, tiny_cache):
    from pilot_core.models.calls import ClientConfig, Endpoint
    from pilot_core.models.loading import load_hf_model
    from pilot_core.models.local_chat import LocalChat
    from pilot_core.models.reward import RewardModel
    from pilot_core.models.tiny import tiny_reward_model

    pilot = load_hf_model(str(pair_same[0]), "pilot", ASKED, need_chat_template=True)
    assert placement_of(pilot.model) == WANT and pilot.device == "cpu"
    assert placement_of(RewardModel(str(tiny_reward_model(tiny_cache)), ASKED).model) == WANT
    assert placement_of(LocalChat.of(ModelSource(**TINY), 4, ASKED).m.model) == WANT
    assert placement_of(Endpoint(ModelSource(**TINY), ClientConfig(), compute=ASKED).backend.m.model) == WANT
    assert [p for _, p in loads] == [WANT] * 4
    # a device map reaches transformers (here the one CPU; an unknown one is refused by it, as bad input)
    mapped = load_hf_model(str(pair_same[1]), "base", Compute(device_map="cpu"))
    assert placement_of(mapped.model)["device"] == "cpu" and mapped.device == "cpu"
    with pytest.raises(UserError, match="base .*: cannot load"):
        load_hf_model(str(pair_same[1]), "base", Compute(device_map="nowhere"))


def test_decoding_and_preferences_pass_it_down(loads, pair_same, small_dataset, tmp_path):
    from data_curation.preferences import build_preferences
    from wsd_inference.config import WSDConfig
    from wsd_inference.runner import generate_to_file

    pilot, base = (ModelSource(name=n, path=str(p)) for n, p in zip(("pilot", "base"), pair_same))
    generate_to_file(pilot, base, RECS[:2], WSDConfig(max_new_tokens=8, max_draft_tokens=8), tmp_path / "w.jsonl",
                     ASKED, progress=False)
    assert sorted(r for r, _ in loads) == ["base base", "pilot pilot"]
    meta = json.loads((tmp_path / "w.jsonl.meta.json").read_text())
    assert meta["compute"] == {**WANT, "device": "cpu"}  # a resume with another dtype is refused
    loads.clear()
    build_preferences(small_dataset, local_cfg(tmp_path / "c.sqlite"), tmp_path / "prefs", progress=False,
                      compute=ASKED)
    assert {r for r, _ in loads} == {"reward model", "model pilot"}  # both writers are the tiny pilot
    assert all(p == WANT for _, p in loads)


def test_training_loads_its_weights_as_asked(prefs, tmp_path):
    from training.config import TrainConfig
    from training.train import train

    cfg = TrainConfig.model_validate({"model": TINY, "dataset": str(prefs), "output_dir": str(tmp_path / "run"),
                                      "stages": ["sft"], "sft": {**FAST, "max_steps": 2},
                                      "compute": ASKED.model_dump()})
    final = train(cfg)["sft"]
    assert json.loads((final / "manifest.json").read_text())["data"]["placement"] == WANT


def test_a_hub_model_is_read_at_its_pinned_revision(pair_same, tmp_path):
    """A hub cache laid out as huggingface_hub writes it (offline, no download): two commits of one repository
    holding different models; `revision:` picks the one that is loaded, and the stage key follows it."""
    import os
    import shutil
    import subprocess
    import sys

    from pilot_core.stages import source_identity

    repo = tmp_path / "hub" / "models--pilot-test--tiny"
    commits = {"a" * 40: pair_same[0], "b" * 40: pair_same[1]}
    for commit, model in commits.items():
        shutil.copytree(model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    code = ("import sys; from pilot_core.models.loading import load_hf_model; "
            "m = load_hf_model('pilot-test/tiny', revision=sys.argv[1] or None); print(m.num_parameters())")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    sizes = {}
    for rev in ("a" * 40, "b" * 40, ""):
        r = subprocess.run([sys.executable, "-c", code, rev], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        sizes[rev] = int(r.stdout.split()[-1])
    assert sizes["a" * 40] != sizes["b" * 40] and sizes[""] == sizes["b" * 40]  # unpinned: whatever main is now
    pinned = [source_identity(ModelSource(name="p", path="pilot-test/tiny", revision=c)) for c in commits]
    assert pinned[0] != pinned[1]
    with pytest.raises(ValueError, match="revision is for hub ids"):
        ModelSource(name="p", tiny=TINY["tiny"], revision="a" * 40)
