"""Retrieval evaluation: every mode of :class:`m3lab.retrieval.CorpusIndex` and the BM25 baselines.

The metrics come from ``ir_measures``: nDCG@10, Recall@10 and Recall@100 by its ``pytrec_eval``
back end, the evaluator MTEB uses, MRR@10 by its MS MARCO provider. A plain model configured as
MTEB configures it (mean pooling, max length 256, ``--split all``) reproduces MTEB's
XQuADRetrieval nDCG@10 (``benchmarks/mteb_parity.py``).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import ir_measures
import numpy as np
from ir_measures import RR, R, nDCG

from .. import scoring
from ..data import RetrievalDataset
from ..modeling import M3Model, score_encoded
from ..retrieval.bm25 import (
    BM25_MODES,
    BM25Index,
    model_tokenizer_analyzer,
    standard_analyzer,
)
from ..retrieval.index import MODES as INDEX_MODES
from ..retrieval.index import CorpusIndex, corpus_fingerprint, document_text
from ..retrieval.qdrant import QdrantIndex
from ..retrieval.ranker import mode_functions
from ..retrieval.spec import describe_spec, options_for_store, parse_index_spec

logger = logging.getLogger("m3lab")

RETRIEVAL_MODES: tuple[str, ...] = INDEX_MODES + BM25_MODES


#: result key -> ir_measures measure (computed by pytrec_eval, as in MTEB)
METRICS = {"ndcg@10": nDCG @ 10, "recall@10": R @ 10, "recall@100": R @ 100, "mrr@10": RR @ 10}


_NEEDS_HEADS = ("sparse", "colbert", "hybrid")


def retrieval_metrics(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean nDCG@10, Recall@10, Recall@100 and MRR@10 over the judged queries, by ``ir_measures``.

    ir_measures computes nDCG and Recall with pytrec_eval (MTEB's evaluator) and MRR@10 with its
    MS MARCO provider (pytrec_eval's reciprocal rank has no cutoff). A judged query with an empty
    ranking counts as 0.
    """
    run = {qid: run.get(qid, {}) for qid in qrels}
    scores = ir_measures.calc_aggregate(list(METRICS.values()), qrels, run)
    return {name: float(scores.get(measure, 0.0)) for name, measure in METRICS.items()}


def _run(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray, scores: np.ndarray
         ) -> dict[str, dict[str, float]]:
    """A TREC-style run {query: {doc: score}} from ranked document positions (-1 = none)."""
    run = {}
    for qid, idx, sc in zip(query_ids, indices, scores):
        run[qid] = {doc_ids[j]: float(s) for j, s in zip(idx, sc) if j >= 0}
    return run


def check_modes(modes: Sequence[str], allowed: Sequence[str] = RETRIEVAL_MODES) -> list[str]:
    """The modes, validated (an unknown one raises ``ValueError`` listing the valid ones)."""
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise ValueError(f"no modes given; choose from {', '.join(allowed)}")
    for m in modes:
        if m not in allowed:
            raise ValueError(f"unknown mode {m!r}; the modes are {', '.join(allowed)}")
    return modes


def judged_queries(dataset: RetrievalDataset) -> list:
    """The queries with at least one relevant document (the others are left out, as MTEB does)."""
    return [q for q in dataset.queries if any(v > 0 for v in dataset.qrels.get(q.id, {}).values())]


def evaluate_retrieval(model_or_index: M3Model | CorpusIndex | QdrantIndex | None, dataset: RetrievalDataset,
                       modes: Sequence[str] = INDEX_MODES, *, top_k: int = 100,
                       weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, candidates: int = 100,
                       max_length: int = 512, batch_size: int = 32, dense_index: str = "flat", mcls: bool = False,
                       dataset_label: str | None = None, language: str | None = None,
                       index_spec: str | dict | None = None, show_progress: bool = True) -> list[dict]:
    """Rank ``dataset``'s corpus for its queries in each mode and score the rankings.

    ``model_or_index``: an :class:`M3Model` (the corpus is indexed here, storing only what
    the modes need, in float32 unless ``index_spec`` (:mod:`m3lab.retrieval.spec`) asks for other
    storage), a :class:`CorpusIndex` or :class:`QdrantIndex` already built on this corpus, or ``None`` when the
    only mode is ``bm25``. Rankings are ``top_k`` deep (100: Recall@100 needs it). Queries
    without a relevant document are left out, as MTEB does. Returns one dict per mode:
    ``{"dataset", "language", "mode", "ndcg@10", "recall@10", "recall@100", "mrr@10",
    "n_queries", "n_documents", "seconds"}``.
    """
    modes = check_modes(modes)
    queries = judged_queries(dataset)
    if not queries:
        raise ValueError(f"dataset {dataset.name!r} has no query with a relevant document")
    qrels = {q.id: dataset.qrels[q.id] for q in queries}
    query_texts = [q.text for q in queries]
    base = {"dataset": dataset_label or dataset.name, "language": language or dataset.query_language}
    if dataset.corpus_language and dataset.corpus_language != dataset.query_language:
        base["corpus_language"] = dataset.corpus_language
    index = model_or_index if _is_index(model_or_index) else None
    model = index.model if index is not None else model_or_index
    if model is None and any(m != "bm25" for m in modes):
        raise ValueError(f"modes {[m for m in modes if m != 'bm25']} need a model")

    results: dict[str, dict] = {}
    index_modes = [m for m in modes if m in INDEX_MODES]
    if index_modes:
        t0 = time.perf_counter()
        components = sorted({c for m in index_modes for c in mode_functions(m, weights)})
        if index is None:
            # exact float32 reference scores unless an index spec asks for a compressed store
            options = {"dense_index": dense_index, "colbert_dtype": "float32",
                       **options_for_store(parse_index_spec(index_spec), components)}
            index = CorpusIndex.build(model, dataset.corpus, max_length=max_length, batch_size=batch_size,
                                      store=components, mcls=mcls, show_progress=show_progress, **options)
        elif _held_corpus(index) != corpus_fingerprint(dataset.corpus):
            raise ValueError(f"the index holds another corpus than dataset {dataset.name!r} "
                             f"({len(index)} vs {len(dataset.corpus)} documents)")
        q = index.encode_queries(query_texts, components=components, max_length=max_length, batch_size=batch_size,
                                 show_progress=show_progress and len(queries) > 8 * batch_size)
        rankings = index.rank(q, index_modes, top_k=top_k, weights=weights, candidates=candidates)
        seconds = time.perf_counter() - t0
        for m in index_modes:
            r = rankings[m]
            results[m] = {**retrieval_metrics(qrels, _run([x.id for x in queries], index.doc_ids, r.indices, r.scores)),
                          "seconds": round(seconds, 2), "index": _describe(index)}
    for m in (m for m in modes if m in BM25_MODES):
        t0 = time.perf_counter()
        analyzer = (standard_analyzer(dataset.corpus_language) if m == "bm25"
                    else model_tokenizer_analyzer(model.tokenizer))
        bm25 = BM25Index([document_text(d) for d in dataset.corpus], analyzer=analyzer)
        idx, sc = bm25.search(query_texts, top_k=top_k)
        results[m] = {**retrieval_metrics(qrels, _run([x.id for x in queries], [d.id for d in dataset.corpus], idx, sc)),
                      "seconds": round(time.perf_counter() - t0, 2)}
    return [{**base, "mode": m, **results[m], "n_queries": len(queries), "n_documents": len(dataset.corpus)}
            for m in modes]


