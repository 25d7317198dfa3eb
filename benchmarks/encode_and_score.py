"""Encode and all-pairs scoring: m3lab vs FlagEmbedding's BGEM3FlagModel (issue 2, item 6).

Corpus: XQuAD-en (240 paragraphs, 1190 questions) read from ``$M3LAB_DATA_DIR/xquad/xquad.en.json``.
Checkpoint (``--model``): the parity checkpoint (MiniLM-L6 backbone + seeded random heads in
bge-m3 layout, ``tests/reference/parity_checkpoint.py``), or the shipped default model (e5-small
M3, saved by m3lab in the full bge-m3 layout), so both libraries run the same weights.

Measured in one process, same thread count for all, after a warm-up:

- encode: paragraphs then questions, all three outputs (dense, lexical weights, multi-vector),
  batch size 32, max length 512, float32; median of ``--repeats`` runs (interleaved, so
  background load hits every contender alike), wall clock and process CPU time. Two bare
  ``AutoModel`` passes (no heads, no post-processing) frame it: on FlagEmbedding's fixed
  batches of 32 length-sorted texts, and on m3lab's padding-aware batches (m3lab's limit).
- sparse all-pairs (1190 x 240): m3lab's CSR product, on the CSR view that ``encode`` returns
  (``.sparse_csr``) and again with the CSR built from the dicts inside the timing, vs
  FlagEmbedding's ``compute_lexical_matching_score`` (which takes the dicts);
- multi-vector all-pairs: m3lab's ``colbert_scores_chunked`` vs FlagEmbedding's per-pair
  ``colbert_score``.
  FlagEmbedding's pair loops are timed on a sample of about 20k pairs (the first k questions
  x all paragraphs) and extrapolated to all pairs; their results on the sample are checked
  against m3lab's.

Run (FlagEmbedding lives in a scratch virtualenv; m3lab needs only torch, transformers,
numpy, scipy, tqdm there):

    M3LAB_DATA_DIR=/work/shared/data PYTHONPATH=/work/main /work/flagvenv/bin/python benchmarks/encode_and_score.py

Prints a markdown table and writes it to ``benchmarks/results/encode_and_score.md``.
Without FlagEmbedding installed, only m3lab and the bare forward passes are measured.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # FlagEmbedding's progress bars would pollute the timings' output

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from m3lab import M3Model, scoring  # noqa: E402
from m3lab._io import atomic_file  # noqa: E402
from m3lab.modeling import CPU_BATCH_OVERHEAD_TOKENS, plan_batches, sparse_dicts_to_csr  # noqa: E402

BATCH_SIZE = 32
MAX_LENGTH = 512


def load_xquad_en(data_dir: Path) -> tuple[list[str], list[str]]:
    path = data_dir / "xquad" / "xquad.en.json"
    if not path.is_file():
        sys.exit(f"{path} not found: set M3LAB_DATA_DIR to a folder with xquad/xquad.en.json")
    data = json.loads(path.read_text(encoding="utf-8"))
    paragraphs = [p for article in data["data"] for p in article["paragraphs"]]
    return [p["context"] for p in paragraphs], [qa["question"] for p in paragraphs for qa in p["qas"]]


def build_checkpoint(path: Path) -> Path:
    spec = importlib.util.spec_from_file_location("parity_checkpoint", ROOT / "tests" / "reference" / "parity_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parity_checkpoint(path)


def timed(fn):
    """(wall seconds, process CPU seconds, result)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - c0, out


