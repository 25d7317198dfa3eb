"""Index trade-offs (issue 14): storage and search variants measured against exhaustive scoring.

:func:`compare_variants` builds every :class:`Variant` (a :meth:`CorpusIndex.build` spec plus a
search mode) from one corpus encoding and reports, for a sample of queries: recall@10 and
recall@100 of the exhaustive float32 ranking of the same function (the share of its top 10 found in
the variant's top 10 / top 100), nDCG@10 and MRR@10 on the qrels, p50/p95 single-query latency,
bytes per document and build time. :func:`tradeoff_goals` checks issue 14's three goals.
``benchmarks/index_tradeoffs.py`` runs it on XQuAD and a 160k-text haystack; notebook 08 plots it.
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..data.records import Document
from ..modeling import EncodeOutput, M3Model
from ..retrieval.index import CorpusIndex, document_text
from .retrieval import _run, retrieval_metrics


@dataclass(frozen=True)
class Variant:
    """One index to compare: a :meth:`CorpusIndex.build` spec, the mode it is searched with, and the
    exhaustive ranking (``dense``, ``sparse``, ``colbert`` or ``hybrid``, float32) it is measured against."""

    name: str
    mode: str                       # the CorpusIndex.search mode
    store: tuple[str, ...]
    options: dict                   # CorpusIndex.build options
    reference: str                  # the exhaustive ranking it is compared with
    candidates: int = 100
    corpora: tuple[str, ...] = ("xquad", "haystack")  # where the benchmark runs it (exhaustive MaxSim
    # over the 160k-text haystack takes minutes per variant on 2 cores, so not every variant goes there)


ALL = ("dense", "sparse", "colbert")
F32 = {"colbert_dtype": "float32"}
MUVERA = {"num_repetitions": 10}  # 10 x 32 x 16 = 5,120 dimensions (the paper's R=20 doubles it)
VARIANTS = [
    # the exhaustive baselines: float32, every document scored
    Variant("exhaustive-colbert", "colbert", ("colbert",), F32, "colbert"),
    Variant("exhaustive-hybrid", "hybrid", ALL, F32, "hybrid", candidates=0),  # 0: the whole corpus
    Variant("hybrid-paper", "hybrid", ALL, {}, "hybrid"),  # dense top-100 U sparse top-100, fp16 MaxSim rerank
    Variant("dense-float32", "dense", ("dense",), {}, "dense"),
    Variant("dense-int8", "dense", ("dense",), {"dense_quantization": "int8"}, "dense"),
    Variant("dense-binary", "dense", ("dense",), {"dense_quantization": "binary"}, "dense"),
    Variant("dense-binary-x10", "dense", ("dense",), {"dense_quantization": "binary", "rescore_multiplier": 10},
            "dense"),
    Variant("dense-dim192", "dense", ("dense",), {"dense_dim": 192}, "dense"),
    Variant("sparse", "sparse", ("sparse",), {}, "sparse"),
    Variant("sparse-top32", "sparse", ("sparse",), {"sparse_top_k": 32}, "sparse"),
    Variant("sparse-top32-query8", "sparse", ("sparse",), {"sparse_top_k": 32, "query_sparse_top_k": 8}, "sparse"),
    Variant("colbert-fp16", "colbert", ("colbert",), {}, "colbert", corpora=("xquad",)),
    Variant("colbert-int8", "colbert", ("colbert",), {"colbert_dtype": "int8"}, "colbert", corpora=("xquad",)),
    Variant("colbert-pool2", "colbert", ("colbert",), {"pool_factor": 2}, "colbert", corpora=("xquad",)),
    Variant("colbert-pool3", "colbert", ("colbert",), {"pool_factor": 3}, "colbert", corpora=("xquad",)),
    Variant("colbert-kmeans2", "colbert", ("colbert",), {"pool_factor": 2, "pool_method": "kmeans"}, "colbert",
            corpora=("xquad",)),
    Variant("colbert-int8-pool2", "colbert", ("colbert",), {"colbert_dtype": "int8", "pool_factor": 2}, "colbert",
            corpora=("xquad",)),
    Variant("colbert-prune-stop", "colbert", ("colbert",), {"prune": {"by": "stop_tokens"}}, "colbert",
            corpora=("xquad",)),
    Variant("colbert-prune-lexical50", "colbert", ("colbert",), {"prune": {"by": "lexical", "keep_ratio": 0.5}},
            "colbert", corpora=("xquad",)),
    Variant("colbert-dim192", "colbert", ("colbert",), {"colbert_dim": 192}, "colbert", corpora=("xquad",)),
    Variant("muvera-fp16-c100", "colbert", ("colbert",), {"muvera": MUVERA}, "colbert", candidates=100),
    Variant("muvera-fp16-c500", "colbert", ("colbert",), {"muvera": MUVERA}, "colbert", candidates=500),
    Variant("muvera-r20-fp16-c500", "colbert", ("colbert",), {"muvera": True}, "colbert", candidates=500,
            corpora=("xquad",)),
    Variant("muvera-pool2-fp16-c500", "colbert", ("colbert",), {"muvera": MUVERA, "pool_factor": 2}, "colbert",
            candidates=500),
    Variant("muvera-int8-pool2-c500", "colbert", ("colbert",),
            {"muvera": MUVERA, "pool_factor": 2, "colbert_dtype": "int8"}, "colbert", candidates=500),
    Variant("hybrid-binary-dense-int8-pool2", "hybrid", ALL,
            {"dense_quantization": "binary", "colbert_dtype": "int8", "pool_factor": 2}, "hybrid"),
]


def overlap_recall(got: np.ndarray, ref: np.ndarray, k: int) -> float:
    """Mean share of the reference's top 10 found in ``got``'s top ``k``."""
    return float(np.mean([len(set(g[:k][g[:k] >= 0]) & set(r[:10][r[:10] >= 0])) / max(1, (r[:10] >= 0).sum())
                          for g, r in zip(got, ref)]))


def compare_variants(model: M3Model, corpus_name: str, documents: Sequence[Document],
                     queries: Sequence[tuple[str, str]], qrels: Mapping[str, Mapping[str, int]], *,
                     variants: Sequence[Variant] = VARIANTS, encodings: EncodeOutput | None = None,
                     encode_s: float | None = None, n_queries: int = 300, n_latency: int = 30, seed: int = 0,
                     log: Callable[[str], None] = print) -> list[dict]:
    """Build each variant's index from one corpus encoding and measure it against the exhaustive rankings.

    ``queries``: ``(id, text)``; a seeded sample of ``n_queries`` gives the quality columns and
    another of ``n_latency`` the single-query latencies (``CorpusIndex.search``, query encoding
    included, after two warm-up queries). ``encodings``: the corpus already encoded
    (:meth:`M3Model.encode_corpus`), else encoded here; ``build_s`` = the encoding time plus the
    variant's own build. One record per variant (the fields of ``benchmarks/index_tradeoffs.json``).
    """
    docs, n = list(documents), len(documents)
    if encodings is None:
        t = time.perf_counter()
        encodings = model.encode_corpus([document_text(d) for d in docs], show_progress=False)
        encode_s = time.perf_counter() - t
    encode_s = float(encode_s or 0.0)
    rng = random.Random(seed)
    sample = rng.sample(list(queries), min(n_queries, len(queries)))
    latency_texts = [t for _, t in rng.sample(list(queries), min(n_latency, len(queries)))]
    qids, qtexts = [q for q, _ in sample], [t for _, t in sample]
    qrels = {q: dict(qrels[q]) for q in qids}
    doc_ids = [d.id for d in docs]
    log(f"[{corpus_name}] encoding {len(qtexts)} quality queries")
    q_enc = model.encode_queries(qtexts, batch_size=64, show_progress=False)

    # the exhaustive references, float32 (one index per function set, so their rankings are exact)
    log(f"[{corpus_name}] exhaustive references")
    ref_index = CorpusIndex.build(model, docs, store=ALL, encodings=encodings, show_progress=False, **F32)
    t = time.perf_counter()
    refs = {m: r.indices for m, r in ref_index.rank(q_enc, ["dense", "sparse", "colbert"], top_k=100).items()}
    refs["hybrid"] = ref_index.rank(q_enc, ["hybrid"], top_k=100, candidates=n)["hybrid"].indices
    log(f"[{corpus_name}] references ranked in {time.perf_counter() - t:.0f} s")
    ref_bytes = {k: v for k, v in ref_index.nbytes().items()}
    del ref_index

    records = []
    for v in tqdm(list(variants), desc=f"{corpus_name} variants", unit="variant"):
        t = time.perf_counter()
        ix = CorpusIndex.build(model, docs, store=v.store, encodings=encodings, show_progress=False, **v.options)
        build_own = time.perf_counter() - t
        candidates = v.candidates or n
        t = time.perf_counter()
        ranking = ix.rank(q_enc, [v.mode], top_k=100, candidates=candidates)[v.mode]
        rank_s = time.perf_counter() - t
        metrics = retrieval_metrics(qrels, _run(qids, doc_ids, ranking.indices, ranking.scores))
        latencies = []
        for text in latency_texts[:2]:  # warm-up: first-call allocations, lazy imports
            ix.search(text, mode=v.mode, top_k=10, candidates=candidates)
        for text in latency_texts:
            t = time.perf_counter()
            ix.search(text, mode=v.mode, top_k=10, candidates=candidates)
            latencies.append(1000 * (time.perf_counter() - t))
        nbytes = ix.nbytes()
        records.append({
            "corpus": corpus_name, "variant": v.name, "mode": v.mode, "spec": v.options,
            "candidates": None if v.mode in ("dense", "sparse") else candidates,
            "reference": f"exhaustive-{v.reference}",
            "recall@10": round(overlap_recall(ranking.indices, refs[v.reference], 10), 4),
            "recall@100": round(overlap_recall(ranking.indices, refs[v.reference], 100), 4),
            "ndcg@10": round(metrics["ndcg@10"], 4), "mrr@10": round(metrics["mrr@10"], 4),
            "p50_ms": round(float(np.percentile(latencies, 50)), 2),
            "p95_ms": round(float(np.percentile(latencies, 95)), 2),
            "bytes_per_doc": round(sum(nbytes.values()) / n, 1),
            "bytes_per_doc_by_function": {k: round(b / n, 1) for k, b in nbytes.items()},
            "float32_bytes_per_doc_by_function": {k: round(ref_bytes[k] / n, 1) for k in nbytes if k in ref_bytes},
            "build_s": round(encode_s + build_own, 1), "build_own_s": round(build_own, 1),
            "rank_s": round(rank_s, 1), "documents": n, "quality_queries": len(qids),
            "latency_queries": len(latency_texts),
        })
        r = records[-1]
        log(f"  {v.name:<32} R@10 {r['recall@10']:.3f} R@100 {r['recall@100']:.3f} nDCG@10 "
                   f"{r['ndcg@10']:.4f} p50 {r['p50_ms']:.1f} ms p95 {r['p95_ms']:.1f} ms "
                   f"{r['bytes_per_doc']:.0f} B/doc build {r['build_own_s']:.0f}+{encode_s:.0f} s")
        del ix
    return records


def tradeoff_goals(records: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The issue's three goals, each met or not (None: not measured), with the figures that decide it."""
    by = {(r["corpus"], r["variant"]): r for r in records}
    out = []
    base = by.get(("haystack", "exhaustive-colbert"))
    muv = [r for r in records if r["corpus"] == "haystack" and "muvera" in r["variant"]]
    if base and muv:
        ok = [r for r in muv if r["recall@100"] >= 0.95 and base["p50_ms"] / r["p50_ms"] >= 10]
        best = max(ok or muv, key=lambda r: (r["recall@100"] >= 0.95, base["p50_ms"] / r["p50_ms"]))
        out.append(("MUVERA first stage: recall@100 of exhaustive MaxSim's top 10 >= 0.95 at >= 10x lower latency "
                    "(haystack)", bool(ok),
                    f"{best['variant']}: recall@100 {best['recall@100']:.3f}, p50 {best['p50_ms']:.0f} ms vs "
                    f"{base['p50_ms']:.0f} ms ({base['p50_ms'] / best['p50_ms']:.1f}x)"))
    else:
        out.append(("MUVERA first stage (haystack)", None, "not run"))
    ref = by.get(("xquad", "exhaustive-colbert"))
    small = [r for r in records if r["corpus"] == "xquad" and r["mode"] == "colbert" and ref
             and r["bytes_per_doc_by_function"].get("colbert", 1e18) * 4 <= ref["bytes_per_doc_by_function"]["colbert"]]
    if ref and small:
        ok = [r for r in small if r["ndcg@10"] >= ref["ndcg@10"] - 0.01]
        best = max(ok or small, key=lambda r: r["ndcg@10"])
        ratio = ref["bytes_per_doc_by_function"]["colbert"] / best["bytes_per_doc_by_function"]["colbert"]
        out.append(("multi-vector store >= 4x smaller than float32, nDCG@10 <= 1 point lower (XQuAD)", bool(ok),
                    f"{best['variant']}: {ratio:.1f}x smaller, nDCG@10 {100 * best['ndcg@10']:.2f} vs "
                    f"{100 * ref['ndcg@10']:.2f}"))
    else:
        out.append(("multi-vector store >= 4x smaller (XQuAD)", None, "not run"))
    for corpus in ("xquad", "haystack"):
        f, b = by.get((corpus, "dense-float32")), [r for r in records if r["corpus"] == corpus
                                                   and r["variant"].startswith("dense-binary")]
        if f and b:
            best = max(b, key=lambda r: r["ndcg@10"])
            share = best["ndcg@10"] / f["ndcg@10"]
            out.append((f"binary dense with rescoring >= 95 % of float nDCG@10 ({corpus})", share >= 0.95,
                        f"{best['variant']}: {100 * best['ndcg@10']:.2f} vs {100 * f['ndcg@10']:.2f} "
                        f"({100 * share:.1f} %)"))
    return out


