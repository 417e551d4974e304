"""The data team's review of the preference pairs: a stratified sample with the judge's view (verdict, both-order
agreement, rationale, rubric) in a page decided in headless Chromium; imported decisions reject, flip or approve
pairs in the dpo split the trainer reads, with provenance, and the judge disagreement reviewers found."""

import csv
import json
import shutil

import httpx
import pyarrow.parquet as pq
import pytest

from data_curation.pair_review import export_pair_review, import_pair_review
from data_curation.preferences import build_preferences
from data_curation.preferences_config import PreferencesConfig
from flows.cli import main
from pilot_core.errors import UserError
from training.data import load_split

from .helpers import CHROMIUM, TINY, browser, cells


class LongerWins(httpx.AsyncBaseTransport):
    """A pairwise judge over the OpenAI API that prefers the longer response (in both orders), with a rationale."""

    async def handle_async_request(self, request):
        body = json.loads(request.content)
        user = body["messages"][-1]["content"]
        a = user.split("# Response A\n", 1)[1].split("\n\n# Response B\n", 1)[0]
        b = user.split("\n\n# Response B\n", 1)[1]
        answer = json.dumps({"winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie",
                             "rationale": f"{len(a)} against {len(b)} characters"})
        return httpx.Response(200, json={
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}})


@pytest.fixture(scope="module")
def judged(small_dataset, tmp_path_factory, tiny_cache):
    """Pairs from the tiny pilot (three answers a prompt) judged pairwise in both orders."""
    out = tmp_path_factory.mktemp("judged") / "p"
    cfg = PreferencesConfig.model_validate({
        "cache": str(out.with_name("c.sqlite")),
        "judge": {"name": "judge", "kind": "pairwise", "strategy": "round_robin",
                  "model": {"name": "judge", "url": "http://judge.test/v1", "served_model": "judge"}},
        "generators": [{"name": "warm", "model": TINY, "samples": 2, "temperature": 0.9, "max_tokens": 24},
                       {"name": "cold", "model": TINY, "samples": 1, "temperature": 0.0, "max_tokens": 24}]})
    build_preferences(small_dataset, cfg, out, progress=False, http_client=httpx.AsyncClient(transport=LongerWins()))
    assert pq.read_table(out / "dpo.parquet").num_rows >= 3
    return out


@pytest.fixture
def copy(judged, tmp_path):
    shutil.copytree(judged, tmp_path / "p")
    return tmp_path / "p"


def _marked(rows: list[dict], path, **decisions) -> None:
    """Write the exported rows with decisions: {row index: (decision, judge_wrong)}."""
    for i, (d, wrong) in decisions.items():
        rows[int(i)]["decision"], rows[int(i)]["judge_wrong"] = d, "yes" if wrong else ""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)


def test_export_shows_each_pair_with_the_judges_view(judged, tmp_path):
    r = export_pair_review(judged, tmp_path / "r", per_stratum=1)
    rows = list(csv.DictReader(open(tmp_path / "r" / "review.csv")))
    dpo = {p["id"]: p for p in pq.read_table(judged / "dpo.parquet").to_pylist()}
    strata = {(p["category"], p["generator_chosen"], p["generator_rejected"]) for p in dpo.values()}
    assert r["rows"] == len(rows) == len(strata) and r["pairs"] == len(dpo)  # one pair per stratum
    for row in rows:
        pair = dpo[row["id"]]
        assert row["chosen"] == pair["chosen"][0]["content"] and row["rejected"] == pair["rejected"][0]["content"]
        assert row["prompt"] == pair["prompt"][-1]["content"]
        assert (row["generator_chosen"], row["generator_rejected"]) == (pair["generator_chosen"],
                                                                        pair["generator_rejected"])
        # the stand-in prefers the longer answer in both orders: the verdict names the chosen one, consistently
        assert len(row["chosen"]) > len(row["rejected"]) and row["verdict"] == "chosen"
        assert row["agreement"] == "consistent"
        assert "AB: " in row["rationale"] and "BA: " in row["rationale"]
        assert f"{len(row['chosen'])} against {len(row['rejected'])} characters" in row["rationale"]
        rubric = {"harmful": "harmless", "knowledge": "honest"}.get(pair["category"], "helpful")  # the defaults
        assert row["rubric"] == f"{rubric}.v1"
        assert row["decision"] == row["judge_wrong"] == ""


