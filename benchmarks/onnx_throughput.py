"""ONNX export of the default model: onnxruntime CPU throughput against m3lab's torch path (issue 15, part 2).

Workload: XQuAD-en, as ``benchmarks/encode_and_score.py`` (240 paragraphs then 1,190 questions,
all three outputs, batch size 32, max length 512, float32). The model is exported once with
``m3lab.onnx.export_onnx``; both paths then encode the workload with the same batches
(``plan_batches``), the same number of threads, interleaved over ``--repeats`` runs after a
warm-up, so background load hits both alike. It also checks the two agree on the whole workload
(largest difference relative to each output's magnitude, and the lexical token sets).

    M3LAB_DATA_DIR=../shared/data python benchmarks/onnx_throughput.py --repeats 3

Prints a markdown table and writes it to ``benchmarks/results/onnx_throughput.md``.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from m3lab import M3Model  # noqa: E402
from m3lab._io import atomic_file  # noqa: E402
from m3lab.data import load_xquad  # noqa: E402
from m3lab.onnx import OnnxM3Model, compare_outputs, export_onnx  # noqa: E402

BATCH_SIZE = 32
MAX_LENGTH = 512


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--export", default=None, help="export folder (default: a temporary one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "onnx_throughput.md"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    ds = load_xquad("en")
    texts = [d.text for d in ds.corpus] + [q.text for q in ds.queries]
    model = M3Model.from_pretrained(args.model, device="cpu", dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.export or Path(tmp) / "export")
        export_s, _, _ = timed(lambda: export_onnx(model, folder))
        graph_mb = (folder / "model.onnx").stat().st_size / 2**20
        onnx_model = OnnxM3Model(folder, threads=args.threads)
        run = {"m3lab torch `M3Model.encode`": lambda: model.encode(texts, batch_size=BATCH_SIZE, max_length=MAX_LENGTH),
               "onnxruntime `OnnxM3Model.encode`": lambda: onnx_model.encode(texts, batch_size=BATCH_SIZE,
                                                                            max_length=MAX_LENGTH)}
        outputs = {name: fn() for name, fn in run.items()}  # the warm-up, and the outputs compared
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in run}
        for _ in range(args.repeats):
            for name, fn in run.items():
                wall, cpu, _ = timed(fn)
                times[name].append((wall, cpu))
                print(f"{name}: {wall:.1f} s", flush=True)
        diff = compare_outputs(*outputs.values())
    tokens = sum(len(x) for x in next(iter(outputs.values())).input_ids)
    base = statistics.median(w for w, _ in times["m3lab torch `M3Model.encode`"])
    lines = [f"XQuAD-en ({len(ds.corpus)} paragraphs, {len(ds.queries)} questions, {tokens:,} tokens), model "
             f"{args.model!r}, CPU ({os.cpu_count()} cores), {args.threads} threads for both, float32, batch size "
             f"{BATCH_SIZE}, max length {MAX_LENGTH}; median of {args.repeats} interleaved runs after a warm-up. "
             f"python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
             f"{onnx_model.settings['onnxruntime']}. `python benchmarks/onnx_throughput.py --repeats {args.repeats}`",
             "", "| path | wall (median) | CPU (median) | tokens/s | speed-up (wall) |", "|---|---:|---:|---:|---:|"]
    for name, ts in times.items():
        wall, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
        lines.append(f"| {name} | {wall:.1f} s | {cpu:.1f} s | {tokens / wall:,.0f} | {base / wall:.2f}x |")
    lines += ["", f"Export: {export_s:.0f} s, graph {graph_mb:.0f} MiB. Agreement on the whole workload: dense "
                  f"{diff['dense']:.1e}, multi-vector {diff['colbert']:.1e}, lexical weights {diff['sparse']:.1e} "
                  f"(largest difference / largest magnitude); same lexical token sets: {diff['same_tokens']}."]
    table = "\n".join(lines) + "\n"
    print(table)
    with atomic_file(args.out) as f:
        f.write(table)


if __name__ == "__main__":
    main()
