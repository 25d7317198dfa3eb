"""Hard-negative mining: corpus texts that a retriever ranks high for a query but that are not its answer.

Fine-tuning M3 uses 7 hard negatives per query (paper, section 3.3). The miner is BM25
(``bm25s``), a dense model (anything with ``.encode`` giving ``.dense`` vectors, such as
``m3lab.M3Model``) or any scoring function.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import bm25s
import numpy as np

# Scripts written without spaces between words (Thai, Lao, Myanmar, Khmer, Japanese kana, CJK ideographs):
# runs of them become overlapping character bigrams, the usual BM25 treatment of CJK.
_NO_SPACE = "\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Combining marks that Python's \w leaves out (Hebrew points, Arabic harakat, Indic vowel signs, Latin accents):
# without them a Hindi word would break into pieces at every vowel sign.
_MARKS = "\u0300-\u036f\u0591-\u05c7\u0610-\u061a\u064b-\u065f\u0670\u0900-\u0dff"
_TOKEN = re.compile(rf"([{_NO_SPACE}]+)|((?:(?![{_NO_SPACE}])[^\W_]|[{_MARKS}])+)")


def bm25_tokenize(text: str) -> list[str]:
    """Lower-cased words; runs of CJK/Thai-like characters as character bigrams (a lone character as itself)."""
    tokens = []
    for run, word in _TOKEN.findall(text.lower()):
        tokens.extend([word] if word else [run[i:i + 2] for i in range(len(run) - 1)] or [run])
    return tokens


Miner = str | Callable[[list[str], list[str]], np.ndarray] | Any


def mine_hard_negatives(queries: Sequence[str], positives_idx: Sequence[int | Collection[int]],
                        corpus_texts: Sequence[str], *, n_negatives: int = 7, miner: Miner = "bm25", seed: int = 0,
                        sample_range: tuple[int, int] | None = None) -> list[list[int]]:
    """For each query, the corpus indices of up to ``n_negatives`` hard negatives.

    Args:
        queries: query texts.
        positives_idx: for each query, the index (or indices) of its positive(s) in ``corpus_texts``.
        corpus_texts: the texts to mine from.
        miner: ``"bm25"``; a model with ``.encode(texts)`` returning ``.dense`` L2-normalised vectors
            (an ``m3lab.M3Model``; a mapping with ``dense_vecs`` or a plain array also works); or a
            callable ``(queries, docs) -> (n_queries, n_docs)`` score array.
        sample_range: ``None`` takes the top-ranked candidates; ``(a, b)`` samples ``n_negatives`` at
            random from candidate ranks ``a`` to ``b - 1`` (FlagEmbedding's ``range_for_sampling``:
            skipping the very top avoids unlabelled positives).
        seed: seeds the sampling and the random fill below.

    A candidate is skipped when it is a positive or has the same text as a positive, as the
    query or as an earlier negative. When the ranking has too few candidates (BM25 only ranks
    documents that share a term with the query), random documents fill up the list; fewer
    than ``n_negatives`` come back only if the corpus has too few other texts.
    """
    if len(queries) != len(positives_idx):
        raise ValueError(f"{len(queries)} queries but {len(positives_idx)} positives_idx entries")
    if not corpus_texts:
        raise ValueError("corpus_texts is empty")
    if not queries:
        return []
    n_docs = len(corpus_texts)
    positives = [{int(p)} if isinstance(p, (int, np.integer)) else {int(i) for i in p} for p in positives_idx]
    for q, pos in enumerate(positives):
        if not pos or not all(0 <= i < n_docs for i in pos):
            raise ValueError(f"query {q}: positives {sorted(pos)} are not indices into the {n_docs} corpus texts")
    wanted = sample_range[1] if sample_range else n_negatives
    depth = min(n_docs, wanted + max((len(p) for p in positives), default=0) + 16)  # room for skipped duplicates
    ranked = _rank(list(queries), list(corpus_texts), miner, depth)

    rng = np.random.default_rng(seed)
    out = []
    for query, pos, candidates in zip(queries, positives, ranked):
        seen = {corpus_texts[i] for i in pos} | {query}
        picked = []
        for j in map(int, candidates):
            if j not in pos and corpus_texts[j] not in seen:
                seen.add(corpus_texts[j])
                picked.append(j)
        if sample_range:
            window = picked[sample_range[0]:sample_range[1]]
            picked = [window[i] for i in sorted(rng.permutation(len(window))[:n_negatives])]
        picked = picked[:n_negatives]
        if len(picked) < n_negatives:
            for j in map(int, rng.permutation(n_docs)):
                if j not in pos and corpus_texts[j] not in seen:
                    seen.add(corpus_texts[j])
                    picked.append(j)
                    if len(picked) == n_negatives:
                        break
        out.append(picked)
    return out


def _rank(queries: list[str], docs: list[str], miner: Miner, depth: int) -> list[np.ndarray]:
    """Per query, the indices of the ``depth`` best documents, best first."""
    if isinstance(miner, str):
        if miner != "bm25":
            raise ValueError(f"unknown miner {miner!r}: use 'bm25', a model with .encode, or a scoring callable")
        retriever = bm25s.BM25()
        retriever.index([bm25_tokenize(d) for d in docs], show_progress=False)
        result = retriever.retrieve([bm25_tokenize(q) for q in queries], k=depth, show_progress=False)
        return [idx[score > 0] for idx, score in zip(result.documents, result.scores)]  # 0 = no shared term
    if hasattr(miner, "encode"):  # checked first: a torch model is callable too
        q, d = _dense(miner, queries), _dense(miner, docs)
        return [row for start in range(0, len(q), 1024) for row in _top(q[start:start + 1024] @ d.T, depth)]
    if callable(miner):
        scores = np.asarray(miner(queries, docs), dtype=np.float32)
        if scores.shape != (len(queries), len(docs)):
            raise ValueError(f"miner returned scores of shape {scores.shape}, expected {(len(queries), len(docs))}")
        return list(_top(scores, depth))
    raise TypeError(f"miner must be 'bm25', a model with .encode or a callable, got {type(miner).__name__}")


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Row-wise indices of the ``k`` highest scores, best first (deterministic: equal scores in index order)."""
    part = np.sort(np.argpartition(-scores, k - 1, axis=1)[:, :k], axis=1)
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def _dense(model: Any, texts: list[str]) -> np.ndarray:
    params = inspect.signature(model.encode).parameters
    out = model.encode(texts, **{k: False for k in ("return_sparse", "return_colbert") if k in params})
    vecs = getattr(out, "dense", None)
    if vecs is None and isinstance(out, Mapping):  # FlagEmbedding's BGEM3FlagModel returns a dict
        vecs = out.get("dense_vecs", out.get("dense"))
    return np.asarray(out if vecs is None else vecs, dtype=np.float32)
