"""How the review page behaves with many sampled rows (target: a 5,000-row page opens, filters, searches and
turns pages without lag, i.e. each under 100 ms). Builds a prompt review page of N synthetic rows (prompts of
realistic length, 20 sources x 8 categories, harm tags) and a pair review page of N pairs, opens each in
headless Chromium and prints the median of several runs of each interaction, timed inside the page.

    .venv/bin/python bench/review_page.py [--rows 5000]
"""

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_curation import pair_review, review  # noqa: E402
from data_curation.review_page import Column, PageSpec, render_page  # noqa: E402

WORDS = ("how do i make the best plan for a small garden with little water and poor soil in a cold climate "
         "explain why the sky looks blue at noon but red at sunset in simple words for a child").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "?"


def prompt_rows(n: int, rng: random.Random) -> list[dict]:
    rows = []
    for i in range(n):
        src, cat = f"source-{i % 20}", f"category-{i % 8}"
        excluded = i % 5 == 0
        rows.append({"id": f"{src}:{i}", "set": "excluded" if excluded else "kept", "source": src, "category": cat,
                     "stage": "filter" if excluded else "", "reason": "too_long" if excluded else "",
                     "score": rng.random() if excluded else "", "harm_tags": "violence" if i % 7 == 0 else "",
                     "pii": "", "text": _text(rng, rng.randint(10, 120)), "decision": "", "note": "",
                     "stratum": f"{'excluded' if excluded else 'kept'}: {src} / {cat}"})
    return rows


def pair_rows(n: int, rng: random.Random) -> list[dict]:
    return [{"id": f"p{i}", "category": f"category-{i % 8}", "stratum": f"category-{i % 8}: a > b",
             "generator_chosen": "a", "generator_rejected": "b", "score_chosen": 1.0, "score_rejected": 0.0,
             "verdict": "chosen", "agreement": "consistent", "rubric": "helpful.v1", "prompt": _text(rng, 30),
             "chosen": _text(rng, 150), "rejected": _text(rng, 150), "rationale": _text(rng, 25), "decision": "",
             "judge_wrong": "", "note": ""} for i in range(n)]


def pair_spec() -> PageSpec:
    return PageSpec(title="pairs", intro="", columns=(
        Column("id", "id"), Column("category", "category"), Column("verdict", "verdict"),
        Column("prompt", "prompt", "text"), Column("chosen", "chosen", "text"), Column("rejected", "rejected", "text"),
        Column("rationale", "rationale", "text")), filters=("stratum", "category", "verdict"), tags=(),
        decisions=pair_review.DECISIONS, flags=("judge_wrong",), fields=pair_review.FIELDS, file_name="review.csv",
        storage_key="bench")


TIMED = """async ([what]) => {
  const t = performance.now();
  if (what === "filter") { const s = document.getElementById("filter-category");
    s.value = s.options[2].value; s.dispatchEvent(new Event("change")); s.value = "*";
    s.dispatchEvent(new Event("change")); }
  if (what === "search") { const q = document.getElementById("search"); q.value = "sunset garden";
    q.dispatchEvent(new Event("input")); q.value = ""; q.dispatchEvent(new Event("input")); }
  if (what === "page") { document.getElementById("next").click(); document.getElementById("prev").click(); }
  if (what === "decide") { document.querySelector("#rows tbody.item button").click(); }
  if (what === "sort") { document.querySelector("#head th").click(); }
  return performance.now() - t;
}"""


def measure(path: Path, chromium: str, runs: int) -> dict:
    from playwright.sync_api import sync_playwright

    out = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            opens = []
            for _ in range(runs):
                page = browser.new_page()
                t = time.perf_counter()
                page.goto(path.as_uri())
                page.wait_for_selector("#rows tbody.item")
                opens.append((time.perf_counter() - t) * 1000)
                page.close()
            out["open (load, parse, first page)"] = statistics.median(opens)
            page = browser.new_page()
            page.goto(path.as_uri())
            for what in ("filter", "search", "page", "sort", "decide"):
                out[what] = statistics.median(page.evaluate(TIMED, [what]) for _ in range(runs))
            out["rows in the document"] = page.locator("#rows tbody.item").count()
        finally:
            browser.close()
    return out


def main() -> None:
    import shutil

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Debian's chromium (make test installs it)")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        pages = {"prompt review": review._page("bench", prompt_rows(a.rows, rng), "bench"),
                 "pair review": render_page(pair_spec(), pair_rows(a.rows, rng))}
        for name, html in pages.items():
            path = Path(tmp) / f"{name.replace(' ', '-')}.html"
            path.write_text(html, encoding="utf-8")
            got = measure(path, chromium, a.runs)
            print(f"{name}: {a.rows} rows, {len(html.encode()) / 1e6:.1f} MB, "
                  f"{got.pop('rows in the document')} rows in the document at a time")
            for what, ms in got.items():
                print(f"  {what:<32} median {ms:7.1f} ms over {a.runs} runs")


if __name__ == "__main__":
    main()
