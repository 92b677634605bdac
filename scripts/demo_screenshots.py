"""A screenshot of every playground tab, after one answer each, for the docs (docs/img/demo-<tab>.png).

    make demo &                                    # or make demo STORE=mlflow-smoke.db
    .venv/bin/python scripts/demo_screenshots.py --url http://127.0.0.1:7860/ --out docs/img

Chromium is the system's (apt-get install chromium), driven by Playwright; each PNG is reduced to 256 colours so
the docs stay small.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _save(page, out: Path, name: str) -> None:
    from PIL import Image

    path = out / f"demo-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    Image.open(path).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"{path}: {path.stat().st_size // 1024} KB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--out", type=Path, default=REPO / "docs/img")
    parser.add_argument("--wav", type=Path, default=next(iter(sorted((REPO / "data/fsdd").rglob("*.wav"))), None))
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(args.url)

        def tab(name):
            page.get_by_role("tab", name=name, exact=True).click()

        tab("Translate")
        page.locator("#translate-input textarea").fill("I can't swim at all.")
        page.locator("#translate-button").click()
        page.wait_for_function("document.querySelector('#translate-output textarea').value.length > 0", timeout=60000)
        _save(page, args.out, "translate")

        tab("Detect and segment")
        page.locator("#vision-draw").click()
        page.wait_for_selector("#vision-input img", timeout=60000)
        page.locator("#vision-run").click()
        page.wait_for_selector("#vision-boxes img", timeout=60000)
        page.wait_for_timeout(1500)
        _save(page, args.out, "detect")

        tab("Play Go")
        page.locator("#go-new").click()
        board = page.locator("#go-board img")
        board.wait_for(timeout=60000)
        box = board.bounding_box()
        page.wait_for_timeout(500)
        board.click(position={"x": box["width"] / 2, "y": box["height"] / 2})   # the centre point, C3
        page.get_by_text("2. W").first.wait_for(timeout=60000)
        _save(page, args.out, "go")

        tab("Spoken digits")
        if args.wav:
            page.locator("#speech-upload input[type=file]").set_input_files(str(args.wav))
            page.get_by_text("sum:").first.wait_for(timeout=60000)
        page.locator("#speech-generate").click()
        page.wait_for_selector("#speech-clip-wave img", timeout=60000)
        _save(page, args.out, "speech")

        tab("Control")
        page.locator("#control-run").click()
        page.get_by_text("steps (seed").first.wait_for(timeout=120000)
        _save(page, args.out, "control")

        tab("Digits")
        page.locator("#digits-pick").click()
        page.get_by_text("true label").first.wait_for(timeout=60000)
        _save(page, args.out, "digits")

        tab("Time series")
        page.locator("#ts-run").click()
        page.get_by_text("mean absolute error").first.wait_for(timeout=60000)
        _save(page, args.out, "time-series")
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
