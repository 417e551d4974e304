"""People in the loop: the run pauses with a typed form (Prefect's `pause_flow_run(wait_for_input=...)`) until
the data team approves the curated subset or the preference pairs, or the release owner signs off a release.

An answer comes from the Prefect UI's form or from `pilot approval approve|reject RUN_ID`. An approval is
recorded beside the stage it approves (`<run root>/approvals/<what>-<key>.json`), so a rerun of the same data
does not ask twice; a rejection or a timeout fails the run, and a rerun asks again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from prefect import get_run_logger
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from pilot_core.atomic import atomic_write_json
from pilot_core.errors import JobFailed


class Decision(RunInput):
    """The form: approve or reject, who decides, why, and (curation, preferences) the review.csv saved from the
    review page, to import."""

    approved: bool
    by: str
    note: str = ""
    decisions: str | None = None


@dataclass(frozen=True)
class Approval:
    """An approved Decision on `what` about `stage`, as recorded beside the stage (every field but `earlier`)."""

    what: str
    approved: bool
    by: str
    note: str
    decisions: str | None
    at: str
    stage: str
    earlier: bool = False  # read from an earlier run's record: already acted on


def _record(what: str, stage_dir: str) -> Path:
    return Path(stage_dir).parent / "approvals" / f"{what}-{Path(stage_dir).name}.json"


def remember(approval: Approval) -> None:
    """Record an approval once it has been acted on (a crash before this asks again, never skips the act)."""
    atomic_write_json(_record(approval.what, approval.stage),
                      {k: v for k, v in asdict(approval).items() if k != "earlier"})


def ask(what: str, stage_dir: str, description: str, timeout_s: int, poll_s: int) -> Approval:
    """Pause for a Decision on `what` (curation | preferences | release) about `stage_dir`; returns it (with
    earlier=True when it was recorded by an earlier run). A rejection or no answer within timeout_s raises
    JobFailed."""
    log = get_run_logger()
    record = _record(what, stage_dir)
    if record.is_file():
        earlier = Approval(**json.loads(record.read_text()), earlier=True)
        log.info(f"{what}: approved earlier by {earlier.by} at {earlier.at} ({record})")
        return earlier
    log.info(f"{what}: waiting for a decision (Prefect UI, or `pilot approval approve|reject <flow run id>`); "
             f"timeout {timeout_s} s")
    try:
        d = pause_flow_run(wait_for_input=Decision.with_initial_data(description=description, approved=False, by=""),
                           timeout=timeout_s, poll_interval=poll_s, key=what)
    except FlowPauseTimeout:
        raise JobFailed(f"{what}: no decision within {timeout_s} s; rerun to ask again (finished stages are "
                        "reused)") from None
    by = d.by.strip()
    if not by:
        raise JobFailed(f"{what}: a decision must say who made it (`by`)")
    if not d.approved:
        raise JobFailed(f"{what} rejected by {by}" + (f": {d.note}" if d.note else ""))
    log.info(f"{what}: approved by {by}" + (f": {d.note}" if d.note else ""))
    return Approval(what=what, approved=d.approved, by=by, note=d.note, decisions=d.decisions,
                    at=datetime.now(timezone.utc).isoformat(timespec="seconds"), stage=str(stage_dir))
