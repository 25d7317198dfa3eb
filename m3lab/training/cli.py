"""``m3lab train`` and ``python -m m3lab.training`` (the entry point for torchrun)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .trainer import train


def add_cli(subparsers) -> None:
    """Register ``m3lab train``."""
    p = subparsers.add_parser("train", help="train an M3 model from a YAML/JSON config",
                              description="Train an M3 model (dense, sparse, multi-vector) as a config file says. "
                                          "Under torchrun: torchrun --nproc_per_node N -m m3lab.training --config FILE")
    _add_arguments(p)
    p.set_defaults(func=_run_cli)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML or JSON training config (docs/training.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set learning_rate=2e-5 --set stages.0.steps=100")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="resume from the last checkpoint in output_dir (auto) or from a checkpoint directory")


def _run_cli(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"resume_from={json.dumps(args.resume)}")
    result = train(args.config, overrides=overrides)
    if int(os.environ.get("RANK", "0")) == 0:  # the process group is gone by now
        losses = ", ".join(f"{k} {v:.4f}" for k, v in result.final_losses.items())
        print(f"trained {result.steps} steps; model in {result.final_dir}; log {result.log_path}"
              + (f"; last losses: {losses}" if losses else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m m3lab.training --config FILE`` (the entry point for torchrun)."""
    parser = argparse.ArgumentParser(prog="python -m m3lab.training", description="Train an M3 model from a config.")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run_cli(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"m3lab train: error: {err}", file=sys.stderr)
        return 2