def test_import_rejects_flips_and_records_who_when_and_what(copy, tmp_path):
    export_pair_review(copy, tmp_path / "r")
    rows = list(csv.DictReader(open(tmp_path / "r" / "review.csv")))
    before = {p["id"]: p for p in pq.read_table(copy / "dpo.parquet").to_pylist()}
    sft_before = {r["id"]: r for r in pq.read_table(copy / "sft.parquet").to_pylist()}
    _marked(rows, tmp_path / "d.csv", **{"0": ("flip", False), "1": ("reject", True), "2": ("approve", False)})
    e = import_pair_review(copy, tmp_path / "d.csv", "dana")
    assert (e["flipped"], e["rejected"], e["approved"], e["judge_wrong"]) == (1, 1, 1, 2)
    assert e["so_far"] == {"pairs_reviewed": 3, "judge_wrong": 2, "judge_disagreement": pytest.approx(2 / 3, abs=1e-3)}
    flipped, rejected, approved = (rows[i]["id"] for i in range(3))
    split, _ = load_split(copy, "dpo")  # what the trainer reads
    trained = {r["prompt"][-1]["content"]: r for r in split}
    f = trained[before[flipped]["prompt"][-1]["content"]]
    assert f["chosen"] == before[flipped]["rejected"] and f["rejected"] == before[flipped]["chosen"]
    assert before[rejected]["prompt"][-1]["content"] not in trained and len(split) == len(before) - 1
    a = trained[before[approved]["prompt"][-1]["content"]]
    assert a["chosen"] == before[approved]["chosen"]
    dpo = {p["id"]: p for p in pq.read_table(copy / "dpo.parquet").to_pylist()}
    assert dpo[flipped]["review"] == "flip" and dpo[flipped]["reviewer"] == "dana" and dpo[flipped]["judge_wrong"]
    assert dpo[flipped]["margin"] == dpo[flipped]["score_chosen"] - dpo[flipped]["score_rejected"] < 0
    assert dpo[approved]["review"] == "approve" and not dpo[approved]["judge_wrong"]
    skipped = {s["id"]: s for s in pq.read_table(copy / "pairs_skipped.parquet").to_pylist()}
    assert skipped[rejected]["reason"] == "review" and skipped[rejected]["detail"].startswith("dana at ")
    m = json.loads((copy / "manifest.json").read_text())
    assert m["data"]["pair_review"]["judge_wrong"] == 2 and m["data"]["preferences"]["dpo"] == len(before) - 1
    assert m["data"]["pair_reviews"][0]["reviewer"] == "dana"
    assert "judge disagreement 67%" in (copy / "README.md").read_text()
    # the decisions reach the sft split: the flipped prompt trains on the reviewers' choice, the rejected on nothing
    sft = {r["id"]: r for r in pq.read_table(copy / "sft.parquet").to_pylist()}
    assert sft[flipped]["messages"][-1]["content"] == before[flipped]["rejected"][0]["content"]
    assert sft[flipped]["generator"] == before[flipped]["generator_rejected"]
    assert rejected not in sft and sft[approved] == sft_before[approved] and len(sft) == len(sft_before) - 1
    assert e["sft"] == {"retargeted": 1, "removed": 1, "returned": 0} and m["data"]["preferences"]["sft"] == len(sft)
    assert len(load_split(copy, "sft")[0]) == len(sft_before) - 1  # what the trainer reads
    assert "1 prompts now train on the answer the reviewers chose, 1 rejected prompts left it" in \
        (copy / "README.md").read_text()

    again = import_pair_review(copy, tmp_path / "d.csv", "dana")  # the same file again: nothing changes
    assert again["already"] and len(load_split(copy, "dpo")[0]) == len(before) - 1
    assert {p["id"]: p["chosen"] for p in pq.read_table(copy / "dpo.parquet").to_pylist()}[flipped] == \
        before[flipped]["rejected"]
    # a decision is a state: the reviewer approving the flipped pair later puts it back as the judge ranked it
    # (the file of the same export still imports: decisions accumulate)
    (tmp_path / "d2.jsonl").write_text(json.dumps({"id": flipped, "decision": "approve", "export": rows[0]["export"]})
                                       + "\n")
    import_pair_review(copy, tmp_path / "d2.jsonl", "dana")
    back = {p["id"]: p for p in pq.read_table(copy / "dpo.parquet").to_pylist()}[flipped]
    assert back["chosen"] == before[flipped]["chosen"] and back["review"] == "approve" and back["reviewer"] == "dana"
    assert {r["id"]: r for r in pq.read_table(copy / "sft.parquet").to_pylist()}[flipped] == sft_before[flipped]


