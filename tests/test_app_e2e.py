"""End to end: start the explorer (default model, English mini corpus), drive it in headless Chromium,
run a query, open every view and check what is rendered; bad input shows messages and crashes nothing."""
from __future__ import annotations

import contextlib
import json
import os
import shutil

import pytest

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed "
                                                               "(pip install playwright; Chromium comes from Debian)")
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
if CHROMIUM is None:
    pytest.skip("no chromium executable (apt-get install chromium)", allow_module_level=True)

from app_server import running_app  # noqa: E402

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
QUERY = "How do plants turn sunlight into chemical energy?"
WAIT = 180_000  # ms: CPU-only and shared machines are slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    with running_app(base / "cache", base / "app.log", "--languages", "en") as running:
        yield running


@contextlib.contextmanager
def browser_page(url: str):
    """Headless Chromium on the app at ``url``, once it has drawn; ``page.outside_requests`` lists every
    request the page made outside the app."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        outside = []
        local = (url, "data:", "blob:")
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(local) else None)
        page.goto(url, wait_until="load")
        page.wait_for_selector("#query textarea", timeout=WAIT)
        page.outside_requests = outside
        yield page
        browser.close()


@pytest.fixture(scope="module")
def page(app):
    with browser_page(app.url) as page:
        yield page


def wait_text(page, selector: str, text: str, timeout: int = WAIT) -> str:
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout)
    return page.inner_text(selector)


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def plot_ready(page, selector: str, css: str, minimum: int = 1, timeout: int = WAIT) -> int:
    """Wait until the plotly figure in ``selector`` draws at least ``minimum`` elements matching ``css``."""
    page.wait_for_function("([s, c, n]) => document.querySelectorAll(s + ' ' + c).length >= n",
                           arg=[selector, css, minimum], timeout=timeout)
    return page.locator(f"{selector} {css}").count()


def test_status_shows_model_and_corpus(page):
    status = page.inner_text("#status")
    assert "Model" in status and "mini corpus (en)" in status
    assert "untrained heads" in status or "trained heads" in status


def test_empty_query_gives_a_message(page):
    page.fill("#query textarea", "   ")
    page.click("#search-btn")
    assert "Type a query first" in wait_text(page, "#search-msg", "Type a query")


def test_search_renders_results_with_every_score(page):
    page.fill("#query textarea", QUERY)
    page.click("#search-btn")
    msg = wait_text(page, "#search-msg", "results for")
    assert "10 results" in msg and "hybrid" in msg
    table = page.inner_text("#results")
    for column in ("rank", "lang", "score", "dense", "sparse", "colbert"):
        assert column in table
    assert "science-photosynthesis/en" in table
    assert page.get_attribute("#results [role=grid]", "aria-rowcount") == "11"  # header + 10 results
    assert plot_ready(page, "#breakdown", "g.point path", 10) >= 10  # stacked bars of the 10 results


def test_bm25_mode_and_the_ranking_download(page):
    page.get_by_label("BM25", exact=True).check()
    page.click("#search-btn")
    msg = wait_text(page, "#search-msg", "in BM25 mode")
    assert "10 results" in msg
    page.wait_for_selector("#export a[download='ranking.json']", timeout=WAIT)  # download links, both files
    assert page.locator("#export a[download='ranking.csv']").count() == 1
    page.get_by_label("hybrid", exact=True).check()
    page.click("#search-btn")
    wait_text(page, "#search-msg", "in hybrid mode")


def test_clicking_a_result_opens_its_explanation(page):
    """A click on the second result's row: the Sparse view opens on that pair (and MaxSim selects it)."""
    open_tab(page, "Search")
    second = page.locator("#results [role=row][aria-rowindex='3']")  # row 1 is the header
    doc_id = second.locator("[role=gridcell]").nth(1).inner_text().strip()
    second.locator("[role=gridcell]").nth(4).click()
    msg = wait_text(page, "#sparse-msg", doc_id)
    assert "s_lex" in msg and page.locator("#tab-sparse").is_visible()
    open_tab(page, "Search")  # back to the first result, which the next views read
    first = page.locator("#results [role=row][aria-rowindex='2']")
    first_id = first.locator("[role=gridcell]").nth(1).inner_text().strip()
    first.locator("[role=gridcell]").nth(4).click()
    wait_text(page, "#sparse-msg", first_id)
    open_tab(page, "Search")


