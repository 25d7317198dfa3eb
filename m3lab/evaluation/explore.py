"""Per-query retrieval analysis for the app's Evaluate view and for notebooks (issue 16, item 10).

    report = explore_retrieval(index, dataset)          # one ranking per mode, shared by everything below
    report.table                                         # language x mode: nDCG@10, MRR@10, Recall@10/100
    report.gold_ranks                                    # per query: the rank of its first relevant document
    report.overlap(k=10)                                 # mean share of top-k shared by two modes
    sweep = fusion_sweep(index, dataset)                 # nDCG@10 over w_sparse x w_colbert at fixed w_dense

Every metric is :func:`m3lab.evaluation.retrieval.retrieval_metrics`' (ir-measures), per query and
averaged per query language; every ranking is :meth:`CorpusIndex.rank`'s, and BM25 is
:class:`m3lab.retrieval.bm25.BM25Index`'s, as ``m3lab eval`` computes them.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import ir_measures
import numpy as np

from .. import scoring
from ..data import RetrievalDataset
from ..retrieval.bm25 import BM25Index, standard_analyzer
from ..retrieval.index import MODES as INDEX_MODES
from ..retrieval.index import CorpusIndex, corpus_fingerprint, document_text
from .retrieval import METRICS, _run, check_modes, judged_queries, retrieval_metrics

EXPLORE_MODES = ("dense", "sparse", "colbert", "hybrid", "bm25")


@dataclass
class RetrievalReport:
    """Rankings of one dataset's judged queries in several modes, and what they say.

    ``rankings[mode]`` is ``{query_id: [doc_id, ...]}`` best first (``depth`` deep); ``per_query[mode]``
    ``{query_id: {metric: value}}``; ``table`` one row per (language, mode) plus ``"all"`` languages.
    """

    modes: list[str]
    query_ids: list[str]
    query_text: dict[str, str]
    query_language: dict[str, str]
    relevant: dict[str, set[str]]
    rankings: dict[str, dict[str, list[str]]]
    per_query: dict[str, dict[str, dict[str, float]]]
    table: list[dict] = field(default_factory=list)

    @property
    def gold_ranks(self) -> list[dict]:
        """Per query: its id, language, text and, for each mode, the 1-based rank of its first relevant
        document (``None`` when it is not in the ranking)."""
        rows = []
        for qid in self.query_ids:
            row = {"query_id": qid, "language": self.query_language[qid], "query": self.query_text[qid]}
            for mode in self.modes:
                ranked = self.rankings[mode].get(qid, [])
                row[mode] = next((r + 1 for r, d in enumerate(ranked) if d in self.relevant[qid]), None)
            rows.append(row)
        return rows

    def overlap(self, k: int = 10) -> np.ndarray:
        """(modes x modes): the mean over queries of |top-k(a) ∩ top-k(b)| / k."""
        n = len(self.modes)
        out = np.ones((n, n))
        for i, a in enumerate(self.modes):
            for j, b in enumerate(self.modes):
                if i < j:
                    shared = [len(set(self.rankings[a].get(q, [])[:k]) & set(self.rankings[b].get(q, [])[:k])) / k
                              for q in self.query_ids]
                    out[i, j] = out[j, i] = float(np.mean(shared)) if shared else 0.0
        return out


def _per_query(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    names = {m: name for name, m in METRICS.items()}
    out = {qid: {name: 0.0 for name in METRICS} for qid in qrels}  # an empty ranking scores 0
    for metric in ir_measures.iter_calc(list(METRICS.values()), qrels, {q: run.get(q, {}) for q in qrels}):
        out[metric.query_id][names[metric.measure]] = float(metric.value)
    return out


def explore_retrieval(index: CorpusIndex, dataset: RetrievalDataset, modes: Sequence[str] = EXPLORE_MODES, *,
                      weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, depth: int = 100,
                      candidates: int = 100) -> RetrievalReport:
    """Rank ``dataset``'s judged queries in each mode over ``index`` (built on the dataset's corpus) and
    score every query; the table averages them per query language and overall."""
    if corpus_fingerprint(index.documents) != corpus_fingerprint(dataset.corpus):
        raise ValueError(f"the index holds another corpus than dataset {dataset.name!r}")
    modes = check_modes(modes, EXPLORE_MODES)
    queries = judged_queries(dataset)
    if not queries:
        raise ValueError(f"dataset {dataset.name!r} has no query with a relevant document")
    qrels = {q.id: dataset.qrels[q.id] for q in queries}
    ids = [q.id for q in queries]
    rankings: dict[str, dict[str, list[str]]] = {}
    runs: dict[str, dict[str, dict[str, float]]] = {}
    index_modes = [m for m in modes if m in INDEX_MODES]
    if index_modes:
        comps = sorted({c for m in index_modes for c in index.components_for(m, weights)})
        encoded = index.encode_queries([q.text for q in queries], components=comps, show_progress=False)
        ranked = index.rank(encoded, index_modes, top_k=depth, weights=weights, candidates=candidates)
        for m in index_modes:
            runs[m] = _run(ids, index.doc_ids, ranked[m].indices, ranked[m].scores)
    if "bm25" in modes:
        bm25 = BM25Index([document_text(d) for d in dataset.corpus],
                         analyzer=standard_analyzer(dataset.corpus_language))
        idx, sc = bm25.search([q.text for q in queries], top_k=depth)
        runs["bm25"] = _run(ids, [d.id for d in dataset.corpus], idx, sc)
    for m, run in runs.items():
        rankings[m] = {qid: sorted(docs, key=lambda d: -docs[d]) for qid, docs in run.items()}
    report = RetrievalReport(modes=modes, query_ids=ids, query_text={q.id: q.text for q in queries},
                             query_language={q.id: q.language or "" for q in queries},
                             relevant={qid: {d for d, v in rel.items() if v > 0} for qid, rel in qrels.items()},
                             rankings=rankings, per_query={m: _per_query(qrels, runs[m]) for m in modes})
    languages = sorted(set(report.query_language.values()))
    groups = [(lang, [q for q in ids if report.query_language[q] == lang]) for lang in languages]
    if len(languages) > 1:
        groups.append(("all", ids))
    for lang, members in groups:
        for m in modes:
            row = {"language": lang, "mode": m, "n_queries": len(members)}
            row.update({name: float(np.mean([report.per_query[m][q][name] for q in members])) for name in METRICS})
            report.table.append(row)
    return report


@dataclass
class FusionSweep:
    """nDCG@10 of hybrid over a grid of (w_sparse, w_colbert) at fixed ``w_dense``; ``ndcg[i, j]`` is at
    ``w_sparse[i]``, ``w_colbert[j]``."""

    w_dense: float
    w_sparse: list[float]
    w_colbert: list[float]
    ndcg: np.ndarray

    @property
    def best(self) -> tuple[float, float, float]:
        """(w_sparse, w_colbert, nDCG@10) of the best point (the first one on ties)."""
        i, j = np.unravel_index(int(np.argmax(self.ndcg)), self.ndcg.shape)
        return self.w_sparse[i], self.w_colbert[j], float(self.ndcg[i, j])


def fusion_sweep(index: CorpusIndex, dataset: RetrievalDataset, *, w_dense: float = 1.0,
                 w_sparse: Sequence[float] = (0.0, 0.1, 0.3, 0.5, 1.0),
                 w_colbert: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 2.0), candidates: int = 100) -> FusionSweep:
    """Hybrid nDCG@10 at every (w_sparse, w_colbert) of the grid, the queries encoded once (section 3.2's
    weighted sum, reranking the dense and sparse candidates as :meth:`CorpusIndex.rank` does)."""
    queries = judged_queries(dataset)
    if not queries:
        raise ValueError(f"dataset {dataset.name!r} has no query with a relevant document")
    qrels = {q.id: dataset.qrels[q.id] for q in queries}
    encoded = index.encode_queries([q.text for q in queries], components=index.stored, show_progress=False)
    grid = np.full((len(w_sparse), len(w_colbert)), np.nan)  # NaN where every weight is 0
    points = [(i, j) for i, ws in enumerate(w_sparse) for j, wc in enumerate(w_colbert) if any((w_dense, ws, wc))]
    rankings = index.rank_hybrid_grid(encoded, [(w_dense, w_sparse[i], w_colbert[j]) for i, j in points], top_k=10,
                                      candidates=candidates)
    for (i, j), r in zip(points, rankings):
        run = _run([q.id for q in queries], index.doc_ids, r.indices, r.scores)
        grid[i, j] = retrieval_metrics(qrels, run)["ndcg@10"]
    return FusionSweep(float(w_dense), [float(x) for x in w_sparse], [float(x) for x in w_colbert], grid)


# ----------------------------------------------------------------------------- two models, one query

@dataclass
class RankChange:
    """One document of two rankings of the same query (e.g. by two models): its 1-based rank in each
    (``None``: not in that top k) and ``moved`` = rank_a - rank_b (positive: ranked higher by B)."""

    doc_id: str
    rank_a: int | None
    rank_b: int | None

    @property
    def moved(self) -> int | None:
        return None if self.rank_a is None or self.rank_b is None else self.rank_a - self.rank_b


@dataclass
class RankingComparison:
    """:func:`compare_rankings`' result: every document of either top k, B's order first, then those only A
    ranked, and how much the two agree."""

    changes: list[RankChange]
    k: int

    @property
    def overlap(self) -> float:
        """The share of the top k that both rankings hold."""
        both = sum(c.rank_a is not None and c.rank_b is not None for c in self.changes)
        return both / self.k if self.k else 0.0

    @property
    def rank_correlation(self) -> float | None:
        """Spearman's rho of the ranks of the documents both hold (``None`` below three)."""
        shared = [(c.rank_a, c.rank_b) for c in self.changes if c.moved is not None]
        if len(shared) < 3:
            return None
        from scipy.stats import spearmanr

        return float(spearmanr(*zip(*shared)).statistic)


def compare_rankings(ranking_a: Sequence[str], ranking_b: Sequence[str], k: int | None = None) -> RankingComparison:
    """Two rankings of document ids (best first), cut at ``k`` (default: the longer's length), side by side."""
    k = max(len(ranking_a), len(ranking_b)) if k is None else int(k)
    a, b = list(ranking_a)[:k], list(ranking_b)[:k]
    if len(set(a)) != len(a) or len(set(b)) != len(b):
        raise ValueError("a ranking lists a document twice")
    rank_a = {d: r + 1 for r, d in enumerate(a)}
    rank_b = {d: r + 1 for r, d in enumerate(b)}
    changes = [RankChange(d, rank_a.get(d), rank_b[d]) for d in b]
    changes += [RankChange(d, rank_a[d], None) for d in a if d not in rank_b]
    return RankingComparison(changes, k)
