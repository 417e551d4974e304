"""The config system: every YAML under configs/ validates; errors name file, line, key, value, allowed."""

from pathlib import Path

import pytest

from flows.pipeline_config import PipelineConfig
from flows.schemas import SCHEMAS, check_config, schema_for
from pilot_core.config import load_config
from pilot_core.errors import UserError
from wsd_inference.config import WSDConfig

from .helpers import REPO

ALL_YAML = sorted((REPO / "configs").rglob("*.yaml"))


def test_there_are_configs_of_every_kind():
    kinds = {p.relative_to(REPO / "configs").parts[0] for p in ALL_YAML}
    assert set(SCHEMAS) <= kinds


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_every_config_validates(path):
    cfg = check_config(path)
    assert isinstance(cfg, schema_for(path))


def _write(tmp_path, text, kind="pipeline"):
    d = tmp_path / "configs" / kind
    d.mkdir(parents=True, exist_ok=True)
    p = d / "x.yaml"
    p.write_text(text)
    return p


def test_unknown_key_names_file_line_key_and_allowed(tmp_path):
    p = _write(tmp_path, "window: 6\nthreshold: 0.8\nwindw: 3\n", "wsd")
    with pytest.raises(UserError) as e:
        load_config(WSDConfig, p)
    msg = str(e.value)
    assert f"{p}:3" in msg and "unknown key 'windw'" in msg and "allowed: window, threshold" in msg


def test_nested_unknown_key_and_bad_value(tmp_path):
    demo = (REPO / "configs/pipeline/demo.yaml").read_text()
    p = _write(tmp_path, demo.replace("  threshold: 0.6", "  threshold: 1.5\n  gamma: 1"))
    with pytest.raises(UserError) as e:
        load_config(PipelineConfig, p)
    msg = str(e.value)
    assert "key 'wsd.threshold': invalid value 1.5" in msg and "less than or equal to 1" in msg
    assert "unknown key 'wsd.gamma'" in msg
    line = demo.splitlines().index("  threshold: 0.6") + 1
    assert f"{p}:{line}:" in msg


def test_literal_lists_allowed_values(tmp_path):
    p = _write(tmp_path, "arch: gpt2\n", "models")
    with pytest.raises(UserError, match=r"key 'arch': invalid value 'gpt2'.*'llama' or 'qwen2'"):
        check_config(p)


def test_overrides_apply_and_are_validated():
    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml",
                      ["wsd.threshold=0.5", "bases.1.tiny.seed=9", "name=other"])
    assert cfg.wsd.threshold == 0.5 and cfg.bases[1].tiny.seed == 9 and cfg.name == "other"
    with pytest.raises(UserError, match=r"--set wsd.window=zero: key 'wsd.window': invalid value 'zero'"):
        load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml", ["wsd.window=zero"])
    with pytest.raises(UserError, match="--set expects key.sub=value"):
        load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml", ["wsd.window"])


@pytest.mark.parametrize("text,expected", [
    ("", "the config is empty"),
    ("- a\n- b\n", "top level must be a mapping"),
    ("a: [1, 2\n", "invalid YAML"),
])
def test_malformed_yaml(tmp_path, text, expected):
    p = _write(tmp_path, text, "wsd")
    with pytest.raises(UserError, match=expected):
        load_config(WSDConfig, p)


def test_non_utf8_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(b"window: \xff\xfe\n")
    with pytest.raises(UserError, match="not valid UTF-8"):
        load_config(WSDConfig, p)
    with pytest.raises(UserError, match="config file not found"):
        load_config(WSDConfig, tmp_path / "nope.yaml")


def test_model_source_needs_exactly_one_source(tmp_path):
    demo = (REPO / "configs/pipeline/demo.yaml").read_text()
    p = _write(tmp_path, demo.replace("  name: pilot-tiny\n", "  name: pilot-tiny\n  path: /some/dir\n"))
    with pytest.raises(UserError, match="give exactly one of path, tiny, url"):
        load_config(PipelineConfig, p)


def test_names_that_become_paths_are_validated(tmp_path):
    with pytest.raises(UserError, match="invalid pipeline name '../escape'"):
        load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml", ["name=../escape"])


