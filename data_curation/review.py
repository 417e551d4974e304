"""The data team's review of a curated dataset.

`export_review` writes a reviewable subset: a stratified sample of kept rows (per source and category) and of
the rejects (per stage and reason), as review.html (review_page: decide each row in the page, save the decisions
file) and review.csv / review.jsonl with empty `decision` and `note` columns for a spreadsheet (approve/reject).
`import_review` applies a filled-in file: a rejected kept row moves to `excluded` with stage and reason
`review`; the dataset directory is rewritten atomically and its manifest records who reviewed, when, and what.
Several reviewers (shares of one export, an overlap for agreement, conflicts settled by an adjudicator) follow
the rules of `reviewers`: each reviewed row is placed from the review state on every import.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from data_curation.decision import Drop
from data_curation.review_file import (
    EXPORT,
    check_texts,
    export_tag,
    imported_before,
    read_decisions,
    stratified_sample,
    write_review,
)
from data_curation.review_page import Column, PageSpec, render_page
from data_curation.reviewers import (
    ADJUDICATOR,
    ReviewState,
    Settled,
    adjudication,
    card_section,
    check_accumulating,
    check_name,
    conflicts,
    export_parts,
    one_at_a_time,
    record,
    settle,
    state_meta,
    table_version,
    who,
    with_section,
)
from data_curation.writer import write_dataset
from pilot_core.errors import UserError
from pilot_core.manifest import fingerprint, read_manifest

FIELDS = ("id", "set", "source", "category", "stage", "reason", "score", "why", "harm_tags", "pii", "text",
          "decision", "note", "reviewer", EXPORT)
MEASURES = ("tokens", "lang", "lang_score", "repetition", "symbol_ratio")  # what the filters measured of a row
KIND = "prompts"
PREFIX = ""  # the review state's files: review_history.parquet, review_base.parquet
DECISIONS = ("approve", "reject")


def _tables(dataset: Path):
    import pyarrow.parquet as pq

    manifest = read_manifest(dataset, kind="dataset")
    if "preferences" in manifest.data:  # rewritten as a curated dataset it would lose its splits
        raise UserError(f"{dataset}: a preferences directory: review its pairs with `pilot review export-pairs` / "
                        "`import-pairs`; `pilot review export` / `import` take a curated dataset")
    return pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet")


def export_review(dataset: str | Path, out: str | Path, per_stratum: int = 10, rejects_per_reason: int = 10,
                  seed: int = 0, reviewers: tuple[str, ...] = (), overlap: int = 0) -> dict:
    """The sample as one set of files in `out`, or with `reviewers` one share each in out/<reviewer>/ (the
    `overlap` rows in every share)."""
    dataset, out = Path(dataset), Path(out)
    kept, excl = _tables(dataset)
    cols = ["id", "source", "category", "harm_tags", "pii", "text"] + [c for c in MEASURES if c in kept.column_names]
    kept_rows = stratified_sample(kept.select(cols).to_pylist(), lambda r: (r["source"], r["category"]),
                                  per_stratum, seed)
    excl_rows = stratified_sample(excl.to_pylist(), lambda r: (r["stage"], r["reason"]), rejects_per_reason, seed)
    rows = [{"id": r["id"], "set": "kept", "source": r["source"], "category": r["category"], "stage": "",
             "reason": "", "score": "", "harm_tags": ",".join(r["harm_tags"] or []), "pii": ",".join(r["pii"] or []),
             "text": r["text"], "decision": "", "note": "", "why": _why_kept(r),
             "stratum": f"kept: {r['source']} / {r['category']}"} for r in kept_rows]
    rows += [{"id": r["id"], "set": "excluded", "source": r["source"], "category": r.get("category") or "",
              "stage": r["stage"], "reason": r["reason"], "score": "" if r["score"] is None else r["score"],
              "harm_tags": ",".join(r.get("harm_tags") or []), "pii": ",".join(r.get("pii") or []),
              "text": r.get("text") or (r.get("detail") or ""), "decision": "", "note": "", "why": _why_excluded(r),
              "stratum": f"excluded: {r['stage']} / {r['reason']}"} for r in excl_rows]
    fp = fingerprint(dataset / "prompts.parquet")
    for r in rows:
        r[EXPORT] = export_tag(KIND, fp)
    parts, shares = export_parts(rows, reviewers, overlap, seed, lambda s, who: _page(dataset.name, s, fp, who))
    meta = {"dataset": str(dataset), "dataset_fingerprint": fp, "rows": len(rows), "kept_sampled": len(kept_rows),
            "excluded_sampled": len(excl_rows), **shares}
    write_review(out, FIELDS, parts, meta)
    return {"output": str(out), **meta}


def _why_kept(r: dict) -> str:
    """What the filters measured of a kept row (each passed), and its tags."""
    def num(k):
        return f"{r[k]:.2f}" if isinstance(r.get(k), float) else str(r.get(k))

    parts = [f"{r['tokens']} tokens" if r.get("tokens") is not None else "",
             f"language {r['lang']} ({num('lang_score')})" if r.get("lang") else "",
             f"repetition {num('repetition')}" if r.get("repetition") is not None else "",
             f"symbols {num('symbol_ratio')}" if r.get("symbol_ratio") is not None else "",
             f"harm tags {', '.join(r['harm_tags'])}" if r.get("harm_tags") else "",
             f"pii {', '.join(r['pii'])}" if r.get("pii") else ""]
    return "passed every filter: " + "; ".join(p for p in parts if p) if any(parts) else "passed every filter"


def _why_excluded(r: dict) -> str:
    """The check that dropped an excluded row: stage, reason, what it measured, what it matched."""
    score = r.get("score")
    return (f"{r['stage']}: {r['reason']}" + (f" (measured {score:.3g})" if score is not None else "")
            + (f", matches {r['matched']}" if r.get("matched") else "")
            + (f"; {r['detail']}" if r.get("detail") and r.get("text") else ""))


def _page(title: str, rows: list[dict], fp: str, reviewer: str = "") -> str:
    spec = PageSpec(
        title=title + (f" ({reviewer}'s share)" if reviewer else ""),
        intro="A stratified sample of the kept rows (per source and category) and of the rejects (per stage and "
              "reason). Approve or reject each row (a rejected kept row leaves the dataset with reason review, an "
              "approved excluded row comes back into it); "
              "filter to a stratum to decide it whole. Save, then run pilot review import DATASET --decisions "
              "review.csv.",
        columns=(Column("id", "id"), Column("set", "set"), Column("source", "source"),
                 Column("category", "category"), Column("stage", "stage"), Column("reason", "reason"),
                 Column("score", "score", "num"), Column("why", "why kept / excluded"),
                 Column("harm_tags", "harm tags"), Column("pii", "pii"),
                 Column("text", "text", "text")),
        filters=("set", "stratum", "source", "category", "stage", "reason", "harm_tags", "pii"),
        tags=("harm_tags", "pii"), decisions=DECISIONS, fields=FIELDS, file_name="review.csv",
        storage_key=f"pilot-review:prompts:{fp}" + (f":{reviewer}" if reviewer else ""))
    return render_page(spec, rows)


@one_at_a_time
def import_review(dataset: str | Path, decisions: str | Path, reviewer: str | None = None,
                  adjudicator: str | None = None) -> dict:
    """Add a decisions file exported from this dataset (as it is now, or an earlier export whose files still
    accumulate) to the review state, and place every reviewed row by its settled decision: a rejected kept row
    moves to excluded (stage and reason review, who and why in its detail); an approved excluded row comes back
    (the exclusion it undid in the manifest); a rejected excluded row stays out (confirmed); a row in conflict
    stays as it was before the review."""
    dataset, decisions = Path(dataset), Path(decisions)
    kept, excl = _tables(dataset)
    manifest = read_manifest(dataset, kind="dataset")
    rows = read_decisions(decisions, DECISIONS, texts=("text",))
    name, role = who(decisions, rows, reviewer, adjudicator)
    done = imported_before(manifest.data.get("reviews", []), decisions, name, role)
    if done is not None:  # the same file again (a retried task): it is in already
        return {**done, "already": True}
    state = ReviewState.load(dataset, PREFIX, manifest.data)
    check_accumulating(decisions, rows, KIND, fingerprint(dataset / "prompts.parquet"), dataset, state, kept)
    known = _rows(kept, excl, state, [r["id"] for r in rows])
    for r in rows:
        if r["id"] not in known:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} is not in {dataset}")
    check_texts(decisions, rows, {i: {"text": row.get("text") or row.get("detail") or ""}
                                  for i, (_, row) in known.items()})
    return _record(dataset, kept, excl, manifest, state, rows, known, name, role,
                   {"decisions_file": decisions.name, "decisions_fingerprint": fingerprint(decisions)}, decisions)


@one_at_a_time
def adjudicate_review(dataset: str | Path, rid: str, decision: str, adjudicator: str, note: str = "") -> dict:
    """An adjudicator decides one reviewed row (a conflict, usually); the decision wins and is recorded."""
    dataset = Path(dataset)
    kept, excl = _tables(dataset)
    manifest = read_manifest(dataset, kind="dataset")
    state = ReviewState.load(dataset, PREFIX, manifest.data)
    rows = adjudication(state, rid, decision, DECISIONS, note)
    return _record(dataset, kept, excl, manifest, state, rows, _rows(kept, excl, state, [rid]),
                   check_name(adjudicator, "--adjudicator"), ADJUDICATOR, {"decisions_file": None}, "--id")


def _rows(kept, excl, state: ReviewState, ids: list[str]) -> dict[str, tuple[str, dict]]:
    """{id: (table, row)} of the given ids as they were before the review (as they are, if not reviewed yet)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    want = pa.array(sorted(set(ids) - set(state.base)), pa.string())
    out = {r["id"]: ("kept", r) for r in kept.filter(pc.is_in(kept["id"], want)).to_pylist()}
    out |= {r["id"]: ("excluded", r) for r in excl.filter(pc.is_in(excl["id"], want)).to_pylist()}
    return out | {i: next(iter(state.base[i].items())) for i in ids if i in state.base}


