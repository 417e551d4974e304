"""`pilot run` (the pipeline flow, here and now), `pilot serve` (on a schedule) and `pilot approval` (answer a
paused run). Prefect is imported inside the commands: `pilot --help` stays fast."""

from __future__ import annotations

import contextlib
import logging
import os

import click

from flows.validate_cli import UNSAFE_HELP
from pilot_core.errors import JobFailed, UserError

CONFIG_HELP = "configs/pipeline/*.yaml"
SET_HELP = "override a config key, e.g. --set wsd.threshold=0.7 (repeatable)"


def _prefect_env() -> None:
    """Defaults for a CLI run: no telemetry (offline), and time for the ephemeral API to start on a busy
    2-core machine (Prefect's default of 20 s is tight there)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


class _KnownErrorsWithoutTraceback(logging.Filter):
    """Bad input and decided failures are one line in Prefect's logs too; the CLI prints the error once more,
    last. Other exceptions keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], (UserError, JobFailed)):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_known_errors() -> None:
    f = _KnownErrorsWithoutTraceback()
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        for h in logging.getLogger(name).handlers:
            h.addFilter(f)


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def _load(config_path: str, overrides: tuple[str, ...]):
    """The config and the files it names, checked before Prefect starts: bad input is exit 2 and one line."""
    from flows.pipeline_config import PipelineConfig, check_inputs
    from pilot_core.config import load_config

    cfg = load_config(PipelineConfig, config_path, overrides)
    check_inputs(cfg)
    return cfg


@click.command()
@click.option("--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--unsafe-code-execution", is_flag=True, help=UNSAFE_HELP)
@click.option("--plan", "plan_only", is_flag=True, help="print each stage's calls, tokens, money and hours and the "
              "run against its schedule's period, then exit: nothing runs, no model loads")
@click.option("--json", "as_json", is_flag=True, help="with --plan: the plan as JSON")
@click.option("--strategy", type=click.Choice(["screened", "round_robin"]), help="with --plan: plan the preference "
              "judge with this strategy instead of the recipe's")
@click.option("--prompt-tokens", type=int, default=256, show_default=True, help="with --plan: mean prompt tokens")
@click.option("--response-fill", type=float, default=1.0, show_default=True, help="with --plan: responses and "
              "verdicts as this share of their max_tokens (1.0: the upper bound)")
@click.option("--close-fraction", type=float, default=0.25, show_default=True, help="with --plan: share of pairs "
              "a screened judge still judges pairwise")
@click.option("--prompts", "n_prompts", type=int, help="with --plan: prompts after the mix (default: mix.total)")
def run(config_path: str, overrides: tuple[str, ...], unsafe_code_execution: bool, plan_only: bool, as_json: bool,
        strategy: str | None, prompt_tokens: int, response_fill: float, close_fraction: float,
        n_prompts: int | None) -> None:
    """Run the pipeline flow now: on the Prefect server at PREFECT_API_URL, or on an ephemeral local API that
    ends with the run. A rerun reuses the stages an earlier run finished. With --plan: the plan, nothing run."""
    if unsafe_code_execution:
        overrides = (*overrides, "validation.unsafe_code_execution=true")
    if plan_only:
        return _plan(config_path, overrides, as_json, strategy, prompt_tokens, response_fill, close_fraction,
                     n_prompts)
    cfg = _load(config_path, overrides)
    _prefect_env()
    from flows.ephemeral_api import ephemeral_api
    from flows.pipeline import pipeline

    if (cfg.approvals.curation or cfg.approvals.release) and not _api_url():
        raise UserError("approvals pause the run until someone answers, which needs a Prefect server: start one "
                        "(`prefect server start`) and set PREFECT_API_URL, or remove the approvals section")
    _quiet_known_errors()
    with contextlib.nullcontext() if _api_url() else ephemeral_api():
        state = pipeline(config=config_path, overrides=list(overrides), return_state=True)
        if not state.is_completed():
            exc = state.result(raise_on_failure=False)
            if isinstance(exc, BaseException):
                raise exc
            raise JobFailed(f"pipeline {cfg.name}: {state.name}: {state.message}")
        out = state.result()
    click.echo(f"pipeline {cfg.name}: done (stage directories under {out.root})")
    for label, path in (("dataset", out.dataset), ("review page", out.review_page), ("preferences", out.preferences),
                        ("checkpoint", out.checkpoint), ("report", out.report and f"{out.report}/report.md")):
        if path:
            click.echo(f"  {label + ':':<16} {path}")
    for base, path in out.wsd.items():
        click.echo(f"  {'wsd ' + base + ':':<16} {path}")
    if out.release is not None:
        r = out.release
        click.echo(f"  {'published:':<16} {cfg.release.name} {r.version} -> {r.path}"
                   + (" (already published)" if r.already else ""))