def test_head_dim_vllm_cpu_rule():
    from pilot_core.models.tiny import TinyModelSpec

    with pytest.raises(ValueError, match="head_dim 16"):
        TinyModelSpec(hidden_size=64, num_heads=4)
    assert TinyModelSpec(hidden_size=64, num_heads=2).hidden_size == 64


def test_unknown_config_kind(tmp_path):
    p = _write(tmp_path, "a: 1\n", "nonsense")
    with pytest.raises(UserError, match="unknown config kind 'nonsense'"):
        check_config(p)
    assert Path(p).exists()


def test_url_sources_need_a_scheme_and_a_served_model(tmp_path):
    from pilot_core.models.source import ModelSource

    with pytest.raises(ValueError, match="must start with http"):
        ModelSource(name="b", url="vllm-host:8000/v1", served_model="m")
    with pytest.raises(ValueError, match="needs served_model"):
        ModelSource(name="b", url="http://vllm-host:8000/v1")
    src = ModelSource(name="b", url="http://vllm-host:8000/v1", served_model="m")
    with pytest.raises(ValueError, match="served at http://vllm-host:8000/v1, not local"):
        src.local_path()


def test_validation_runs_the_methods_the_registry_allows(tmp_path):
    """The methods a validation config may name come from the method registry: every registered method that
    validation may run, and no other."""
    from evaluation.config import ValidationConfig
    from wsd_inference.methods import METHODS

    demo = (REPO / "configs/validation/demo.yaml").read_text()
    allowed = [m for m, spec in METHODS.items() if spec.validation]
    assert "wsd" in allowed and "wsd_staged" not in allowed
    for methods, why in ((allowed, None), (["wsd", "wsd_staged"], "is for `pilot wsd generate` only"),
                         (["wsd", "beam"], "is unknown")):
        p = _write(tmp_path, demo.replace("methods: [wsd, base_only, pilot_only]", f"methods: [{', '.join(methods)}]"))
        if why is None:
            assert load_config(ValidationConfig, p).methods == allowed
        else:
            with pytest.raises(UserError, match=f"method '{methods[-1]}' {why}"):
                load_config(ValidationConfig, p)


def test_the_pipeline_decontaminates_against_what_it_validates_on():
    """Every validation eval set is a decontamination reference of the curation that feeds it (once), unless
    decontamination.validation_sets is off; the production recipe's benchmarks are among them."""
    from flows.pipeline_config import curation_config

    cfg = load_config(PipelineConfig, REPO / "configs/pipeline/pilot-3b.yaml")
    d = curation_config(cfg).decontamination
    assert [es.path for es in cfg.validation.eval_sets if not es.format and es.path not in d.reference_sets] == []
    assert d.reference_sets[0] == "data/demo/prompts.jsonl"
    assert {(b.format, b.hub.path if b.hub else b.path) for b in d.benchmarks} == {
        ("alpaca_eval", "json"), ("arena_hard", "data/eval/arena-hard-v0.1/question.jsonl"), ("gsm8k", "openai/gsm8k"),
        ("mmlu", "cais/mmlu"), ("humaneval", "openai/openai_humaneval")}
    demo = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml",
                       ["curation.decontamination.reference_sets=[data/demo/world-prompts.jsonl]"])
    refs = curation_config(demo).decontamination.reference_sets
    assert refs == ["data/demo/world-prompts.jsonl", *(es.path for es in demo.validation.eval_sets)]
    off = load_config(PipelineConfig, REPO / "configs/pipeline/demo.yaml",
                      ["curation.decontamination.reference_sets=[data/demo/world-prompts.jsonl]",
                       "curation.decontamination.validation_sets=false"])
    assert curation_config(off).decontamination.reference_sets == ["data/demo/world-prompts.jsonl"]
    assert curation_config(off).tokenizer == off.pilot  # lengths under the pilot's template


