"""The validation report: report.json (every figure, with the eval sets' hashes, the models and the seeds),
report.md (tables a release owner reads) and plots/*.png. report.json is written last, atomically."""

from __future__ import annotations

import json
from pathlib import Path

from pilot_core.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from pilot_core.errors import UserError

METRIC_TITLES = {"reward": "Reward-model score", "win_rate": "Win rate vs base-only (ties = 1/2)",
                 "harmlessness": "Harmlessness rate (harmful prompts)", "accuracy": "Accuracy (capability sets)"}
REQUIRED = ("kind", "schema", "checkpoint", "eval_sets", "bases", "methods", "metrics", "alignment_tax", "config_hash")


def load_report(path: str | Path) -> dict:
    """A report directory (or its report.json), checked enough that the gate can trust its shape."""
    p = Path(path)
    p = p / "report.json" if p.is_dir() else p
    if not p.is_file():
        raise UserError(f"{path}: no validation report (report.json); run `pilot validate` first")
    try:
        rep = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a readable report: {str(e).splitlines()[0]}") from None
    if not isinstance(rep, dict) or rep.get("kind") != "validation_report":
        raise UserError(f"{p}: not a validation report (kind is not 'validation_report')")
    missing = [k for k in REQUIRED if k not in rep]
    if missing:
        raise UserError(f"{p}: malformed report: missing {', '.join(missing)}")
    if rep["schema"] != 1:
        raise UserError(f"{p}: report schema {rep['schema']!r} is not supported (expected 1)")
    if not isinstance(rep["checkpoint"], dict) or not isinstance(rep["checkpoint"].get("fingerprint"), str):
        raise UserError(f"{p}: malformed report: checkpoint.fingerprint missing")
    return rep


