"""Ranking an index's documents for encoded queries: each mode of section 3.2, every score from :mod:`m3lab.scoring`.

``dense`` (faiss candidates, rescored), ``sparse`` (the inverted index), ``colbert`` (exhaustive
MaxSim, or, in an index built with ``muvera``, the MUVERA top-``candidates`` reranked by exact
MaxSim) and ``hybrid``: candidates from dense top-k and sparse top-k, reranked by
s_rank = w1 s_dense + w2 s_lex + w3 s_mul. Storage lives in :mod:`m3lab.retrieval.index`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np

from .. import scoring
from ..data.records import Document
from ..modeling import EncodeOutput

if TYPE_CHECKING:
    from .index import CorpusIndex


def mode_functions(mode: str, weights: Sequence[float] = scoring.DEFAULT_WEIGHTS, *,
                   stored: Sequence[str] = scoring.FUNCTIONS) -> tuple[str, ...]:
    """The functions a retrieval ``mode`` computes for its queries (index search, evaluation, bitext).

    ``dense``/``sparse``/``colbert`` need themselves. ``hybrid`` draws candidates from dense and
    sparse, so it computes both (cheap) even at weight 0 when the index ``stored`` them, and a
    weighted one in any case (so that a missing one is named in an error); multi-vector only when
    it is weighted. All-zero hybrid weights raise ``ValueError``.
    """
    if mode != "hybrid":
        return (mode,)
    weights = scoring.check_weights(weights)
    out = [c for c, w in zip(("dense", "sparse"), weights[:2]) if c in stored or w != 0]
    if weights[2] != 0:
        out.append("colbert")
    return tuple(out)


@dataclass(frozen=True)
class SearchResult:
    """One retrieved document: its final ``score`` and each function's score (``None`` when not computed)."""

    doc_id: str
    rank: int  # 1-based
    score: float
    dense: float | None
    sparse: float | None
    colbert: float | None
    document: Document


@dataclass
class Ranking:
    """Batch results as arrays, one row per query, best first.

    ``indices`` are document positions (``-1`` pads rows with fewer than ``top_k`` hits); ``scores``
    the ranking score; ``dense``/``sparse``/``colbert`` each function's score of the same pairs
    (NaN where not computed) or ``None`` when the mode never computes it.
    """

    indices: np.ndarray
    scores: np.ndarray
    dense: np.ndarray | None = None
    sparse: np.ndarray | None = None
    colbert: np.ndarray | None = None