def _plan(config_path, overrides, as_json, strategy, prompt_tokens, response_fill, close_fraction, n_prompts):
    """The config validated (bad: exit 2), then the plan printed; no Prefect, no models, no input files read
    beyond local eval sets' line counts."""
    import json

    from flows.pipeline_config import PipelineConfig
    from flows.plan import Assumptions, plan, render
    from pilot_core.config import load_config

    if prompt_tokens < 1 or not 0 < response_fill <= 1 or not 0 <= close_fraction <= 1 or (n_prompts or 1) < 1:
        raise UserError("--prompt-tokens >= 1, 0 < --response-fill <= 1, 0 <= --close-fraction <= 1, --prompts >= 1")
    cfg = load_config(PipelineConfig, config_path, overrides)
    p = plan(cfg, config_path, Assumptions(prompt_tokens, response_fill, close_fraction, n_prompts), strategy)
    click.echo(json.dumps(p.as_dict(), indent=1) if as_json else render(p))


@click.command()
@click.option("--config", "config_path", required=True, help=CONFIG_HELP)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=SET_HELP)
@click.option("--cron", help="a cron schedule, e.g. '0 3 * * 1' (Mondays 03:00)")
@click.option("--interval", type=int, help="or: every N seconds")
@click.option("--timezone", "tz", default="UTC", show_default=True)
@click.option("--name", help="deployment name (default: the pipeline's name)")
def serve(config_path, overrides, cron, interval, tz, name) -> None:
    """Serve the pipeline as a scheduled deployment from this process (Ctrl-C stops it). Needs a Prefect server
    (PREFECT_API_URL): an ephemeral API cannot schedule. For work pools, see prefect.yaml."""
    from pilot_core.names import validate_name

    cfg = _load(config_path, overrides)
    if (cron is None) == (interval is None):
        raise UserError("give exactly one of --cron and --interval")
    if interval is not None and interval < 1:
        raise UserError(f"--interval {interval}: give a number of seconds >= 1")
    _prefect_env()
    from prefect.client.schemas.schedules import construct_schedule

    try:
        schedule = construct_schedule(cron=cron, interval=interval, timezone=tz)
    except ValueError as e:  # pydantic names the bad cron string or time zone
        why = [x for x in str(e).splitlines() if "error," in x] or [str(e)]
        raise UserError(f"--cron/--timezone: {why[0].split(' [type=')[0].split('error, ', 1)[-1]}") from None
    if not _api_url():
        raise UserError("pilot serve needs a Prefect server: start one (`prefect server start`) and set "
                        "PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    from flows.pipeline import pipeline

    pipeline.serve(name=validate_name(name or cfg.name, "deployment name"), schedules=[schedule],
                   parameters={"config": config_path, "overrides": list(overrides)}, tags=["pilot", cfg.name],
                   description=f"Pilot pipeline {cfg.name} ({config_path})")


@click.group()
def approval() -> None:
    """Answer a run paused for the data team's approval or the release owner's sign-off."""


@approval.command("list")
def approval_list() -> None:
    """Runs waiting for a decision: id, name, what they wait for."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    _prefect_env()
    if not _api_url():
        raise UserError("set PREFECT_API_URL to the Prefect server the paused runs are on")
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.PAUSED]))))
    for r in runs:
        click.echo(f"{r.id}  {r.name:<24} waits for: {r.state.state_details.pause_key}")
    if not runs:
        click.echo("no paused runs")


def _decide(run_id: str, approved: bool, by: str, note: str, decisions: str | None) -> None:
    from uuid import UUID

    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    try:
        rid = UUID(run_id)
    except ValueError:
        raise UserError(f"RUN_ID {run_id!r}: not a flow run id (see `pilot approval list`)") from None
    if not by.strip():
        raise UserError("--by: say who decides")
    if decisions is not None:
        from pathlib import Path

        if not Path(decisions).is_file():
            raise UserError(f"--decisions {decisions}: file not found")
        decisions = str(Path(decisions).resolve())  # the run may work in another directory
    _prefect_env()
    if not _api_url():
        raise UserError("set PREFECT_API_URL to the Prefect server the paused run is on")
    try:
        resume_flow_run(rid, run_input={"approved": approved, "by": by, "note": note, "decisions": decisions})
    except ObjectNotFound:
        raise UserError(f"no flow run {run_id} on {_api_url()}") from None
    except NotPausedError:
        raise UserError(f"flow run {run_id} is not paused (nothing to decide)") from None
    except FlowPauseTimeout:
        raise JobFailed(f"flow run {run_id} timed out waiting; rerun the pipeline to ask again") from None
    click.echo(f"{'approved' if approved else 'rejected'}: flow run {run_id} resumes")


_by = click.option("--by", required=True, help="who decides (recorded with the run and the release)")
_note = click.option("--note", default="", help="why")


@approval.command("approve")
@click.argument("run_id")
@_by
@_note
@click.option("--decisions", type=click.Path(), help="the review.csv saved from the review page the run waits on "
              "(curation: rejected rows move to excluded; preferences: rejected pairs leave the dpo split, flipped "
              "ones swap) before training")
def approval_approve(run_id, by, note, decisions) -> None:
    """Approve: the run continues."""
    _decide(run_id, True, by, note, decisions)


@approval.command("reject")
@click.argument("run_id")
@_by
@_note
def approval_reject(run_id, by, note) -> None:
    """Reject: the run fails with your note; nothing after this point runs."""
    _decide(run_id, False, by, note, None)
