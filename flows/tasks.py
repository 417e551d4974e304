"""The pipeline's Prefect tasks. Each one runs a library function into its stage directory, or reuses the
directory a finished run left there (keys from the config and the inputs: pilot_core.stages).

The stage directory is the persisted result and its name the cache key. Prefect's own task cache is off
(NO_CACHE): it would hand back a stored path even after the directory was deleted, while a directory is reused
here only if its manifest or report, written last, is there.

Retries only where they can help: calls to servers (responses, judges, served models) and a trainer that died
(it resumes from its last checkpoint); never for bad input (UserError) or a decided failure (JobFailed).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.pipeline_config import RayJobs
from pilot_core.errors import JobFailed, UserError
from pilot_core.manifest import MANIFEST, read_manifest
from pilot_core.models.compute import Compute
from pilot_core.models.source import ModelSource
from pilot_core.stages import dir_identity, files_identity, source_identity, stage_dir, stage_key
from pilot_core.tracking import identity

if TYPE_CHECKING:
    from data_curation.preferences import PreferencesSummary
    from data_curation.run import CurationSummary
    from flows.approvals import Approval
    from release.publish import Published


def _retry_unless(*never: type[Exception]):
    """A Prefect retry_condition_fn: retry a fault, not the exceptions named (bad input, a decided failure)."""
    def condition(task, task_run, state) -> bool:
        try:
            state.result()
        except never:
            return False
        except Exception:
            return True
        return False

    return condition


NETWORK = dict(retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_retry_unless(UserError, JobFailed),
               cache_policy=NO_CACHE)
LOCAL = dict(retries=0, cache_policy=NO_CACHE)


def _progress() -> bool:
    return sys.stderr.isatty()  # tqdm bars for a person at a terminal, not in a worker's log


@task(name="curate", **LOCAL)
def curate_task(cur, root: str) -> CurationSummary:
    from data_curation.run import CurationSummary, curate

    log = get_run_logger()
    key = stage_key("curate", cur.model_dump(mode="json"),
                    files_identity([s.path for s in cur.sources] + list(cur.decontamination.reference_sets)))
    out = stage_dir(root, "curate", key)
    if (out / MANIFEST).is_file():
        log.info(f"curate {cur.name}: reusing {out} (same config and sources)")
        return CurationSummary.of(out, read_manifest(out, kind="dataset").data, already_done=True)
    s = curate(cur, output=str(out), progress=_progress())
    log.info(f"curate {cur.name}: kept {s.kept} of {s.read} prompts, excluded "
             + ", ".join(f"{sum(r.values())} at {st}" for st, r in s.excluded.items()) + f" -> {out}")
    return s


@task(name="review-export", **LOCAL)
def review_export_task(dataset: str, root: str) -> str:
    from data_curation.review import export_review

    out = Path(root) / f"review-{Path(dataset).name}"
    if not (out / "review.html").is_file():
        export_review(dataset, out)
    get_run_logger().info(f"review page: {out / 'review.html'}")
    return str(out / "review.html")


@task(name="review-import", **LOCAL)
def review_import_task(dataset: str, decisions: str, reviewer: str) -> dict:
    from data_curation.review import import_review

    entry = import_review(dataset, decisions, reviewer)
    get_run_logger().info(f"review by {reviewer}: {entry['rejected']} rows moved to excluded")
    return entry


@task(name="pair-review-export", **LOCAL)
def pair_review_export_task(preferences: str, root: str) -> str:
    from data_curation.pair_review import export_pair_review

    out = Path(root) / f"review-{Path(preferences).name}"
    if not (out / "review.html").is_file():
        export_pair_review(preferences, out)
    get_run_logger().info(f"pair review page: {out / 'review.html'}")
    return str(out / "review.html")


@task(name="pair-review-import", **LOCAL)
def pair_review_import_task(preferences: str, decisions: str, reviewer: str) -> dict:
    from data_curation.pair_review import import_pair_review

    e = import_pair_review(preferences, decisions, reviewer)
    get_run_logger().info(f"pair review by {reviewer}: {e['flipped']} flipped, {e['rejected']} rejected; judge "
                          f"disagreement so far {e['so_far']['judge_disagreement']}")
    return e


@task(name="preferences", **NETWORK)
def preferences_task(dataset: str, prefs, root: str, compute: Compute) -> PreferencesSummary:
    from data_curation.preferences import PreferencesSummary, build_preferences

    log = get_run_logger()
    # the dataset's manifest changes when a review is imported, so a reviewed subset gets new preferences
    key = stage_key("preferences", prefs.model_dump(mode="json"), {"dataset": dir_identity(dataset),
                                                                   "compute": compute.resolve().identity()})
    out = stage_dir(root, "preferences", key)
    if (out / MANIFEST).is_file():
        log.info(f"preferences: reusing {out}")
        return PreferencesSummary.of(out, read_manifest(out, kind="dataset").data["preferences"])
    # calls are cached beside it: a retry is free
    p = build_preferences(dataset, prefs, out, progress=_progress(), compute=compute)
    log.info(f"preferences: {p.sft} sft rows, {p.dpo} dpo pairs from {p.prompts} prompts, "
             f"{p.response_failures} failed responses -> {out}")
    return p


@dataclass(frozen=True)
class TrainingResult:
    """A finished training run: the checkpoint WSD and validation use (merged when LoRA), each stage's checkpoint
    manifest data by stage, and the run directory."""

    checkpoint: str
    manifests: dict[str, dict]
    output: str


def _ray_log():
    """(the run's logger's info, the root flow run's id): what a Ray job logs to and is tagged with."""
    from prefect.runtime import flow_run

    return get_run_logger().info, flow_run.root_flow_run_id or None


@task(name="train", retries=1, retry_delay_seconds=30, retry_condition_fn=_retry_unless(UserError),
      cache_policy=NO_CACHE)
def train_task(training, pilot: ModelSource, name: str, dataset: str, root: str, compute: Compute, on_poll=None,
               poll_s: float = 5.0, ray: RayJobs | None = None) -> TrainingResult:
    """Train in a child process and poll it, or (ray) as a Ray job running `pilot train` on the cluster. A rerun
    (or a retry) resumes."""
    from training.config import TrainConfig
    from training.process import progress, run_training

    log = get_run_logger()
    key = stage_key("train", identity(training),
                    {"pilot": source_identity(pilot), "dataset": dir_identity(dataset),
                     "compute": compute.resolve().identity()})
    out = stage_dir(root, "train", key)
    cfg = TrainConfig(**training.model_dump(), name=name, model=pilot, dataset=dataset, output_dir=str(out),
                      compute=compute)
    finals = {s: out / s / "final" for s in cfg.stages}
    if all((f / MANIFEST).is_file() for f in finals.values()):
        log.info(f"train: reusing {out}")
        if on_poll is not None:
            on_poll(progress(cfg))  # a reused run is a finished one
    elif ray is not None and "training" in ray.stages:
        from flows.ray_jobs import JobSpec, run_job, write_job_config

        r, on_ray_train = ray.training, cfg.distributed is not None and ray.launcher == "ray"
        gpus = r.num_gpus if r.num_gpus is not None else 0 if compute.device == "cpu" or on_ray_train else \
            (cfg.nproc or 1)
        job = write_job_config(cfg, out.with_name(out.name + ".ray-job.yaml"))
        argv = ["train", "--config", str(job)]
        if on_ray_train:  # the job is the driver; Ray Train places the nproc workers on the cluster
            argv += ["--launcher", "ray", *(["--storage", ray.storage] if ray.storage else [])]
        info, run_id = _ray_log()
        run_job(ray, JobSpec(argv, out.name, r.num_cpus, gpus), info, run_id,
                on_poll=(lambda: on_poll(progress(cfg))) if on_poll else None, poll_s=poll_s)
        missing = [s for s, f in finals.items() if not (f / MANIFEST).is_file()]
        if missing:
            raise RuntimeError(f"train: the Ray job succeeded but {out} has no final {missing[0]} checkpoint here: "
                               "is the run's directory on storage the cluster shares (ray.working_dir)?")
    else:
        log.info(f"train: {', '.join(cfg.stages)} in a child process -> {out} (log: {out / 'train.log'})")
        finals = run_training(cfg, out, poll_s=poll_s, on_poll=on_poll)
    manifests = {s: read_manifest(f, kind="checkpoint").data for s, f in finals.items()}
    for s, d in manifests.items():
        log.info(f"train {s}: loss {d['first_loss']:.3f} -> {d['last_loss']:.3f} in {d['steps']} steps"
                 + (f" (resumed from {Path(d['resumed_from']).name})" if d["resumed_from"] else ""))
    final = finals[cfg.stages[-1]]
    if cfg.lora:  # WSD and validation need full weights
        from training.merge import merged

        final = merged(final)
    return TrainingResult(str(final), manifests, str(out))


@task(name="wsd", **NETWORK)
def wsd_task(pilot: ModelSource, base: ModelSource, prompts: str, wsd, root: str, compute: Compute) -> str:
    """WSD's answers to the pipeline's prompts with one base; returns the output file."""
    from pilot_core.prompts import load_prompts
    from wsd_inference.runner import generate_to_file

    key = stage_key("wsd", wsd.model_dump(mode="json"), {"pilot": source_identity(pilot), "base":
                    source_identity(base), "prompts": files_identity([prompts]),
                    "compute": compute.resolve().identity()})
    out = stage_dir(root, "wsd", key) / f"{base.name}.jsonl"  # resumable: done ids are skipped
    s = generate_to_file(pilot, base, load_prompts(prompts), wsd, out, compute, progress=_progress())
    get_run_logger().info(f"wsd {pilot.name} -> {base.name}: {s.new} new prompts, {s.switched} switched to the "
                          f"base, mean kept draft {s.mean_kept_draft_tokens:.1f} tokens, mean base continuation "
                          f"{s.mean_base_tokens:.1f} tokens -> {out}")
    return s.output


@task(name="validate", **NETWORK)
def validate_task(spec, checkpoint: str, bases: list[ModelSource], root: str, pilot_name: str,
                  compute: Compute, ray: RayJobs | None = None) -> str:
    """Validate the checkpoint into its stage directory, here or (ray) as a Ray job running `pilot validate` on the
    cluster; returns that directory (its report.json says more)."""
    from evaluation.validate import validate
    from flows.validate_cli import summary_lines
    from pilot_core.report import load_report

    key = stage_key("validation", identity(spec),
                    {"checkpoint": dir_identity(checkpoint), "bases": [source_identity(b) for b in bases],
                     "eval_sets": files_identity([p for es in [*spec.eval_sets, *(spec.sweep.eval_sets if spec.sweep
                                                                                else [])]
                                                  for p in (es.path, es.few_shot_path, es.baseline_path) if p]),
                     "compute": compute.resolve().identity()})  # the calibration split's files too
    out = stage_dir(root, "validation", key)  # generations resume; a finished report is returned as it is
    if ray is not None and "validation" in ray.stages and not (out / "report.json").is_file():
        from evaluation.config import ValidationConfig
        from flows.ray_jobs import JobSpec, run_job, write_job_config

        job = write_job_config(ValidationConfig(**dict(spec), name=pilot_name, bases=bases),
                               out.with_name(out.name + ".ray-job.yaml"))
        argv = ["validate", "--config", str(job), "--checkpoint", checkpoint, "--output", str(out),
                *(x for k, v in compute.model_dump().items() if v is not None
                  for x in (f"--{k.replace('_', '-')}", str(v)))]
        info, run_id = _ray_log()
        r = ray.validation
        run_job(ray, JobSpec(argv, out.name, r.num_cpus, r.num_gpus or 0.0), info, run_id)
        if not (out / "report.json").is_file():
            raise RuntimeError(f"validate: the Ray job succeeded but {out} has no report.json here: is the run's "
                               "directory on storage the cluster shares (ray.working_dir)?")
        report = load_report(out)
    else:
        report = validate(spec, checkpoint, bases, out, pilot_name=pilot_name, compute=compute,
                          progress=_progress())
    get_run_logger().info("validate:\n" + "\n".join(summary_lines(report, str(out))))
    return str(out)


@task(name="gate", **LOCAL)
def gate_task(report_dir: str, release):
    from release.publish import gate_report

    verdict = gate_report(report_dir, release)
    n = len(verdict.passing_bases) + len(verdict.failing_bases)
    get_run_logger().info(f"gate: {'passed' if verdict.passed else 'failed'} ({len(verdict.passing_bases)} "
                          f"of {n} bases pass)")
    return verdict


@task(name="publish", **NETWORK)
def publish_task(checkpoint: str, report_dir: str, release, approval: Approval | None = None) -> Published:
    from release.publish import publish

    sign_off = approval and {"by": approval.by, "at": approval.at, "note": approval.note}  # what release.json keeps
    r = publish(checkpoint, report_dir, release, push=release.hub is not None, sign_off=sign_off)
    log = get_run_logger()
    if r.already:
        log.info(f"release: this checkpoint is already published as {release.name} {r.version} -> {r.path}")
    else:
        log.info(f"release: published {release.name} {r.version} -> {r.path}"
                 + (f" (signed off by {approval.by})" if approval else ""))
    return r
