"""The data team's review of a curated dataset.

`export_review` writes a reviewable subset: a stratified sample of kept rows (per source and category) and of
the rejects (per stage and reason), as review.html (review_page: decide each row in the page, save the decisions
file) and review.csv / review.jsonl with empty `decision` and `note` columns for a spreadsheet (approve/reject).
`import_review` applies a filled-in file: a rejected kept row moves to `excluded` with stage and reason
`review`; the dataset directory is rewritten atomically and its manifest records who reviewed, when, and what.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from data_curation.decision import DROP_COLUMNS, Drop
from data_curation.review_file import (
    EXPORT,
    check_export,
    check_texts,
    export_tag,
    imported_before,
    read_decisions,
    stratified_sample,
    write_review,
)
from data_curation.review_page import Column, PageSpec, render_page
from data_curation.writer import write_dataset
from pilot_core.errors import UserError
from pilot_core.manifest import fingerprint, read_manifest

FIELDS = ("id", "set", "source", "category", "stage", "reason", "score", "harm_tags", "pii", "text", "decision",
          "note", EXPORT)
KIND = "prompts"


def _tables(dataset: Path):
    import pyarrow.parquet as pq

    manifest = read_manifest(dataset, kind="dataset")
    if "preferences" in manifest.data:  # rewritten as a curated dataset it would lose its splits
        raise UserError(f"{dataset}: a preferences directory: review its pairs with `pilot review export-pairs` / "
                        "`import-pairs`; `pilot review export` / `import` take a curated dataset")
    return pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet")


def export_review(dataset: str | Path, out: str | Path, per_stratum: int = 10, rejects_per_reason: int = 10,
                  seed: int = 0) -> dict:
    dataset, out = Path(dataset), Path(out)
    kept, excl = _tables(dataset)
    cols = ["id", "source", "category", "harm_tags", "pii", "text"]
    kept_rows = stratified_sample(kept.select(cols).to_pylist(), lambda r: (r["source"], r["category"]),
                                  per_stratum, seed)
    excl_rows = stratified_sample(excl.to_pylist(), lambda r: (r["stage"], r["reason"]), rejects_per_reason, seed)
    rows = [{"id": r["id"], "set": "kept", "source": r["source"], "category": r["category"], "stage": "",
             "reason": "", "score": "", "harm_tags": ",".join(r["harm_tags"] or []), "pii": ",".join(r["pii"] or []),
             "text": r["text"], "decision": "", "note": "",
             "stratum": f"kept: {r['source']} / {r['category']}"} for r in kept_rows]
    rows += [{"id": r["id"], "set": "excluded", "source": r["source"], "category": r.get("category") or "",
              "stage": r["stage"], "reason": r["reason"], "score": "" if r["score"] is None else r["score"],
              "harm_tags": ",".join(r.get("harm_tags") or []), "pii": ",".join(r.get("pii") or []),
              "text": r.get("text") or (r.get("detail") or ""), "decision": "", "note": "",
              "stratum": f"excluded: {r['stage']} / {r['reason']}"} for r in excl_rows]
    fp = fingerprint(dataset / "prompts.parquet")
    for r in rows:
        r[EXPORT] = export_tag(KIND, fp)
    meta = {"dataset": str(dataset), "dataset_fingerprint": fp, "rows": len(rows), "kept_sampled": len(kept_rows),
            "excluded_sampled": len(excl_rows)}
    write_review(out, FIELDS, rows, _page(dataset.name, rows, fp), meta)
    return {"output": str(out), **meta}


def _page(title: str, rows: list[dict], fp: str) -> str:
    spec = PageSpec(
        title=title,
        intro="A stratified sample of the kept rows (per source and category) and of the rejects (per stage and "
              "reason). Approve or reject each row (a rejected kept row leaves the dataset with reason review, an "
              "approved excluded row comes back into it); "
              "filter to a stratum to decide it whole. Save, then run pilot review import DATASET --decisions "
              "review.csv.",
        columns=(Column("id", "id"), Column("set", "set"), Column("source", "source"),
                 Column("category", "category"), Column("stage", "stage"), Column("reason", "reason"),
                 Column("score", "score", "num"), Column("harm_tags", "harm tags"), Column("pii", "pii"),
                 Column("text", "text", "text")),
        filters=("set", "stratum", "source", "category", "stage", "reason", "harm_tags", "pii"),
        tags=("harm_tags", "pii"), decisions=("approve", "reject"), fields=FIELDS, file_name="review.csv",
        storage_key=f"pilot-review:prompts:{fp}")
    return render_page(spec, rows)


def import_review(dataset: str | Path, decisions: str | Path, reviewer: str) -> dict:
    """Apply a decisions file exported from this dataset as it is now: a rejected kept row moves to excluded
    (stage and reason review, the reviewer and note in its detail); an approved excluded row comes back (the
    reviewer, note and the exclusion it undid in the manifest); a rejected excluded row stays out (confirmed)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    dataset, decisions = Path(dataset), Path(decisions)
    if not reviewer.strip():
        raise UserError("--reviewer: give the reviewer's name")
    kept, excl = _tables(dataset)
    manifest = read_manifest(dataset, kind="dataset")
    rows = read_decisions(decisions, ("approve", "reject"), texts=("text",))
    done = imported_before(manifest.data.get("reviews", []), decisions)
    if done is not None:  # the same file again (a retried task): it is in already
        return {**done, "already": True}
    check_export(decisions, rows, KIND, fingerprint(dataset / "prompts.parquet"), dataset)
    kept_ids, excl_rows = set(kept["id"].to_pylist()), {r["id"]: r for r in excl.to_pylist()}
    for r in rows:
        if r["id"] not in kept_ids and r["id"] not in excl_rows:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} is not in {dataset}")
    current = {i: {"text": t} for i, t in zip(kept["id"].to_pylist(), kept["text"].to_pylist())}
    current |= {i: {"text": x.get("text") or x.get("detail") or ""} for i, x in excl_rows.items()}
    check_texts(decisions, rows, current)
    restore = {r["id"]: r for r in rows if r["decision"] == "approve" and r["id"] in excl_rows}
    for r in restore.values():
        if excl_rows[r["id"]].get("messages") is None:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} was excluded at {excl_rows[r['id']]['stage']} "
                            "before it was read as a prompt: it cannot come back")
    reject = {r["id"]: r["note"] for r in rows if r["decision"] == "reject" and r["id"] in kept_ids}
    moved = kept.filter(pc.is_in(kept["id"], pa.array(sorted(reject), pa.string())))
    kept = kept.filter(pc.invert(pc.is_in(kept["id"], pa.array(sorted(reject), pa.string()))))
    back = excl.filter(pc.is_in(excl["id"], pa.array(sorted(restore), pa.string())))
    excl = excl.filter(pc.invert(pc.is_in(excl["id"], pa.array(sorted(restore), pa.string()))))
    if back.num_rows:
        kept = pa.concat_tables([kept, back.select(kept.column_names).cast(kept.schema)])
    if moved.num_rows:
        drops = [Drop("review", "review", detail=f"{reviewer}: {reject[i]}".rstrip(": "))
                 for i in moved["id"].to_pylist()]
        for k in DROP_COLUMNS:
            moved = moved.append_column(k, pa.array([getattr(d, k) for d in drops],
                                                    pa.float64() if k == "score" else pa.string()))
        excl = pa.concat_tables([excl, moved.select(excl.column_names).cast(excl.schema)])
    restored = [{"id": i, "stage": excl_rows[i]["stage"], "reason": excl_rows[i]["reason"], "note": r["note"]}
                for i, r in sorted(restore.items())]
    entry = {"reviewer": reviewer, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "decisions_file": decisions.name, "decisions_fingerprint": fingerprint(decisions),
             "approved": sum(r["decision"] == "approve" and r["id"] in kept_ids for r in rows),
             "rejected": moved.num_rows, "restored": restored,
             "exclusions_confirmed": sum(r["decision"] == "reject" and r["id"] in excl_rows for r in rows),
             "undecided": sum(r["decision"] == "" for r in rows)}
    data = dict(manifest.data)
    data["reviews"] = [*data.get("reviews", []), entry]
    per_source = {k: dict(v) for k, v in data["per_source"].items()}
    excluded = {st: dict(by) for st, by in data["excluded"].items()}
    for src in moved["source"].to_pylist():
        per_source[src]["kept"] -= 1
        per_source[src]["excluded"] += 1
    for x in restored:
        per_source[excl_rows[x["id"]]["source"]]["kept"] += 1
        per_source[excl_rows[x["id"]]["source"]]["excluded"] -= 1
        excluded[x["stage"]][x["reason"]] -= 1
    if moved.num_rows:
        excluded.setdefault("review", {})["review"] = excluded.get("review", {}).get("review", 0) + moved.num_rows
    data.update(per_source=per_source, excluded=excluded, kept=kept.num_rows, excluded_total=excl.num_rows)
    card = (dataset / "README.md").read_text(encoding="utf-8")
    card += (f"\n## Review\n\n{reviewer} reviewed on {entry['at']}: {entry['approved']} approved, "
             f"{entry['rejected']} rejected (moved to excluded with reason `review`), {len(restored)} excluded "
             f"rows restored, {entry['exclusions_confirmed']} exclusions confirmed.\n")
    card += "".join(f"- restored `{x['id']}` (excluded at {x['stage']}: {x['reason']})"
                    + (f": {x['note']}" if x["note"] else "") + "\n" for x in restored)
    write_dataset(dataset, kept, excl, manifest.model_copy(update={"data": data}), card, overwrite=True)
    return entry