def median_timed(fn, repeats: int):
    runs = [timed(fn)[:2] for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


class PlainForward:
    """A bare encoder pass: tokenise, sort by length, run the encoder; no heads, no outputs kept.

    ``planned=False``: fixed batches of 32 sorted texts (FlagEmbedding's batching);
    ``planned=True``: m3lab's batches (``plan_batches``), i.e. the limit for m3lab's encode.
    """

    def __init__(self, path: Path, planned: bool):
        from transformers import AutoModel, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path))
        self.enc = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        self.planned = planned

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> None:
        ids = self.tok(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        lengths = [len(x) for x in ids]
        for idx in plan_batches(lengths, BATCH_SIZE, CPU_BATCH_OVERHEAD_TOKENS if self.planned else None):
            batch = self.tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            _ = self.enc(**batch).last_hidden_state


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per contender (median reported)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, the same for all")
    ap.add_argument("--sample-pairs", type=int, default=20_000, help="pairs timed for FlagEmbedding's pair loops")
    ap.add_argument("--model", choices=("parity", "default"), default="parity",
                    help="parity: MiniLM + seeded random heads (CLS pooling); default: the shipped default model "
                         "(e5-small M3, mean pooling), saved in the full bge-m3 layout so both libraries load it")
    ap.add_argument("--out", type=Path, default=None,
                    help="markdown output (default: benchmarks/results/encode_and_score[_default].md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("M3LAB_DATA_DIR", ROOT.parent / "shared" / "data"))
    paragraphs, questions = load_xquad_en(data_dir)
    try:
        from FlagEmbedding import BGEM3FlagModel
    except ImportError:
        BGEM3FlagModel = None
        print("FlagEmbedding is not installed: measuring m3lab and the bare forward pass only", file=sys.stderr)

    if args.out is None:
        args.out = ROOT / "benchmarks" / "results" / ("encode_and_score.md" if args.model == "parity"
                                                      else "encode_and_score_default.md")
    tmp = tempfile.TemporaryDirectory()
    if args.model == "parity":
        ckpt, pooling = build_checkpoint(Path(tmp.name) / "ckpt"), "cls"
    else:  # the same bytes for both: m3lab's full bge-m3 export of the default model
        ckpt, pooling = M3Model.from_pretrained("default", device="cpu").save_pretrained(Path(tmp.name) / "ckpt"), "mean"
    m3 = M3Model.from_pretrained(ckpt, device="cpu", dtype=torch.float32)
    n_tokens = sum(len(x) for x in m3.tokenize(paragraphs + questions, max_length=MAX_LENGTH))
    M3, FLAG = "m3lab `M3Model.encode`", "FlagEmbedding `BGEM3FlagModel.encode`"

    def run_m3():
        return (m3.encode(paragraphs, batch_size=BATCH_SIZE, max_length=MAX_LENGTH),
                m3.encode(questions, batch_size=BATCH_SIZE, max_length=MAX_LENGTH))

    contenders = {M3: run_m3}
    if BGEM3FlagModel is not None:
        flag = BGEM3FlagModel(str(ckpt), use_fp16=False, pooling_method=pooling, devices="cpu")
        kw = {"batch_size": BATCH_SIZE, "max_length": MAX_LENGTH, "return_dense": True, "return_sparse": True,
              "return_colbert_vecs": True}
        contenders[FLAG] = lambda: (flag.encode(paragraphs, **kw), flag.encode(questions, **kw))
    for planned, label in ((False, "transformers forward, fixed batches (FlagEmbedding's), no heads"),
                           (True, "transformers forward, m3lab's batches, no heads (m3lab's limit)")):
        plain = PlainForward(ckpt, planned)
        contenders[label] = lambda plain=plain: (plain.encode(paragraphs), plain.encode(questions))

    # warm-up, then interleaved repeats so that background load hits every contender alike
    outputs = {name: fn() for name, fn in contenders.items()}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            runs[name].append(timed(fn)[:2])
    enc = {name: (statistics.median(r[0] for r in rs), statistics.median(r[1] for r in rs)) for name, rs in runs.items()}
    p_m3, q_m3 = outputs[M3]

    rows = []  # task, implementation, wall, cpu, work, speed-up wall, speed-up cpu

    def add(task, name, t, base, work, digits=2):
        up = (f"{base[0] / t[0]:.{digits}f}x", f"{base[1] / t[1]:.{digits}f}x") if base else ("-", "-")
        rows.append((task, name, f"{t[0]:.3g} s", f"{t[1]:.3g} s", work, *up))

    base = enc.get(FLAG)
    for name, t in enc.items():
        add("encode, 3 outputs", name, t, base, f"{len(paragraphs) + len(questions)} texts, {n_tokens / t[0]:,.0f} tokens/s")

    # ---- all pairs: sparse (CSR product, CSR built from the dicts inside the timing) and multi-vector
    n_pairs = len(questions) * len(paragraphs)

    def m3_sparse():
        return scoring.sparse_scores(sparse_dicts_to_csr(q_m3.sparse, m3.vocab_size),
                                     sparse_dicts_to_csr(p_m3.sparse, m3.vocab_size))

    q_csr, p_csr = q_m3.sparse_csr, p_m3.sparse_csr  # encode's CSR view (built once, cached)

    def m3_sparse_product():
        return scoring.sparse_scores(q_csr, p_csr)

    def m3_colbert():
        return scoring.colbert_scores_chunked(q_m3.colbert, p_m3.colbert)

    s_sparse, s_colbert = m3_sparse(), m3_colbert()  # warm-up and results
    t_sparse = median_timed(m3_sparse, max(args.repeats, 5))
    t_product = median_timed(m3_sparse_product, max(args.repeats, 5))
    t_colbert = median_timed(m3_colbert, args.repeats)

    checks = [f"{n_tokens:,} tokens ({len(paragraphs)} paragraphs, {len(questions)} questions)"]
    if BGEM3FlagModel is not None:
        p_flag, q_flag = outputs[FLAG]
        d = max(float(np.abs(p_m3.dense - p_flag["dense_vecs"]).max()), float(np.abs(q_m3.dense - q_flag["dense_vecs"]).max()))
        checks.append(f"dense vectors m3lab vs FlagEmbedding max |diff| {d:.1e}")
        k = max(1, min(len(questions), args.sample_pairs // len(paragraphs)))
        sample, scale = k * len(paragraphs), n_pairs / (k * len(paragraphs))
        lw_q, lw_p = q_flag["lexical_weights"][:k], p_flag["lexical_weights"]
        cq, cp = q_flag["colbert_vecs"][:k], p_flag["colbert_vecs"]

        def flag_sparse():
            return np.asarray(flag.compute_lexical_matching_score(lw_q, lw_p))

        def flag_colbert():
            return np.array([[float(flag.colbert_score(a, b)) for b in cp] for a in cq])

        fs, fc = flag_sparse(), flag_colbert()[:1]  # warm-up
        t_fs = median_timed(flag_sparse, 3)
        wall, cpu, fc = timed(flag_colbert)
        t_fc = (wall, cpu)
        checks.append(f"on the sampled pairs, sparse max |diff| {np.abs(fs - s_sparse[:k]).max():.1e}, "
                      f"multi-vector max |diff| {np.abs(fc - s_colbert[:k]).max():.1e}")
        note = f"{sample:,} pairs timed, x{scale:.2f} to all {n_pairs:,}"
        t_fs_all, t_fc_all = (t_fs[0] * scale, t_fs[1] * scale), (t_fc[0] * scale, t_fc[1] * scale)
        add("sparse all-pairs", "FlagEmbedding `compute_lexical_matching_score`", t_fs_all, t_fs_all, note, 0)
        add("sparse all-pairs", "m3lab `sparse_scores` on encode's `.sparse_csr`", t_product, t_fs_all,
            f"{n_pairs:,} pairs", 0)
        add("sparse all-pairs", "m3lab `sparse_scores` (incl. building the CSR from the dicts)", t_sparse, t_fs_all,
            f"{n_pairs:,} pairs", 0)
        add("multi-vector all-pairs", "FlagEmbedding `colbert_score`, pair by pair", t_fc_all, t_fc_all, note, 1)
        add("multi-vector all-pairs", "m3lab `colbert_scores_chunked`", t_colbert, t_fc_all, f"{n_pairs:,} pairs", 1)
    else:
        add("sparse all-pairs", "m3lab `sparse_scores` on encode's `.sparse_csr`", t_product, None, f"{n_pairs:,} pairs")
        add("sparse all-pairs", "m3lab `sparse_scores` (incl. building the CSR from the dicts)", t_sparse, None,
            f"{n_pairs:,} pairs")
        add("multi-vector all-pairs", "m3lab `colbert_scores_chunked`", t_colbert, None, f"{n_pairs:,} pairs")

    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    if BGEM3FlagModel is not None:
        from importlib.metadata import version

        versions["FlagEmbedding"] = version("FlagEmbedding")
    which = ("parity checkpoint (MiniLM-L6 + seeded random heads, bge-m3 layout)" if args.model == "parity"
             else "the default model (e5-small M3, saved in the full bge-m3 layout, mean pooling)")
    header = (f"XQuAD-en, {which}, CPU "
              f"({os.cpu_count()} cores), {args.threads} torch threads for all, float32, batch size {BATCH_SIZE}, "
              f"max length {MAX_LENGTH}. Times: median of {args.repeats} runs after a warm-up (wall clock, and "
              f"the process's CPU time, which background load on a shared machine disturbs less). "
              + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    lines = [header, "",
             "| task | implementation | wall | CPU | work | speed-up vs FlagEmbedding (wall) | (CPU) |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {' | '.join(r)} |" for r in rows]
    lines += ["", "Checks: " + "; ".join(checks) + "."]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as f:
        f.write(text)
    tmp.cleanup()


if __name__ == "__main__":
    main()