def _record(dataset: Path, kept, excl, manifest, state: ReviewState, rows: list[dict], known: dict, name: str,
            role: str, source: dict, where: Path | str) -> dict:
    """Record the decisions, re-place the reviewed rows by what is settled, write the directory with its state."""
    for r in rows:
        table, row = known[r["id"]]
        if r["decision"] == "approve" and table == "excluded" and row.get("messages") is None:
            line = f":{r['line']}" if r["line"] else ""  # an adjudication has no line
            raise UserError(f"{where}{line}: id {r['id']!r} was excluded at {row['stage']} before it was read as a "
                            "prompt: it cannot come back")
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    events = record(state, rows, name, role, at, source)
    for r in rows:  # first decided: the row as it is now
        if r["decision"]:
            state.base.setdefault(r["id"], {known[r["id"]][0]: known[r["id"]][1]})
    settled = settle(state.history)
    kept, excl, moves = _apply(kept, excl, state.base, settled)
    state.written = table_version(kept)
    decided = [r for r in rows if r["decision"]]
    restored = [{"id": i, "stage": b["stage"], "reason": b["reason"], "note": settled[i].note}
                for i, _, to in moves if to[0] == "kept" and (b := state.base[i].get("excluded")) is not None]
    open_ = [c for c in conflicts(settled) if c["id"] in {r["id"] for r in decided}]
    entry = {"reviewer": name, "role": role, "at": at, **source,
             "approved": sum(r["decision"] == "approve" and "kept" in state.base[r["id"]] for r in decided),
             "rejected": sum(frm[0] == "kept" and to[0] == "excluded" and "kept" in state.base[i]
                             for i, frm, to in moves),
             "restored": restored,
             "exclusions_confirmed": sum(r["decision"] == "reject" and "excluded" in state.base[r["id"]]
                                         for r in decided),
             "reverted": sum(settled[i].decision is None for i, _, _ in moves),
             "conflicts": open_, "undecided": sum(not r["decision"] for r in rows), "new_decisions": len(events)}
    if not events:  # nothing this person had not decided already: nothing to write
        return {**entry, "unchanged": True}
    data = dict(manifest.data)
    data["reviews"] = [*data.get("reviews", []), entry]
    data.update(_counts(data, moves), kept=kept.num_rows, excluded_total=excl.num_rows)
    data[state.key] = state_meta(state, settled)
    card = (dataset / "README.md").read_text(encoding="utf-8")
    card += (f"\n## Review\n\n{name}{' (adjudicator)' if role == ADJUDICATOR else ''} reviewed on {at}: "
             f"{entry['approved']} approved, {entry['rejected']} rejected (moved to excluded with reason `review`), "
             f"{len(restored)} excluded rows restored, {entry['exclusions_confirmed']} exclusions confirmed"
             + (f", {len(open_)} in conflict with another reviewer (not applied)" if open_ else "")
             + (f", {entry['reverted']} put back as before the review" if entry["reverted"] else "") + ".\n")
    card += "".join(f"- restored `{x['id']}` (excluded at {x['stage']}: {x['reason']})"
                    + (f": {x['note']}" if x["note"] else "") + "\n" for x in restored)
    card = with_section(card, KIND, card_section(KIND, state, settled))
    write_dataset(dataset, kept, excl, manifest.model_copy(update={"data": data}), card, overwrite=True,
                  extra=state.tables())
    return entry


