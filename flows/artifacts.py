"""What the Prefect UI shows for a pipeline run: one artifact per stage under a stable key (`<pipeline>-<stage>`),
so the UI keeps each key's history across scheduled runs. Presentation only: the numbers come from the
library's manifests and reports."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING

from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)

if TYPE_CHECKING:
    from data_curation.preferences import PreferencesSummary
    from data_curation.run import CurationSummary
    from release.publish import Published


def key(pipeline: str, what: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-{what}".lower()).strip("-")


def curation(pipeline: str, summary: CurationSummary, review_page: str | None) -> None:
    rows = [{"stage": "kept", "reason": "", "rows": summary.kept}]
    rows += [{"stage": stage, "reason": reason, "rows": n}
             for stage, reasons in sorted(summary.excluded.items()) for reason, n in sorted(reasons.items())]
    create_table_artifact(rows, key=key(pipeline, "curation"),
                          description=f"GenerAlign curation: kept {summary.kept} of {summary.read} prompts "
                                      f"-> {summary.output}")
    if review_page:
        create_link_artifact(Path(review_page).resolve().as_uri(), link_text="review page",
                             key=key(pipeline, "review"), description="sampled kept and excluded rows for the "
                             "data team (review.csv beside it takes the decisions)")


def preferences(pipeline: str, s: PreferencesSummary, review_page: str | None = None) -> None:
    create_table_artifact([{"prompts": s.prompts, "responses": s.responses, "response_failures": s.response_failures,
                            "sft": s.sft, "dpo": s.dpo}],
                          key=key(pipeline, "preferences"), description=f"preference data -> {s.output}")
    if review_page:
        create_link_artifact(Path(review_page).resolve().as_uri(), link_text="pair review page",
                             key=key(pipeline, "pair-review"), description="sampled preference pairs for the data "
                             "team (approve, reject or flip; the saved review.csv takes the decisions)")


class TrainingProgress:
    """A progress artifact (0-100 over all stages' steps) updated as the trainer's checkpoints appear."""

    def __init__(self, pipeline: str, stages: list[str]):
        self.stages = stages
        self.id = create_progress_artifact(0.0, key=key(pipeline, "training-progress"),
                                           description="training steps done, over all stages")

    def __call__(self, progress: dict) -> None:
        done = sum(1.0 if p["done"] else (p["step"] or 0) / max(p["max_steps"] or 1, 1) for p in progress.values())
        update_progress_artifact(self.id, round(100.0 * done / len(self.stages), 1))


def training(pipeline: str, manifests: dict[str, dict]) -> None:
    rows = [{"stage": s, "steps": d["steps"], "first_loss": d["first_loss"], "last_loss": d["last_loss"],
             "train_loss": d["train_loss"], "resumed_from": d["resumed_from"] or ""} for s, d in manifests.items()]
    create_table_artifact(rows, key=key(pipeline, "training"), description="pilot training (TRL), per stage")


def _inline_plots(md: str, report_dir: Path) -> str:
    """The UI cannot read the worker's disk: plots go into the markdown as data URIs."""
    def embed(m: re.Match) -> str:
        png = report_dir / m.group(2)
        if not png.is_file():
            return m.group(0)
        return f"![{m.group(1)}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"

    return re.sub(r"!\[([^\]]*)\]\((plots/[^)]+\.png)\)", embed, md)


def validation(pipeline: str, report_dir: str) -> None:
    d = Path(report_dir)
    create_markdown_artifact(_inline_plots((d / "report.md").read_text(encoding="utf-8"), d),
                             key=key(pipeline, "validation"), description=f"validation report -> {d}")


def gate(pipeline: str, verdict) -> None:
    lines = [f"# Gate: {'passed' if verdict.passed else 'FAILED'}", ""]
    lines += [f"- {r}" for r in verdict.reasons]
    create_markdown_artifact("\n".join(lines) + "\n", key=key(pipeline, "gate"),
                             description="release gate verdict" + ("" if verdict.passed else ": nothing published"))


def release(pipeline: str, name: str, result: Published) -> None:
    what = "already published as" if result.already else "published"
    create_markdown_artifact(f"# {name} {result.version}\n\n{what} {name} {result.version} -> `{result.path}`\n"
                             + (f"\npushed: {result.pushed}\n" if result.pushed else ""),
                             key=key(pipeline, "release"), description="the published version")