def test_sparse_view(page):
    open_tab(page, "Sparse")
    msg = wait_text(page, "#sparse-msg", "s_lex")
    assert "shared token" in msg
    # the query, token by token, shaded by weight (waited for: opening the tab recomputes the view, and the
    # last click's explanation may still be on screen under a "processing" badge)
    page.wait_for_function("q => document.querySelector('#sparse-query-text').innerText.trim() === q", arg=QUERY,
                           timeout=WAIT)
    msg = page.inner_text("#sparse-msg")
    assert "shared token" in msg
    assert page.locator("#sparse-query-text span[title]").count() >= 3
    assert "Photosynthesis" in page.inner_text("#sparse-passage-text")
    for plot in ("#sparse-query-bar", "#sparse-passage-bar"):
        assert plot_ready(page, plot, "g.point path") >= 3
    assert "s_lex (sum)" in page.inner_text("#sparse-table")
    # where this result's scores lie in the corpus: one histogram per function, with its rank marked
    plot_ready(page, "#sparse-distribution", "g.barlayer g.point path", 3)
    assert "rank 1 of 63" in page.inner_text("#sparse-distribution")
    # special tokens out of the bars: the titles say how many were left out
    before = page.inner_text("#sparse-passage-bar")
    page.locator("#sparse-hide-special input").check()
    page.wait_for_function("b => document.querySelector('#sparse-passage-bar').innerText !== b", arg=before,
                           timeout=WAIT)
    page.locator("#sparse-hide-special input").uncheck()


def test_maxsim_view(page):
    open_tab(page, "MaxSim")
    msg = wait_text(page, "#maxsim-msg", "s_mul")
    assert "query vectors" in msg
    plot_ready(page, "#maxsim-heatmap", "g.heatmaplayer image")  # the similarity matrix
    # one best-match mark per query token
    n_tokens = plot_ready(page, "#maxsim-heatmap", "g.scatterlayer path.point", 5)
    assert n_tokens == plot_ready(page, "#maxsim-heatmap", "g.barlayer g.point path")  # one contribution per token
    assert "s_mul (sum)" in page.inner_text("#maxsim-table")
    # the passage with each query token's best match marked, titled by who picked it
    page.wait_for_selector("#maxsim-text mark[title^='picked by']", timeout=WAIT)
    assert "Photosynthesis" in page.inner_text("#maxsim-text")
    # a long passage: auto crops to the picked tokens (± 1); "all" draws every passage token
    cropped = page.evaluate("() => document.querySelectorAll('#maxsim-heatmap g.xtick').length")
    page.locator("#maxsim-columns label", has_text="all passage tokens").click()
    page.wait_for_function("n => document.querySelectorAll('#maxsim-heatmap g.xtick').length > n", arg=cropped,
                           timeout=WAIT)
    page.locator("#maxsim-columns label", has_text="auto").click()


def test_projection_view(page):
    open_tab(page, "Projection")
    msg = wait_text(page, "#projection-msg", "map of 63")
    assert "UMAP" in msg and "the query" in msg
    points = plot_ready(page, "#projection-plot", "g.scatterlayer path.point", 63)
    assert points >= 63 + 10 + 1  # the corpus, the ringed results, the query
    assert "query" in page.inner_text("#projection-plot")
    page.locator("#color-by label", has_text="category").click()
    wait_text(page, "#projection-msg", "coloured by category")
    assert "science" in page.inner_text("#projection-plot")
    # one category highlighted: the rest go grey and the legend lists only it
    page.locator("#projection-focus input").fill("science")
    page.get_by_role("option", name="science", exact=True).click()
    wait_text(page, "#projection-msg", "highlighted: category science")
    legend = page.text_content("#projection-plot g.legend")
    assert "science" in legend and "culture" not in legend
    # hovering the query star shows the query
    star = page.locator("#projection-plot g.scatterlayer g.trace").last.locator("path.point").first
    star.hover(force=True)
    page.wait_for_selector("#projection-plot g.hovertext", timeout=WAIT)
    assert "chemical energy" in page.text_content("#projection-plot g.hovertext")


