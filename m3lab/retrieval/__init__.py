"""Retrieval: index storage (:mod:`.index`), ranking in every mode (:mod:`.ranker`), BM25 baselines (:mod:`.bm25`)."""
from .index import (
           CorpusIndex,
           CorruptIndexError,
           ModelMismatchError,
           corpus_fingerprint,
           document_text,
           model_fingerprint,
)
from .ranker import Ranking, SearchResult

__all__ = ["CorpusIndex", "SearchResult", "Ranking", "CorruptIndexError", "ModelMismatchError", "model_fingerprint",
           "corpus_fingerprint", "document_text"]
