"""The end-to-end pipeline config (`configs/pipeline/*.yaml`): which models, which prompts, which settings.

Stage sections, each optional and each needing the one before: curation, preferences, training, validation (of
the trained checkpoint, with every base below), release (gate + publish). `approvals` pauses the run for people.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from data_curation.config import CurationConfig
from data_curation.preferences_config import PreferencesConfig
from evaluation.config import EvalSpec, check_fanout_bases, check_rules_for_bases
from pilot_core.config import BaseConfig
from pilot_core.models.compute import Compute
from pilot_core.models.files import is_local
from pilot_core.models.source import ModelSource
from pilot_core.names import check_unique, config_name
from release.config import ReleaseConfig
from training.config import StagesConfig
from wsd_inference.config import WSDConfig


class Approval(BaseConfig):
    """A pause until someone answers (in the Prefect UI's form, or `pilot approval approve|reject RUN_ID`)."""

    timeout_s: int = Field(86400, ge=1, description="nobody answered in time: the run fails, and a rerun (finished "
                           "stages reused) asks again")
    poll_s: int = Field(10, ge=1, description="how often the paused run checks for the answer")


class ApprovalsConfig(BaseConfig):
    curation: Approval | None = Field(None, description="the data team approves the curated subset (the review "
                                      "page is linked; the decisions saved from it are imported with the answer)")
    preferences: Approval | None = Field(None, description="the data team approves the preference pairs before "
                                         "training (the pair review page is linked; rejected pairs leave the dpo "
                                         "split, flipped ones swap)")
    release: Approval | None = Field(None, description="the release owner signs off after the gate passes and "
                                     "before anything is published")


class RayJobResources(BaseConfig):
    """What a stage's Ray job reserves for its `pilot` command (the driver; a validation's fanned-out jobs reserve
    their own, validation.ray)."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float | None = Field(None, ge=0, description="null: training: 0 with the ray launcher (its workers "
                                   "reserve their own), else training.nproc (1 without it) unless compute.device is "
                                   "cpu, then 0; validation: 0 (its jobs reserve their GPUs)")


class RayJobs(BaseConfig):
    """Submit stages to a Ray cluster as Ray jobs (the Jobs API): the flow writes the stage's config beside its
    directory, submits the `pilot` command that runs it, streams its log into the run's log and waits. The run's
    directory (output_dir, the configs, the data) must be on storage the cluster mounts at `working_dir`."""

    address: str | None = Field(None, description="the cluster: its Jobs API (http://head:8265) or its address "
                                "(head:6379); default RAY_ADDRESS. As in Ray's own clients, RAY_API_SERVER_ADDRESS "
                                "or RAY_ADDRESS in the environment win over this key")
    stages: list[Literal["training", "validation"]] = Field(["training", "validation"], min_length=1,
                                                             description="the stages submitted as Ray jobs")
    working_dir: str | None = Field(None, description="where the commands run on the cluster (the run's directory "
                                    "as the nodes mount it); default: this process's working directory")
    pilot: str = Field("pilot", description="the pilot command on the cluster's nodes")
    training: RayJobResources = RayJobResources()
    launcher: Literal["ray", "torchrun"] = Field("ray", description="how the training job starts its workers when "
                                                 "training.distributed is set: Ray Train workers across the cluster "
                                                 "(`pilot train --launcher ray`), or torchrun on the job's node")
    storage: str | None = Field(None, description="with the ray launcher: where checkpoints are kept, a path or "
                                "fsspec URL every worker reaches (`pilot train --storage`; default output_dir/ray)")
    validation: RayJobResources = RayJobResources()
    pending_timeout_s: float = Field(3600.0, gt=0, description="a job still waiting for resources after this long "
                                     "fails (what it asks for is not in the cluster)")


class PipelineConfig(BaseConfig):
    name: str
    seed: int = 0
    output_dir: str = Field("runs", description="run directories are created under it")
    prompts: str = Field(..., description="JSONL of {id, messages} or {id, prompt}, relative to the working directory")
    pilot: ModelSource
    bases: list[ModelSource] = Field(..., min_length=1)
    compute: Compute = Field(Compute(), description="where every in-process model runs (the drafting pilot, local "
                             "bases, generators, reward models and judges, training); auto: the GPU in bf16 when "
                             "there is one")
    wsd: WSDConfig = WSDConfig()
    curation: CurationConfig | None = Field(None, description="GenerAlign curation (tokenizer defaults to the pilot)")
    preferences: PreferencesConfig | None = Field(None, description="responses and preference pairs for the "
                                                  "curated prompts (needs curation)")
    training: StagesConfig | None = Field(None, description="train the pilot on the preferences (needs them); WSD "
                                          "then runs with the trained pilot")
    validation: EvalSpec | None = Field(None, description="validate the trained checkpoint with every base (needs "
                                        "training)")
    release: ReleaseConfig | None = Field(None, description="gate the validated checkpoint and publish it (needs "
                                          "validation)")
    approvals: ApprovalsConfig = Field(ApprovalsConfig(), description="human sign-offs (need a Prefect server)")
    ray: RayJobs | None = Field(None, description="run the training and validation stages as Ray jobs on a cluster "
                                "(flows/ray_jobs.py); without it every stage runs in this process's machine")

    _name = field_validator("name")(config_name("pipeline name"))

    @model_validator(mode="after")
    def _unique_bases(self) -> "PipelineConfig":
        if self.preferences is not None and self.curation is None:
            raise ValueError("preferences need a curation section (they label its prompts)")
        if self.training is not None and self.preferences is None:
            raise ValueError("training needs a preferences section (it trains on its sft and dpo splits)")
        if self.validation is not None and self.training is None:
            raise ValueError("validation needs a training section (it validates the trained checkpoint)")
        if self.release is not None and self.validation is None:
            raise ValueError("release needs a validation section (the gate decides from its report)")
        if self.approvals.curation is not None and self.curation is None:
            raise ValueError("approvals.curation needs a curation section")
        if self.approvals.preferences is not None and self.preferences is None:
            raise ValueError("approvals.preferences needs a preferences section")
        if self.approvals.release is not None and self.release is None:
            raise ValueError("approvals.release needs a release section")
        check_unique([b.name for b in self.bases], "base model")
        sweep = self.validation and self.validation.sweep
        tax = self.release and self.release.gate.alignment_tax
        if sweep and tax and "max_tax" not in sweep.model_fields_set:  # choose within what the gate will allow
            sweep.max_tax = min(max(tax.max, 0.0), 1.0)
        if self.validation:
            check_rules_for_bases(self.validation, self.bases)
            check_fanout_bases(self.validation, self.bases)
        return self


def curation_config(cfg: PipelineConfig) -> CurationConfig:
    """The curation as the pipeline runs it: prompt lengths under the pilot's own chat template (unless the
    curation names a tokenizer), and every eval set the validation names a decontamination reference set (unless
    decontamination.validation_sets is off)."""
    from pathlib import Path

    cur = cfg.curation
    if cur.tokenizer is None and not cfg.pilot.url:
        cur = cur.model_copy(update={"tokenizer": cfg.pilot})
    d = cur.decontamination
    if d.validation_sets and cfg.validation is not None:
        from data_curation.config import BenchmarkRef

        have = {Path(r).resolve() for r in d.reference_sets}
        files = [es.path for es in cfg.validation.eval_sets
                 if not es.format and Path(es.path).resolve() not in have]
        marks = [b.model_dump() for b in d.benchmarks]
        benches = [BenchmarkRef(format=es.format, path=es.path, hub=es.hub) for es in cfg.validation.eval_sets
                   if es.format and BenchmarkRef(format=es.format, path=es.path, hub=es.hub).model_dump() not in marks]
        if files or benches:
            cur = cur.model_copy(update={"decontamination": d.model_copy(update={
                "reference_sets": [*d.reference_sets, *dict.fromkeys(files)], "benchmarks": [*d.benchmarks,
                                                                                            *benches]})})
    return cur


def check_inputs(cfg: PipelineConfig) -> None:
    """Read the prompt and eval files the run will need at its end, and the pilot's training template, and check
    that code benchmarks can run sandboxed, now: a bad line, a template that cannot train or a machine that cannot
    run untrusted code is one error before hours of curation, not after."""
    from huggingface_hub import is_offline_mode

    from data_curation.run import check_inputs as check_curation_inputs
    from evaluation.evalsets import load_eval_set
    from pilot_core.prompts import load_prompts

    load_prompts(cfg.prompts)
    cfg.compute.resolve()  # a GPU asked for on a machine without one
    if cfg.curation:
        check_curation_inputs(curation_config(cfg))
    if cfg.training and cfg.pilot.path and (is_local(cfg.pilot.path) or not is_offline_mode()):  # tiny: marked
        from training.train import pilot_template

        pilot_template(cfg.training, cfg.pilot.local_path(), cfg.pilot.trust_remote_code, cfg.pilot.revision)
    for es in [*cfg.validation.eval_sets, *(cfg.validation.sweep.eval_sets if cfg.validation.sweep else [])] \
            if cfg.validation else []:
        load_eval_set(es)
    if cfg.validation and any(es.kind == "code" for es in cfg.validation.eval_sets):
        from evaluation.sandbox import isolation

        isolation(cfg.validation.unsafe_code_execution)  # no kernel boundary: refuse before days of work
