"""BM25 baselines with ``bm25s``: a standard word analyzer, or the model's own tokenizer (paper appendix C.2).

The paper compares BM25 over Lucene's language analyzers with BM25 over the XLM-R tokenizer
(the terms M3's lexical weights are defined on); on long, multilingual documents the second
is the stronger baseline. Both are here, as retrieval modes of :mod:`m3lab.evaluation`:

* ``bm25`` — the standard analyzer: lower-cased words, runs of Chinese/Japanese/Thai-like
  characters as overlapping character bigrams (:func:`m3lab.data.bm25_tokenize`, the usual
  Lucene CJK treatment), minus the language's stopwords where bm25s ships a list
  (en, de, es, ru, tr, zh, ...). No stemming (bm25s would need PyStemmer).
* ``bm25-model-tokenizer`` — the model tokenizer's token ids (no special tokens) as terms.

Scoring is Lucene's BM25 variant (bm25s ``method="lucene"``, k1 = 1.2, b = 0.75, as
Pyserini/Anserini use). Documents that share no term with the query are not retrieved.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import bm25s
import numpy as np

from ..data import bm25_tokenize

logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG

BM25_MODES = ("bm25", "bm25-model-tokenizer")

# ISO 639-1 codes whose stopword lists bm25s ships (bm25s.stopwords).
_STOPWORD_LANGUAGES = {"en", "de", "nl", "fr", "es", "pt", "it", "ru", "sv", "no", "zh", "tr", "ko", "da"}


def standard_analyzer(language: str | None = None) -> Callable[[str], list[str]]:
    """The ``bm25`` mode's analyzer: :func:`m3lab.data.bm25_tokenize` minus ``language``'s stopwords (if any)."""
    stop: frozenset[str] = frozenset()
    if language in _STOPWORD_LANGUAGES:
        stop = frozenset(bm25s.tokenization._infer_stopwords(language))  # bm25s's own lists (from NLTK)

    def analyze(text: str) -> list[str]:
        return [t for t in bm25_tokenize(text) if t not in stop]

    return analyze


def model_tokenizer_analyzer(tokenizer) -> Callable[[str], list[str]]:
    """The ``bm25-model-tokenizer`` analyzer: a Hugging Face tokenizer's token ids, as strings, without specials."""

    def analyze(text: str) -> list[str]:
        return [str(i) for i in tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]]

    return analyze


class BM25Index:
    """A bm25s index over texts, with one analyzer for documents and queries.

    >>> index = BM25Index(["the cat sat", "dogs bark"])
    >>> index.search(["cat"], top_k=2)[0].tolist()
    [[0, -1]]
    """

    def __init__(self, texts: Sequence[str], *, analyzer: Callable[[str], list[str]] | None = None,
                 k1: float = 1.2, b: float = 0.75, method: str = "lucene"):
        if not len(texts):
            raise ValueError("cannot index an empty corpus")
        self.analyzer = analyzer or standard_analyzer()
        self.retriever = bm25s.BM25(k1=k1, b=b, method=method)
        # bm25s needs one non-empty token list per document: an empty one gets a term no query has
        tokens = [self.analyzer(t) or ["\x00"] for t in texts]
        self.retriever.index(tokens, show_progress=False)
        self.n_documents = len(texts)

    def search(self, queries: Sequence[str], *, top_k: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """(indices, scores), each (n_queries, top_k), best first; ``-1``/NaN where fewer documents match."""
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"query {i} is empty" if isinstance(q, str) else f"query {i} is not a string")
        k = min(top_k, self.n_documents)
        tokens = [self.analyzer(q) for q in queries]
        idx, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=0)
        idx, scores = np.asarray(idx, dtype=np.int64), np.asarray(scores, dtype=np.float32)
        matched = scores > 0
        return np.where(matched, idx, -1), np.where(matched, scores, np.nan).astype(np.float32)