def test_compare_view(page):
    open_tab(page, "Compare")
    page.fill("#text-a textarea", "Where is the Eiffel Tower?")
    page.fill("#text-b textarea", "The Eiffel Tower stands in Paris, on the Champ de Mars.")
    page.click("#compare-btn")
    wait_text(page, "#compare-msg", "Text A is scored as the query")
    table = page.inner_text("#compare-table")
    for row in ("dense", "sparse (lexical)", "multi-vector", "hybrid"):
        assert row in table
    assert plot_ready(page, "#compare-bars", "g.point path", 4) >= 4
    plot_ready(page, "#compare-lexical", "g.point path")
    plot_ready(page, "#compare-maxsim", "g.heatmaplayer image")
    page.fill("#text-b textarea", "")
    page.click("#compare-btn")
    wait_text(page, "#compare-msg", "Enter both texts")


def test_models_view_puts_two_models_side_by_side(page):
    """The trained default against its untrained base on one query: both rankings, the rank changes
    drawn, and each model's scores."""
    open_tab(page, "Models")
    page.fill("#models-query textarea", QUERY)
    page.click("#models-btn")
    msg = wait_text(page, "#models-msg", "share")
    assert "A = default, B = e5-small" in msg and "untrained heads" in msg
    table = page.inner_text("#models-table")
    for column in ("rank A", "rank B", "change", "dense A", "dense B", "colbert B"):
        assert column in table
    assert "science-photosynthesis/en" in table
    assert plot_ready(page, "#models-chart", "g.scatterlayer g.trace", 10) >= 10  # a line per document
    assert "mini corpus (en)" in page.inner_text("#status")  # the session's own workspace did not change


def test_model_view_rejects_an_unknown_model(page):
    open_tab(page, "Model")
    assert "hidden size" in page.inner_text("#model-info")
    page.fill("#model-name textarea", "no-such-org/no-such-model")
    page.click("#model-btn")
    msg = wait_text(page, "#model-msg", "Could not load model")
    assert "Still serving default" in msg
    assert "mini corpus (en)" in page.inner_text("#status")


def test_evaluate_view(page, tmp_path):
    """Every mode scored on the session's mini corpus: the language x mode table, the per-question ranks,
    the overlap and fusion heatmaps (with the best point marked)."""
    open_tab(page, "Evaluate")
    page.click("#eval-btn")
    msg = wait_text(page, "#eval-msg", "best of the sweep")
    assert "mini corpus: en" in msg and "126 questions" in msg
    table = page.inner_text("#eval-table")
    for cell in ("nDCG@10", "MRR@10", "hybrid", "BM25", "multi-vector"):
        assert cell in table
    assert "science-" in page.inner_text("#eval-queries") or "rank: hybrid" in page.inner_text("#eval-queries")
    assert plot_ready(page, "#eval-overlap", "g.hm, image, .heatmaplayer") >= 1
    assert plot_ready(page, "#eval-fusion", "g.scatterlayer path.point") >= 1  # the best point's star
    # the user's own questions, judged against the session's corpus
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps({"_id": f"q{i}", "text": t}) + "\n" for i, t in enumerate(
        ["How do plants make energy from light?", "How fast is light?"])), encoding="utf-8")
    (tmp_path / "qrels.tsv").write_text("q0\tscience-photosynthesis/en\t1\nq1\tscience-speed-of-light/en\t1\n",
                                        encoding="utf-8")
    page.set_input_files("#eval-files input[type=file]", [str(tmp_path / "queries.jsonl"), str(tmp_path / "qrels.tsv")])
    page.wait_for_function("() => document.querySelector('#eval-files').innerText.includes('qrels')", timeout=WAIT)
    page.click("#eval-btn")
    msg = wait_text(page, "#eval-msg", "on this session's corpus")
    assert "2 questions" in msg
    open_tab(page, "Search")


