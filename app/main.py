"""``m3lab demo`` / ``python -m app``: start the explorer on 127.0.0.1.

Loads the model (``default``), indexes the mini corpus (or loads its cached index) with a
progress bar in the terminal, starts fitting the projection in the background, and serves
the Gradio app without a share link or analytics.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from m3lab.data import MINI_LANGUAGES

DEFAULT_PORT = 7860


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("M3LAB_DEMO_PORT", DEFAULT_PORT)),
                   help=f"port (default {DEFAULT_PORT}, or $M3LAB_DEMO_PORT)")
    p.add_argument("--model", default="default", help="model: 'default', a local directory or a hub id")
    p.add_argument("--languages", default=",".join(MINI_LANGUAGES),
                   help=f"languages of the mini corpus to start with (default all: {','.join(MINI_LANGUAGES)})")
    p.add_argument("--corpus", default=None,
                   help="start with this corpus file (.txt/.jsonl/.csv/.tsv) instead of the mini corpus")
    p.add_argument("--qdrant", default=None, metavar="DIR",
                   help="start with a Qdrant index built by `m3lab index build --backend qdrant` (embedded, in DIR)")
    p.add_argument("--cache-dir", default=None, help="index cache root (default $M3LAB_CACHE_DIR or the user cache)")
    p.add_argument("--no-warm-up", action="store_true", help="fit the projection only when the view is opened")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per request (default: half the CPU cores, 1 to 4)")


def add_cli(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="start the interactive explorer (Gradio) on http://127.0.0.1:7860")
    add_arguments(p)
    p.set_defaults(func=run)


def default_threads() -> int:
    """Half the cores, 1 to 4: two requests run at once, and oversubscribed OpenMP threads spin-wait
    (on a busy 2-core machine a query takes 50x longer with 2 threads than with 1)."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def create_app(model: str = "default", *, languages: Sequence[str] = MINI_LANGUAGES, corpus: str | None = None,
               warm_up: bool = True, threads: int | None = None, qdrant: str | None = None):
    """Load the model and the starting corpus (index from the cache or built), and build the Blocks.

    Returns ``(state, demo)``.
    """
    import torch

    torch.set_num_threads(threads or default_threads())
    from .corpora import mini_corpus, upload_corpus
    from .state import AppState, build_workspace, load_model, qdrant_workspace
    from .ui import build_ui

    if qdrant and corpus:
        raise ValueError("--qdrant already holds its corpus: give --qdrant or --corpus, not both")
    m = load_model(model)
    if qdrant:
        state = AppState(qdrant_workspace(m, model, qdrant))
    else:
        start = upload_corpus(corpus, max_bytes=1 << 62, max_documents=1 << 62) if corpus else mini_corpus(languages)
        state = AppState(build_workspace(m, model, start))
    if warm_up:
        state.warm_up()
    return state, build_ui(state, mini_languages=list(languages))


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if args.cache_dir:
        os.environ["M3LAB_CACHE_DIR"] = args.cache_dir
    languages = [s.strip() for s in args.languages.split(",") if s.strip()]
    unknown = [lang for lang in languages if lang not in MINI_LANGUAGES]
    if unknown or not languages:
        raise ValueError(f"--languages: unknown language(s) {', '.join(unknown) or '(none given)'}; "
                         f"the mini corpus has {', '.join(MINI_LANGUAGES)}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    state, demo = create_app(args.model, languages=languages, corpus=args.corpus, warm_up=not args.no_warm_up,
                             threads=args.threads, qdrant=args.qdrant)
    from .corpora import MAX_UPLOAD_BYTES
    from .ui import CSS, THEME

    ws = state.workspace
    logging.getLogger("m3lab.app").info("serving model %s, corpus %s (%d documents), index %s, on http://%s:%d",
                                        ws.model_name, ws.corpus.name, len(ws.index), ws.spec, args.host, args.port)
    demo.queue(default_concurrency_limit=2, max_size=64)
    demo.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, show_error=False,
                theme=THEME, css=CSS, footer_links=["api"], max_file_size=MAX_UPLOAD_BYTES, ssr_mode=False,
                run_history=False)  # no copy of every result in the browser's storage (and it rewrites it per click)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m app [--port N] ...``"""
    parser = argparse.ArgumentParser(prog="python -m app", description="m3lab explorer (Gradio)")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, OSError) as err:
        print(f"m3lab demo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