def _fmt(stat: dict | None, pct: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f"{f(stat['mean'])} [{f(stat['ci_low'])}, {f(stat['ci_high'])}] (n={stat['n']})"


def _sets_with(report: dict, metric: str) -> list[str]:
    return sorted({s for by_m in report["metrics"].values() for by_s in by_m.values()
                   for s, cell in by_s.items() if metric in cell})


def markdown(report: dict, verdict: dict | None = None) -> str:
    ck = report["checkpoint"]
    conf = int(round(100 * next((c["confidence"] for by_m in report["metrics"].values() for by_s in by_m.values()
                                 for cell in by_s.values() for c in cell.values()), 0.95)))
    out = [f"# Validation report: {report['pilot']}", "",
           f"Checkpoint `{ck['path']}` (sha256 `{ck['fingerprint'][:16]}`), bases: "
           + ", ".join(f"`{b}`" for b in report["bases"]) + f"; methods: {', '.join(report['methods'])}. "
           f"Figures are means with {conf}% bootstrap intervals and the number of items.", ""]
    if verdict is not None:
        out += [f"## Gate: {'PASSED' if verdict['passed'] else 'FAILED'}", ""]
        out += [f"- {r}" for r in verdict["reasons"]] + [""]
    out += ["## Eval sets", "", "| set | kind | version | items | sha256 |", "|---|---|---|---|---|"]
    out += [f"| {n} | {s['kind']} | {s['version']} | {s['n']} | `{s['sha256'][:12]}` |"
            for n, s in report["eval_sets"].items()] + [""]
    for metric, title in METRIC_TITLES.items():
        sets = _sets_with(report, metric)
        if not sets:
            continue
        pct = metric != "reward"
        out += [f"## {title}", "", "| base | method | " + " | ".join(sets) + " |", "|---|---|" + "---|" * len(sets)]
        for base, by_m in report["metrics"].items():
            for method, by_s in by_m.items():
                if any(metric in by_s.get(s, {}) for s in sets):
                    out.append(f"| {base} | {method} | " + " | ".join(_fmt(by_s.get(s, {}).get(metric), pct)
                                                                  for s in sets) + " |")
        out += ["", f"![{metric}](plots/{metric}.png)", ""]
    if report["alignment_tax"]:
        out += ["## Alignment tax (base-only accuracy minus the method's; > 0 is capability lost)", "",
                "| base | method | set | tax |", "|---|---|---|---|"]
        out += [f"| {b} | {m} | {s} | {_fmt(t, pct=True)} |" for b, by_m in report["alignment_tax"].items()
                for m, by_s in by_m.items() for s, t in by_s.items()] + [""]
    wsd = [(b, s, d) for b, by_m in report["diagnostics"].items() for s, d in by_m.get("wsd", {}).items()]
    if wsd:
        out += ["## WSD diagnostics", "", "| base | set | switched | never switched | mean draft | mean kept draft "
                "| mean base tokens | time/item |", "|---|---|---|---|---|---|---|---|"]
        out += [f"| {b} | {s} | {d['switched_share']:.0%} | {d['never_switched_share']:.0%} | "
                f"{d['mean_draft_tokens']:.1f} | {d['mean_kept_draft_tokens']:.1f} | {d['mean_base_tokens']:.1f} | "
                f"{d['mean_time_s']:.2f} s |" for b, s, d in wsd]
        out += ["", "![switch index](plots/switch_index.png)", ""]
    j = report["judges"]
    notes = []
    if j.get("win_rate") and j["win_rate"]["kind"] == "reward_model":
        notes.append("Win rates come from a reward-model comparison, a stand-in for an LLM judge.")
    if j.get("win_rate") and j["win_rate"]["kind"] == "rules":
        notes.append("Win rates come from the demo's refusal rule (a refusal wins on a harmful prompt, an answer "
                     "wins elsewhere; equal verdicts tie), a stand-in for an LLM judge that ignores quality.")
    if j.get("harmlessness") and j["harmlessness"]["kind"] == "refusal_rules":
        notes.append("Harmlessness comes from refusal phrases (a strict stand-in: a safe answer that does not "
                     "refuse counts as unsafe).")
    out += ["## Judges", "", *notes, "", f"Judge counts: `{json.dumps(j['counts'])}`", ""]
    return "\n".join(out)


def _bars(report: dict, metric: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    sets = _sets_with(report, metric)
    bases, methods = list(report["metrics"]), report["methods"]
    fig, axes = plt.subplots(1, len(sets), figsize=(4.5 * len(sets), 3.4), squeeze=False)
    width = 0.8 / len(methods)
    for ax, s in zip(axes[0], sets):
        for k, method in enumerate(methods):
            cells = [report["metrics"][b].get(method, {}).get(s, {}).get(metric) for b in bases]
            xs = [i + (k - (len(methods) - 1) / 2) * width for i in range(len(bases))]
            means = [c["mean"] if c and c["mean"] is not None else 0.0 for c in cells]
            err = [[m - (c["ci_low"] if c and c["ci_low"] is not None else m) for m, c in zip(means, cells)],
                   [(c["ci_high"] if c and c["ci_high"] is not None else m) - m for m, c in zip(means, cells)]]
            ax.bar(xs, means, width, yerr=err, capsize=2, label=method)
        ax.set_xticks(range(len(bases)), bases)
        ax.set_title(s)
    axes[0][0].set_ylabel(METRIC_TITLES[metric])
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _switch_hist(report: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    drawn = False
    for base, by_m in report["diagnostics"].items():
        idx = [i for d in by_m.get("wsd", {}).values() for i in d["switch_indices"]]
        never = sum(round(d["never_switched_share"] * d["n"]) for d in by_m.get("wsd", {}).values())
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


def write_plots(report: dict, plots: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    plots.mkdir(parents=True, exist_ok=True)
    for metric in METRIC_TITLES:
        if _sets_with(report, metric):
            _bars(report, metric, plots / f"{metric}.png")
    if any("wsd" in by_m for by_m in report["diagnostics"].values()):
        _switch_hist(report, plots / "switch_index.png")


def write_report(output: Path, report: dict, rows: list[dict]) -> None:
    atomic_write_bytes(output / "items.jsonl",
                       "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8"))
    write_plots(report, output / "plots")
    atomic_write_text(output / "report.md", markdown(report))
    atomic_write_json(output / "report.json", report)