def upload(page, path) -> str:
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():  # a file is already there: remove it to get the file input back
        clear.click()
    page.wait_for_selector("#upload input[type=file]", state="attached", timeout=30_000)
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function("n => document.querySelector('#upload').innerText.includes(n)", arg=path.stem,
                           timeout=WAIT)  # the uploaded file is listed
    page.click("#upload-btn")
    # every message, error or not, names the file
    page.wait_for_function("n => document.querySelector('#corpus-msg').innerText.includes(n)", arg=path.name,
                           timeout=60_000)
    return page.inner_text("#corpus-msg")


def test_corpus_view_bad_and_good_uploads(page, tmp_path, app):
    open_tab(page, "Corpus")
    assert "5 MB" in page.inner_text("#upload-limits") and "5,000 documents" in page.inner_text("#upload-limits")
    assert "science-photosynthesis/en" in page.inner_text("#corpus-preview")
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    assert "broken.jsonl:2: malformed JSON" in upload(page, bad)
    blob = tmp_path / "blob.txt"
    blob.write_bytes(bytes(range(256)) * 64)
    assert "binary" in upload(page, blob)
    # one limit: Gradio's upload limit is the app's own, so a file over it is refused before it is sent
    huge = tmp_path / "huge.txt"
    huge.write_bytes(b"lorem ipsum dolor sit amet\n" * 230_000)  # 6.2 MB
    page.locator("#upload button[aria-label=Clear]").click()
    page.set_input_files("#upload input[type=file]", str(huge))
    toast = page.locator(".toast-body", has_text="exceed the maximum allowed size of 5.0 Mb")
    toast.wait_for(timeout=30_000)
    assert "huge.txt" in toast.inner_text()
    toast.locator("button").first.click()  # dismissed: the last test checks that no error toast is left
    page.click("#upload-btn")
    wait_text(page, "#corpus-msg", "Choose a file to upload first")
    good = tmp_path / "mine.jsonl"
    good.write_text("\n".join(json.dumps({"id": f"m{i}", "text": t, "lang": "en"}) for i, t in enumerate(
        ["The Eiffel Tower is in Paris.", "Bees make honey.", "Volcanoes erupt lava."])), encoding="utf-8")
    assert "Loaded upload mine.jsonl: 3 documents" in upload(page, good)
    wait_text(page, "#status", "upload mine.jsonl: 3 documents")
    assert "m0" in page.inner_text("#corpus-preview")
    # the new corpus is searched
    open_tab(page, "Search")
    page.fill("#query textarea", "where is the tower?")
    page.click("#search-btn")
    wait_text(page, "#search-msg", "3 results")
    assert "m0" in page.inner_text("#results")


HOSTILE = '![x](http://203.0.113.5/pixel.png) <img src="http://203.0.113.5/img.png"> [link](http://203.0.113.5/) tower'


def test_markdown_and_html_in_user_text_are_shown_as_text_and_fetch_nothing(page, tmp_path):
    """A query and an uploaded corpus full of image/link markup: every view shows it as typed, and the
    page makes no request outside 127.0.0.1 (checked again, for the whole session, by the last test)."""
    corpus = tmp_path / "hostile.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": f"h{i}", "text": t, "lang": "en", "title": "<b>title</b> *x*"})
                                for i, t in enumerate([HOSTILE, "the tower of paris", "a bridge over the river"])),
                      encoding="utf-8")
    open_tab(page, "Corpus")
    assert "Loaded upload hostile.jsonl: 3 documents" in upload(page, corpus)
    assert "<b>title</b> *x*" in page.inner_text("#corpus-preview")
    open_tab(page, "Search")
    page.fill("#query textarea", HOSTILE)
    page.click("#search-btn")
    msg = wait_text(page, "#search-msg", "pixel.png")  # this search's message, not the last one's
    assert "3 results for ![x](http://203.0.113.5/pixel.png)" in msg
    assert '<img src="http://203.0.113.5/img.png">' in page.inner_text("#results")
    for tab, selector in (("Sparse", "#sparse-msg"), ("MaxSim", "#maxsim-msg")):
        open_tab(page, tab)
        page.wait_for_function("s => document.querySelector(s).innerText.length > 0", arg=selector, timeout=WAIT)
    open_tab(page, "Sparse")
    assert "203.0.113.5" in page.inner_text("#sparse-query-text")  # the query as text, token by token
    open_tab(page, "MaxSim")
    page.wait_for_function("() => document.querySelector('#maxsim-text').innerText.includes('203.0.113.5')",
                           timeout=WAIT)  # the hostile passage, as text, in the highlight view
    open_tab(page, "Projection")
    wait_text(page, "#projection-msg", "pixel.png")
    open_tab(page, "Compare")
    page.fill("#text-a textarea", HOSTILE)
    page.fill("#text-b textarea", HOSTILE)
    page.click("#compare-btn")
    wait_text(page, "#compare-msg", "Text A is scored as the query")
    open_tab(page, "Models")
    page.fill("#models-query textarea", HOSTILE)
    page.click("#models-btn")
    assert "![x](http://203.0.113.5/pixel.png)" in wait_text(page, "#models-msg", "pixel.png")
    assert '<img src="http://203.0.113.5/img.png">' not in page.inner_html("#models-msg")
    open_tab(page, "Search")
    page.wait_for_timeout(1000)  # give any image a chance to load
    assert page.locator("img[src*='203.0.113.5']").count() == 0
    assert page.outside_requests == []