def _tag(copy) -> str:
    from data_curation.review_file import export_tag
    from pilot_core.manifest import fingerprint

    return export_tag("pairs", fingerprint(copy / "dpo.parquet"))


def test_bad_pair_decisions_are_clear_errors(copy, tmp_path):
    first = pq.read_table(copy / "dpo.parquet").to_pylist()[0]["id"]
    bad = tmp_path / "bad.csv"
    bad.write_text(f"id,decision,export\nnope,flip,{_tag(copy)}\n")
    with pytest.raises(UserError, match="bad.csv:2: id 'nope' is not a pair in"):
        import_pair_review(copy, bad, "dana")
    bad.write_text(f"id,decision\n{first},swap\n")
    with pytest.raises(UserError, match="bad.csv:2: decision 'swap' .* use approve, reject or flip"):
        import_pair_review(copy, bad, "dana")
    bad.write_text(f"id,decision\n{first},flip\n{first},reject\n")
    with pytest.raises(UserError, match="bad.csv:3: id .* again"):
        import_pair_review(copy, bad, "dana")
    tag = _tag(copy)
    (tmp_path / "ok.csv").write_text(f"id,decision,export\n{first},reject,{tag}\n")
    import_pair_review(copy, tmp_path / "ok.csv", "dana")
    with pytest.raises(UserError, match="ok.csv: imported before as dana's decisions"):  # one person's decisions
        import_pair_review(copy, tmp_path / "ok.csv", "kim")
    (tmp_path / "again.csv").write_text(f"id,decision,export\n{first},flip,{tag}\n")
    import_pair_review(copy, tmp_path / "again.csv", "dana")  # she changed her mind: the rejected pair is back
    assert first in {p["id"] for p in pq.read_table(copy / "dpo.parquet").to_pylist()}


def test_pair_review_cli(copy, tmp_path, capsys):
    assert main(["review", "export-pairs", str(copy), "--out", str(tmp_path / "r")]) == 0
    assert "pairs to review" in capsys.readouterr().out
    rows = [json.loads(x) for x in open(tmp_path / "r" / "review.jsonl")]
    rows[0]["decision"] = "flip"
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "d.jsonl"), "--reviewer",
                 "kim"]) == 0
    out = capsys.readouterr().out
    assert "1 flipped" in out and "judge disagreement so far: 100% of 1 reviewed pairs" in out


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_pair_review_decided_in_the_page_trains_as_decided(copy, tmp_path):
    """Flip one pair by click, reject one and mark the judge wrong on it by keyboard; the saved file imports and
    the dpo split the trainer reads has exactly those changes."""
    from playwright.sync_api import sync_playwright

    export_pair_review(copy, tmp_path / "r")
    before = {p["id"]: p for p in pq.read_table(copy / "dpo.parquet").to_pylist()}
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto((tmp_path / "r" / "review.html").as_uri())
            ids = cells(page, "id")
            first = page.locator("#rows tbody.item").first
            assert first.locator('.block[data-key="chosen"]').inner_text().endswith(
                before[ids[0]]["chosen"][0]["content"])  # side by side: chosen, then rejected
            assert first.locator('.block[data-key="rejected"]').inner_text().endswith(
                before[ids[0]]["rejected"][0]["content"])
            assert first.locator('td[data-key="agreement"]').inner_text() == "consistent"
            first.locator('button[data-decision="flip"]').click()
            first = page.locator("#rows tbody.item").first  # the flipped pair's texts say what they are now
            assert first.locator('.block[data-key="chosen"] b').inner_text() == \
                "chosen by the judge, now rejected (flipped)"
            assert first.locator('.block[data-key="rejected"] b').inner_text() == \
                "rejected by the judge, now chosen (flipped)"
            page.keyboard.press("j")
            page.keyboard.press("w")  # judge wrong, then reject (the cursor moves on)
            page.keyboard.press("r")
            page.select_option("#filter-decision", "flag:judge_wrong")
            assert cells(page, "id") == [ids[1]]
            page.select_option("#filter-decision", "*")
            assert page.locator("#progress").inner_text() == f"decided 2 / {len(ids)} sampled"
            with page.expect_download() as dl:
                page.click("#save")
            dl.value.save_as(tmp_path / "saved.csv")
        finally:
            b.close()
    e = import_pair_review(copy, tmp_path / "saved.csv", "dana")
    assert (e["flipped"], e["rejected"], e["so_far"]["judge_wrong"]) == (1, 1, 2)
    split, _ = load_split(copy, "dpo")
    trained = {r["prompt"][-1]["content"]: r for r in split}
    flipped = trained[before[ids[0]]["prompt"][-1]["content"]]
    assert flipped["chosen"] == before[ids[0]]["rejected"]
    assert before[ids[1]]["prompt"][-1]["content"] not in trained and len(split) == len(before) - 1


