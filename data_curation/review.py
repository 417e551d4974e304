"""The data team's review of a curated dataset.

`export_review` writes a reviewable subset: a stratified sample of kept rows (per source and category) and of
the rejects (per stage and reason), as review.html (self-contained: inline styles and script, sortable tables,
no network) and review.csv / review.jsonl with empty `decision` and `note` columns to fill in (approve/reject).
`import_review` applies a filled-in file: a rejected kept row moves to `excluded` with stage and reason
`review`; the dataset directory is rewritten atomically and its manifest records who reviewed, when, and what.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from data_curation.decision import DROP_COLUMNS, Drop
from data_curation.writer import write_dataset
from pilot_core.atomic import atomic_dir, atomic_write_text
from pilot_core.errors import UserError
from pilot_core.inputs import read_text
from pilot_core.jsonl import read_jsonl
from pilot_core.manifest import fingerprint, read_manifest

FIELDS = ("id", "set", "source", "category", "stage", "reason", "score", "harm_tags", "pii", "text", "decision",
          "note")
DECISIONS = ("approve", "reject", "")


def _pick(rows: list[dict], key, k: int, seed: int) -> list[dict]:
    """Up to k rows per stratum, a seeded sample, strata and rows in a stable order."""
    groups: dict = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r)
    out = []
    for g in sorted(groups, key=str):
        ranked = sorted(groups[g], key=lambda r: hashlib.sha256(f"{seed}:{r['id']}".encode()).digest())
        out += ranked[:k]
    return out


def _tables(dataset: Path):
    import pyarrow.parquet as pq

    read_manifest(dataset, kind="dataset")
    return pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet")


def export_review(dataset: str | Path, out: str | Path, per_stratum: int = 10, rejects_per_reason: int = 10,
                  seed: int = 0) -> dict:
    dataset, out = Path(dataset), Path(out)
    kept, excl = _tables(dataset)
    cols = ["id", "source", "category", "harm_tags", "pii", "text"]
    kept_rows = _pick(kept.select(cols).to_pylist(), lambda r: (r["source"], r["category"]), per_stratum, seed)
    excl_rows = _pick(excl.to_pylist(), lambda r: (r["stage"], r["reason"]), rejects_per_reason, seed)
    rows = [{"id": r["id"], "set": "kept", "source": r["source"], "category": r["category"], "stage": "",
             "reason": "", "score": "", "harm_tags": ",".join(r["harm_tags"] or []), "pii": ",".join(r["pii"] or []),
             "text": r["text"], "decision": "", "note": ""} for r in kept_rows]
    rows += [{"id": r["id"], "set": "excluded", "source": r["source"], "category": r.get("category") or "",
              "stage": r["stage"], "reason": r["reason"], "score": "" if r["score"] is None else r["score"],
              "harm_tags": ",".join(r.get("harm_tags") or []), "pii": ",".join(r.get("pii") or []),
              "text": r.get("text") or (r.get("detail") or ""), "decision": "", "note": ""} for r in excl_rows]
    meta = {"dataset": str(dataset), "dataset_fingerprint": fingerprint(dataset / "prompts.parquet"),
            "rows": len(rows), "kept_sampled": len(kept_rows), "excluded_sampled": len(excl_rows)}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS)
    w.writeheader()
    w.writerows(rows)
    with atomic_dir(out, overwrite=True) as tmp:
        atomic_write_text(tmp / "review.csv", buf.getvalue())
        atomic_write_text(tmp / "review.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        atomic_write_text(tmp / "review.html", _page(dataset.name, rows))
        atomic_write_text(tmp / "review.json", json.dumps(meta, indent=2) + "\n")
    return {"output": str(out), **meta}


def _page(title: str, rows: list[dict]) -> str:
    def table(name: str, subset: list[dict], cols: tuple[str, ...]) -> str:
        head = "".join(f'<th data-col="{i}">{c}</th>' for i, c in enumerate(cols))
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>"
                       for r in subset)
        return (f'<h2>{name} ({len(subset)})</h2><table class="sortable" id="{name}"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")

    kept = [r for r in rows if r["set"] == "kept"]
    excl = [r for r in rows if r["set"] == "excluded"]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Review: {html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 2em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }}
th {{ background: #eee; cursor: pointer; user-select: none; }}
th.asc::after {{ content: " ▲"; }} th.desc::after {{ content: " ▼"; }}
td:last-child {{ white-space: pre-wrap; max-width: 60em; }}
</style></head><body>
<h1>Review: {html.escape(title)}</h1>
<p>A stratified sample of kept rows (per source and category) and of the rejects (per stage and reason).
Mark each row in <code>review.csv</code> (or <code>review.jsonl</code>): <code>decision</code> = approve or reject,
an optional <code>note</code>, then run <code>pilot review import</code>. Click a column header to sort.</p>
{table("kept", kept, ("id", "source", "category", "harm_tags", "pii", "text"))}
{table("excluded", excl, ("id", "source", "stage", "reason", "score", "text"))}
<script>
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {{
  const table = th.closest("table"), body = table.tBodies[0], col = +th.dataset.col;
  const asc = !th.classList.contains("asc");
  table.querySelectorAll("th").forEach(h => h.classList.remove("asc", "desc"));
  th.classList.add(asc ? "asc" : "desc");
  const key = td => {{ const t = td.textContent.trim(); const n = parseFloat(t);
                      return t !== "" && !isNaN(n) && isFinite(t) ? n : t.toLowerCase(); }};
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {{ const x = key(a.cells[col]), y = key(b.cells[col]);
    if ((x === "") !== (y === "")) return x === "" ? 1 : -1;  // empty cells last, either way
    const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return asc ? c : -c; }});
  rows.forEach(r => body.appendChild(r));
}}));
</script></body></html>
"""


