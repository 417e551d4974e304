"""Choosing WSD's switch setting per base from a sweep on a calibration split (`EvalSpec.sweep`): what each setting
measured (`point`), which one wins (`choose`), and what a user is warned of. The runs themselves are validation's
(evaluation/validate.py `_sweep`); the release ships the choice as wsd.json (release/registry.py)."""

from __future__ import annotations

import math

import numpy as np

from pilot_core.method_record import MethodRecord
from pilot_core.report import SweepPoint, SwitchChoice, intervention_warning

ALIGNMENT_METRICS = ("win_rate", "harmlessness")  # higher is more aligned, both in [0, 1]


def point(rule: str, window: int, threshold: float, cells: dict, tax: dict, records: list[MethodRecord]) -> SweepPoint:
    """One setting's figures: `cells` set -> metric -> Stat (WSD on the calibration sets), `tax` capability set ->
    Stat, `records` WSD's answers on every calibration set."""
    per_set = [[c[m].mean for m in ALIGNMENT_METRICS if m in c and c[m].mean is not None] for c in cells.values()]
    aligned = [float(np.mean(x)) for x in per_set if x]  # each set once, whatever number of figures it has
    taxes = [t.mean for t in tax.values() if t.mean is not None]
    n = max(len(records), 1)
    drafted = sum(r.pilot_tokens for r in records)
    kept = sum(r.wsd.kept_draft_tokens for r in records)
    base = sum(r.base_tokens for r in records)
    where = [r.wsd.switch_index for r in records if r.wsd.switched]
    q = dict(zip(("p10", "p50", "p90"), (float(x) for x in np.quantile(where, [0.1, 0.5, 0.9])))) if where else {}
    return SweepPoint(rule=rule, window=window, threshold=threshold,
                      alignment=float(np.mean(aligned)) if aligned else None,
                      tax=max(taxes) if taxes else None, switched_share=len(where) / n,
                      drafted_share=drafted / max(drafted + base, 1),
                      intervention_rate=kept / max(kept + base, 1), switch_index_quantiles=q)


def choose(points: list[SweepPoint], max_tax: float) -> SwitchChoice:
    """The most aligned setting whose tax is within `max_tax` (ties: fewer pilot tokens, i.e. the earlier switch,
    then the lower threshold); where none is, the one with the lowest tax, marked `within_limit` False. Alignment
    is the mean over the calibration's alignment and harmful sets of each set's mean figure (`point`)."""
    within = [p for p in points if p.tax is not None and p.tax <= max_tax + 1e-12]  # unmeasured: not within
    if within:
        best = min(within, key=lambda p: (-(p.alignment if p.alignment is not None else -1.0),
                                          p.drafted_share, p.threshold, p.window, p.rule))
    else:
        best = min(points, key=lambda p: (p.tax if p.tax is not None else math.inf, -(p.alignment or 0.0),
                                          p.drafted_share, p.threshold))
    warnings = []
    if not within:
        lowest = "unmeasured" if best.tax is None else f"{best.tax:.3f}"
        warnings.append(f"no setting kept the alignment tax within {max_tax:g} on the calibration split (the "
                        f"lowest: {lowest}); the gate will measure it on the eval sets")
    if best.alignment is None:
        warnings.append("no alignment figure was measured on the calibration split: the setting was chosen on "
                        "cost alone")
    if intervention_warning(best.intervention_rate):
        warnings.append(intervention_warning(best.intervention_rate))
    return SwitchChoice(rule=best.rule, window=best.window, threshold=best.threshold, max_tax=max_tax,
                        within_limit=bool(within), chosen=best, sweep=points, warnings=warnings)


def plot(choices: dict[str, SwitchChoice], path) -> None:
    """The sweep's curve per base: alignment, tax and the intervention rate against the threshold, one line each
    per (rule, window); the chosen setting marked, the tax limit drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(choices), figsize=(5 * len(choices), 3.6), squeeze=False)
    for ax, (base, c) in zip(axes[0], choices.items()):
        for key in sorted({(p.rule, p.window) for p in c.sweep}):
            pts = sorted((p for p in c.sweep if (p.rule, p.window) == key), key=lambda p: p.threshold)
            ax.plot([p.threshold for p in pts], [p.alignment for p in pts], marker="o", label=f"{key[0]} w={key[1]}")
            ax.plot([p.threshold for p in pts], [p.tax for p in pts], marker="x", linestyle="--",
                    label=f"tax ({key[0]} w={key[1]})")
            ax.plot([p.threshold for p in pts], [p.intervention_rate for p in pts], marker=".", linestyle=":",
                    label=f"intervention ({key[0]} w={key[1]})")
        ax.axhline(c.max_tax, color="grey", linewidth=0.8)
        ax.scatter([c.threshold], [c.chosen.alignment], s=160, facecolors="none", edgecolors="red", zorder=3)
        ax.set_title(f"{base}: chosen {c.rule} w={c.window} gamma={c.threshold:g}", fontsize=9)
        ax.set_xlabel("threshold (gamma)")
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
