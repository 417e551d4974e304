"""The data team's review of the preference pairs: the data that shapes the pilot most.

`export_pair_review` samples the `dpo` split of a preferences directory per stratum (category x which generator
wrote the chosen and the rejected answer) and writes review.html (review_page: prompt, chosen and rejected side by
side, the generators, the judge's verdict, scores, rationale, both-order agreement and rubric) with review.csv /
review.jsonl beside it. A reviewer approves a pair, rejects it (it leaves the split), or flips it (chosen and
rejected swap), and can mark the judge wrong.

`import_pair_review` applies the decisions: the directory is rewritten atomically, each decided pair carries who,
when, what and why (`review`, `reviewer`, `reviewed_at`, `review_note`, `judge_wrong`), a rejected pair moves to
`pairs_skipped` with reason `review`, and the manifest and data card record the judge-disagreement rate the
reviewers found (flipped or marked-wrong pairs over decided pairs), which validation reports beside the
checkpoint trained on them. A decision is a state, not an action: "flip" means the pair trains opposite to the
judge's verdict, so importing the same file twice changes nothing more.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

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

FIELDS = ("id", "category", "generator_chosen", "generator_rejected", "score_chosen", "score_rejected", "verdict",
          "agreement", "rubric", "prompt", "chosen", "rejected", "rationale", "decision", "judge_wrong", "note", EXPORT)
KIND = "pairs"
TEXTS = ("prompt", "chosen", "rejected")  # as exported: an edit in the file is refused
DECISIONS = ("approve", "reject", "flip")
TABLES = ("sft", "dpo", "responses", "judgments", "pairs_skipped")
REVIEW_COLUMNS = ("review", "reviewer", "reviewed_at", "review_note", "judge_wrong")


def _read(dataset: Path) -> tuple:
    import pyarrow.parquet as pq

    manifest = read_manifest(dataset, kind="dataset")
    if "preferences" not in manifest.data or not (dataset / "dpo.parquet").is_file():
        raise UserError(f"{dataset}: not a preferences directory (no dpo split); give the output of "
                        "`pilot preferences`")
    tables = {k: pq.read_table(dataset / f"{k}.parquet") for k in TABLES if (dataset / f"{k}.parquet").is_file()}
    return manifest, tables


def _text(messages) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in messages)


def _judged_orientation(pair: dict) -> dict:
    """The pair as the judge ranked it (a pair flipped by an earlier review is shown unflipped)."""
    if pair.get("review") != "flip":
        return pair
    swap = {"chosen": "rejected", "score_chosen": "score_rejected", "generator_chosen": "generator_rejected"}
    swap |= {v: k for k, v in swap.items()}
    return {k: pair[swap.get(k, k)] for k in pair}


def _texts(pair: dict) -> dict:
    """The pair's texts as the review shows them (pass it in the judge's orientation)."""
    return {"prompt": _text(pair["prompt"]), "chosen": pair["chosen"][0]["content"],
            "rejected": pair["rejected"][0]["content"]}


def _judge_view(cfg: dict, pair: dict, responses: list[dict], judgments: list[dict]) -> dict:
    """What the judge said about this pair: verdict (chosen / rejected / tie, in the pair's terms), agreement of
    the two orders, rationale, rubric."""
    judge = cfg["judge"]
    if pair.get("origin") == "labelled":  # the source's own label: no judge saw it
        return {"verdict": "labelled", "agreement": "", "rationale": f"labelled by source {pair['generator_chosen']}",
                "rubric": ""}

    def k_of(side: str):
        text = pair[side][0]["content"]
        return next((r["k"] for r in responses if r["generator"] == pair[f"generator_{side}"]
                     and r["text"] == text), None)

    kc, kr = k_of("chosen"), k_of("rejected")
    name = cfg.get("category_rubrics", {}).get(pair["category"], "helpful")
    rubric = {"rules": f"rule: {name}", "reward_model": f"reward model: {judge['name']}"}.get(
        judge["kind"], f"{name}.{judge.get('rubric_version', 'v1')}")
    verdict = ("chosen" if pair["score_chosen"] > pair["score_rejected"] else
               "tie" if pair["score_chosen"] == pair["score_rejected"] else "rejected")
    if judge["kind"] != "pairwise":
        why = {j["a"]: j["rationale"] for j in judgments if j["order"] == "single"}
        rationale = " | ".join(f"{side}: {why[k]}" for side, k in (("chosen", kc), ("rejected", kr)) if why.get(k))
        return {"verdict": verdict, "agreement": "single judgments", "rationale": rationale, "rubric": rubric}
    mine = [j for j in judgments if {j["a"], j["b"]} == {kc, kr}]
    combined = next((j for j in mine if j["order"] in ("combined", "screened")), None)  # screened: pointwise
    first = combined or next((j for j in mine if j["order"] == "AB"), None)
    if first is not None and first["verdict"] in ("A", "B"):
        winner = first["a"] if first["verdict"] == "A" else first["b"]
        verdict = "chosen" if winner == kc else "rejected"
    elif first is not None and first["verdict"] == "tie":
        verdict = "tie"
    agreement = combined["status"] if combined else "one order"
    rationale = " | ".join(f"{j['order']}: {j['rationale'] or j['status']}" for j in mine
                           if j["order"] not in ("combined", "screened")) or (combined["rationale"] if combined else "")
    return {"verdict": verdict, "agreement": agreement, "rationale": rationale, "rubric": rubric}


def export_pair_review(dataset: str | Path, out: str | Path, per_stratum: int = 10, seed: int = 0) -> dict:
    dataset, out = Path(dataset), Path(out)
    manifest, tables = _read(dataset)
    by_id: dict[str, tuple[list, list]] = {}
    for r in tables["responses"].to_pylist() if "responses" in tables else []:
        by_id.setdefault(r["id"], ([], []))[0].append(r)
    for j in tables["judgments"].to_pylist() if "judgments" in tables else []:
        by_id.setdefault(j["id"], ([], []))[1].append(j)
    rows = []
    for stored in tables["dpo"].to_pylist():
        pair = _judged_orientation(stored)
        resp, judg = by_id.get(pair["id"], ([], []))
        rows.append({"id": pair["id"], "category": pair["category"],
                     "stratum": f"{pair['category']}: {pair['generator_chosen']} > {pair['generator_rejected']}",
                     "generator_chosen": pair["generator_chosen"], "generator_rejected": pair["generator_rejected"],
                     "score_chosen": pair["score_chosen"], "score_rejected": pair["score_rejected"],
                     **_judge_view(manifest.config, pair, resp, judg),
                     **_texts(pair), "decision": "", "judge_wrong": "", "note": ""})
    rows = stratified_sample(rows, lambda r: r["stratum"], per_stratum, seed)
    fp = fingerprint(dataset / "dpo.parquet")
    for r in rows:
        r[EXPORT] = export_tag(KIND, fp)
    meta = {"dataset": str(dataset), "dpo_fingerprint": fp, "rows": len(rows), "pairs": tables["dpo"].num_rows}
    spec = PageSpec(
        title=f"preference pairs of {dataset.name}",
        intro="A stratified sample of the preference pairs (per category and the generators of the chosen and the "
              "rejected answer), as the judge ranked them. Approve a pair, reject it (it leaves the dpo split), or "
              "flip it (chosen and rejected swap); mark the judge wrong where its verdict is. Save, then run pilot "
              "review import-pairs PREFERENCES --decisions review.csv.",
        columns=(Column("id", "id"), Column("category", "category"), Column("generator_chosen", "chosen by"),
                 Column("generator_rejected", "rejected by"), Column("score_chosen", "score chosen", "num"),
                 Column("score_rejected", "score rejected", "num"), Column("verdict", "verdict"),
                 Column("agreement", "both orders"), Column("rubric", "rubric"), Column("prompt", "prompt", "text"),
                 Column("chosen", "chosen", "text"), Column("rejected", "rejected", "text"),
                 Column("rationale", "judge's rationale", "text")),
        filters=("stratum", "category", "generator_chosen", "generator_rejected", "verdict", "agreement"),
        tags=(), decisions=DECISIONS, flags=("judge_wrong",), fields=FIELDS, file_name="review.csv",
        storage_key=f"pilot-review:pairs:{fp}")
    write_review(out, FIELDS, rows, render_page(spec, rows), meta)
    return {"output": str(out), **meta}


def _sft_follows(sft: list[dict], dpo: list[dict], rejected: list[dict]) -> tuple[list[dict], dict]:
    """The sft split after a review: a reviewed pair's prompt trains on the pair's chosen answer (a flip makes
    the reviewers' choice the target; approving an earlier flip back, the judge's), a rejected pair's prompt on
    nothing (both splits lose it). Counts of what changed."""
    reviewed = {p["id"]: p for p in dpo if p.get("review") in ("approve", "flip")}
    gone = {p["id"] for p in rejected}
    out, retargeted = [], 0
    for row in sft:
        if row["id"] in gone:
            continue
        p = reviewed.get(row["id"])
        if p is not None and row["messages"][-1]["content"] != p["chosen"][0]["content"]:
            row = {**row, "messages": [*row["messages"][:-1], {"role": "assistant",
                                                              "content": p["chosen"][0]["content"]}],
                   "generator": p["generator_chosen"], "score": p["score_chosen"]}
            retargeted += 1
        out.append(row)
    return out, {"retargeted": retargeted, "removed": len(sft) - len(out)}


def disagreement(dpo: list[dict], skipped: list[dict]) -> dict:
    """What the reviews so far found: pairs decided, and those where the reviewers disagreed with the judge."""
    decided = [p for p in dpo if p.get("review")] + [s for s in skipped if s.get("reason") == "review"]
    wrong = sum(bool(p.get("judge_wrong")) for p in decided)
    return {"pairs_reviewed": len(decided), "judge_wrong": wrong,
            "judge_disagreement": round(wrong / len(decided), 4) if decided else None}


def import_pair_review(dataset: str | Path, decisions: str | Path, reviewer: str) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dataset, decisions = Path(dataset), Path(decisions)
    if not reviewer.strip():
        raise UserError("--reviewer: give the reviewer's name")
    rows = read_decisions(decisions, DECISIONS, flags=("judge_wrong",), texts=TEXTS)
    manifest, tables = _read(dataset)
    done = imported_before(manifest.data.get("pair_reviews", []), decisions)
    if done is not None:  # the same file again (a retried task): it is in already
        return {**done, "already": True}
    check_export(decisions, rows, KIND, fingerprint(dataset / "dpo.parquet"), dataset)
    dpo = tables["dpo"].to_pylist()
    check_texts(decisions, rows, {p["id"]: _texts(_judged_orientation(p)) for p in dpo})
    skipped = tables["pairs_skipped"].to_pylist() if "pairs_skipped" in tables else []
    pairs = {p["id"]: p for p in dpo}
    gone = {s["id"] for s in skipped if s.get("reason") == "review"}
    for r in rows:
        if r["id"] in gone and r["decision"] not in ("reject", ""):
            raise UserError(f"{decisions}:{r['line']}: pair {r['id']!r} was rejected by an earlier review and is no "
                            "longer in the dpo split")
        if r["id"] not in pairs and r["id"] not in gone:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} is not a pair in {dataset}")
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    counts = dict.fromkeys(DECISIONS, 0)
    for r in rows:
        pair = pairs.get(r["id"])
        if not r["decision"] or pair is None:
            continue
        counts[r["decision"]] += 1
        if (pair.get("review") == "flip") != (r["decision"] == "flip"):
            pair.update(_judged_orientation({**pair, "review": "flip"}) if r["decision"] == "flip"
                        else _judged_orientation(pair))
            if pair.get("margin") is not None:
                pair["margin"] = pair["score_chosen"] - pair["score_rejected"]
        pair.update(review=r["decision"], reviewer=reviewer, reviewed_at=at, review_note=r["note"],
                    judge_wrong=r["judge_wrong"] or r["decision"] == "flip")
    rejected = [pairs.pop(r["id"]) for r in rows if r["decision"] == "reject" and r["id"] in pairs]
    dpo = [p for p in dpo if p["id"] in pairs]
    sft, sft_changed = _sft_follows(tables["sft"].to_pylist() if "sft" in tables else [], dpo, rejected)
    skipped += [{"id": p["id"], "reason": "review", "detail": f"{reviewer} at {p['reviewed_at']}: {p['review_note']}"
                 .rstrip(": "), "judge_wrong": p["judge_wrong"]} for p in rejected]
    for p in dpo:
        for k in REVIEW_COLUMNS:
            p.setdefault(k, None)
    for s in skipped:
        s.setdefault("detail", None)
        s.setdefault("judge_wrong", None)
    found = disagreement(dpo, skipped)
    entry = {"reviewer": reviewer, "at": at, "decisions_file": decisions.name,
             "decisions_fingerprint": fingerprint(decisions), "approved": counts["approve"],
             "flipped": counts["flip"], "rejected": len(rejected),
             "judge_wrong": sum(r["judge_wrong"] or r["decision"] == "flip" for r in rows if r["decision"]),
             "undecided": sum(not r["decision"] for r in rows), "so_far": found}
    data = dict(manifest.data)
    data["pair_reviews"] = [*data.get("pair_reviews", []), entry]
    data["pair_review"] = found
    data["preferences"] = {**data["preferences"], "dpo": len(dpo), "sft": len(sft)}
    entry["sft"] = sft_changed
    rate = "n/a" if found["judge_disagreement"] is None else f"{found['judge_disagreement']:.0%}"
    card = (dataset / "README.md").read_text(encoding="utf-8") + (
        f"\n## Pair review\n\n{reviewer} reviewed pairs on {at}: {counts['approve']} approved, {counts['flip']} "
        f"flipped, {len(rejected)} rejected (moved to pairs_skipped with reason `review`). Over all reviews so far, "
        f"reviewers found the judge wrong on {found['judge_wrong']} of {found['pairs_reviewed']} pairs "
        f"(judge disagreement {rate}); {len(dpo)} pairs remain in the dpo split. The sft split follows: "
        f"{sft_changed['retargeted']} prompts now train on the answer the reviewers chose, "
        f"{sft_changed['removed']} rejected prompts left it ({len(sft)} rows).\n")
    extra = dict(tables)
    extra["dpo"] = pa.Table.from_pylist(dpo) if dpo else tables["dpo"].slice(0, 0)
    if "sft" in tables:
        extra["sft"] = pa.Table.from_pylist(sft, schema=tables["sft"].schema)
    extra["pairs_skipped"] = pa.Table.from_pylist(skipped) if skipped else tables.get(
        "pairs_skipped", pa.table({"id": pa.array([], pa.string())}))
    write_dataset(dataset, pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet"),
                  manifest.model_copy(update={"data": data}), card, overwrite=True, extra=extra,
                  splits=("sft", "dpo"))
    return entry
