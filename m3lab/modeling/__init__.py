"""The M3 model: an encoder, its three functions, and what it returns."""
from .functions import (
           POOLINGS,
           colbert_embedding,
           dense_embedding,
           init_heads,
           sparse_token_weights,
)
from .hub import COLBERT_FILE, CONFIG_FILE, SPARSE_FILE, resolve_model_path
from .matryoshka import check_matryoshka_dims, truncate_embeddings
from .model import (
           CPU_BATCH_OVERHEAD_TOKENS,
           MCLS_INTERVAL,
           M3Model,
           check_texts,
           plan_batches,
           score_encoded,
)
from .outputs import EncodeOutput, M3Embeddings, ScoreOutput, sparse_dicts_to_csr
from .pool import EncodePool

__all__ = ["M3Model", "M3Embeddings", "EncodeOutput", "ScoreOutput", "score_encoded", "plan_batches", "check_texts",
           "dense_embedding", "sparse_token_weights", "colbert_embedding", "init_heads", "sparse_dicts_to_csr",
           "resolve_model_path", "POOLINGS", "CPU_BATCH_OVERHEAD_TOKENS", "MCLS_INTERVAL", "COLBERT_FILE", "SPARSE_FILE", "CONFIG_FILE",
           "truncate_embeddings", "check_matryoshka_dims", "EncodePool"]
