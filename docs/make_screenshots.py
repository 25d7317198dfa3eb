"""Screenshots of every view of the explorer, taken from the running app: docs/screenshots/<view>.png.

    python docs/make_screenshots.py [--languages en,de,es,zh,ar,ru] [--chromium /usr/bin/chromium]

Starts the app in this process on a free 127.0.0.1 port (default model, full mini corpus, the
usual index cache), drives it with Playwright in headless Chromium, runs a query, opens each view
and saves a full-page PNG. Needs ``pip install playwright`` and Debian's ``chromium`` package.

Chinese text needs a CJK font, or Chromium draws it as boxes: without one (``fc-list :lang=zh``
finds nothing) this prints ``apt-get install -y fonts-noto-cjk`` and, when run as root, runs it
(``--no-font-install`` only prints it).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUERY = "How do plants turn sunlight into energy?"
WAIT = 300_000


CJK_FONT_PACKAGE = "fonts-noto-cjk"
CJK_INSTALL = f"apt-get install -y {CJK_FONT_PACKAGE}"


def has_cjk_font() -> bool | None:
    """Whether fontconfig knows a font for Chinese (``fc-list :lang=zh``); ``None`` without fc-list."""
    if shutil.which("fc-list") is None:
        return None
    out = subprocess.run(["fc-list", ":lang=zh"], capture_output=True, text=True, check=False).stdout
    return bool(out.strip())


def ensure_cjk_font(install: bool = True) -> bool:
    """Make sure Chromium can draw Chinese: if no CJK font is installed, say how to install one and, as
    root with apt-get, install it (``apt-get update`` first if the package is not known yet)."""
    if has_cjk_font():
        return True
    print(f"no CJK font found (fc-list :lang=zh): Chinese text will render as boxes. Install one with:\n"
          f"    sudo {CJK_INSTALL}", file=sys.stderr)
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not (install and root and shutil.which("apt-get")):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print(f"running: {CJK_INSTALL}", file=sys.stderr)
    cmd = ["apt-get", "install", "-y", "-qq", CJK_FONT_PACKAGE]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(cmd, env=env, check=False)
    ok = bool(has_cjk_font())
    print("CJK font installed" if ok else f"could not install {CJK_FONT_PACKAGE}; continuing without it",
          file=sys.stderr)
    return ok


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
    p.add_argument("--no-font-install", action="store_true",
                   help=f"without a CJK font, only print the install command ({CJK_INSTALL}), even as root")
    args = p.parse_args(argv)
    ensure_cjk_font(install=not args.no_font_install)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    from playwright.sync_api import sync_playwright

    from app.main import create_app
    from app.ui import CSS, THEME

    _state, demo = create_app(args.model, languages=args.languages.split(","))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        theme=THEME, css=CSS, footer_links=["api"], ssr_mode=False, run_history=False)
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
                     ("#sparse-query-bar", "#sparse-passage-bar", "#sparse-match-bar", "#sparse-distribution")),
                    ("MaxSim", "#maxsim-msg", "s_mul", ("#maxsim-heatmap",))):
                page.get_by_role("tab", name=tab, exact=True).click()
                wait_text(page, selector, text)
                settle(page, *figures)
                shoot(page, tab.lower())
            # the map: one topic highlighted, its translations joined
            page.get_by_role("tab", name="Projection", exact=True).click()
            wait_text(page, "#projection-msg", "map of")
            page.locator("#color-by label", has_text="topic").click()
            wait_text(page, "#projection-msg", "coloured by topic")
            page.locator("#align input").uncheck()  # raw vectors: the lines show how far languages sit apart
            wait_text(page, "#projection-msg", "map of")
            page.locator("#projection-links input").check()
            wait_text(page, "#projection-msg", "lines join")
            page.locator("#projection-focus input").fill("culture-ramadan")  # a topic away from the query's star
            page.get_by_role("option", name="culture-ramadan", exact=True).click()
            wait_text(page, "#projection-msg", "highlighted")
            settle(page, "#projection-plot", seconds=3)
            shoot(page, "projection")
            page.get_by_role("tab", name="Compare", exact=True).click()
            page.fill("#text-a textarea", "Where does photosynthesis take place?")
            page.fill("#text-b textarea", "Die Photosynthese findet hauptsächlich in den Chloroplasten statt.")
            page.click("#compare-btn")
            wait_text(page, "#compare-msg", "Text A")
            settle(page, "#compare-bars", "#compare-lexical", "#compare-maxsim")
            shoot(page, "compare")
            page.get_by_role("tab", name="Models", exact=True).click()
            page.click("#models-btn")  # the trained default against its base, e5-small (indexes the corpus once)
            wait_text(page, "#models-msg", "share")
            settle(page, "#models-chart")
            shoot(page, "models")
            page.get_by_role("tab", name="Evaluate", exact=True).click()
            page.click("#eval-btn")
            wait_text(page, "#eval-msg", "best of the sweep")
            settle(page, "#eval-overlap", "#eval-fusion")
            shoot(page, "evaluate")
            for tab in ("Corpus", "Model"):
                page.get_by_role("tab", name=tab, exact=True).click()
                settle(page)
                shoot(page, tab.lower())
            # a phone-sized window: the results keep rank, id, lang, text and score
            narrow = browser.new_page(viewport={"width": 420, "height": 900})
            narrow.goto(url, wait_until="load")
            narrow.wait_for_selector("#query textarea", timeout=WAIT)
            narrow.fill("#query textarea", "光合作用需要什么？")
            narrow.click("#search-btn")
            wait_text(narrow, "#search-msg", "results for")
            time.sleep(1.5)
            narrow.locator("#results").screenshot(path=str(OUT / "search-420px.png"))
            print(f"wrote {(OUT / 'search-420px.png').relative_to(ROOT)}")
            browser.close()
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