def test_the_prompt_review_refuses_a_preferences_directory(copy, tmp_path):
    """`pilot review export|import` (the prompts' review) given a preferences directory: one error, nothing
    rewritten (it would lose the splits, responses and judgments)."""
    from data_curation.review import export_review, import_review
    from pilot_core.manifest import fingerprint

    export_pair_review(copy, tmp_path / "r")
    before = fingerprint(copy)
    with pytest.raises(UserError, match="a preferences directory: review its pairs with `pilot review export-pairs`"):
        export_review(copy, tmp_path / "p")
    with pytest.raises(UserError, match="a preferences directory"):
        import_review(copy, tmp_path / "r" / "review.csv", "dana")
    assert fingerprint(copy) == before and {p.name for p in copy.glob("*.parquet")} >= {
        "dpo.parquet", "sft.parquet", "responses.parquet", "judgments.parquet", "pairs_skipped.parquet"}



def _share_files(copy, tmp_path, decide: dict[str, dict[str, str]], capsys) -> tuple[list[str], dict]:
    """Export shares for alice and bob with 3 pairs in both; write each share with `decide[name][overlap index]`
    on the overlap and approve on the pairs of their own."""
    assert main(["review", "export-pairs", str(copy), "--out", str(tmp_path / "r"), "--reviewers", "alice,bob",
                 "--overlap", "3"]) == 0
    assert "3 rows in every share" in capsys.readouterr().out
    common = json.loads((tmp_path / "r" / "review.json").read_text())["overlap"]
    shares = {}
    for name in ("alice", "bob"):
        rows = list(csv.DictReader(open(tmp_path / "r" / name / "review.csv", newline="")))
        for r in rows:
            r["decision"] = decide[name][str(common.index(r["id"]))] if r["id"] in common else "approve"
        _marked(rows, tmp_path / f"{name}.csv")
        shares[name] = rows
    return common, shares