def _placed(base: dict[str, dict], s: Settled | None, kept_cols: list[str], excl_cols: list[str]) -> tuple:
    """(table, row) of a reviewed row: from the row as it was before the review, by its settled decision."""
    decision = s.decision if s else None
    if "kept" in base:
        row = base["kept"]
        if decision == "reject":
            return "excluded", {**{c: row.get(c) for c in excl_cols},
                                **Drop("review", "review", detail=s.detail()).columns()}
        return "kept", row
    row = base["excluded"]
    return ("kept", {c: row.get(c) for c in kept_cols}) if decision == "approve" else ("excluded", row)


def _apply(kept, excl, base: dict, settled: dict):
    """The tables with every reviewed row placed by its settled decision; the moves [(id, (table, row) before,
    (table, row) after)] of rows that changed (only those change position: they go to the end)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array(sorted(base), pa.string())
    now = {r["id"]: ("kept", r) for r in kept.filter(pc.is_in(kept["id"], ids)).to_pylist()}
    now |= {r["id"]: ("excluded", r) for r in excl.filter(pc.is_in(excl["id"], ids)).to_pylist()}
    want = {i: _placed(base[i], settled.get(i), kept.column_names, excl.column_names) for i in sorted(base)}
    tables = {"kept": kept, "excluded": excl}
    for t, table in tables.items():  # as the table types them, to compare with what is there
        mine = [i for i, (w, _) in want.items() if w == t]
        typed = pa.Table.from_pylist([want[i][1] for i in mine], schema=table.schema).to_pylist()
        want |= {i: (t, row) for i, row in zip(mine, typed)}
    changed = [i for i in want if want[i] != now.get(i)]
    gone = pa.array(changed, pa.string())
    for t, table in tables.items():
        tables[t] = pa.concat_tables([table.filter(pc.invert(pc.is_in(table["id"], gone))),
                                      pa.Table.from_pylist([want[i][1] for i in changed if want[i][0] == t],
                                                           schema=table.schema)])
    return tables["kept"], tables["excluded"], [(i, now[i], want[i]) for i in changed]


def _counts(data: dict, moves: list) -> dict:
    """per_source and excluded counts after the moves."""
    per_source = {k: dict(v) for k, v in data["per_source"].items()}
    excluded = {st: dict(by) for st, by in data["excluded"].items()}
    for _, *sides in moves:
        for sign, (table, row) in zip((-1, 1), sides):
            per_source[row["source"]]["kept" if table == "kept" else "excluded"] += sign
            if table == "excluded":
                by = excluded.setdefault(row["stage"], {})
                by[row["reason"]] = by.get(row["reason"], 0) + sign
    return {"per_source": per_source, "excluded": excluded}
