"""# The Pilot pipeline as Prefect flows

curate -> (data team approves) -> preferences -> (data team approves the pairs) -> train -> validate -> gate
       -> (release owner signs off) -> publish

Run it:

    pilot run --config configs/pipeline/demo.yaml        # here and now, on Prefect's ephemeral API
    pilot serve --config configs/pipeline/demo.yaml --cron "0 3 * * 1"   # on a schedule, against a Prefect server
    prefect deploy --name demo-weekly                    # or as a deployment from prefect.yaml, for a work pool

Why it is shaped this way:
- Every flow only composes; the work is in library functions (flows/tasks.py says which) that tests call
  without Prefect.
- A rerun reuses what a crashed or failed run finished: each stage writes into a directory named by the hash of
  its config and inputs, and a complete directory is reused (pilot_core.stages). Training runs in a child
  process that the train task polls, so a multi-hour run never depends on this process's heartbeat, and a rerun
  continues from the last checkpoint.
- A failed gate ends the run as Failed with its reasons (a markdown artifact, and the error), not as a crash.
- Each stage leaves an artifact in the UI under a stable key (flows/artifacts.py).
- With a `ray:` section, training and validation run as Ray jobs on a cluster (flows/ray_jobs.py): the flow
  submits the stage's `pilot` command, streams its log here and waits; the stage directories are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger

from data_curation.preferences import PreferencesSummary
from data_curation.run import CurationSummary
from flows import artifacts
from flows.pipeline_config import PipelineConfig, check_inputs, curation_config
from flows.tasks import (
    TrainingResult,
    curate_task,
    gate_task,
    pair_review_export_task,
    pair_review_import_task,
    preferences_task,
    publish_task,
    review_export_task,
    review_import_task,
    train_task,
    validate_task,
    wsd_task,
)
from pilot_core.models.source import ModelSource
from pilot_core.names import safe_join
from release.publish import Published


def run_root(cfg: PipelineConfig) -> str:
    """Where this pipeline's stage directories live: <output_dir>/<name>/."""
    return str(safe_join(Path(cfg.output_dir), cfg.name, what="pipeline name"))


# ------------------------------------------------------------------------------------------ curation
@dataclass(frozen=True)
class CurationStage:
    summary: CurationSummary
    review_page: str


@flow(name="curation")
def curation_flow(cfg: PipelineConfig) -> CurationStage:
    """GenerAlign prompts from the configured sources, a review page for the data team, and (when configured)
    their approval before anything is trained on the subset."""
    root = run_root(cfg)
    s = curate_task(curation_config(cfg), root)  # decontaminated against the validation's eval sets too
    page = review_export_task(s.output, root)
    artifacts.curation(cfg.name, s, page)
    if cfg.approvals.curation is not None:
        _review_approval("curation", s.output, cfg.approvals.curation, review_import_task, (
            f"**Curated GenerAlign subset**: kept {s.kept} of {s.read} prompts in `{s.output}`.\n\n"
            f"Review page: `{page}`. Decide the rows there and save review.csv (or fill in `decision` in the "
            "review.csv beside it); give its path as `decisions` to move rejected rows out before training."))
    return CurationStage(s, page)


def _review_approval(what: str, stage_dir: str, approval, import_task, description: str) -> None:
    """The data team's pause on a review page: their decisions file is imported (once) before the run goes on."""
    from flows import approvals

    decision = approvals.ask(what, stage_dir, description, approval.timeout_s, approval.poll_s)
    if decision.decisions and not decision.earlier:
        import_task(stage_dir, decision.decisions, decision.by)
    if not decision.earlier:
        approvals.remember(decision)


# ------------------------------------------------------------------------------------------ preferences
@dataclass(frozen=True)
class PreferencesStage:
    summary: PreferencesSummary
    pair_review_page: str


@flow(name="preferences")
def preferences_flow(cfg: PipelineConfig, dataset: str) -> PreferencesStage:
    """Responses and preference pairs for the curated prompts, a review page of the pairs, and (when configured)
    the data team's approval: their decisions (reject, flip) rewrite the dpo split before anything trains on it."""
    root = run_root(cfg)
    p = preferences_task(dataset, cfg.preferences, root, cfg.compute)
    page = pair_review_export_task(p.output, root)
    artifacts.preferences(cfg.name, p, page)
    if cfg.approvals.preferences is not None:
        _review_approval("preferences", p.output, cfg.approvals.preferences, pair_review_import_task, (
            f"**Preference pairs**: {p.dpo} pairs and {p.sft} SFT rows in `{p.output}`.\n\n"
            f"Pair review page: `{page}`. Approve, reject or flip the sampled pairs there and save review.csv; give "
            "its path as `decisions` so training reads the reviewed pairs."))
    return PreferencesStage(p, page)


# ------------------------------------------------------------------------------------------ training
@dataclass(frozen=True)
class TrainingStage:
    preferences: PreferencesStage
    trained: TrainingResult