def test_results_stay_readable_at_420_px(page, app):
    """A phone-sized window: the results keep rank, id, lang, text and score, the text column takes
    the room the others leave, and the page does not scroll sideways."""
    context = page.context.browser.new_context(viewport={"width": 420, "height": 900})
    narrow = context.new_page()
    narrow.goto(app.url, wait_until="load")
    narrow.wait_for_selector("#query textarea", timeout=WAIT)
    narrow.fill("#query textarea", QUERY)
    narrow.click("#search-btn")
    wait_text(narrow, "#search-msg", "results for")
    narrow.wait_for_selector("#results [role=row][aria-rowindex='2']", timeout=WAIT)
    widths = narrow.evaluate("""() => [...document.querySelectorAll(
        "#results [role=row][aria-rowindex='2'] [role=gridcell]")].map(c => c.getBoundingClientRect().width)""")
    header = narrow.evaluate("""() => [...document.querySelectorAll("#results table th")]
        .map(c => c.getBoundingClientRect().width)""")
    table_width = narrow.evaluate("() => document.querySelector('#results [role=row]').getBoundingClientRect().width")
    scroll = narrow.evaluate("() => document.documentElement.scrollWidth")
    context.close()
    shown = [i for i, w in enumerate(widths) if w > 0]
    assert shown == [0, 1, 2, 4, 5], widths  # rank, id, lang, text, score; title and components give way
    assert widths[4] >= 0.35 * table_width, widths
    assert [round(w) for w in header if w > 0] == [round(widths[i]) for i in shown]  # headers over their columns
    assert scroll <= 420


def test_a_second_session_keeps_its_own_corpus(page, app):
    """Another browser (its own session) starts on the starting corpus while this one has the upload,
    and its search runs on its own corpus."""
    context = page.context.browser.new_context(viewport={"width": 1400, "height": 1000})  # no shared state
    other = context.new_page()
    other.goto(app.url, wait_until="load")
    other.wait_for_selector("#query textarea", timeout=WAIT)
    wait_text(other, "#status", "mini corpus (en)")
    other.fill("#query textarea", QUERY)
    other.click("#search-btn")
    wait_text(other, "#search-msg", "results")
    assert "science-photosynthesis/en" in other.inner_text("#results")
    context.close()
    assert "hostile.jsonl" in page.inner_text("#status")  # this session still has its upload
    open_tab(page, "Search")
    page.click("#search-btn")  # ... and searches it
    wait_text(page, "#search-msg", "pixel.png")
    assert "h0" in page.inner_text("#results") and "science-photosynthesis" not in page.inner_text("#results")


def test_no_errors_and_nothing_outside_localhost(page, app):
    assert app.proc.poll() is None, app.output()[-3000:]
    assert "Traceback" not in app.output(), app.output()[-3000:]
    assert page.locator(".toast-body.error").count() == 0
    assert page.outside_requests == []
