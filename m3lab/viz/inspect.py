"""Token-level views of the three scores, shared by the app, the notebooks and users' own analysis.

Every number here is a term of a formula computed in :mod:`m3lab.scoring`: the lexical
contributions sum to s_lex, the MaxSim contributions sum to s_mul.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..modeling import EncodeOutput, M3Model


@dataclass
class TokenWeight:
    token_id: int
    token: str
    weight: float


def token_weights(model: M3Model, encoded: EncodeOutput, i: int = 0) -> list[TokenWeight]:
    """Text ``i``'s lexical weights with their token strings, heaviest first."""
    if encoded.sparse is None:
        raise ValueError("encode with return_sparse=True to inspect token weights")
    items = sorted(encoded.sparse[i].items(), key=lambda kv: -kv[1])
    tokens = model.tokenizer.convert_ids_to_tokens([t for t, _ in items])
    return [TokenWeight(t, s, float(w)) for (t, w), s in zip(items, tokens)]


@dataclass
class LexicalMatch:
    """The shared tokens of a pair and their terms w_qt * w_pt; ``total`` is s_lex."""

    tokens: list[str]
    token_ids: list[int]
    query_weights: np.ndarray
    passage_weights: np.ndarray
    contributions: np.ndarray
    total: float


def lexical_match(model: M3Model, query: EncodeOutput, passage: EncodeOutput, qi: int = 0, pi: int = 0) -> LexicalMatch:
    """Which tokens the query and passage share, and how much each adds to s_lex (section 3.2)."""
    if query.sparse is None or passage.sparse is None:
        raise ValueError("encode with return_sparse=True to inspect lexical matches")
    qw, pw = query.sparse[qi], passage.sparse[pi]
    shared = [t for t in qw if t in pw]
    q = np.array([qw[t] for t in shared], dtype=np.float32)
    p = np.array([pw[t] for t in shared], dtype=np.float32)
    contrib = q * p
    order = np.argsort(-contrib, kind="stable")
    ids = [shared[k] for k in order]
    return LexicalMatch(tokens=model.tokenizer.convert_ids_to_tokens(ids), token_ids=ids,
                        query_weights=q[order], passage_weights=p[order], contributions=contrib[order],
                        total=float(contrib.sum()))


@dataclass
class MaxSimAlignment:
    """The MaxSim of one pair: ``similarity`` (query tokens x passage tokens), each query token's
    ``best`` passage token, and its ``contributions`` max_j sim / N, which sum to ``total`` = s_mul."""

    query_tokens: list[str]
    passage_tokens: list[str]
    similarity: np.ndarray
    best: np.ndarray
    contributions: np.ndarray
    total: float


def maxsim_alignment(model: M3Model, query: EncodeOutput, passage: EncodeOutput, qi: int = 0, pi: int = 0) -> MaxSimAlignment:
    """Each query vector's best-matching passage vector (the MaxSim of section 3.2), with token strings."""
    if query.colbert is None or passage.colbert is None:
        raise ValueError("encode with return_colbert=True to inspect MaxSim alignments")
    from ..scoring import colbert_scores, pad_vectors

    q, p = query.colbert[qi], passage.colbert[pi]
    sim = q @ p.T
    best = sim.argmax(axis=1) if sim.size else np.zeros(len(q), dtype=int)
    contributions = (sim.max(axis=1) if sim.size else np.zeros(len(q))) / max(len(q), 1)
    # the total comes from the one s_mul implementation, so the view can never drift from the score
    qp, qm = pad_vectors([q])
    pp, pm = pad_vectors([p])
    total = float(colbert_scores(qp, qm, pp, pm)[0, 0])
    tok = model.tokenizer.convert_ids_to_tokens
    return MaxSimAlignment(query_tokens=tok(query.colbert_token_ids[qi].tolist()),
                           passage_tokens=tok(passage.colbert_token_ids[pi].tolist()),
                           similarity=sim, best=best, contributions=contributions.astype(np.float32), total=total)