class _BlockScorer:
    """Scores of one block of queries against the corpus, each matrix computed at most once."""

    def __init__(self, index: CorpusIndex, q: EncodeOutput):
        self.index, self.q = index, q
        self._full: dict[str, np.ndarray] = {}

    def full(self, component: str) -> np.ndarray:
        """(block, n) scores of every document with one function (dense, sparse or exhaustive MaxSim)."""
        if component not in self._full:
            ix, q = self.index, self.q
            if component == "dense" and ix.dense_quantized is not None:
                all_ids = np.broadcast_to(np.arange(len(ix)), (len(q), len(ix)))
                s = ix.dense_quantized.rescore(q.dense, all_ids)
            elif component == "dense":
                s = scoring.dense_scores(q.dense, ix.dense)
            elif component == "sparse":
                s = scoring.sparse_scores_inverted(q.sparse_csr, ix.inverted)
            elif _few_query_rows(q.colbert):
                s = np.stack([_maxsim_one_query(v, ix._views()) for v in q.colbert])
            else:
                s = scoring.colbert_scores_chunked(q.colbert, ix._views())
            self._full[component] = np.asarray(s, dtype=np.float32)
        return self._full[component]

    def pairs(self, component: str, cand: np.ndarray) -> np.ndarray:
        """Scores of the (block, m) candidate documents ``cand`` (``-1`` = none; NaN there)."""
        valid = cand >= 0
        ix = self.index
        # The full matrix when it is already there or cheap: always for sparse (one sparse product), for
        # dense with an exact (flat) index, for MaxSim when the candidates cover most of the corpus.
        if component == "dense" and ix.dense_quantized is not None and component not in self._full:
            return np.where(valid, ix.dense_quantized.rescore(self.q.dense, cand), np.nan).astype(np.float32)
        full = (component in self._full or component == "sparse"
                or (component == "dense" and ix.settings["dense_index"] == "flat")
                or (component == "colbert" and valid.sum() > 0.5 * cand.shape[0] * len(ix)))
        if full:
            out = np.take_along_axis(self.full(component), np.where(valid, cand, 0), axis=1)
        else:  # the candidates only: the paper's rerank, far cheaper than exhaustive on large corpora
            out = np.zeros(cand.shape, dtype=np.float32)
            for r in range(cand.shape[0]):
                cols = np.flatnonzero(valid[r])
                if not len(cols):
                    continue
                docs = cand[r, cols]
                if component == "dense":
                    out[r, cols] = scoring.dense_scores(self.q.dense[r:r + 1], ix.dense[docs])[0]
                else:
                    views = ix._views()
                    out[r, cols] = _maxsim_one_query(self.q.colbert[r], [views[j] for j in docs])
        return np.where(valid, out, np.nan).astype(np.float32)

    def dense_candidates(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Dense top-``k`` (ids, scores): faiss finds them (exact for ``flat``, approximate for IVF/HNSW),
        :func:`scoring.dense_scores` scores and orders them (ties by lower document index).

        faiss is asked for a few more than ``k`` so that its own rounding cannot decide which of
        two (nearly) tied documents makes the cut.
        """
        n = len(self.index)
        k = min(k, n)
        q = np.ascontiguousarray(self.q.dense, dtype=np.float32)
        if self.index.dense_quantized is not None:  # quantised first stage, float query rescoring (ST semantics)
            multiplier = int(self.index.settings.get("rescore_multiplier", 4))
            ids = self.index.dense_quantized.candidates(q, min(n, k * multiplier))
            return _best_first(ids, self.pairs("dense", ids), k)
        _, ids = self.index.dense_index.search(q, min(n, k + 16))
        ids = ids.astype(np.int64)
        return _best_first(ids, self.pairs("dense", ids), k)

    def muvera_candidates(self, k: int) -> np.ndarray:
        """The ``k`` documents whose MUVERA FDE has the largest inner product with each query's FDE
        (MUVERA section 3: the FDE inner product approximates Chamfer similarity = s_mul up to 1/n_q)."""
        from . import muvera

        ix = self.index
        q_fde = muvera.encode_queries([np.asarray(v, dtype=np.float32) for v in self.q.colbert], ix.muvera_config)
        # exact inner product straight on the stored array (an IndexFlatIP would hold a second copy)
        _, ids = faiss.knn(q_fde, ix.muvera_fde, min(k, len(ix)), metric=faiss.METRIC_INNER_PRODUCT)
        return ids.astype(np.int64)

    def rank(self, mode: str, top_k: int, weights: tuple[float, float, float], candidates: int) -> Ranking:
        if mode == "dense":
            idx, s = self.dense_candidates(top_k)
            return Ranking(idx, s, dense=s)
        if mode == "sparse":
            idx, s = _top_k(self.full("sparse"), top_k, positive=True)  # no shared token -> not retrieved
            return Ranking(idx, s, sparse=s)
        if mode == "colbert":
            if self.index.muvera_fde is None:
                idx, s = _top_k(self.full("colbert"), top_k)
                return Ranking(idx, s, colbert=s)
            cand = self.muvera_candidates(candidates)
            idx, s = _best_first(cand, self.pairs("colbert", cand), top_k)  # MaxSim of the candidates only
            return Ranking(idx, s, colbert=s)
        cand = self.hybrid_candidates(weights, candidates)
        comps = {c: self.pairs(c, cand) for c in self.index.components_for("hybrid", weights)}
        return self.hybrid_rank(cand, comps, weights, top_k)

    def hybrid_sources(self, weights: tuple[float, float, float]) -> tuple[str, ...]:
        """Where hybrid's candidates come from: the weighted ones of dense and sparse (else the first stored)."""
        stored = self.index.stored
        sources = [c for c, w in zip(("dense", "sparse"), weights) if c in stored and w != 0] or \
                  [c for c in ("dense", "sparse") if c in stored][:1]
        if not sources:
            raise ValueError("hybrid search needs dense or sparse embeddings in the index to find candidates")
        return tuple(sources)

    def hybrid_candidates(self, weights: tuple[float, float, float], candidates: int) -> np.ndarray:
        """Hybrid's candidates (section 3.2): the union of dense top-``candidates`` and sparse top-``candidates``."""
        sources = self.hybrid_sources(weights)
        lists = []
        if "dense" in sources:
            lists.append(self.dense_candidates(candidates)[0])
        if "sparse" in sources:
            lists.append(_top_k(self.full("sparse"), candidates, positive=True)[0])
        return _union_rows(np.concatenate(lists, axis=1))

    def hybrid_grid(self, weight_list: Sequence[tuple[float, float, float]], top_k: int,
                    candidates: int) -> list[Ranking]:
        """:meth:`rank` ``"hybrid"`` at each of ``weight_list``, the same rankings, but every candidate set
        and its scores computed once: settings that draw candidates from the same functions share them
        (a fusion-weight sweep needs two sets, not one per point)."""
        shared: dict[tuple[str, ...], tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        wanted = {c for w in weight_list for c in self.index.components_for("hybrid", w)}
        out = []
        for weights in weight_list:
            sources = self.hybrid_sources(weights)
            if sources not in shared:
                cand = self.hybrid_candidates(weights, candidates)
                shared[sources] = cand, {c: self.pairs(c, cand) for c in wanted}
            cand, comps = shared[sources]
            out.append(self.hybrid_rank(cand, comps, weights, top_k))  # a weight of 0 skips its function
        return out

    def hybrid_rank(self, cand: np.ndarray, comps: dict[str, np.ndarray], weights: tuple[float, float, float],
                    top_k: int) -> Ranking:
        """The candidates ``cand`` reranked by the weighted sum of their scores ``comps``, best first."""
        total = scoring.combine_scores(comps.get("dense"), comps.get("sparse"), comps.get("colbert"), weights)
        total = np.where(cand >= 0, total, -np.inf)
        order = np.argsort(-total, axis=1, kind="stable")[:, :top_k]
        idx = np.take_along_axis(cand, order, axis=1)
        pick = lambda a: None if a is None else np.take_along_axis(a, order, axis=1)
        scores = np.take_along_axis(total, order, axis=1).astype(np.float32)
        idx = np.where(np.isfinite(scores), idx, -1)
        scores = np.where(idx >= 0, scores, np.nan).astype(np.float32)
        return Ranking(idx, scores, dense=pick(comps.get("dense")), sparse=pick(comps.get("sparse")),
                       colbert=pick(comps.get("colbert")))


def _few_query_rows(queries: Sequence[np.ndarray]) -> bool:
    """Whether a block's query vectors are fewer than a vector's dimension (a handful of queries)."""
    return sum(len(v) for v in queries) < (queries[0].shape[1] if len(queries) else 0)


def _maxsim_one_query(q: np.ndarray, docs: Sequence[np.ndarray]) -> np.ndarray:
    """s_mul of one query against each document (:func:`scoring.colbert_scores_one_query`): for a single
    query, padding the documents into one block (``colbert_scores_chunked``, best for many queries)
    costs more memory traffic than the MaxSim itself."""
    return scoring.colbert_scores_one_query(q, docs)


def _best_first(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``ids`` (``-1`` = none, placed last) ordered by their ``scores``, ties by lower
    document index, cut to ``k`` per row."""
    valid = ids >= 0
    order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), np.where(valid, -scores, np.inf)), axis=1)[:, :k]
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def _top_k(scores: np.ndarray, k: int, *, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top-``k`` (indices, scores), best first, ties by lower index; ``positive`` drops scores <= 0 (-1)."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n // 4:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part.sort(axis=1)  # so the stable sort below breaks ties by index
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")[:, :k]
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    vals = np.take_along_axis(vals, order, axis=1).astype(np.float32)
    if positive:
        idx = np.where(vals > 0, idx, -1)
        vals = np.where(vals > 0, vals, np.nan).astype(np.float32)
    return idx, vals


def _union_rows(ids: np.ndarray) -> np.ndarray:
    """Per row, the distinct non-negative ids (sorted), padded with -1 to a common width."""
    rows = [np.unique(r[r >= 0]) for r in ids]
    out = np.full((len(rows), max((len(r) for r in rows), default=0) or 1), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _concat_rankings(parts: list[Ranking]) -> Ranking:
    width = max(p.indices.shape[1] for p in parts)

    def pad(a, fill):
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    cat = lambda name, fill: None if getattr(parts[0], name) is None else np.concatenate(
        [pad(getattr(p, name), fill) for p in parts])
    return Ranking(cat("indices", -1), cat("scores", np.nan), cat("dense", np.nan), cat("sparse", np.nan),
                   cat("colbert", np.nan))
