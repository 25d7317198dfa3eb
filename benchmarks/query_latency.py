"""Single-query latency per retrieval mode on CPU, against the 12-language XQuAD corpus (2,880 passages).

Each query is one ``CorpusIndex.search(question, mode=..., top_k=10)`` call: encoding the question
(only the embeddings the mode needs) plus the search. Modes: dense (faiss, exact inner product),
sparse (inverted index), colbert (exhaustive MaxSim over the whole corpus) and hybrid as in the
paper (dense top-100 ∪ sparse top-100 candidates, reranked with w1·dense + w2·sparse + w3·MaxSim).
The baseline row, measured in the same process, is query encoding alone (all three embeddings);
the last column is each mode's p50 over that baseline's.

The index (max length 512) takes minutes to build on 2 cores, so it is cached under
``.cache/benchmarks/`` (keyed by model fingerprint and settings) and reloaded on later runs.

    python benchmarks/query_latency.py                  # MiniLM backbone ("default"), 200 queries
    python benchmarks/query_latency.py --threads 1 --queries 100
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from m3lab._io import atomic_file
from m3lab.data import XQUAD_LANGUAGES, Document, load_xquad
from m3lab.retrieval import CorpusIndex, model_fingerprint
from m3lab.modeling import M3Model

MODES = ("dense", "sparse", "colbert", "hybrid")


def corpus_and_questions(data_dir: str | None) -> tuple[list[Document], list[str]]:
    docs, questions = [], []
    for lang in XQUAD_LANGUAGES:
        ds = load_xquad(lang, data_dir=data_dir)
        docs += [Document(f"{lang}/{d.id}", d.text, lang) for d in ds.corpus]
        questions += [q.text for q in ds.queries]
    return docs, questions


def cached_index(model: M3Model, docs: list[Document], max_length: int, cache: Path) -> tuple[CorpusIndex, str]:
    key = f"xquad12-{model_fingerprint(model)[:16]}-{model.pooling}-L{max_length}"
    path = cache / key
    if (path / "manifest.json").is_file():
        t = time.perf_counter()
        index = CorpusIndex.load(path, model)
        return index, f"loaded from {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} " \
                      f"({time.perf_counter() - t:.1f} s)"
    t = time.perf_counter()
    index = CorpusIndex.build(model, docs, max_length=max_length)
    built = time.perf_counter() - t
    index.save(path)
    return index, f"built in {built:.0f} s and cached in {path}"


def percentiles(ms: list[float]) -> tuple[float, float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95)), float(a.mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. the cores)")
    ap.add_argument("--data-dir", default=os.environ.get("M3LAB_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "benchmarks"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "query_latency.md"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = M3Model.from_pretrained(args.model, device="cpu")
    docs, questions = corpus_and_questions(args.data_dir)
    index, origin = cached_index(model, docs, args.max_length, Path(args.cache))
    queries = random.Random(args.seed).sample(questions, args.queries)
    load_start = os.getloadavg()[0]

    def timed(fn) -> list[float]:
        for q in queries[:10]:  # warm-up: first calls allocate and pick kernels
            fn(q)
        out = []
        for q in queries:
            t = time.perf_counter()
            fn(q)
            out.append(1000 * (time.perf_counter() - t))
        return out

    rows = {"encode only (baseline)": timed(lambda q: index.encode_queries(q))}
    for mode in MODES:
        rows[mode] = timed(lambda q, m=mode: index.search(q, mode=m, top_k=10, candidates=args.candidates))
    load_end = os.getloadavg()[0]

    base = percentiles(rows["encode only (baseline)"])[0]
    n_vec = len(index.colbert_vectors)
    lines = [
        f"# Single-query latency, {len(index)} XQuAD passages (12 languages), CPU",
        "",
        f"Model `{args.model}` ({model.name_or_path}, d={model.hidden_size}, pooling {model.pooling}); index max "
        f"length {args.max_length}, {n_vec:,} multi-vector rows ({index.colbert_vectors.nbytes / 2**20:.0f} MiB); "
        f"{args.queries} questions sampled from all 12 languages (seed {args.seed}), top 10, after 10 warm-up queries. "
        f"Hybrid: dense top-{args.candidates} ∪ sparse top-{args.candidates}, reranked with weights (1, 0.3, 1) "
        "including MaxSim on the candidates.",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load average {load_start:.1f} → {load_end:.1f} (other jobs share the cores). "
        f"Index {origin}.",
        "",
        "| mode | p50 ms | p95 ms | mean ms | p50 / encode p50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, ms in rows.items():
        p50, p95, mean = percentiles(ms)
        lines.append(f"| {name} | {p50:.1f} | {p95:.1f} | {mean:.1f} | {p50 / base:.2f}× |")
    hybrid_p95 = percentiles(rows["hybrid"])[1]
    lines += ["", f"Target: hybrid p95 ≤ 150 ms — measured {hybrid_p95:.1f} ms "
                  f"({'met' if hybrid_p95 <= 150 else 'NOT met'})."]
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as f:
        f.write(text)


if __name__ == "__main__":
    main()
