"""`curate()`: one curation run (or a replay of new thresholds on a finished run's stored scores) into a
versioned dataset directory. Library code: the CLI and the Prefect flow both call this."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from data_curation.config import CurationConfig
from data_curation.decision import DROP_COLUMNS, EXCLUDED_KEYS, ROW_KEYS
from data_curation.filters import MEASURES
from data_curation.pipeline import decide, load_and_score, output_dir, previous_versions
from data_curation.writer import data_card, write_dataset
from pilot_core.errors import UserError
from pilot_core.manifest import Manifest, config_hash, read_manifest

KEPT_COLUMNS = (*ROW_KEYS, "source_fingerprint", "messages", "text", "original", "category_given", *MEASURES)


@dataclass(frozen=True)
class CurationSummary:
    """What a curation run reports: the dataset directory and where its rows went."""

    output: str
    read: int
    kept: int
    excluded_total: int
    excluded: dict[str, dict[str, int]]  # stage -> reason -> rows
    already_done: bool = False  # the directory was this very run's, finished earlier: nothing was redone

    @classmethod
    def of(cls, output: str | Path, data: dict, already_done: bool = False) -> CurationSummary:
        """From a run's counts, or a finished dataset's manifest data (which holds them)."""
        return cls(str(output), data["read"], data["kept"], data["excluded_total"], data["excluded"], already_done)


def scoring_hash(cfg: CurationConfig) -> str:
    """What the stored scores depend on: a replay with other values here must recompute instead."""
    f = cfg.filters
    return config_hash({"sources": [s.model_dump(mode="json") for s in cfg.sources], "seed": cfg.seed,
                        "tokenizer": cfg.tokenizer.model_dump(mode="json") if cfg.tokenizer else None,
                        "max_chars": f.length.max_chars, "pii": f.pii.model_dump(mode="json"),
                        "language": (f.language.candidates, f.language.min_letters) if f.language else None,
                        "tagging": cfg.tagging.model_dump(mode="json", exclude={"labelled_set", "batch_size"})})


def _replayed(cfg: CurationConfig, prev: Path):
    """The scored rows and load-stage (and review) drops of a finished run, in canonical order."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    m = read_manifest(prev, kind="dataset")
    if m.data.get("scoring_hash") != scoring_hash(cfg):
        raise UserError(f"--replay {prev}: its scores were computed with other sources, tokenizer, PII or language "
                        "settings; run without --replay to recompute them")
    kept = pq.read_table(prev / "prompts.parquet")
    excl = pq.read_table(prev / "excluded.parquet")
    carried = excl.filter(pc.is_in(excl["stage"], pa.array(["load", "review"])))
    rescored = excl.filter(pc.invert(pc.is_in(excl["stage"], pa.array(["load", "review"])))).select(kept.column_names)
    table = pa.concat_tables([kept, rescored.cast(kept.schema)])
    order = {s.name: i for i, s in enumerate(cfg.sources)}
    sources, rows = table["source"].to_pylist(), table["row"].to_pylist()
    idx = sorted(range(table.num_rows), key=lambda i: (order[sources[i]], rows[i]))
    carried_rows = [{k: r.get(k) for k in EXCLUDED_KEYS} for r in carried.to_pylist()]
    read = {k: v["read"] for k, v in m.data["per_source"].items()}
    return datasets.Dataset(table.take(pa.array(idx, pa.int64()))), carried_rows, m.inputs, read


def curate(cfg: CurationConfig, output: str | None = None, previous: list[str] | None = None,
           replay: str | None = None, overwrite: bool = False, progress: bool = True) -> CurationSummary:
    import pyarrow as pa

    check_inputs(cfg)
    out = output_dir(cfg, output)
    prev = previous_versions(cfg, out, previous)
    if out.exists() and not overwrite:
        done = None if replay else _already_done(cfg, out, prev)
        if done is None:
            raise UserError(f"{out} already exists (published versions are immutable; choose another output or "
                            "version)")
        return done
    if replay:
        ds, load_drops, inputs, read = _replayed(cfg, Path(replay))
    else:
        ds, load_drops, inputs, read = load_and_score(cfg, progress)
    table = ds.with_format("arrow")[:]
    d = decide(cfg, table, prev, progress)
    keep_idx = [i for i, x in enumerate(d.drops) if x is None]
    drop_idx = [i for i, x in enumerate(d.drops) if x is not None]
    columns = [*KEPT_COLUMNS, *(["labelled_pair"] if "labelled_pair" in table.column_names else [])]
    kept = table.select(columns).take(pa.array(keep_idx, pa.int64()))
    scored_drops = table.select(columns).take(pa.array(drop_idx, pa.int64()))
    for name in DROP_COLUMNS:
        typ = pa.float64() if name == "score" else pa.string()
        scored_drops = scored_drops.append_column(name, pa.array([getattr(d.drops[i], name) for i in drop_idx], typ))
    loaded = pa.Table.from_pylist([{k: r.get(k) for k in EXCLUDED_KEYS} for r in load_drops],
                                  schema=pa.schema([(k, scored_drops.schema.field(k).type) for k in EXCLUDED_KEYS]))
    excluded = pa.concat_tables([scored_drops.select(list(EXCLUDED_KEYS) + columns[len(ROW_KEYS):]),
                                 loaded], promote_options="default")

    counts = _counts(cfg, read, kept, excluded, d, prev)
    if counts["read"] != counts["kept"] + counts["excluded_total"]:  # every row is accounted for
        raise AssertionError(f"row accounting is off: {counts['read']} read, {counts['kept']} kept, "
                             f"{counts['excluded_total']} excluded")
    manifest = Manifest(kind="dataset", config_hash=config_hash(cfg), config=cfg.model_dump(mode="json"),
                        inputs=_inputs(inputs, d.stats["reference_sets"]),
                        data={**counts, "scoring_hash": scoring_hash(cfg), "replayed_from": replay,
                              "lsh_bands_rows": d.stats["lsh_bands_rows"]})
    write_dataset(out, kept, excluded, manifest, data_card(cfg.name, out.name, cfg, counts), overwrite)
    return CurationSummary.of(out, counts)


