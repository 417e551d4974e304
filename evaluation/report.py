"""Writing the validation report: items.jsonl (every response with its values), plots/*.png, report.md (tables a
release owner reads) and report.json (every figure, with the eval sets' hashes, the models and the seeds:
`pilot_core.report.ValidationReport`), written last, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from pilot_core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pilot_core.report import METRIC_TITLES, ValidationReport, markdown


def _bars(report: ValidationReport, metric: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    sets = report.sets_with(metric)
    bases, methods = list(report.metrics), report.methods
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.4), squeeze=False)
    width = 0.8 / len(methods)
    for ax, s in zip(axes[0], sets):
        for k, method in enumerate(methods):
            cells = [report.cells(b, method).get(s, {}).get(metric) for b in bases]
            xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(bases))]
            means = [c.mean if c and c.mean is not None else 0.0 for c in cells]
            err = [[m - (c.ci_low if c and c.ci_low is not None else m) for m, c in zip(means, cells)],
                   [(c.ci_high if c and c.ci_high is not None else m) - m for m, c in zip(means, cells)]]
            ax.bar(xs, means, width, yerr=err, capsize=2, label=method)
        ax.set_xticks(range(len(bases)), bases)
        ax.set_title(s)
    axes[0][0].set_ylabel(METRIC_TITLES[metric])
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _switch_hist(report: ValidationReport, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    drawn = False
    for base, by_m in report.diagnostics.items():
        drafts = [d for by_s in by_m.values() for d in by_s.values() if d.switched_share is not None]
        idx = [i for d in drafts for i in d.switch_indices]
        never = sum(round(d.never_switched_share * d.n) for d in drafts)
        if idx:
            ax.hist(idx, bins=min(20, max(idx) + 1), histtype="step", linewidth=1.5,
                    label=f"{base} (never switched: {never})")
            drawn = True
    if not drawn:
        ax.text(0.5, 0.5, "no prompt switched to the base", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("switch index (draft tokens kept - 1)")
    ax.set_ylabel("prompts")
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(report: ValidationReport, plots: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plots.mkdir(parents=True, exist_ok=True)
    for metric in METRIC_TITLES:
        if report.sets_with(metric):
            _bars(report, metric, plots / f"{metric}.png")
    if any(d.switched_share is not None for by_m in report.diagnostics.values() for by_s in by_m.values()
           for d in by_s.values()):
        _switch_hist(report, plots / "switch_index.png")
    if report.switch_settings:
        from evaluation.switch_sweep import plot

        plot(report.switch_settings, plots / "switch_sweep.png")


def write_report(output: Path, report: ValidationReport, rows: list[dict]) -> None:
    atomic_write_bytes(output / "items.jsonl",
                       "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    write_plots(report, output / "plots")
    atomic_write_text(output / "report.md", markdown(report))
    atomic_write_json(output / "report.json", report.to_json())