def test_an_overlay_merges_onto_its_base_as_compose_does(tmp_path):
    """Mappings merge key by key, lists and values replace, !override replaces a mapping, !reset drops a key; an
    error in an inherited key names the base file's line; recipes that extend each other are refused."""
    from pilot_core.config import read_yaml

    (tmp_path / "base.yaml").write_text("a: {x: 1, y: [1, 2], z: {p: 1, q: 2}}\nb: 3\nc: {k: 1}\nw:\n  window: 0\n")
    (tmp_path / "over.yaml").write_text("extends: base.yaml\na: {x: 2, y: [3], z: !override {p: 5}}\n"
                                        "b: !reset\nc: !override {}\nd: 4\n")
    data, lines = read_yaml(tmp_path / "over.yaml")
    assert data == {"a": {"x": 2, "y": [3], "z": {"p": 5}}, "c": {}, "d": 4, "w": {"window": 0}}
    assert lines[("a", "x")] == 2 and lines[("w", "window")] == f"{tmp_path / 'base.yaml'}:5"
    (tmp_path / "base.yaml").write_text("window: 0\n")  # invalid there, inherited here: the base's line is named
    (tmp_path / "over.yaml").write_text("extends: base.yaml\nthreshold: 0.5\n")
    with pytest.raises(UserError, match=rf"^{tmp_path / 'base.yaml'}:1: key 'window': invalid value 0"):
        load_config(WSDConfig, tmp_path / "over.yaml")
    assert load_config(WSDConfig, tmp_path / "over.yaml", ["window=3"]).window == 3
    (tmp_path / "base.yaml").write_text("extends: over.yaml\n")
    with pytest.raises(UserError, match="extend each other"):
        load_config(WSDConfig, tmp_path / "over.yaml")
    (tmp_path / "over.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(UserError, match="nowhere.yaml"):
        load_config(WSDConfig, tmp_path / "over.yaml")


def test_the_rehearsal_is_the_production_recipe_plus_what_it_names():
    """configs/pipeline/rehearsal.yaml extends pilot-3b.yaml: every setting it does not name is production's,
    so the two cannot drift (a key added to production reaches the rehearsal unless it says otherwise)."""
    from pilot_core.config import _Override, _read_one

    prod = load_config(PipelineConfig, REPO / "configs/pipeline/pilot-3b.yaml").model_dump(mode="json")
    reh = load_config(PipelineConfig, REPO / "configs/pipeline/rehearsal.yaml").model_dump(mode="json")

    def leaves(d, path=(), merging=lambda d: isinstance(d, dict) and d):
        if merging(d):
            for k, v in d.items():
                yield from leaves(v, (*path, k), merging)
        else:
            yield path, d

    overlay = _read_one(REPO / "configs/pipeline/rehearsal.yaml")[0]  # what it sets: values, lists, !override
    named = {p for p, _ in leaves(overlay, merging=lambda d: isinstance(d, dict) and not isinstance(d, _Override))}

    inherited = [(p, v) for p, v in leaves(prod) if not any(p[:i] in named for i in range(1, len(p) + 1))
                 and not any(n[:len(p)] == p for n in named)
                 and p != ("validation", "sweep", "max_tax")]  # derived from the gate's alignment_tax.max
    assert len(inherited) > 40  # the filters, dedup, pair rules, TRL schedules, gate rules, ...
    for path, value in inherited:
        node = reh
        for k in path:
            node = node[k]
        assert node == value, path
    assert reh["training"]["sft"]["lr_scheduler_type"] == prod["training"]["sft"]["lr_scheduler_type"] == "cosine"
    assert reh["curation"]["filters"] == prod["curation"]["filters"]


def test_overlay_tags_keep_yaml_types_and_refuse_a_reset_list_item(tmp_path):
    from pilot_core.config import read_yaml

    (tmp_path / "base.yaml").write_text("a: 1\nb: [1, 2]\nc: x\n")
    (tmp_path / "over.yaml").write_text("extends: base.yaml\na: !override 5\nc: !override null\n")
    assert read_yaml(tmp_path / "over.yaml")[0] == {"a": 5, "b": [1, 2], "c": None}
    (tmp_path / "over.yaml").write_text("extends: base.yaml\nb: [!reset , 3]\n")
    with pytest.raises(UserError, match="not an item of a list"):
        read_yaml(tmp_path / "over.yaml")