def test_two_pair_reviewers_agreement_conflict_and_adjudicator(copy, tmp_path, capsys):
    """Shares with 3 pairs in both: one flipped by both, one rejected by both, one in conflict (bob rejects, alice
    approves). The conflict leaves the pair as the judge ranked it in dpo and sft (bob's rejection, imported
    first, is undone); the adjudicator's decision settles it; kappa on the overlap in the manifest and card."""
    from pilot_core.manifest import fingerprint

    before = {p["id"]: p for p in pq.read_table(copy / "dpo.parquet").to_pylist()}
    sft_before = {r["id"]: r for r in pq.read_table(copy / "sft.parquet").to_pylist()}
    assert len(before) >= 3
    (o1, o2, o3), _ = _share_files(copy, tmp_path, {"alice": {"0": "flip", "1": "approve", "2": "reject"},
                                                    "bob": {"0": "flip", "1": "reject", "2": "reject"}}, capsys)

    def split(name):  # what the trainer reads, by the prompt's last turn
        return {(r["prompt"] if name == "dpo" else r["messages"][:-1])[-1]["content"]: r
                for r in load_split(copy, name)[0]}

    def prompt(i):
        return before[i]["prompt"][-1]["content"]

    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "bob.csv")]) == 0
    assert prompt(o2) not in split("dpo") and prompt(o2) not in split("sft")  # bob alone: rejected
    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "alice.csv")]) == 0
    out = capsys.readouterr().out
    assert "alice: " in out and "1 in conflict with another reviewer" in out
    dpo, sft = split("dpo"), split("sft")
    assert dpo[prompt(o2)]["chosen"] == before[o2]["chosen"]  # the conflict: back as the judge ranked it
    assert sft[prompt(o2)]["messages"] == sft_before[o2]["messages"]
    assert dpo[prompt(o1)]["chosen"] == before[o1]["rejected"]  # both flipped: the reviewers' choice trains
    assert sft[prompt(o1)]["messages"][-1]["content"] == before[o1]["rejected"][0]["content"]
    assert prompt(o3) not in dpo and prompt(o3) not in sft  # both rejected
    m = json.loads((copy / "manifest.json").read_text())["data"]
    # by hand: alice (flip, approve, reject), bob (flip, reject, reject): p_o = 2/3; p_e = 1/3 * 1/3 (flip) +
    # 1/3 * 0 (approve) + 1/3 * 2/3 (reject) = 1/3; kappa = (2/3 - 1/3) / (1 - 1/3) = 0.5
    assert m["pair_review_state"]["agreement"] == [{"reviewers": ["alice", "bob"], "rows": 3, "agreed": 2,
                                                    "kappa": 0.5}]
    assert m["pair_review_state"]["conflicts"] == [{"id": o2, "votes": {"alice": "approve", "bob": "reject"}}]
    assert "| alice / bob | 3 | 2 | 0.50 |" in (copy / "README.md").read_text()
    assert main(["review", "conflicts", str(copy)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{o2}\talice: approve, bob: reject"

    fp = fingerprint(copy)  # the same file again: nothing changes
    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "alice.csv")]) == 0
    assert "imported before: nothing changed" in capsys.readouterr().out and fingerprint(copy) == fp

    rows = [{**r, "decision": "reject" if r["id"] == o2 else "", "note": "both answers miss the point"
             if r["id"] == o2 else ""} for r in csv.DictReader(open(tmp_path / "alice.csv", newline=""))]
    _marked(rows, tmp_path / "carol.csv")
    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "carol.csv"), "--adjudicator",
                 "carol"]) == 0
    assert prompt(o2) not in split("dpo") and prompt(o2) not in split("sft")
    skipped = {s["id"]: s for s in pq.read_table(copy / "pairs_skipped.parquet").to_pylist()}
    assert skipped[o2]["detail"].startswith("carol (adjudicator) at ") and "miss the point" in skipped[o2]["detail"]
    m = json.loads((copy / "manifest.json").read_text())["data"]
    assert m["pair_review_state"]["conflicts"] == [] and m["preferences"]["dpo"] == len(split("dpo"))
    assert m["pair_review_state"]["adjudicated"] == [{"id": o2, "decision": "reject", "by": "carol", "note":
                                                      "both answers miss the point",
                                                      "votes": {"alice": "approve", "bob": "reject"}}]
    assert f"- `{o2}`: carol decided reject (alice approve, bob reject)" in (copy / "README.md").read_text()
    history = pq.read_table(copy / "pair_review_history.parquet").to_pylist()
    assert [(h["reviewer"], h["role"], h["decision"]) for h in history if h["id"] == o2] == [
        ("bob", "reviewer", "reject"), ("alice", "reviewer", "approve"), ("carol", "adjudicator", "reject")]


def test_stale_or_wrong_pair_files_are_refused_with_nothing_written(copy, tmp_path, capsys):
    from pilot_core.manifest import fingerprint

    common, _ = _share_files(copy, tmp_path, {n: {"0": "approve", "1": "approve", "2": "reject"}
                                              for n in ("alice", "bob")}, capsys)
    assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "alice.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "bob.csv", newline="")))
    before = fingerprint(copy)
    for tag, error in (("prompts@0123456789abcdef", "bob-x.csv:2: exported from a prompts review, not a pairs "
                        "review"), ("pairs@0123456789abcdef", "bob-x.csv:2: exported from another version")):
        _marked([{**r, "export": tag} for r in rows], tmp_path / "bob-x.csv")
        capsys.readouterr()
        assert main(["review", "import-pairs", str(copy), "--decisions", str(tmp_path / "bob-x.csv")]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and error in err, err
    assert main(["review", "adjudicate", str(copy), "--id", common[0], "--decision", "swap", "--adjudicator",
                 "carol"]) == 2
    assert "--decision 'swap': use approve, reject or flip" in capsys.readouterr().err
    assert fingerprint(copy) == before
