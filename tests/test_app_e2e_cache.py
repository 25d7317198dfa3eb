"""End to end, with a tight cache: an index that no session uses is deleted from disk once the cache is over
its cap (``M3LAB_CACHE_MAX_MB``), and a cancelled indexing run keeps the session's corpus and leaves
nothing in the cache. The app runs with one workspace in memory besides the starting one."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("gradio")
pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

from app_server import running_app  # noqa: E402
from test_app_e2e import CHROMIUM, WAIT, browser_page, open_tab, upload, wait_text  # noqa: E402

if CHROMIUM is None:
    pytest.skip("no chromium executable (apt-get install chromium)", allow_module_level=True)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("M3LAB_CACHE_MAX_MB", "1")  # below the starting index alone: only indexes in use stay
        mp.setenv("M3LAB_APP_MAX_WORKSPACES", "1")
        with running_app(base / "cache", base / "app.log", "--languages", "en", "--no-warm-up") as running:
            running.cache = base / "cache"
            yield running


@pytest.fixture(scope="module")
def page(app):
    with browser_page(app.url) as page:
        yield page


def indexes(app) -> list[str]:
    return sorted(p.name for p in (app.cache / "indexes").iterdir())


def corpus_file(folder, name: str, n: int, words: int = 8):
    path = folder / name
    path.write_text("\n".join(json.dumps({"id": f"{path.stem}-{i}", "text": " ".join(
        f"{path.stem} document {i} word {w}" for w in range(words)), "lang": "en"}) for i in range(n)),
        encoding="utf-8")
    return path


def test_an_index_no_session_uses_is_evicted_from_disk(page, app, tmp_path):
    start = indexes(app)
    assert len(start) == 1
    open_tab(page, "Corpus")
    assert "at most 1 MB" in page.inner_text("#upload-limits")
    assert "Loaded upload first.jsonl: 3 documents" in upload(page, corpus_file(tmp_path, "first.jsonl", 3))
    with_first = indexes(app)
    assert len(with_first) == 2 and set(start) < set(with_first)
    first = (set(with_first) - set(start)).pop()
    assert "Loaded upload second.jsonl: 4 documents" in upload(page, corpus_file(tmp_path, "second.jsonl", 4))
    now = indexes(app)
    # the first upload's workspace left memory (one besides the starting one), so its index left the disk;
    # the starting index and the second upload's, both in use, stayed although they are over the cap
    assert first not in now and set(start) < set(now) and len(now) == 2
    assert f"deleted {first}" in app.output()  # the log names what the cap removed
    # the session goes on searching its corpus
    open_tab(page, "Search")
    page.fill("#query textarea", "second document")
    page.click("#search-btn")
    wait_text(page, "#search-msg", "4 results")
    assert "second-0" in page.inner_text("#results")


def test_a_cancelled_indexing_run_keeps_the_corpus_and_saves_nothing(page, app, tmp_path):
    before = indexes(app)
    open_tab(page, "Corpus")
    big = corpus_file(tmp_path, "big.jsonl", 1500, words=40)
    page.locator("#upload button[aria-label=Clear]").click()
    page.set_input_files("#upload input[type=file]", str(big))
    page.wait_for_function("n => document.querySelector('#upload').innerText.includes(n)", arg="big", timeout=WAIT)
    page.click("#upload-btn")
    # the bar says how far it is: documents encoded (and, once there is a rate, the time left)
    page.wait_for_function("() => document.body.innerText.includes('documents encoded')", timeout=WAIT)
    page.click("#cancel-btn")
    msg = wait_text(page, "#corpus-msg", "Cancelled")
    assert "indexing cancelled after" in msg and "of 1,500 documents encoded" in msg
    assert "Nothing was saved; the previous corpus is still loaded" in msg
    assert "upload second.jsonl" in page.inner_text("#status")
    assert indexes(app) == before  # no index, no temporary folder
    assert not [p for p in app.cache.rglob("*") if "tmp" in p.name.lower()]
    page.click("#cancel-btn")
    wait_text(page, "#cancel-msg", "No indexing is running in this session")


def test_no_errors(page, app):
    assert app.proc.poll() is None, app.output()[-3000:]
    assert "Traceback" not in app.output(), app.output()[-3000:]
