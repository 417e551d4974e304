"""The README's screenshots of the two review pages, from a demo run (`make demo` first):

    .venv/bin/python docs/review/screenshots.py runs/demo

It exports both pages from the run's curated dataset and preference pairs into a temporary directory, makes a
few decisions in headless Chromium (as a reviewer would) and writes docs/review/{prompts,pairs}.png.
"""

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from data_curation.pair_review import export_pair_review  # noqa: E402
from data_curation.review import export_review  # noqa: E402


def shoot(page_file: Path, out: Path, steps) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.goto(page_file.as_uri())
            steps(page)
            page.screenshot(path=str(out))
        finally:
            browser.close()


def prompts_steps(page) -> None:
    page.select_option("#filter-set", "kept")
    page.keyboard.press("a")
    page.keyboard.press("a")
    page.keyboard.press("r")
    page.locator("#rows tbody.item").nth(2).locator("input.note").fill("too close to an eval prompt")


def pairs_steps(page) -> None:
    for key in "aaawr":  # three pairs approved; the judge wrong on the fourth, rejected
        page.keyboard.press(key)
    page.locator("#rows tbody.item").nth(3).locator("input.note").fill("the chosen answer is garbled")


def main() -> None:
    run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/demo")
    curated = next(d for d in sorted(run.glob("curate-*")) if d.is_dir())
    prefs = next(d for d in sorted(run.glob("preferences-*")) if d.is_dir())
    here = Path(__file__).parent
    with tempfile.TemporaryDirectory() as tmp:
        export_review(curated, Path(tmp) / "prompts", per_stratum=5, rejects_per_reason=3)
        export_pair_review(prefs, Path(tmp) / "pairs", per_stratum=5)
        shoot(Path(tmp) / "prompts" / "review.html", here / "prompts.png", prompts_steps)
        shoot(Path(tmp) / "pairs" / "review.html", here / "pairs.png", pairs_steps)
    print(f"wrote {here / 'prompts.png'} and {here / 'pairs.png'}")


if __name__ == "__main__":
    main()
