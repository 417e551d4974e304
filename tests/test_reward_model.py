"""The reward model scorer (best-of-N's `reward_model` scorer; shared with the judges and the metrics)."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from pilot_core.errors import UserError
from pilot_core.models.reward import RewardModel
from pilot_core.models.tiny import tiny_reward_model
from wsd_inference.config import BoNConfig, WSDConfig
from pilot_core.prompts import PromptRecord
from wsd_inference.runner import generate_to_file
from pilot_core.models.source import ModelSource

from .helpers import RECS

CONV = [{"role": "user", "content": "How do I bake bread?"}]
ANSWERS = ["Mix flour, water, yeast and salt.", "No.", "I cannot help with that.", "the the the the the the"]


@pytest.fixture(scope="module")
def rm_path(tiny_cache):
    return tiny_reward_model(tiny_cache)


@pytest.fixture(scope="module")
def negated_rm(rm_path, tmp_path_factory):
    """The same reward model with its score head negated: it ranks every answer the other way round."""
    out = tmp_path_factory.mktemp("rm-neg") / "rm"
    shutil.copytree(rm_path, out)
    weights = load_file(out / "model.safetensors")
    weights["score.weight"] = -weights["score.weight"]
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_scores_are_per_conversation_and_batch_independent(rm_path):
    rm = RewardModel(str(rm_path), batch_size=3)
    batched = rm.score([(CONV, a) for a in ANSWERS])
    single = [RewardModel(str(rm_path), batch_size=1).score([(CONV, a)])[0] for a in ANSWERS]
    assert batched == pytest.approx(single, abs=1e-5)
    assert len(set(round(x, 4) for x in batched)) == len(ANSWERS)  # it tells the answers apart
    other = rm.score([([{"role": "user", "content": "Tell me a joke."}], ANSWERS[0])])[0]
    assert other != pytest.approx(batched[0], abs=1e-6)  # and reads the prompt too


def test_bad_reward_models_are_clear_errors(rm_path, pair_same, tmp_path):
    with pytest.raises(UserError, match="not a sequence-classification model"):
        RewardModel(str(pair_same[0]))
    with pytest.raises(UserError, match="model path not found"):
        RewardModel(str(tmp_path / "missing"))
    pickled = tmp_path / "pickled"
    shutil.copytree(rm_path, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(UserError, match="only pickled weights"):
        RewardModel(str(pickled))
    two = tmp_path / "two-labels"
    shutil.copytree(rm_path, two)
    cfg = json.loads((two / "config.json").read_text())
    cfg["id2label"] = {"0": "a", "1": "b"}
    (two / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="has 2 outputs"):
        RewardModel(str(two))


def test_bon_config_needs_the_reward_model_path():
    with pytest.raises(ValueError, match="needs reward_model"):
        BoNConfig(scorer="reward_model")


def test_best_of_n_by_reward_model(rm_path, negated_rm, pair_different, tmp_path):
    """The reward model drives the choice: with its head negated the same samples are scored -r and the
    opposite one is chosen. No untuned model is needed for this scorer."""
    pilot = ModelSource(name="pilot", path=str(pair_different[0]))
    base = ModelSource(name="base", path=str(pair_different[1]))
    recs = [PromptRecord(id=r.id, messages=r.messages) for r in RECS[:4]]

    def run(path, name):
        cfg = WSDConfig(max_new_tokens=16, bon=BoNConfig(n=4, scorer="reward_model", reward_model=str(path)))
        generate_to_file(pilot, base, recs, cfg, tmp_path / f"{name}.jsonl", method="bon", progress=False)
        return [json.loads(x) for x in open(tmp_path / f"{name}.jsonl")]

    pos, neg = run(rm_path, "pos"), run(negated_rm, "neg")
    differ = 0
    for p, n in zip(pos, neg):
        assert n["candidate_scores"] == pytest.approx([-x for x in p["candidate_scores"]], abs=1e-4)
        assert p["score"] == max(p["candidate_scores"]) and n["score"] == max(n["candidate_scores"])
        assert n["score"] == pytest.approx(-min(p["candidate_scores"]), abs=1e-4)
        differ += p["response"] != n["response"]
    assert differ >= 1