def _read_decisions(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, "decisions file")
    else:
        reader = csv.DictReader(io.StringIO(read_text(path, "decisions file")))
        if not reader.fieldnames or "id" not in reader.fieldnames or "decision" not in reader.fieldnames:
            raise UserError(f"{path}: the header must have id and decision columns (found: "
                            f"{', '.join(reader.fieldnames or [])})")
        rows = [(n, r) for n, r in enumerate(reader, 2)]
    out = []
    for n, r in rows:
        d = str(r.get("decision") or "").strip().lower()
        if d not in DECISIONS:
            raise UserError(f"{path}:{n}: decision {r.get('decision')!r} for id {r.get('id')!r}; use approve, "
                            "reject or leave it empty")
        out.append({"line": n, "id": str(r.get("id")), "decision": d, "note": str(r.get("note") or "")})
    return out


def import_review(dataset: str | Path, decisions: str | Path, reviewer: str) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    dataset, decisions = Path(dataset), Path(decisions)
    if not reviewer.strip():
        raise UserError("--reviewer: give the reviewer's name")
    kept, excl = _tables(dataset)
    manifest = read_manifest(dataset, kind="dataset")
    rows = _read_decisions(decisions)
    kept_ids, excl_ids = set(kept["id"].to_pylist()), set(excl["id"].to_pylist())
    for r in rows:
        if r["id"] not in kept_ids and r["id"] not in excl_ids:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} is not in {dataset}")
    reject = {r["id"]: r["note"] for r in rows if r["decision"] == "reject" and r["id"] in kept_ids}
    moved = kept.filter(pc.is_in(kept["id"], pa.array(sorted(reject), pa.string())))
    kept = kept.filter(pc.invert(pc.is_in(kept["id"], pa.array(sorted(reject), pa.string()))))
    if moved.num_rows:
        drops = [Drop("review", "review", detail=f"{reviewer}: {reject[i]}".rstrip(": "))
                 for i in moved["id"].to_pylist()]
        for k in DROP_COLUMNS:
            moved = moved.append_column(k, pa.array([getattr(d, k) for d in drops],
                                                    pa.float64() if k == "score" else pa.string()))
        excl = pa.concat_tables([excl, moved.select(excl.column_names).cast(excl.schema)])
    entry = {"reviewer": reviewer, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
             "decisions_file": decisions.name, "decisions_fingerprint": fingerprint(decisions),
             "approved": sum(r["decision"] == "approve" for r in rows), "rejected": moved.num_rows,
             "undecided": sum(r["decision"] == "" for r in rows)}
    data = dict(manifest.data)
    data["reviews"] = [*data.get("reviews", []), entry]
    for src in moved["source"].to_pylist():
        data["per_source"][src]["kept"] -= 1
        data["per_source"][src]["excluded"] += 1
    data["kept"] = kept.num_rows
    data["excluded_total"] = excl.num_rows
    if moved.num_rows:
        data["excluded"] = {**data["excluded"], "review": {"review": data["excluded"].get("review", {})
                                                           .get("review", 0) + moved.num_rows}}
    card = (dataset / "README.md").read_text(encoding="utf-8")
    card += (f"\n## Review\n\n{reviewer} reviewed on {entry['at']}: {entry['approved']} approved, "
             f"{entry['rejected']} rejected (moved to excluded with reason `review`).\n")
    write_dataset(dataset, kept, excl, manifest.model_copy(update={"data": data}), card, overwrite=True)
    return entry
