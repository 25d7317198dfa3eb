"""Click-to-results latency of the explorer's Search view in headless Chromium, per mode (goal: hybrid ≤ 300 ms).

    python benchmarks/app_click_latency.py                         # default model, all 6 mini languages, 20 rounds
    python benchmarks/app_click_latency.py --repeats 10 --languages en --cache-dir /tmp/m3lab-cache
    python benchmarks/app_click_latency.py --app-env GRADIO_RUN_HISTORY=false --out /tmp/what-if.md   # a what-if

Starts ``python -m app`` as tests/app_server.py does (a fresh temporary ``M3LAB_CACHE_DIR`` unless
``--cache-dir``; ``GRADIO_PROFILING=1`` so that Gradio records each request's queue wait, callback
and postprocess time; ``--app-env`` adds variables), waits until the background projection warm-up
has finished, and opens the app in Playwright's headless Chromium. There it clicks once per mode
(dense, sparse, multi-vector, hybrid, BM25: "first", which also builds BM25 on first use), then
``--repeats`` rounds over the modes, interleaved so that every mode meets the same page state, each
click with another query (of another topic and language, so the ranking changes). A click is timed
inside the page: ``performance.now()`` just before ``#search-btn`` is clicked, to the DOM mutation
that shows the new ranking (the first result row changed and the message naming this query and
mode), and to the next animation frame (painted). A fetch hook in the page timestamps the
``queue/join`` request and the arrival of the ``process_completed`` message, and a long-task
observer sums the main thread's blocking. After each click the same ``/search`` is called through
``gradio_client`` (the Gradio round trip without the browser).

The app does not cache query encodings (``app/callbacks.py`` ``search`` encodes every query), so
there is no warm/cold split beyond each mode's first click.

If hybrid's p50 is over the target (or with ``--profile``), the search callback is profiled in this
process on the same cached index: stage timings (by wrapping the functions it calls), the Gradio
postprocess of its outputs, and cProfile's top functions. Prints the markdown and writes it
atomically to ``benchmarks/results/app_click_latency.md``.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import platform
import pstats
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from m3lab._io import atomic_file
from m3lab.data import MINI_LANGUAGES, load_mini

PAYLOAD = "payload: figure + table JSON (kB)"
MODES = ("dense", "sparse", "multi-vector", "hybrid", "BM25")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WEIGHTS = (1.0, 0.3, 1.0)  # the UI's defaults
TOP_K = 10

# In the page before the app's scripts: timestamps of the queue/join requests and of the arrival of each
# process_completed message (the SSE stream is a fetch body; a tee'd copy is scanned), and long tasks.
INIT_SCRIPT = """
window.__m3 = {join: [], done: [], longtasks: []};
(() => {
  const orig = window.fetch.bind(window);
  window.fetch = async (input, init) => {
    const url = typeof input === "string" ? input : (input && input.url) || String(input);
    if (url.includes("queue/join")) window.__m3.join.push(performance.now());
    const resp = await orig(input, init);
    if (url.includes("queue/data") && resp.body) {
      const [a, b] = resp.body.tee();
      (async () => {
        const reader = b.getReader(); const dec = new TextDecoder();
        for (;;) {
          const {done, value} = await reader.read();
          if (done) break;
          if (dec.decode(value, {stream: true}).includes("process_completed")) window.__m3.done.push(performance.now());
        }
      })().catch(() => {});
      return new Response(a, {status: resp.status, statusText: resp.statusText, headers: resp.headers});
    }
    return resp;
  };
  try {
    new PerformanceObserver(list => { for (const e of list.getEntries())
      window.__m3.longtasks.push([e.startTime, e.duration]); }).observe({type: "longtask", buffered: true});
  } catch (e) {}
})();
"""

# One timed click: resolves with the times (ms after the click) of the DOM showing the new ranking and of the
# next animation frame, plus the join/completed timestamps and the long tasks in between.
CLICK_JS = """
([query, mode, timeout]) => new Promise((resolve, reject) => {
  const row = () => document.querySelector("#results [role=row][aria-rowindex='2']");
  const msg = () => document.querySelector("#search-msg");
  const text = e => (e ? e.textContent : "");  // not innerText: that forces a layout on every mutation
  const before = text(row());
  const want = "in " + mode + " mode";
  const ready = () => { const m = text(msg()); return m.includes(query) && m.includes(want) && row() && text(row()) !== before; };
  const m3 = window.__m3, nJoin = m3.join.length, nDone = m3.done.length;
  let settled = false;
  const finish = () => {
    if (settled || !ready()) return;
    settled = true; obs.disconnect(); clearTimeout(timer);
    const dom = performance.now();
    requestAnimationFrame(() => {
      const painted = performance.now();
      const join = m3.join.length > nJoin ? m3.join[nJoin] - t0 : null;
      const done = m3.done.length > nDone ? m3.done[nDone] - t0 : null;
      const blocking = m3.longtasks.filter(([s, d]) => s + d > t0 && s < painted)
                                   .reduce((acc, [s, d]) => acc + Math.min(s + d, painted) - Math.max(s, t0), 0);
      resolve({dom: dom - t0, painted: painted - t0, join, done, blocking});
    });
  };
  const obs = new MutationObserver(finish);
  obs.observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
  const timer = setTimeout(() => { obs.disconnect(); reject(new Error("no new ranking within " + timeout + " ms")); },
                           timeout);
  const t0 = performance.now();
  document.querySelector("#search-btn").click();
})
"""


def pick_queries(languages: list[str], n: int) -> list[str]:
    """``n`` mini-corpus questions of different topics, cycling through ``languages`` (consecutive ones
    rank different first documents)."""
    qs = [q for q in load_mini(languages=languages).queries if q.id.endswith("/q0")]
    topics = sorted({q.id.split("/")[0] for q in qs})
    step = max(1, len(topics) // n)
    by_key = {(q.id.split("/")[0], q.language): q.text for q in qs}
    out = []
    for i in range(n):
        topic = topics[(i * step) % len(topics)]
        lang = languages[i % len(languages)]
        out.append(by_key.get((topic, lang)) or next(t for (tp, _), t in by_key.items() if tp == topic))
    return out


def pct(values, q: float) -> float:
    a = np.asarray([v for v in values if v is not None], dtype=float)
    return float(np.percentile(a, q)) if len(a) else float("nan")


def wait_for_warm_up(cache: Path, log: Path, since: float, timeout: float) -> float:
    """The app fits the projection in the background at start (unless cached): wait until it is saved, so
    that it does not share the cores with the clicks. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        text = log.read_text(encoding="utf-8", errors="replace")
        if "projection warm-up failed" in text:
            break
        fitting = "fitting the 2-D map" in text
        if fitting and any(f.stat().st_mtime >= since for f in (cache / "projections").glob("*.npz")):
            break
        if not fitting and time.monotonic() - start > 5:  # loaded from the cache: nothing to fit
            break
        time.sleep(1)
    return time.monotonic() - start


