"""Store a trained e5-small M3 checkpoint as the shipped default model: only what training changed.

    python scripts/ship_default_model.py runs/m3lab-e5-small/final data/models/m3lab-e5-small \
        --logs runs/m3lab-e5-small runs/m3lab-e5-small-no-selfkd

Writes ``encoder_delta.safetensors`` (the encoder tensors that differ from the e5-small
backbone, in float16), the two heads and m3lab_config.json (``M3Model.save_delta``), and
copies each run's config and log into ``training/``. A model card and results already in the
target folder are kept.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from m3lab import M3Model

KEEP = ("README.md", "results.md", "results.json", "results-ablation.md", "results-ablation.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out")
    ap.add_argument("--base", default="e5-small")
    ap.add_argument("--logs", nargs="*", default=[], help="run folders whose train_config.json and log.jsonl to copy")
    args = ap.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as keep:
        for name in KEEP:
            if (out / name).is_file():
                shutil.copy2(out / name, Path(keep) / name)
        model = M3Model.from_pretrained(args.checkpoint, device="cpu")
        model.save_delta(out, args.base)
        for name in KEEP:
            if (Path(keep) / name).is_file():
                shutil.copy2(Path(keep) / name, out / name)
    (out / "training").mkdir(exist_ok=True)
    for run in map(Path, args.logs):
        for name in ("train_config.json", "log.jsonl"):
            if (run / name).is_file():
                shutil.copy2(run / name, out / "training" / f"{run.name}.{name}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