def check_inputs(cfg: CurationConfig) -> None:
    """Files the run reads only after loading and scoring every source, checked first: a wrong path is one
    error at once, not after minutes of work."""
    from pilot_core.models.files import is_local

    for p in cfg.decontamination.reference_sets:
        if not Path(p).is_file():
            raise UserError(f"decontamination reference set {p}: file not found")
    for b in cfg.decontamination.benchmarks:
        if b.path and not Path(b.path).is_file():
            raise UserError(f"decontamination benchmark {b.format} {b.path}: file not found")
    if cfg.tagging.labelled_set:
        from data_curation.tagging import labelled_path

        labelled_path(cfg.tagging.labelled_set)
    tok = cfg.tokenizer
    if tok is not None and tok.path is not None and is_local(tok.path) and not Path(tok.path).exists():
        raise UserError(f"curation tokenizer {tok.path}: not found")


def _inputs(sources: dict[str, str], references: dict[str, str]) -> dict[str, str]:
    """The manifest's input identities: each source's fingerprint by name, each reference set's by file name."""
    return {**sources, **{f"reference:{name}": fp for name, fp in references.items()}}


def _already_done(cfg: CurationConfig, out: Path, prev: list[Path]) -> CurationSummary | None:
    """The summary of `out` when it is this very run's finished dataset (same config, source and reference files,
    previous versions): a rerun after a crash that came after the rename has nothing to do. Else None."""
    from data_curation.sources import source_fingerprint

    try:
        m = read_manifest(out, kind="dataset")
    except UserError:
        return None
    from data_curation.decontam import references

    inputs = _inputs({s.name: source_fingerprint(s) for s in cfg.sources},
                     {name: fp for name, fp, _ in references(cfg.decontamination, read=False)})
    d = m.data or {}
    if (m.config_hash, m.inputs, d.get("previous_versions"), d.get("replayed_from")) != \
            (config_hash(cfg), inputs, [str(p) for p in prev], None):
        return None
    return CurationSummary.of(out, d, already_done=True)


def _counts(cfg: CurationConfig, read: dict, kept, excluded, d, prev: list[Path]) -> dict:
    stages: dict[str, Counter] = {}
    for stage, reason in zip(excluded["stage"].to_pylist(), excluded["reason"].to_pylist()):
        stages.setdefault(stage, Counter())[reason] += 1
    per_source = {s.name: {"read": read[s.name], "kept": 0, "excluded": 0} for s in cfg.sources}
    for s in kept["source"].to_pylist():
        per_source[s]["kept"] += 1
    for s in excluded["source"].to_pylist():
        per_source[s]["excluded"] += 1
    return {"read": sum(read.values()), "kept": kept.num_rows, "excluded_total": excluded.num_rows,
            "excluded": {k: dict(v) for k, v in stages.items()}, "per_source": per_source,
            "languages": dict(Counter(kept["lang"].to_pylist())),
            "categories": dict(Counter(kept["category"].to_pylist())),
            "harm_tags": dict(Counter(t for tags in kept["harm_tags"].to_pylist() for t in tags)),
            "pii": dict(Counter(t for tags in kept["pii"].to_pylist() for t in tags)),
            "previous_versions": [str(p) for p in prev], "previous_rows_indexed": d.stats["previous_rows_indexed"],
            "reference_sets": d.stats["reference_sets"], "reference_prompts": d.stats["reference_prompts"],
            "mix": d.stats["mix"], "tagging": _tagging_quality(cfg)}


def _tagging_quality(cfg: CurationConfig) -> dict | None:
    """The configured tagger's precision and recall on its labelled set (None when none is configured)."""
    from data_curation.tagging import labelled_path, make_tagger, measure

    t = cfg.tagging
    return measure(make_tagger(t), labelled_path(t.labelled_set)) if t.labelled_set else None
