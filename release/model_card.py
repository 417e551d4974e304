"""The model card of a published version: `huggingface_hub.ModelCard` with model-index metadata (the gated
method's and base-only's results per base model and eval set, each with its source) and a readable body."""

from __future__ import annotations

import json
import re
from pathlib import Path

from pilot_core.hub_items import pinned_in
from pilot_core.report import GateVerdict, ValidationReport, switch_settings_md
from release.config import CardConfig

TAGS = ["weak-to-strong-decoding", "wsd", "pilot-model", "alignment"]


def _hub_id(name: str | None) -> str | None:
    """A hub model id (owner/name), or None for a local path or a tiny test model."""
    return name if name and re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", name) \
        and not Path(name).exists() else None


def _dataset(manifest) -> dict:
    path = (manifest.config or {}).get("dataset")
    info = {"path": path, "fingerprint": manifest.inputs.get("dataset")}
    mf = Path(path) / "manifest.json" if path else None
    if mf and mf.is_file():
        data = json.loads(mf.read_text())
        info["name"] = (data.get("config") or {}).get("name") or Path(path).name
        info["hub"] = data.get("hub") or {}
    return info


def build_card(report: ValidationReport, verdict: GateVerdict, manifest, card: CardConfig, name: str, version: str,
               repo_id: str | None = None) -> str:
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    model = (manifest.config or {}).get("model") or {}
    start = model.get("path") or model.get("name")
    ds = _dataset(manifest)
    method = verdict.method
    source = (f"https://huggingface.co/{repo_id}/blob/{version}/validation/report.json" if repo_id
              else "validation/report.json")  # the report ships with the version
    results = []
    for base in report.metrics:
        for m in (method, report.reference_method):
            for s, cell in sorted(report.cells(base, m).items()):
                es = report.eval_sets[s]
                for metric, stat in sorted(cell.items()):
                    if stat.mean is None:
                        continue
                    results.append(EvalResult(
                        task_type="text-generation", task_name=f"{m} with base {base}",
                        dataset_type=f"pilot-eval/{s}", dataset_name=f"{s} {es.version}",
                        dataset_config=f"{m}, base {base}",  # one model-index entry per method and base
                        dataset_revision=es.sha256[:12], metric_type=metric,
                        metric_name=f"{metric} ({m}, base {base})", metric_value=round(stat.mean, 4),
                        source_name="pilot validate", source_url=source))
    data = ModelCardData(model_name=f"{name}-{version}", license=card.license, language=card.language,
                         base_model=_hub_id(start), datasets=[ds["name"]] if _hub_id(ds.get("name")) else None,
                         tags=TAGS, library_name="transformers", pipeline_tag="text-generation",
                         eval_results=results or None)
    rows = []
    for base in report.metrics:
        for s, cell in sorted(report.cells(base, method).items()):
            ref = report.cells(base, report.reference_method).get(s, {})
            for metric, stat in sorted(cell.items()):
                r = ref[metric].mean if metric in ref else None
                rows.append(f"| {base} | {s} | {metric} | {stat.mean:.4f} (n={stat.n}) | "
                            f"{'–' if r is None else f'{r:.4f}'} |")
    sets = ", ".join(f"{s} {e.version} (sha256 {e.sha256[:12]}, {e.n} items)" for s, e in report.eval_sets.items())
    wsd = report.config["wsd"]
    setting = (f"window w={wsd['window']}, threshold γ={wsd['threshold']}" if not report.switch_settings else
               "the switch setting chosen for each base below, shipped in `wsd.json`")
    switch = "\n".join(switch_settings_md(report.switch_settings, "validation/plots/switch_sweep.png"))
    bases = "\n".join(f"- `{b}`: {json.dumps(src, sort_keys=True)}" for b, src in report.bases.items())
    hub = {**ds.get("hub", {}), **manifest.hub, **pinned_in([report.config, report.bases])}
    hub_md = ("\n## Hub revisions\nEvery hub model and dataset it was made and validated with, at the commit read "
              "(`pilot fetch` locks them):\n" + "\n".join(f"- `{r}`: `{c}`" for r, c in sorted(hub.items())) + "\n"
              if hub else "")
    body = f"""
# {name} {version}

A pilot model for Weak-to-Strong Decoding (WSD): it drafts the beginning of an aligned answer and a larger,
unaligned base model continues once it is confident ({setting}).
{switch}
## Intended use
{card.intended_use}

## Limitations
{card.limitations}

## Training
- Started from: `{start}`
- Dataset: `{ds.get('name') or ds['path']}` (sha256 `{(ds['fingerprint'] or '')[:16]}`)
- Training config hash: `{manifest.config_hash}`; last stage `{manifest.data.get('stage')}`,
  seed {manifest.data.get('seed')}

## Validation
Validated with these base models:
{bases}

Eval sets: {sets}.
Gate: **{'passed' if verdict.passed else 'FAILED'}** ({len(verdict.passing_bases)} of
{len(verdict.passing_bases) + len(verdict.failing_bases)} bases pass; {verdict.required_bases} required).
The full report is in `validation/report.md`.

| base | eval set | metric | {method} | base-only |
|---|---|---|---|---|
{chr(10).join(rows)}
{hub_md}
## License
{card.license}
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))  # parsing it back checks the metadata
