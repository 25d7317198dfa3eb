"""QdrantIndex against CorpusIndex on the same encodings: build time, bytes, single-query latency, agreement.

Both indexes are built from one encoding of the corpus (``encodings=``: the benchmark measures the
stores and the search, not the encoder), multi-vectors in float16 on both sides. For each mode it
times ``search(question, top_k=10)`` (query encoding included) on ``--queries`` questions, p50 and
p95, and reports how many of CorpusIndex's top 10 the engine's default search (HNSW for dense,
``exact=False``) returns, and with ``exact=True``.

Corpora (``benchmarks/index_tradeoffs.py``'s, whose encoding cache this reuses): ``xquad`` (2,880
passages) and ``haystack`` (160,958 texts: XQuAD plus every Tatoeba sentence)::

    M3LAB_DATA_DIR=../shared/data python benchmarks/qdrant_index.py --corpus haystack --queries 50

Prints a markdown table and writes it to ``benchmarks/results/qdrant_index.md``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from m3lab._io import atomic_file  # noqa: E402
from m3lab.modeling import M3Model  # noqa: E402
from m3lab.retrieval import CorpusIndex, QdrantIndex  # noqa: E402

MODES = ("dense", "sparse", "colbert", "hybrid")


def _tradeoffs_module():
    spec = importlib.util.spec_from_file_location("index_tradeoffs", ROOT / "benchmarks" / "index_tradeoffs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed_search(index, queries: list[str], mode: str, **kw) -> tuple[list[float], list[list[str]]]:
    index.search(queries[0], mode=mode, top_k=10, **kw)  # warm-up
    times, ids = [], []
    for q in queries:
        t = time.perf_counter()
        results = index.search(q, mode=mode, top_k=10, **kw)
        times.append(1000 * (time.perf_counter() - t))
        ids.append([r.doc_id for r in results])
    return times, ids


def overlap(a: list[list[str]], b: list[list[str]]) -> float:
    return float(np.mean([len(set(x) & set(y)) / max(len(x), 1) for x, y in zip(a, b)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", choices=["xquad", "haystack"], default="haystack")
    ap.add_argument("--model", default="default")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--data-dir", default=os.environ.get("M3LAB_DATA_DIR", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--cache", default=str(ROOT / ".cache" / "benchmarks" / "encodings"))
    ap.add_argument("--workdir", default=None, help="where the Qdrant collection is written (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "qdrant_index.md"))
    args = ap.parse_args()
    tradeoffs = _tradeoffs_module()
    model = M3Model.from_pretrained(args.model)
    corpus = tradeoffs.load_corpus(args.corpus, args.data_dir)
    encodings, encode_s = tradeoffs.encode_cached(model, args.corpus, [d.text for d in corpus.documents],
                                                  Path(args.cache), kind="passage", max_length=args.max_length)
    queries = [t for _, t in random.Random(0).sample(list(corpus.queries), args.queries)]
    n = len(corpus.documents)
    print(f"{args.corpus}: {n:,} documents, encoded in {encode_s:.0f} s (cached)", flush=True)

    t = time.perf_counter()
    memory = CorpusIndex.build(model, corpus.documents, max_length=args.max_length, encodings=encodings)
    memory_build = time.perf_counter() - t
    memory_bytes = sum(memory.nbytes().values())
    work = Path(args.workdir or tempfile.mkdtemp(prefix="m3lab-qdrant-bench-"))
    shutil.rmtree(work / "q", ignore_errors=True)
    t = time.perf_counter()
    engine = QdrantIndex.build(model, corpus.documents, path=work / "q", max_length=args.max_length,
                               encodings=encodings, chunk_size=1024)
    engine_build = time.perf_counter() - t
    engine_bytes = engine.nbytes()["qdrant"]
    del encodings
    t = time.perf_counter()
    engine.close()
    engine = QdrantIndex.open(model, path=work / "q")
    reopen_s = time.perf_counter() - t
    print(f"built: CorpusIndex {memory_build:.0f} s, QdrantIndex {engine_build:.0f} s (reopen {reopen_s:.1f} s)",
          flush=True)

    rows = []
    for mode in MODES:
        mt, mids = timed_search(memory, queries, mode)
        et, eids = timed_search(engine, queries, mode)
        _, xids = timed_search(engine, queries[: min(10, len(queries))], mode, exact=True)
        rows.append((mode, statistics.median(mt), float(np.percentile(mt, 95)), statistics.median(et),
                     float(np.percentile(et, 95)), overlap(mids, eids), overlap(mids[: len(xids)], xids)))
        print(rows[-1], flush=True)

    header = (f"# QdrantIndex (qdrant-edge, embedded) vs CorpusIndex, {args.corpus}: {n:,} documents, model "
              f"{args.model!r}\n\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"{torch.get_num_threads()} torch threads, torch {torch.__version__}; one shared encoding, multi-vectors "
              f"float16 in both; {len(queries)} questions, `search(q, top_k=10)` with query encoding; hybrid w = 1, "
              "0.3, 1 with 100 dense + 100 sparse candidates. Top-10 agreement: the share of CorpusIndex's top 10 "
              "that the engine returns, by default (HNSW for dense) and with `exact=True` (first 10 questions). "
              f"`python benchmarks/qdrant_index.py --corpus {args.corpus} --queries {args.queries}`\n\n"
              f"Build from the encodings: CorpusIndex {memory_build:.0f} s, {memory_bytes / n:,.0f} bytes/document in "
              f"memory; QdrantIndex {engine_build:.0f} s, {engine_bytes / n:,.0f} bytes/document on disk; reopening "
              f"the collection {reopen_s:.1f} s.\n")
    lines = [header, "| mode | CorpusIndex p50 ms | p95 ms | QdrantIndex p50 ms | p95 ms | top-10 agreement | "
                     "exact=True |", "|---|---:|---:|---:|---:|---:|---:|"]
    for mode, a50, a95, b50, b95, agree, exact in rows:
        lines.append(f"| {mode} | {a50:.1f} | {a95:.1f} | {b50:.1f} | {b95:.1f} | {agree:.3f} | {exact:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    with atomic_file(args.out) as f:
        f.write(text)
    engine.close()
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