@flow(name="training")
def training_flow(cfg: PipelineConfig, dataset: str) -> TrainingStage:
    """Preference pairs for the curated prompts (reviewed when configured), then SFT and DPO of the pilot (in a
    child process)."""
    root = run_root(cfg)
    p = preferences_flow(cfg, dataset)
    progress = artifacts.TrainingProgress(cfg.name, cfg.training.stages)
    t = train_task(cfg.training, cfg.pilot, cfg.pilot.name, p.summary.output, root, cfg.compute, on_poll=progress,
                   ray=cfg.ray)
    artifacts.training(cfg.name, t.manifests)
    return TrainingStage(p, t)


# ------------------------------------------------------------------------------------------ validation
@dataclass(frozen=True)
class ValidationStage:
    wsd: dict[str, str]  # base name -> WSD's answers file
    report: str | None = None  # the report directory (None without a validation section)


@flow(name="validation")
def validation_flow(cfg: PipelineConfig, pilot: ModelSource) -> ValidationStage:
    """WSD with every base on the pipeline's prompts, then (with a validation section) the full validation of
    the trained checkpoint: every method x base x eval set, with the report as an artifact."""
    root = run_root(cfg)
    wsd = {b.name: wsd_task(pilot, b, cfg.prompts, cfg.wsd, root, cfg.compute) for b in cfg.bases}
    if cfg.validation is None:
        return ValidationStage(wsd)
    report = validate_task(cfg.validation, pilot.path, cfg.bases, root, pilot.name, cfg.compute, ray=cfg.ray)
    artifacts.validation(cfg.name, report)
    return ValidationStage(wsd, report)


# ------------------------------------------------------------------------------------------ release
@flow(name="release")
def release_flow(cfg: PipelineConfig, checkpoint: str, report: str) -> Published:
    """The gate against the registry's champion; a failed gate fails the run with its reasons. Then the
    release owner's sign-off (when configured), then publish (registry, and the Hub with a hub section)."""
    from flows import approvals

    verdict = gate_task(report, cfg.release)
    artifacts.gate(cfg.name, verdict)
    if not verdict.passed:
        raise verdict.failure(report)
    sign_off = None
    if cfg.approvals.release is not None:
        a = cfg.approvals.release
        sign_off = approvals.ask("release", report, (
            f"**Release {cfg.release.name}**: the gate passed on {len(verdict.passing_bases)} bases.\n\n"
            f"Report: `{Path(report) / 'report.md'}`. Approve to publish to `{cfg.release.registry}`."),
            a.timeout_s, a.poll_s)
    r = publish_task(checkpoint, report, cfg.release, sign_off)
    if sign_off is not None and not sign_off.earlier:
        approvals.remember(sign_off)
    artifacts.release(cfg.name, cfg.release.name, r)
    return r


# ------------------------------------------------------------------------------------------ the pipeline
@dataclass(frozen=True)
class PipelineResult:
    """Where a pipeline run left its outputs (None: a stage its config does not have)."""

    root: str  # the stage directories
    wsd: dict[str, str]  # base name -> WSD's answers file
    dataset: str | None = None
    review_page: str | None = None
    preferences: str | None = None
    checkpoint: str | None = None
    report: str | None = None
    release: Published | None = None


def _stop_ray_jobs(flow, flow_run, state) -> None:
    """on_cancellation: stop the Ray jobs this run submitted (its tasks stop their own when the cancellation
    reaches them; this covers a process that was killed before it could)."""
    from prefect.logging.loggers import flow_run_logger

    from pilot_core.config import load_config

    params = flow_run.parameters or {}
    cfg = load_config(PipelineConfig, params["config"], tuple(params.get("overrides") or ()))
    if cfg.ray is not None:
        from flows.ray_jobs import stop_jobs_of_run

        stop_jobs_of_run(cfg.ray.address, str(flow_run.id), flow_run_logger(flow_run, flow).info)


@flow(name="pilot-pipeline", on_cancellation=[_stop_ray_jobs])
def pipeline(config: str, overrides: list[str] | None = None) -> PipelineResult:
    """The whole pipeline from a configs/pipeline/*.yaml file (a deployment's parameters are the same two)."""
    from pilot_core.config import load_config

    cfg = load_config(PipelineConfig, config, tuple(overrides or ()))
    check_inputs(cfg)
    log = get_run_logger()
    log.info(f"pipeline {cfg.name}: stage directories under {run_root(cfg)}")
    dataset = review_page = preferences = checkpoint = None
    pilot = cfg.pilot
    if cfg.curation is not None:
        c = curation_flow(cfg)
        dataset, review_page = c.summary.output, c.review_page
        if cfg.preferences is not None and cfg.training is not None:
            t = training_flow(cfg, dataset)
            preferences, checkpoint = t.preferences.summary.output, t.trained.checkpoint
            pilot = ModelSource(name=f"{cfg.pilot.name}-trained", path=checkpoint)
        elif cfg.preferences is not None:
            preferences = preferences_flow(cfg, dataset).summary.output
    v = validation_flow(cfg, pilot)
    release = release_flow(cfg, pilot.path, v.report) if cfg.release is not None else None
    return PipelineResult(run_root(cfg), v.wsd, dataset=dataset, review_page=review_page, preferences=preferences,
                          checkpoint=checkpoint, report=v.report, release=release)
