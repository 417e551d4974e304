"""The curation run: sources -> scores -> filter checks -> dedup -> decontamination -> mix -> dataset directory.

Every row that is read ends either in `prompts` or in `excluded` with the stage and reason that dropped it
(`curate` checks that the counts add up). Rows are visited in a canonical order (sources in config order,
then row order), so the same inputs and config always give the same output.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_curation.config import CurationConfig
from data_curation.decision import Drop
from data_curation.decontam import Decontaminator
from data_curation.dedup import Deduplicator
from data_curation.filters import MEASURES, category, drop_reason, score_batch, score_features
from data_curation.sources import read_source
from data_curation.tagging import Tagger, make_tagger
from pilot_core.errors import UserError
from pilot_core.manifest import read_manifest
from pilot_core.names import safe_join


@dataclass
class Decisions:
    """What happened to each scored row: None (kept) or the Drop that excluded it."""

    drops: list[Drop | None]
    stats: dict = field(default_factory=dict)


def output_dir(cfg: CurationConfig, output: str | None = None) -> Path:
    """--output as given, else output_dir/name/version (the next vN when version is null)."""
    if output:
        return Path(output)
    root = safe_join(Path(cfg.output_dir), cfg.name, what="dataset name")
    if cfg.version:
        return safe_join(root, cfg.version, what="dataset version")
    taken = [int(p.name[1:]) for p in root.glob("v*") if p.name[1:].isdigit()] if root.is_dir() else []
    return root / f"v{max(taken, default=0) + 1}"


def previous_versions(cfg: CurationConfig, out: Path, given: list[str] | None = None) -> list[Path]:
    """Earlier published versions to deduplicate against (complete dataset directories only)."""
    if given is not None:
        dirs = [Path(p) for p in given]
    elif cfg.dedup.previous == "auto":
        root = out.parent
        dirs = sorted((p for p in root.glob("v*") if p.is_dir() and p != out and (p / "manifest.json").is_file()),
                      key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else 0) if root.is_dir() else []
    else:
        dirs = [Path(p) for p in cfg.dedup.previous]
    for d in dirs:
        read_manifest(d, kind="dataset")  # a half-written or foreign directory is refused
    return dirs


def load_and_score(cfg: CurationConfig, progress: bool = True):
    """(scored datasets.Dataset in canonical order, load-stage excluded rows, source fingerprints, rows read per
    source)."""
    import datasets

    rows, excluded, fps, read = [], [], {}, {}
    for src in cfg.sources:
        kept, dropped, fps[src.name] = read_source(src, cfg.filters.length.max_chars, cfg.seed)
        read[src.name] = len(kept) + len(dropped)
        rows += kept
        excluded += dropped
    if not any(r["labelled_pair"] for r in rows):  # the column only where some source labels pairs
        for r in rows:
            del r["labelled_pair"]
    if not rows:
        raise UserError("no usable rows in any source (see the load-stage reasons: "
                        + ", ".join(f"{k} x{v}" for k, v in Counter(r["reason"] for r in excluded).items()) + ")")
    if not progress:
        datasets.disable_progress_bars()
    tok = cfg.tokenizer.local_path() if cfg.tokenizer else None
    ds = datasets.Dataset.from_list(rows)
    ds = ds.cast_column("category_given", datasets.Value("string"))  # all-null in a source without categories
    ds = ds.map(score_batch, batched=True, batch_size=512, num_proc=cfg.num_proc if len(rows) > 2048 else None,
                features=score_features(ds.features),
                fn_kwargs={"filters": cfg.filters.model_dump(mode="json"), "tokenizer_path": tok,
                           "tokenizer_revision": cfg.tokenizer.revision if cfg.tokenizer else None},
                desc="normalise + score", new_fingerprint=_fingerprint(cfg, fps))
    if cfg.tagging.kind != "rules":  # the rules tagged while scoring; another tagger fills the same columns
        ds = retag(ds, make_tagger(cfg.tagging))
    return ds, excluded, fps, read


def retag(ds, tagger: Tagger):
    """harm_tags (and the category harmful, where no source gave one) from `tagger`."""
    tags = tagger.tags(ds["text"])
    cats = [category(t, h, g) for t, h, g in zip(ds["text"], tags, ds["category_given"])]
    feats = ds.features
    return (ds.remove_columns(["harm_tags", "category"])
            .add_column("harm_tags", tags, feature=feats["harm_tags"])
            .add_column("category", cats, feature=feats["category"]))


def _fingerprint(cfg: CurationConfig, fps: dict) -> str:
    return hashlib.sha256(repr((cfg.model_dump(mode="json"), sorted(fps.items()))).encode()).hexdigest()[:16]


def decide(cfg: CurationConfig, table, previous: list[Path], progress: bool = True) -> Decisions:
    """Filter checks, then dedup (against earlier versions first), then decontamination, then the mix, over the
    scored rows as an Arrow table (whole columns as Python lists: a datasets Column indexes row by row)."""
    from tqdm import tqdm

    cols = {c: table.column(c).to_pylist() for c in ("id", "source", "text", *MEASURES)}
    n = len(cols["id"])
    drops: list[Drop | None] = [drop_reason({c: cols[c][i] for c in MEASURES}, cfg.filters) for i in range(n)]

    dedup = Deduplicator(cfg.dedup)
    indexed = 0
    for d in previous:
        import pyarrow.parquet as pq

        t = pq.read_table(d / "prompts.parquet", columns=["id", "text"])
        for rid, text in zip(t.column("id").to_pylist(), t.column("text").to_pylist()):
            dedup.check(f"{d.name}/{rid}", text)
            indexed += 1
    d = cfg.decontamination
    decon = Decontaminator(d) if d.reference_sets or d.benchmarks else None
    for i in tqdm(range(n), desc="dedup + decontaminate", unit="row", disable=not progress):
        if drops[i] is not None:
            continue
        drops[i] = dedup.check(cols["id"][i], cols["text"][i]) if (cfg.dedup.exact or cfg.dedup.near) else None
        if drops[i] is None and decon is not None:
            drops[i] = decon.check(cols["text"][i])
    mix = _mix(cfg, cols["id"], cols["source"], drops)
    return Decisions(drops, {"previous_rows_indexed": indexed, "lsh_bands_rows": dedup.bands_rows,
                             "reference_prompts": decon.prompts if decon else 0,
                             "reference_sets": decon.fingerprints if decon else {}, "mix": mix})


def _mix(cfg: CurationConfig, ids: list[str], sources: list[str], drops: list) -> dict:
    """With mix.total: each source keeps round(total * weight / sum of weights) of its surviving rows, a seeded
    sample; a source with fewer rows keeps them all and its shortfall is reported, not filled by others."""
    if cfg.mix.total is None:
        return {}
    weights = {s.name: s.weight for s in cfg.sources}
    total_w = sum(weights.values())
    out = {}
    for name, w in weights.items():
        alive = [i for i in range(len(ids)) if sources[i] == name and drops[i] is None]
        target = round(cfg.mix.total * w / total_w)
        order = sorted(alive, key=lambda i: hashlib.sha256(f"{cfg.seed}:mix:{ids[i]}".encode()).digest())
        for i in order[target:]:
            drops[i] = Drop("mix", "over_source_share")
        out[name] = {"target": target, "kept": min(target, len(alive)), "available": len(alive)}
    return out
