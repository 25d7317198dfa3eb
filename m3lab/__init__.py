"""m3lab: an interactive toolkit for M3-Embedding (BGE-M3): dense, sparse and multi-vector retrieval from one encoder."""
from .model import EncodeOutput, M3Embeddings, M3Model, ScoreOutput, score_encoded
from .scoring import DEFAULT_WEIGHTS

__all__ = ["M3Model", "EncodeOutput", "ScoreOutput", "M3Embeddings", "score_encoded", "DEFAULT_WEIGHTS"]
__version__ = "0.1.0"
