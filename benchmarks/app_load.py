"""Load test of the explorer: concurrent sessions through ``gradio_client``, each on its own corpus.

    python benchmarks/app_load.py                         # default model, 20 sessions, 10 searches each
    python benchmarks/app_load.py --sessions 10 --searches 5 --languages en,de --cache-dir /tmp/m3lab-cache

Starts ``python -m app`` as tests/app_server.py does (``--model`` and ``--languages`` passed on; a
fresh temporary ``M3LAB_CACHE_DIR`` unless ``--cache-dir``; ``GRADIO_PROFILING=1`` so that the
server's queue wait and processing time per request can be read back). Then ``--sessions``
clients (one ``gradio_client.Client`` each, one thread each) start together: half upload a
``.jsonl`` corpus of their own (``--docs`` documents, each starting with a token unique to the
session and the run), the other half load the built-in mini-corpus choices of the Corpus view
(``mini corpus: <language>`` and ``mini corpus: all languages``; XQuAD and Tatoeba need data
files), and each then runs ``--searches`` searches cycling through the five modes.

Correctness: every result row of an upload session must be one of its own documents (its token in
the id and the text), every row of a built-in session in that corpus's languages; any exception,
refused switch or search, or foreign row is an error (there must be none). The app keeps at most
``$M3LAB_APP_MAX_WORKSPACES`` (4) workspaces in memory besides the starting one, so many distinct
corpora make it evict and reload them from the disk cache: counted from the server's log.
Prints the markdown and writes it atomically to ``benchmarks/results/app_load.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import secrets
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from app.corpora import builtin_choices
from m3lab._io import atomic_file
from m3lab.data import MINI_LANGUAGES, load_mini

MODES = ("dense", "sparse", "multi-vector", "hybrid", "BM25")
WEIGHTS = (1.0, 0.3, 1.0)

#: facts for the uploaded corpora (each session's documents: its token + these, rotated) and questions on them
FACTS = [
    ("Photosynthesis", "Plants turn sunlight, water and carbon dioxide into sugar and oxygen in their chloroplasts."),
    ("Great Wall", "The Great Wall of China was built over many centuries to protect the northern borders."),
    ("Inflation", "Inflation is a general rise in prices that reduces the purchasing power of money."),
    ("Vaccines", "Vaccines train the immune system to recognise a pathogen without causing the disease."),
    ("Eiffel Tower", "The Eiffel Tower in Paris was designed by Gustave Eiffel's company for the 1889 fair."),
    ("Honey bees", "Honey bees collect nectar from flowers and turn it into honey inside the hive."),
    ("Volcanoes", "Volcanoes erupt when molten rock, called magma, rises through the Earth's crust."),
    ("Tides", "Ocean tides are caused mainly by the gravitational pull of the Moon on the Earth's water."),
    ("Printing press", "Johannes Gutenberg's printing press with movable type spread books across Europe."),
    ("Black holes", "A black hole is a region of space where gravity is so strong that not even light escapes."),
    ("DNA", "DNA is a double helix that stores the genetic instructions of living organisms."),
    ("Coffee", "Coffee is brewed from roasted beans of the Coffea plant and contains caffeine."),
    ("Rainbows", "A rainbow appears when sunlight is refracted and reflected inside raindrops."),
    ("Penicillin", "Alexander Fleming discovered penicillin, the first widely used antibiotic, in 1928."),
    ("Electric cars", "Electric cars are driven by motors powered by rechargeable lithium-ion batteries."),
    ("The Nile", "The Nile flows north through eleven countries and empties into the Mediterranean Sea."),
    ("Chess", "Chess is a strategy board game in which each player starts with sixteen pieces."),
    ("Earthquakes", "Earthquakes happen when tectonic plates suddenly slip along a fault line."),
    ("Olympics", "The modern Olympic Games were first held in Athens in 1896."),
    ("Internet", "The internet is a global network of computers that exchange data using common protocols."),
]
UPLOAD_QUERIES = ["How do plants make sugar from sunlight?", "Why was the Great Wall built?", "What is inflation?",
                  "How do vaccines protect us?", "Who designed the Eiffel Tower?", "How do bees make honey?",
                  "Why do volcanoes erupt?", "What causes the tides?", "Who invented the printing press?",
                  "What is a black hole?"]


@dataclass
class Call:
    kind: str  # "upload", "load", "search <mode>"
    seconds: float
    ok: bool


@dataclass
class Session:
    index: int
    kind: str  # "upload" or "builtin"
    choice: str  # the file name or the built-in choice
    token: str | None
    languages: set[str]
    queries: list[str]
    calls: list[Call] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rows_checked: int = 0
    empty: int = 0
    session_hash: str | None = None


def pct(values, q: float) -> float:
    a = np.asarray(values, dtype=float)
    return float(np.percentile(a, q)) if len(a) else float("nan")


def mini_choice_languages(choice: str) -> set[str]:
    arg = choice.partition(":")[2].strip()
    return set(MINI_LANGUAGES) if arg == "all languages" else {a.strip() for a in arg.split(",")}


def plan(n: int, languages: list[str], docs: int, folder: Path, salt: str) -> list[Session]:
    """Even sessions upload their own corpus, odd ones load the built-in mini corpus choices in turn
    (single languages first, then the combined ones)."""
    choices = [c for c in builtin_choices(languages) if c.startswith("mini corpus:")]
    choices = sorted(choices, key=lambda c: len(mini_choice_languages(c)))  # en, de, ... then all languages
    questions = [q for q in load_mini(languages=list(MINI_LANGUAGES)).queries if q.id.endswith("/q0")]
    sessions = []
    for i in range(n):
        if i % 2 == 0:
            token = f"zq{salt}s{i:02d}"
            path = folder / f"session{i:02d}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for j in range(docs):
                    title, text = FACTS[(i + j) % len(FACTS)]
                    f.write(json.dumps({"id": f"{token}-{j:02d}", "title": title, "lang": "en",
                                        "text": f"{token} document {j}: {text}"}) + "\n")
            sessions.append(Session(i, "upload", path.name, token, {"en"}, UPLOAD_QUERIES[i % 3:] + UPLOAD_QUERIES[:i % 3]))
        else:
            choice = choices[(i // 2) % len(choices)]
            langs = mini_choice_languages(choice)
            qs = [q.text for q in questions if q.language in langs]
            start = (7 * i) % len(qs)
            sessions.append(Session(i, "builtin", choice, None, langs, (qs[start:] + qs[:start])[:20]))
    return sessions


def run_session(s: Session, url: str, searches: int, top_k: int, barrier: threading.Barrier, folder: Path,
                t0: list[float]) -> Session:
    import gradio_client

    try:
        client = gradio_client.Client(url + "/", verbose=False, analytics_enabled=False, download_files=False)
        s.session_hash = client.session_hash
    except Exception as err:  # noqa: BLE001 - counted
        s.errors.append(f"connect: {type(err).__name__}: {err}")
        barrier.wait()
        return s
    barrier.wait()
    if not t0:
        t0.append(time.perf_counter())

    def call(kind: str, *args, api_name: str):
        t = time.perf_counter()
        try:
            out = client.predict(*args, api_name=api_name)
        except Exception as err:  # noqa: BLE001 - counted
            s.calls.append(Call(kind, time.perf_counter() - t, False))
            s.errors.append(f"{kind}: {type(err).__name__}: {str(err)[:200]}")
            return None
        s.calls.append(Call(kind, time.perf_counter() - t, True))
        return out

    if s.kind == "upload":
        out = call("upload", gradio_client.handle_file(str(folder / s.choice)), api_name="/upload_corpus")
    else:
        out = call("load", s.choice, api_name="/load_corpus")
    if out is None:
        return s
    if "Loaded" not in out[0] or "⚠️" in out[0]:
        s.calls[-1].ok = False
        s.errors.append(f"{s.calls[-1].kind} refused: {out[0][:200]}")
        return s
    for k in range(searches):
        mode = MODES[(k + s.index) % len(MODES)]
        query = s.queries[k % len(s.queries)]
        out = call(f"search {mode}", query, mode, *WEIGHTS, top_k, api_name="/search")
        if out is None:
            continue
        msg, table = out[0], out[1]
        if "No document matches" in msg:
            s.empty += 1
            continue
        if "results for" not in msg:
            s.calls[-1].ok = False
            s.errors.append(f"search {mode} {query!r}: {msg[:200]}")
            continue
        headers = table["headers"]
        rows = [dict(zip(headers, r)) for r in table["data"]]
        if not rows:
            s.errors.append(f"search {mode} {query!r}: results message but an empty table")
        for r in rows:
            s.rows_checked += 1
            if s.kind == "upload":
                bad = not (str(r["id"]).startswith(s.token + "-") and s.token in str(r["text"]))
            else:
                bad = r["lang"] not in s.languages
            if bad:
                s.calls[-1].ok = False
                s.errors.append(f"search {mode} {query!r}: foreign document {r['id']} ({r['lang']}) in the results "
                                f"of a session on {s.choice}")
                break
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="passed to the app (default: the app's default model)")
    ap.add_argument("--languages", default=None, help="mini-corpus languages passed to the app (default: all 6)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--searches", type=int, default=10, help="searches per session, cycling through the 5 modes")
    ap.add_argument("--docs", type=int, default=20, help="documents per uploaded corpus")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--cache-dir", default=None, help="M3LAB_CACHE_DIR for the app (default: a fresh temporary one)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for the app to start (default 600)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "app_load.md")
    args = ap.parse_args()

    from app_server import running_app

    languages = [s.strip() for s in (args.languages or ",".join(MINI_LANGUAGES)).split(",") if s.strip()]
    app_args = ["--model", args.model] + (["--languages", args.languages] if args.languages else [])
    os.environ["GRADIO_PROFILING"] = "1"  # the server records each request's queue wait and processing time
    max_workspaces = int(os.environ.get("M3LAB_APP_MAX_WORKSPACES", "4"))
    with tempfile.TemporaryDirectory(prefix="m3lab-app-load-") as tmp:
        folder = Path(tmp)
        cache = Path(args.cache_dir) if args.cache_dir else folder / "cache"
        sessions = plan(args.sessions, languages, args.docs, folder, secrets.token_hex(3))
        t_start = time.monotonic()
        with running_app(cache, folder / "app.log", *app_args, timeout=args.timeout) as app:
            started = time.monotonic() - t_start
            time.sleep(2)
            log_start = len(app.output())
            load0 = os.getloadavg()[0]
            barrier = threading.Barrier(len(sessions))
            t0: list[float] = []
            with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
                done = list(pool.map(lambda s: run_session(s, app.url, args.searches, args.top_k, barrier, folder,
                                                           t0), sessions))
            wall = time.perf_counter() - t0[0] if t0 else float("nan")
            load1 = os.getloadavg()[0]
            with urllib.request.urlopen(app.url + "/gradio_api/profiling/traces", timeout=30) as r:
                traces = json.load(r)
            log = app.output()[log_start:]
            alive = app.proc.poll() is None
            tracebacks = log.count("Traceback")

    calls = [c for s in done for c in s.calls]
    errors = [f"session {s.index} ({s.kind} {s.choice}): {e}" for s in done for e in s.errors]
    if not alive:
        errors.append("the app exited during the test")
    if tracebacks:
        errors.append(f"the app's log has {tracebacks} Traceback(s)")
    by_kind: dict[str, list[Call]] = defaultdict(list)
    for c in calls:
        by_kind[c.kind].append(c)
    n_switch = sum(1 for c in calls if c.kind in ("upload", "load"))
    evictions = log.count("unloading workspace")
    loaded = log.count("loaded the index of")
    built = len(re.findall(r"indexing \d+ documents of ", log))
    reloads = loaded + built - n_switch  # each switch loads or builds one index; the rest are reloads
    rows_checked = sum(s.rows_checked for s in done)
    empty = sum(s.empty for s in done)
    n_upload = sum(s.kind == "upload" for s in done)
    distinct = len({s.choice for s in done})

    def row(name: str, cs: list[Call]) -> str:
        t = [c.seconds for c in cs]
        return (f"| {name} | {len(cs)} | {pct(t, 50):.2f} | {pct(t, 95):.2f} | {max(t) if t else float('nan'):.2f} | "
                f"{sum(not c.ok for c in cs)} |")

    lines = ["# Load test: concurrent sessions, each on its own corpus", "",
             f"`python -m app --model {args.model}` (mini corpus {', '.join(languages)}), {len(done)} sessions "
             f"(one `gradio_client.Client` and thread each, started together): {n_upload} upload their own .jsonl "
             f"({args.docs} documents with a session token), {len(done) - n_upload} load built-in mini-corpus "
             f"choices ({', '.join(sorted({s.choice for s in done if s.kind == 'builtin'}))}); then "
             f"{args.searches} searches each over the 5 modes (weights {WEIGHTS}, top {args.top_k}). "
             f"{distinct} distinct corpora, `M3LAB_APP_MAX_WORKSPACES` = {max_workspaces}. Machine: "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load0:.1f} → "
             f"{load1:.1f} (shared with other jobs); python {platform.python_version()}; the app started in "
             f"{started:.0f} s ({'fresh cache' if not args.cache_dir else 'cache ' + str(args.cache_dir)}).", "",
             "Latency per call, as the client sees it (queue wait included; upload = file transfer + indexing):", "",
             "| call | calls | p50 s | p95 s | max s | errors |", "|---|---:|---:|---:|---:|---:|"]
    lines.append(row("upload (/upload_corpus)", by_kind["upload"]))
    lines.append(row("load (/load_corpus)", by_kind["load"]))
    for m in MODES:
        lines.append(row(f"search: {m}", by_kind[f"search {m}"]))
    lines.append(row("search: all modes", [c for c in calls if c.kind.startswith("search")]))
    lines.append(row("**all calls**", calls))
    lines += ["", "Server side (Gradio's request trace, `GRADIO_PROFILING=1`): queue wait, and processing "
              "(preprocess + callback + postprocess):", "",
              "| endpoint | requests | queue p50 s | queue p95 s | processing p50 s | processing p95 s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in ("upload_corpus", "load_corpus", "search"):
        tr = [t for t in traces if t.get("fn_name") == name]
        if tr:
            q = [t["queue_wait_ms"] / 1000 for t in tr]
            p = [t["total_ms"] / 1000 for t in tr]
            lines.append(f"| /{name} | {len(tr)} | {pct(q, 50):.2f} | {pct(q, 95):.2f} | {pct(p, 50):.2f} | "
                         f"{pct(p, 95):.2f} |")
    lines += ["", f"Wall time (all sessions, from the common start to the last answer): {wall:.1f} s. "
              f"Errors: **{len(errors)}**. Correctness: {rows_checked} result rows checked (upload sessions: only "
              f"their own documents; built-in sessions: only their languages), {empty} searches with no match "
              "(sparse: no shared weighted token).", "",
              f"Workspaces (server log): {n_switch} switches, {built} index builds, {loaded} loads from the disk "
              f"cache, {evictions} workspaces unloaded from memory (least recently used), {reloads} reloads of an "
              "evicted workspace from the disk cache on its session's next search."]
    if errors:
        lines += ["", "Errors:", ""] + [f"* {e}" for e in errors[:30]]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as fh:
        fh.write(text)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