# ----------------------------------------------------------------------------- in-process profile

def profile_search(model: str, languages: list[str], queries: list[str], calls: int, threads: int | None,
                   modes: list[str]) -> str:
    """Markdown: where one search callback's time goes (stages, Gradio postprocess, cProfile top functions)."""
    import gradio as gr
    import torch
    from gradio import processing_utils

    from app import callbacks as cb
    from app.corpora import mini_corpus
    from app.main import default_threads
    from app.state import build_workspace, load_model
    from m3lab.retrieval.bm25 import BM25Index

    torch.set_num_threads(threads or default_threads())
    ws = build_workspace(load_model(model), model, mini_corpus(languages), show_progress=False)
    index_cls = type(ws.index)
    stages: dict[str, float] = {}
    originals = []

    def wrap(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)
        originals.append((owner, name, fn))

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                stages[label] = stages.get(label, 0.0) + time.perf_counter() - t
        setattr(owner, name, timed)

    wrap(index_cls, "encode_queries", "encode the query (index.encode_queries)")
    wrap(index_cls, "rank", "rank (index.rank)")
    wrap(BM25Index, "search", "BM25 search")
    wrap(index_cls, "score_documents", "component scores of the results (index.score_documents)")
    wrap(cb, "_vocabulary", "vocabulary note (cb._vocabulary: tokenizes the query twice)")
    wrap(cb.plots, "hybrid_breakdown", "figure (plots.hybrid_breakdown)")
    wrap(cb.plots, "empty_figure", "placeholder figure (plots.empty_figure, built on every call)")
    wrap(cb, "export_ranking", "export files (cb.export_ranking: CSV + JSON in a new temp folder)")

    plot, table_c = gr.Plot(render=False), gr.Dataframe(headers=cb.RESULT_COLUMNS, interactive=False, render=False)
    files_c = gr.File(file_count="multiple", interactive=False, render=False)
    per_mode: dict[str, dict[str, list[float]]] = {}
    try:
        for mode in modes:
            cb.search(ws, queries[0], mode, *WEIGHTS, TOP_K)  # first use (BM25 index, kernels)
            rows: dict[str, list[float]] = {}
            for i in range(calls):
                stages.clear()
                t = time.perf_counter()
                v = cb.search(ws, queries[i % len(queries)], mode, *WEIGHTS, TOP_K)
                total = time.perf_counter() - t
                for label, s in stages.items():
                    rows.setdefault(label, []).append(s)
                rows.setdefault("other (checks, table rows, snippets, message)", []).append(
                    total - sum(stages.values()))
                rows.setdefault("callback total (cb.search)", []).append(total)
                t = time.perf_counter()
                fig_json = plot.postprocess(v.figure)
                rows.setdefault("Gradio postprocess: Plot (figure to JSON)", []).append(time.perf_counter() - t)
                t = time.perf_counter()
                tab = table_c.postprocess(v.table)
                rows.setdefault("Gradio postprocess: Dataframe", []).append(time.perf_counter() - t)
                t = time.perf_counter()
                fd = files_c.postprocess(v.export)
                processing_utils.move_files_to_cache(fd.model_dump() if fd is not None else None, files_c,
                                                     postprocess=True)
                rows.setdefault("Gradio postprocess: File (+ copy into Gradio's cache)", []).append(
                    time.perf_counter() - t)
                size = len(json.dumps(fig_json.model_dump() if fig_json else None)) + len(
                    json.dumps(tab.model_dump(), default=str))
                rows.setdefault(PAYLOAD, []).append(size / 1e6)  # shown x1000 like the seconds: kB
            per_mode[mode] = rows
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(calls):
        cb.search(ws, queries[i % len(queries)], "hybrid", *WEIGHTS, TOP_K)
    prof.disable()

    labels = list(dict.fromkeys(k for rows in per_mode.values() for k in rows))
    lines = [f"Search callback profiled in-process (same model and cached index, torch threads "
             f"{torch.get_num_threads()}), {calls} calls per mode after one first call; p50 ms per stage "
             "(the payload row: kB):", "",
             "| stage | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for label in labels:
        cells = []
        for mode in modes:
            vals = per_mode[mode].get(label)
            cells.append("—" if not vals else f"{1000 * pct(vals, 50):.1f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(22)
    text = out.getvalue()
    body = text[text.find("ncalls"):] if "ncalls" in text else text
    root = str(ROOT) + os.sep
    site = next((p for p in sys.path if p.endswith("site-packages")), None)
    body = body.replace(root, "")
    if site:
        body = body.replace(site + os.sep, "")
    lines += ["", f"cProfile of {calls} hybrid `cb.search` calls, top functions by cumulative time:", "",
              "```", body.rstrip(), "```"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="passed to the app (default: the app's default model)")
    ap.add_argument("--languages", default=None, help="mini-corpus languages passed to the app (default: all 6)")
    ap.add_argument("--repeats", type=int, default=20, help="timed clicks per mode, after the first (default 20)")
    ap.add_argument("--queries", type=int, default=5, help="distinct queries to alternate (default 5)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"modes to time (default {','.join(MODES)})")
    ap.add_argument("--app-env", action="append", default=[], metavar="KEY=VALUE",
                    help="an environment variable for the app (what-if runs, e.g. GRADIO_RUN_HISTORY=false)")
    ap.add_argument("--cache-dir", default=None, help="M3LAB_CACHE_DIR for the app (default: a fresh temporary one)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--target-ms", type=float, default=300.0, help="the goal for hybrid's p50 (default 300)")
    prof = ap.add_mutually_exclusive_group()
    prof.add_argument("--profile", action="store_true", help="profile the search callback even if under the target")
    prof.add_argument("--no-profile", action="store_true", help="never profile")
    ap.add_argument("--profile-calls", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the app to start (default 600)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_click_latency.md")
    args = ap.parse_args()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - set(MODES):
        ap.error(f"--modes: choose from {', '.join(MODES)}")

    import gradio_client
    from app_server import running_app
    from playwright.sync_api import sync_playwright

    languages = [s.strip() for s in (args.languages or ",".join(MINI_LANGUAGES)).split(",") if s.strip()]
    app_args = ["--model", args.model] + (["--languages", args.languages] if args.languages else [])
    queries = pick_queries(languages, args.queries)
    os.environ["GRADIO_PROFILING"] = "1"  # the app's Gradio records per-request phases at /profiling/traces
    for item in args.app_env:
        key, _, value = item.partition("=")
        os.environ[key] = value
    tmp = tempfile.TemporaryDirectory(prefix="m3lab-click-latency-")
    cache = Path(args.cache_dir) if args.cache_dir else Path(tmp.name) / "cache"
    log = Path(tmp.name) / "app.log"
    clicks: list[tuple[str, int, dict | None]] = []  # (mode, repeat, timings or None) in click order
    client_ms: dict[str, list[float]] = {m: [] for m in modes}
    errors: list[str] = []
    t_start, since = time.monotonic(), time.time()
    with running_app(cache, log, *app_args, timeout=args.timeout) as app:
        started = time.monotonic() - t_start
        warm_wait = wait_for_warm_up(cache, log, since, 600)
        client = gradio_client.Client(app.url + "/", verbose=False, analytics_enabled=False, download_files=False)
        load0 = os.getloadavg()[0]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(INIT_SCRIPT)
            page.goto(app.url, wait_until="load")
            page.wait_for_selector("#query textarea", timeout=120_000)
            page.wait_for_timeout(1000)  # the load event fills the header and the corpus preview
            k = 0
            # the modes interleaved (a first click of each, then round after round), so that every mode meets
            # the same page state: Gradio's run history in localStorage grows with each click (up to 100 runs)
            for rep in range(args.repeats + 1):
                for mode in modes:
                    q = queries[k % len(queries)]
                    k += 1
                    page.get_by_label(mode, exact=True).check()
                    page.fill("#query textarea", q)
                    try:
                        r = page.evaluate(CLICK_JS, [q, mode, 60_000])
                    except Exception as err:  # noqa: BLE001 - counted and reported
                        errors.append(f"{mode}: {q!r}: {err}".splitlines()[0])
                        r = None
                    clicks.append((mode, rep, r))
                    t = time.perf_counter()
                    msg, *_ = client.predict(q, mode, *WEIGHTS, TOP_K, api_name="/search")
                    if rep:
                        client_ms[mode].append(1000 * (time.perf_counter() - t))
                    if "results for" not in msg:
                        errors.append(f"gradio_client {mode}: {msg[:80]}")
                    page.wait_for_timeout(150)  # let the breakdown figure finish drawing before the next click
            browser.close()
        with urllib.request.urlopen(app.url + "/gradio_api/profiling/traces", timeout=30) as r:
            traces = json.load(r)
        load1 = os.getloadavg()[0]
        if "Traceback" in app.output():
            errors.append("the app's log has a Traceback")
    wall = time.monotonic() - t_start
    # Gradio's traces of the /search requests, in order; the browser's and the client's alternate one at a time,
    # so the browser's n-th trace is the n-th click
    searches = sorted((t for t in traces if t.get("fn_name") == "search"), key=lambda t: t["timestamp"])
    mine = [t for t in searches if t.get("session_hash") != client.session_hash]
    theirs = [t for t in searches if t.get("session_hash") == client.session_hash]
    browser_rows: dict[str, list[dict]] = {m: [] for m in modes}
    first: dict[str, dict] = {}
    server: dict[str, list[dict]] = {m: [] for m in modes}
    client_server: dict[str, list[dict]] = {m: [] for m in modes}
    matched = len(mine) == len(clicks) == len(theirs)
    for i, (mode, rep, r) in enumerate(clicks):
        if r is not None and rep:
            browser_rows[mode].append(r)
        elif r is not None:
            first[mode] = r
        if matched and rep:
            server[mode].append(mine[i])
            client_server[mode].append(theirs[i])

    def f(x: float) -> str:
        return "—" if math.isnan(x) else f"{x:.0f}"

    extra = f" App environment: {', '.join(f'`{e}`' for e in args.app_env)}." if args.app_env else ""
    lines = ["# Click-to-results latency in the browser, per mode", "",
             (f"`python -m app --model {args.model}` (mini corpus {', '.join(languages)}), headless Chromium "
              f"(Playwright), a first click per mode then {args.repeats} timed rounds over the modes (interleaved), "
              f"alternating {len(queries)} queries; weights {WEIGHTS}, top {TOP_K}. Machine: "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load0:.1f} → "
              f"{load1:.1f} (shared with other jobs); python {platform.python_version()}. App up in {started:.0f} s "
              f"(+{warm_wait:.0f} s for the projection warm-up); wall {wall:.0f} s. Errors: {len(errors)}.{extra}"), "",
             ("Click → results: from `performance.now()` at the click on `#search-btn` to the DOM mutation that "
              "shows the new ranking (first result row changed, message naming this query and mode); painted: the "
              "next animation frame. gradio_client: the same `/search` through the API (no browser). The app does "
              "not cache query encodings, so every click is a cold search; \"first\" is each mode's first click."), "",
             ("| mode | first click ms | p50 ms | p95 ms | painted p50 | painted p95 | gradio_client p50 | "
              "gradio_client p95 |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m in modes:
        rows = browser_rows[m]
        lines.append(f"| {m} | {f(first[m]['dom']) if m in first else '—'} | {f(pct([r['dom'] for r in rows], 50))} | "
                     f"{f(pct([r['dom'] for r in rows], 95))} | {f(pct([r['painted'] for r in rows], 50))} | "
                     f"{f(pct([r['painted'] for r in rows], 95))} | {f(pct(client_ms[m], 50))} | "
                     f"{f(pct(client_ms[m], 95))} |")
    every = [r["dom"] for m in modes for r in browser_rows[m]]
    every_client = [x for m in modes for x in client_ms[m]]
    lines.append(f"| all modes | — | {f(pct(every, 50))} | {f(pct(every, 95))} | — | — | "
                 f"{f(pct(every_client, 50))} | {f(pct(every_client, 95))} |")
    lines += ["", ("Where the click's time goes (p50 ms). Server: Gradio's own request trace (`GRADIO_PROFILING=1`) "
                   "of the same clicks: queue wait, callback (`on_search` → `cb.search`), postprocess (outputs to "
                   "JSON, files into Gradio's cache). Browser: the `queue/join` request sent, the `process_completed` "
                   "message received (a fetch hook in the page), and the rest until the DOM shows it (Gradio's "
                   "client: run history in localStorage, output diffing; Svelte, Dataframe); long tasks: main-thread "
                   "blocking between click and paint."), "",
              ("| mode | click → join sent | server queue | server callback | server postprocess | server total | "
               "click → completed received | received → DOM | long tasks | server share of click → DOM |"),
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in modes:
        rows, tr = browser_rows[m], server[m]
        dom = pct([r["dom"] for r in rows], 50)
        total = pct([t["queue_wait_ms"] + t["total_ms"] for t in tr], 50) if tr else float("nan")
        after = pct([r["dom"] - r["done"] for r in rows if r["done"] is not None], 50)
        lines.append(f"| {m} | {f(pct([r['join'] for r in rows], 50))} | "
                     f"{f(pct([t['queue_wait_ms'] for t in tr], 50))} | {f(pct([t['fn_call_ms'] for t in tr], 50))} | "
                     f"{f(pct([t['postprocess_ms'] for t in tr], 50))} | {f(total)} | "
                     f"{f(pct([r['done'] for r in rows], 50))} | {f(after)} | "
                     f"{f(pct([r['blocking'] for r in rows], 50))} | "
                     f"{'—' if math.isnan(total) or math.isnan(dom) else f'{100 * total / dom:.0f} %'} |")
    if any(client_server.values()):
        lines += ["", "gradio_client calls, server side (p50 ms): " + ", ".join(
            f"{m} {f(pct([t['fn_call_ms'] for t in client_server[m]], 50))} callback + "
            f"{f(pct([t['postprocess_ms'] for t in client_server[m]], 50))} postprocess" for m in modes) + "."]
    elif not matched:
        lines += ["", f"(Gradio traces not matched to the clicks: {len(mine)} browser and {len(theirs)} client "
                      f"traces for {len(clicks)} clicks.)"]
    met = True
    if "hybrid" in modes:
        hyb = [r["dom"] for r in browser_rows["hybrid"]]
        met = pct(hyb, 50) <= args.target_ms
        lines += ["", (f"Goal: hybrid click → results ≤ {args.target_ms:.0f} ms (was 449 ms) — measured p50 "
                       f"{f(pct(hyb, 50))} ms, p95 {f(pct(hyb, 95))} ms: {'met' if met else 'NOT met'} (p50).")]
    if errors:
        lines += ["", "Errors:", ""] + [f"* {e}" for e in errors[:20]]
    if (args.profile or not met) and not args.no_profile:
        os.environ["M3LAB_CACHE_DIR"] = str(cache)
        lines += ["", "## Profile of the search callback", "",
                  profile_search(args.model, languages, queries, args.profile_calls, None, modes)]
    tmp.cleanup()
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as fh:
        fh.write(text)


if __name__ == "__main__":
    main()