def _is_index(x) -> bool:
    """A :class:`CorpusIndex` or a :class:`QdrantIndex` (both rank encoded queries)."""
    return isinstance(x, (CorpusIndex, QdrantIndex))


def _held_corpus(index) -> str:
    fingerprint = getattr(index, "corpus_fingerprint", None)  # a QdrantIndex keeps it in its manifest
    return fingerprint if isinstance(fingerprint, str) else corpus_fingerprint(index.documents)


def _describe(index) -> str:
    if isinstance(index, CorpusIndex):
        return describe_spec(index.settings)
    return f"qdrant-{index.backend.kind},colbert_dtype={index.settings['colbert_dtype']}"


def top1_rates(index: CorpusIndex, dataset: RetrievalDataset, *, mode: str = "hybrid",
               weights: Sequence[float] = scoring.DEFAULT_WEIGHTS,
               group_of=lambda doc_id: doc_id.split("/")[0]) -> dict[str, dict[str, float]]:
    """Per query language: the share of queries whose first result is their relevant document
    (``exact``) and the share whose first result is in the same group (``group``; for the mini
    corpus, whose ids are ``topic/language``, the right topic in any language)."""
    queries = judged_queries(dataset)
    encoded = index.encode_queries([q.text for q in queries], components=index.components_for(mode, weights))
    first = index.rank(encoded, [mode], top_k=1, weights=weights)[mode].indices[:, 0]
    out: dict[str, dict[str, list[bool]]] = {}
    for q, i in zip(queries, first):
        relevant = {d for d, v in dataset.qrels[q.id].items() if v > 0}
        top = index.doc_ids[int(i)]
        row = out.setdefault(q.language or "", {"exact": [], "group": []})
        row["exact"].append(top in relevant)
        row["group"].append(group_of(top) in {group_of(d) for d in relevant})
    return {lang: {k: float(np.mean(v)) for k, v in row.items()} | {"n_queries": len(row["exact"])}
            for lang, row in out.items()}


def positive_scores(model: M3Model, dataset: RetrievalDataset, *, batch_size: int = 32) -> dict[str, float]:
    """Mean dense, sparse and multi-vector score of each query with its relevant documents
    (the scale the ensemble weights of eq. 5 act on)."""
    queries = judged_queries(dataset)
    row_of = {d.id: i for i, d in enumerate(dataset.corpus)}
    q = model.encode_queries([x.text for x in queries], batch_size=batch_size, show_progress=False)
    p = model.encode_corpus([document_text(d) for d in dataset.corpus], batch_size=batch_size, show_progress=False)
    s = score_encoded(q, p, weights=(1.0, 1.0, 1.0))
    pairs = [(i, row_of[d]) for i, x in enumerate(queries) for d, v in dataset.qrels[x.id].items() if v > 0]
    rows, cols = np.array(pairs).T
    return {k: float(np.asarray(getattr(s, k))[rows, cols].mean()) for k in ("dense", "sparse", "colbert")}


def ranking_changes(index: CorpusIndex, dataset: RetrievalDataset, *,
                    weights: Sequence[float] = (1.0, 0.3, 0.0)) -> dict[str, float]:
    """How much the sparse term moves the ranking: the share of queries whose first result, and
    whose top-10 set, under hybrid ``weights`` differ from dense alone (w_sparse = 0.3 by default)."""
    queries = judged_queries(dataset)
    encoded = index.encode_queries([q.text for q in queries], components=("dense", "sparse"))
    r = index.rank(encoded, ["dense", "hybrid"], top_k=10, weights=weights)
    dense, hybrid = r["dense"].indices, r["hybrid"].indices
    return {"top1_changed": float(np.mean(dense[:, 0] != hybrid[:, 0])),
            "top10_changed": float(np.mean([set(a) != set(b) for a, b in zip(dense, hybrid)]))}
