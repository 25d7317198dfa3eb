"""FlagEmbedding's ``BGEM3FlagModel`` calling conventions, for code ported from it.

=====================================================  =================================================
FlagEmbedding (``BGEM3FlagModel``)                      m3lab
=====================================================  =================================================
``model.encode(texts, return_sparse=True,              ``model.encode(texts)`` -> :class:`EncodeOutput`
return_colbert_vecs=True)`` -> dict                     (``.dense``, ``.sparse`` {int id: weight}, ``.colbert``);
                                                        ``.as_flagembedding()`` gives FlagEmbedding's dict
``out["dense_vecs"]`` / ``out["lexical_weights"]``      ``out.dense`` / ``out.sparse`` (int keys) /
(str keys) / ``out["colbert_vecs"]``                    ``out.colbert``
``encode_queries`` / ``encode_corpus``                  the same names (with the model's saved prompts)
``compute_lexical_matching_score(a, b)``                :func:`m3lab.scoring.sparse_scores` (all pairs)
``colbert_score(q, p)``                                 :func:`m3lab.scoring.colbert_scores_chunked`
``compute_score(pairs, weights_for_different_modes=     ``model.compute_score(pairs, weights_for_different_modes=
[w1, w2, w3])`` -> per-mode lists                       [w1, w2, w3])`` (this module), same keys and values
``model.score(q, p, weights=...)``: all pairs, each     (no FlagEmbedding counterpart)
function and the weighted *sum* s_rank
=====================================================  =================================================

FlagEmbedding's ``compute_score`` reports weighted *averages* ("sparse+dense" = (w1 s_dense + w2
s_lex) / (w1 + w2)), m3lab's ``score`` the weighted sum of eq. 2; both are given here as they are.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .. import scoring
from .outputs import EncodeOutput

if TYPE_CHECKING:
    from .model import M3Model

#: The keys of ``BGEM3FlagModel.compute_score``'s result, in its order.
COMPUTE_SCORE_KEYS = ("colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense")


def as_flagembedding(out: EncodeOutput) -> dict:
    """``BGEM3FlagModel.encode``'s result: ``dense_vecs``, ``lexical_weights`` (str token ids), ``colbert_vecs``.

    A function that was not encoded is ``None``, as in FlagEmbedding.
    """
    return {"dense_vecs": out.dense,
            "lexical_weights": None if out.sparse is None else [{str(k): v for k, v in w.items()} for w in out.sparse],
            "colbert_vecs": out.colbert}


def compute_score(model: M3Model, sentence_pairs: Sequence[tuple[str, str]] | tuple[str, str], *,
                  batch_size: int = 256, max_query_length: int | None = None, max_passage_length: int | None = None,
                  weights_for_different_modes: Sequence[float] | None = None) -> dict:
    """Scores of each (query, passage) pair, as ``BGEM3FlagModel.compute_score`` returns them.

    ``{"colbert": [...], "sparse": [...], "dense": [...], "sparse+dense": [...],
    "colbert+sparse+dense": [...]}``; the two mixtures are averages weighted by
    ``weights_for_different_modes`` = [w_dense, w_sparse, w_colbert] (default [1, 1, 1]). One pair
    (a tuple of two strings) gives floats instead of lists. Queries are encoded with
    :meth:`M3Model.encode_queries`, passages with :meth:`M3Model.encode_corpus` (the model's prompts;
    FlagEmbedding adds none here, which is the same for a model without prompts). Each block of
    pairs is scored all-against-all by :mod:`m3lab.scoring` and the diagonal kept, as FlagEmbedding does.
    """
    single = isinstance(sentence_pairs, tuple) and len(sentence_pairs) == 2 and isinstance(sentence_pairs[0], str)
    pairs = [sentence_pairs] if single else list(sentence_pairs)
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"sentence_pairs[{i}] must be a (query, passage) pair of strings, got {pair!r}")
    w = [1.0, 1.0, 1.0] if weights_for_different_modes is None else [float(x) for x in weights_for_different_modes]
    if len(w) != 3:
        raise ValueError(f"weights_for_different_modes must be [w_dense, w_sparse, w_colbert], got {w}")
    if w[0] + w[1] == 0 or sum(w) == 0:
        raise ValueError(f"weights_for_different_modes {w}: the weights of each mixture must not sum to 0")
    out = {k: [] for k in COMPUTE_SCORE_KEYS}
    block = max(1, min(batch_size, 64))  # all-pairs within a block: keep the MaxSim block small
    for start in range(0, len(pairs), block):
        chunk = pairs[start:start + block]
        q = model.encode_queries([a for a, _ in chunk], max_length=max_query_length, show_progress=False)
        p = model.encode_corpus([b for _, b in chunk], max_length=max_passage_length, show_progress=False)
        diag = np.arange(len(chunk))
        dense = scoring.dense_scores(q.dense, p.dense)[diag, diag]
        sparse = scoring.sparse_scores(q.sparse_csr, p.sparse_csr)[diag, diag]
        colbert = scoring.colbert_scores_chunked(q.colbert, p.colbert)[diag, diag]
        out["colbert"] += colbert.tolist()
        out["sparse"] += sparse.tolist()
        out["dense"] += dense.tolist()
        out["sparse+dense"] += (scoring.combine_scores(dense, sparse, None, (w[0], w[1], 0.0)) / (w[0] + w[1])).tolist()
        out["colbert+sparse+dense"] += (scoring.combine_scores(dense, sparse, colbert, w) / sum(w)).tolist()
    return {k: v[0] for k, v in out.items()} if single else out
