"""Retrieval: index storage (:mod:`.index`), ranking in every mode (:mod:`.ranker`), the Qdrant-backed index
(:mod:`.qdrant`), BM25 baselines (:mod:`.bm25`)."""
from .index import (
           BuildProgress,
           CorpusIndex,
           CorruptIndexError,
           ModelMismatchError,
           corpus_fingerprint,
           document_text,
           model_fingerprint,
)
from .qdrant import QdrantIndex
from .ranker import Ranking, SearchResult

__all__ = ["CorpusIndex", "BuildProgress", "QdrantIndex", "SearchResult", "Ranking", "CorruptIndexError", "ModelMismatchError", "model_fingerprint",
           "corpus_fingerprint", "document_text"]
