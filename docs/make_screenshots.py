"""Screenshots of every view of the explorer, taken from the running app: docs/screenshots/<view>.png.

    python docs/make_screenshots.py [--languages en,de,es,zh,ar,ru] [--chromium /usr/bin/chromium]

Starts the app in this process on a free 127.0.0.1 port (default model, full mini corpus, the
usual index cache), drives it with Playwright in headless Chromium, runs a query, opens each view
and saves a full-page PNG. Needs ``pip install playwright`` and Debian's ``chromium`` package.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUERY = "How do plants turn sunlight into energy?"
WAIT = 300_000


def wait_text(page, selector: str, text: str) -> None:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=WAIT)


def settle(page, *plots: str, seconds: float = 1.5) -> None:
    """Wait until the given plotly figures are drawn, then let transitions end before the shot."""
    for selector in plots:
        page.wait_for_function("s => document.querySelectorAll(s + ' g.cartesianlayer path, '"
                               " + s + ' image').length > 0",
                               arg=selector, timeout=WAIT)
    time.sleep(seconds)


def shoot(page, name: str) -> None:
    path = OUT / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"wrote {path.relative_to(ROOT)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--languages", default="en,de,es,zh,ar,ru")
    p.add_argument("--model", default="default")
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from app.main import create_app
    from app.ui import CSS, THEME

    state, demo = create_app(args.model, languages=args.languages.split(","))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        theme=THEME, css=CSS, footer_links=["api"], ssr_mode=False)
    url = f"http://127.0.0.1:{port}"
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url, wait_until="load")
            page.wait_for_selector("#query textarea", timeout=WAIT)
            page.fill("#query textarea", QUERY)
            page.click("#search-btn")
            wait_text(page, "#search-msg", "results for")
            settle(page, "#breakdown")
            shoot(page, "search")
            for tab, selector, text, figures in (
                    ("Sparse", "#sparse-msg", "s_lex",
                     ("#sparse-query-bar", "#sparse-passage-bar", "#sparse-match-bar")),
                    ("MaxSim", "#maxsim-msg", "s_mul", ("#maxsim-heatmap",)),
                    ("Projection", "#projection-msg", "map of", ("#projection-plot",))):
                page.get_by_role("tab", name=tab, exact=True).click()
                wait_text(page, selector, text)
                settle(page, *figures, seconds=3 if tab == "Projection" else 1.5)
                shoot(page, tab.lower())
            page.get_by_role("tab", name="Compare", exact=True).click()
            page.fill("#text-a textarea", "Where does photosynthesis take place?")
            page.fill("#text-b textarea", "Die Photosynthese findet hauptsächlich in den Chloroplasten statt.")
            page.click("#compare-btn")
            wait_text(page, "#compare-msg", "Text A")
            settle(page, "#compare-bars", "#compare-lexical", "#compare-maxsim")
            shoot(page, "compare")
            for tab in ("Corpus", "Model"):
                page.get_by_role("tab", name=tab, exact=True).click()
                settle(page)
                shoot(page, tab.lower())
            browser.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
