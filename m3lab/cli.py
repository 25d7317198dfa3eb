"""The ``m3lab`` command. Each subcommand lives beside the code it runs and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module that defines ``add_cli(subparsers)``; imported lazily so ``m3lab --help`` is fast
SUBCOMMANDS = {
    "encode": "m3lab.cli_basic",
    "score": "m3lab.cli_basic",
    "eval": "m3lab.evaluation.cli",
    "index": "m3lab.retrieval.cli",
    "train": "m3lab.training.cli",
    "export": "m3lab.onnx",
    "demo": "app.main",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3lab", description="M3-Embedding toolkit: dense, sparse and multi-vector retrieval.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered = set()
    for module_name in dict.fromkeys(SUBCOMMANDS.values()):
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:  # an optional part (e.g. the app without gradio)
            missing = [c for c, m in SUBCOMMANDS.items() if m == module_name]
            for c in missing:
                p = sub.add_parser(c, help=f"(unavailable: {err})")
                p.set_defaults(func=lambda a, e=err: _unavailable(e))
            continue
        module.add_cli(sub)
        registered.add(module_name)
    return parser


def _unavailable(err: Exception) -> int:
    print(f"m3lab: this command is unavailable: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, OSError, TypeError) as err:
        print(f"m3lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
