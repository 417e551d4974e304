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
judge's verdict, so importing the same file twice changes nothing more. Several reviewers' decisions accumulate
by the rules of `reviewers` (a pair reviewers decided differently stays as the judge ranked it until an
adjudicator decides it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

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

FIELDS = ("id", "category", "generator_chosen", "generator_rejected", "score_chosen", "score_rejected", "verdict",
          "agreement", "rubric", "prompt", "chosen", "rejected", "rationale", "decision", "judge_wrong", "note",
          "reviewer", EXPORT)
KIND = "pairs"
TEXTS = ("prompt", "chosen", "rejected")  # as exported: an edit in the file is refused
DECISIONS = ("approve", "reject", "flip")
TABLES = ("sft", "dpo", "responses", "judgments", "pairs_skipped")
REVIEW_COLUMNS = ("review", "reviewer", "reviewed_at", "review_note", "judge_wrong")
PREFIX = "pair_"  # the review state's files: pair_review_history.parquet, pair_review_base.parquet


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


def export_pair_review(dataset: str | Path, out: str | Path, per_stratum: int = 10, seed: int = 0,
                       reviewers: tuple[str, ...] = (), overlap: int = 0) -> dict:
    """The sample as one set of files in `out`, or with `reviewers` one share each in out/<reviewer>/ (the
    `overlap` pairs in every share)."""
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
    parts, shares = export_parts(rows, reviewers, overlap, seed, lambda s, who: _page(dataset.name, s, fp, who))
    meta = {"dataset": str(dataset), "dpo_fingerprint": fp, "rows": len(rows), "pairs": tables["dpo"].num_rows,
            **shares}
    write_review(out, FIELDS, parts, meta)
    return {"output": str(out), **meta}


def _page(title: str, rows: list[dict], fp: str, reviewer: str) -> str:
    spec = PageSpec(
        title=f"preference pairs of {title}" + (f" ({reviewer}'s share)" if reviewer else ""),
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
        flipped=(("chosen", "chosen by the judge, now rejected (flipped)"),
                 ("rejected", "rejected by the judge, now chosen (flipped)")),
        storage_key=f"pilot-review:pairs:{fp}" + (f":{reviewer}" if reviewer else ""))
    return render_page(spec, rows)


def _before_review(pair: dict) -> dict:
    """A pair as the judge ranked it, without any review's marks: what a review starts from."""
    out = {**_judged_orientation(pair), **dict.fromkeys(REVIEW_COLUMNS)}
    if pair.get("review") == "flip" and out.get("margin") is not None:
        out["margin"] = out["score_chosen"] - out["score_rejected"]
    return out


def _placed(base: dict[str, dict], s: Settled | None) -> tuple[dict | None, dict | None, dict | None]:
    """(dpo row, sft row, pairs_skipped row) of a reviewed pair by its settled decision, from the pair as the
    judge ranked it: a flip swaps chosen and rejected, a rejection moves the pair to pairs_skipped and takes its
    prompt out of sft; a reviewed pair's prompt trains on the pair's chosen answer (a flip makes the reviewers'
    choice the SFT target, approving a flip back the judge's); a pair in conflict is as before the review."""
    decision, pair = (s.decision if s else None), dict(base["dpo"])
    if decision == "reject":
        return None, None, {"id": pair["id"], "reason": "review", "detail": f"{s.who} at {s.at}: {s.note}".rstrip(": "),
                            "judge_wrong": s.judge_wrong}
    if decision == "flip":
        pair = _judged_orientation({**pair, "review": "flip"})
        if pair.get("margin") is not None:
            pair["margin"] = pair["score_chosen"] - pair["score_rejected"]
    if decision in ("approve", "flip"):
        pair.update(review=decision, reviewer=s.who, reviewed_at=s.at, review_note=s.note,
                    judge_wrong=s.judge_wrong or decision == "flip")
    sft = base.get("sft")
    if sft is not None and decision and sft["messages"][-1]["content"] != pair["chosen"][0]["content"]:
        answer = {"role": "assistant", "content": pair["chosen"][0]["content"]}
        sft = {**sft, "messages": [*sft["messages"][:-1], answer], "generator": pair["generator_chosen"],
               "score": pair["score_chosen"]}
    return pair, sft, None


def _place(rows: list[dict], want: dict[str, dict | None]) -> list[dict]:
    """rows with those named in `want` replaced where they are (None: taken out), the others of `want` added."""
    have = {r["id"] for r in rows}
    out = [want[r["id"]] if r["id"] in want else r for r in rows]
    return [r for r in out if r is not None] + [w for i, w in sorted(want.items()) if w is not None and i not in have]


def disagreement(dpo: list[dict], skipped: list[dict]) -> dict:
    """What the reviews so far found: pairs decided, and those where the reviewers disagreed with the judge."""
    decided = [p for p in dpo if p.get("review")] + [s for s in skipped if s.get("reason") == "review"]
    wrong = sum(bool(p.get("judge_wrong")) for p in decided)
    return {"pairs_reviewed": len(decided), "judge_wrong": wrong,
            "judge_disagreement": round(wrong / len(decided), 4) if decided else None}


@one_at_a_time
def import_pair_review(dataset: str | Path, decisions: str | Path, reviewer: str | None = None,
                       adjudicator: str | None = None) -> dict:
    """Add a decisions file exported from this directory (as it is now, or an earlier export whose files still
    accumulate) to the pair review's state, and place every reviewed pair by its settled decision."""
    dataset, decisions = Path(dataset), Path(decisions)
    rows = read_decisions(decisions, DECISIONS, flags=("judge_wrong",), texts=TEXTS)
    manifest, tables = _read(dataset)
    name, role = who(decisions, rows, reviewer, adjudicator)
    done = imported_before(manifest.data.get("pair_reviews", []), decisions, name, role)
    if done is not None:  # the same file again (a retried task): it is in already
        return {**done, "already": True}
    state = ReviewState.load(dataset, PREFIX, manifest.data)
    check_accumulating(decisions, rows, KIND, fingerprint(dataset / "dpo.parquet"), dataset, state, tables["dpo"])
    known = {p["id"]: p for p in tables["dpo"].to_pylist()} | {i: b["dpo"] for i, b in state.base.items()}
    skipped = tables["pairs_skipped"].to_pylist() if "pairs_skipped" in tables else []
    # rejected by a review before the review state was kept: the pair itself is gone
    gone = {s["id"] for s in skipped if s.get("reason") == "review"} - set(state.base)
    for r in rows:
        if r["id"] in gone and r["decision"] not in ("reject", ""):
            raise UserError(f"{decisions}:{r['line']}: pair {r['id']!r} was rejected by an earlier review and is no "
                            "longer in the dpo split")
        if r["id"] not in known and r["id"] not in gone:
            raise UserError(f"{decisions}:{r['line']}: id {r['id']!r} is not a pair in {dataset}")
    check_texts(decisions, rows, {i: _texts(_judged_orientation(p)) for i, p in known.items()})
    return _record(dataset, manifest, tables, state, [r for r in rows if r["id"] in known], rows, name, role,
                   {"decisions_file": decisions.name, "decisions_fingerprint": fingerprint(decisions)})


@one_at_a_time
def adjudicate_pairs(dataset: str | Path, rid: str, decision: str, adjudicator: str, note: str = "",
                     judge_wrong: bool = False) -> dict:
    """An adjudicator decides one reviewed pair (a conflict, usually); the decision wins and is recorded."""
    dataset = Path(dataset)
    manifest, tables = _read(dataset)
    state = ReviewState.load(dataset, PREFIX, manifest.data)
    rows = adjudication(state, rid, decision, DECISIONS, note, judge_wrong)
    return _record(dataset, manifest, tables, state, rows, rows, check_name(adjudicator, "--adjudicator"),
                   ADJUDICATOR, {"decisions_file": None})


def _record(dataset: Path, manifest, tables: dict, state: ReviewState, rows: list[dict], all_rows: list[dict],
            name: str, role: str, source: dict) -> dict:
    """Record the decisions, re-place the reviewed pairs by what is settled (dpo, sft, pairs_skipped), write the
    directory with its state."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    dpo = tables["dpo"].to_pylist()
    sft = tables["sft"].to_pylist() if "sft" in tables else []
    skipped = tables["pairs_skipped"].to_pylist() if "pairs_skipped" in tables else []
    events = record(state, rows, name, role, at, source)
    pairs, sft_rows = {p["id"]: p for p in dpo}, {r["id"]: r for r in sft}
    for r in rows:
        if r["decision"] and r["id"] not in state.base:  # first decided: the pair and its sft row as they are now
            state.base[r["id"]] = {"dpo": _before_review(pairs[r["id"]])} | (
                {"sft": sft_rows[r["id"]]} if r["id"] in sft_rows else {})
    settled = settle(state.history)
    placed = {i: _placed(b, settled.get(i)) for i, b in sorted(state.base.items())}
    new_dpo = _place(dpo, {i: p[0] for i, p in placed.items()})
    new_sft = _place(sft, {i: p[1] for i, p in placed.items() if "sft" in state.base[i]})
    new_skipped = [s for s in skipped if not (s["id"] in state.base and s.get("reason") == "review")]
    new_skipped += [p[2] for p in placed.values() if p[2] is not None]
    after, after_sft = {p["id"] for p in new_dpo}, {r["id"]: r for r in new_sft}
    sft_changed = {"retargeted": sum(i in after_sft and after_sft[i] != r for i, r in sft_rows.items()),
                   "removed": len(set(sft_rows) - set(after_sft)), "returned": len(set(after_sft) - set(sft_rows))}
    decided = [r for r in all_rows if r["decision"]]
    counts = {d: sum(r["decision"] == d for r in decided if r["id"] in state.base) for d in DECISIONS}
    open_ = [c for c in conflicts(settled) if c["id"] in {r["id"] for r in decided}]
    for p in new_dpo:
        for k in REVIEW_COLUMNS:
            p.setdefault(k, None)
    for s in new_skipped:
        s.setdefault("detail", None)
        s.setdefault("judge_wrong", None)
    found = disagreement(new_dpo, new_skipped)
    dpo_table = pa.Table.from_pylist(new_dpo) if new_dpo else tables["dpo"].slice(0, 0)
    state.written = table_version(dpo_table)
    entry = {"reviewer": name, "role": role, "at": at, **source, "approved": counts["approve"],
             "flipped": counts["flip"], "rejected": len(set(pairs) - after),
             "returned": len(after - set(pairs)), "conflicts": open_,
             "judge_wrong": sum(r["judge_wrong"] or r["decision"] == "flip" for r in decided),
             "undecided": sum(not r["decision"] for r in all_rows), "so_far": found, "sft": sft_changed,
             "new_decisions": len(events)}
    if not events:  # nothing this person had not decided already: nothing to write
        return {**entry, "unchanged": True}
    data = dict(manifest.data)
    data["pair_reviews"] = [*data.get("pair_reviews", []), entry]
    data["pair_review"] = found
    data["preferences"] = {**data["preferences"], "dpo": len(new_dpo), "sft": len(new_sft)}
    data[state.key] = state_meta(state, settled)
    rate = "n/a" if found["judge_disagreement"] is None else f"{found['judge_disagreement']:.0%}"
    card = (dataset / "README.md").read_text(encoding="utf-8") + (
        f"\n## Pair review\n\n{name}{' (adjudicator)' if role == ADJUDICATOR else ''} reviewed pairs on {at}: "
        f"{counts['approve']} approved, {counts['flip']} flipped, {counts['reject']} rejected"
        + (f" ({len(open_)} in conflict with another reviewer: not applied)" if open_ else "")
        + f"; {entry['rejected']} pairs moved to pairs_skipped with reason `review`"
        + (f", {entry['returned']} came back as the judge ranked them" if entry["returned"] else "")
        + f". Over all reviews so far, reviewers found the judge wrong on {found['judge_wrong']} of "
        f"{found['pairs_reviewed']} pairs (judge disagreement {rate}); {len(new_dpo)} pairs remain in the dpo "
        f"split. The sft split follows: {sft_changed['retargeted']} prompts now train on the answer the reviewers "
        f"chose, {sft_changed['removed']} rejected prompts left it ({len(new_sft)} rows).\n")
    card = with_section(card, KIND, card_section(KIND, state, settled))
    extra = dict(tables) | state.tables()
    extra["dpo"] = dpo_table
    if "sft" in tables:
        extra["sft"] = pa.Table.from_pylist(new_sft, schema=tables["sft"].schema)
    extra["pairs_skipped"] = pa.Table.from_pylist(new_skipped) if new_skipped else tables.get(
        "pairs_skipped", pa.table({"id": pa.array([], pa.string())}))
    write_dataset(dataset, pq.read_table(dataset / "prompts.parquet"), pq.read_table(dataset / "excluded.parquet"),
                  manifest.model_copy(update={"data": data}), card, overwrite=True, extra=extra,
                  splits=("sft", "dpo"))
    return entry
