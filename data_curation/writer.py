"""The dataset directory: prompts.parquet and excluded.parquet (for pandas / DuckDB), the same tables as a
`datasets` DatasetDict under dataset/ (splits prompts, excluded), manifest.json and a README.md data card.
Written into a temporary directory and renamed when complete."""

from __future__ import annotations

from pathlib import Path

from pilot_core.atomic import atomic_dir, atomic_write_text
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, write_manifest


def write_dataset(out: Path, kept, excluded, manifest: Manifest, card: str, overwrite: bool = False,
                  extra: dict | None = None, splits: tuple[str, ...] = ()) -> Path:
    """`extra` tables are written as <name>.parquet; those named in `splits` join the DatasetDict too."""
    import datasets
    import pyarrow.parquet as pq

    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (published versions are immutable; choose another output or "
                        "version)")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        pq.write_table(kept, tmp / "prompts.parquet")
        pq.write_table(excluded, tmp / "excluded.parquet")
        for name, table in (extra or {}).items():
            pq.write_table(table, tmp / f"{name}.parquet")
        fp = (manifest.config_hash or "")[:16]
        tables = {"prompts": kept, "excluded": excluded, **{k: (extra or {})[k] for k in splits}}
        # an empty split needs an explicit shard, or datasets writes no data file and cannot load it back
        datasets.DatasetDict({k: datasets.Dataset(t, fingerprint=f"{fp}-{k}") for k, t in tables.items()}
                             ).save_to_disk(str(tmp / "dataset"),
                                            num_shards={k: 1 for k, t in tables.items() if t.num_rows == 0} or None)
        atomic_write_text(tmp / "README.md", card)
        write_manifest(tmp, manifest)
    return out


def _table(counter: dict, head: tuple[str, str], limit: int = 20) -> str:
    rows = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return "\n".join([f"| {head[0]} | {head[1]} |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]) + "\n"


def _tagging(q: dict | None, kind: str) -> str:
    if not q:
        return f"Harm tags by the {kind} tagger (not measured on a labelled set).\n"
    pct = (lambda v: "n/a" if v is None else f"{v:.0%}")  # noqa: E731
    return (f"Harm tags by the {q['tagger']} tagger. On the labelled set `{q['set']}` ({q['n']} prompts, sha256 "
            f"`{q['sha256'][:12]}`): precision {pct(q['precision'])}, recall {pct(q['recall'])} for harmful "
            f"({q['false_positives']} false positives, {q['false_negatives']} missed); exact tags on "
            f"{pct(q['exact_tags'])} of the harmful prompts.\n")


def data_card(name: str, version: str, cfg, counts: dict) -> str:
    """A README.md a reviewer can read without opening the tables."""
    f = cfg.filters
    how = "under the pilot chat template" if cfg.tokenizer else "estimated as characters / 4: no tokenizer given"
    lines = [
        f"# {name} {version}",
        "",
        "GenerAlign prompts for training pilot models (general harmlessness, helpfulness and honesty), curated by "
        "`pilot curate`. Harmful prompts are kept on purpose and tagged (`harm_tags`): the pilot learns to refuse "
        "them. `prompts.parquet` holds the kept rows, `excluded.parquet` every dropped row with its stage and "
        "reason; `dataset/` holds both as a `datasets` DatasetDict.",
        "",
        f"**{counts['kept']} kept** of {counts['read']} rows read ({counts['excluded_total']} excluded).",
        "",
        "## Sources",
        "",
        "| source | file | read | kept | excluded |",
        "|---|---|---:|---:|---:|",
        *(f"| {s.name} | `{Path(s.path).name}` ({s.kind}) | {counts['per_source'][s.name]['read']} | "
          f"{counts['per_source'][s.name]['kept']} | {counts['per_source'][s.name]['excluded']} |"
          for s in cfg.sources),
        "",
        "## Why rows were dropped",
        "",
        "| stage | reason | rows |",
        "|---|---|---:|",
        *(f"| {stage} | {reason} | {n} |" for stage, reasons in counts["excluded"].items()
          for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "",
        "## Filters",
        "",
        f"- length: {f.length.min_tokens}-{f.length.max_tokens} tokens ({how}); rows over {f.length.max_chars} "
        "characters are dropped when read",
        f"- language: keep {', '.join(f.language.keep)} (lingua, among {len(f.language.candidates)} languages; "
        f"texts with fewer than {f.language.min_letters} letters are not identified)" if f.language else
        "- language: off",
        f"- quality: repetition <= {f.quality.max_repetition}, symbol ratio <= {f.quality.max_symbol_ratio}, "
        f"boilerplate {'dropped' if f.quality.boilerplate else 'kept'}",
        f"- PII ({', '.join(f.pii.kinds)}): {f.pii.action}",
        f"- dedup: exact {'on' if cfg.dedup.exact else 'off'}; near {'on' if cfg.dedup.near else 'off'} "
        f"(MinHash LSH, Jaccard >= {cfg.dedup.threshold}, {cfg.dedup.num_perm} permutations, word "
        f"{cfg.dedup.ngram}-grams); against {len(counts['previous_versions'])} earlier version(s)",
        f"- decontamination: {cfg.decontamination.ngram}-gram overlap >= {cfg.decontamination.max_overlap} against "
        + (", ".join(f"`{k}`" for k in counts["reference_sets"]) or "no reference sets"),
        "",
        "## Kept rows",
        "",
        _table(counts["languages"], ("language", "rows")),
        _table(counts["categories"], ("category", "rows")),
        _table(counts["harm_tags"], ("harm tag", "rows")) if counts["harm_tags"] else "No harm tags.\n",
        _tagging(counts.get("tagging"), cfg.tagging.kind),
        _table(counts["pii"], ("PII kind", f"rows ({f.pii.action})")) if counts["pii"] else "No PII found.\n",
        "Produced with the config recorded in `manifest.json` (its hash, source fingerprints and package versions).",
        "",
    ]
    return "\n".join(lines)
