"""What the model returns: differentiable embeddings (training), NumPy encodings and scores (inference)."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch


@dataclass
class M3Embeddings:
    """What one forward pass gives, as tensors (differentiable in training)."""

    dense: torch.Tensor            # (batch, d), normalised
    token_weights: torch.Tensor    # (batch, length), ReLU weights, 0 at specials/padding
    input_ids: torch.Tensor        # (batch, length)
    colbert: torch.Tensor          # (batch, length-1, d'), normalised, 0 at padding
    colbert_mask: torch.Tensor     # (batch, length-1), bool


@dataclass
class EncodeOutput:
    """Embeddings of ``n`` texts, as NumPy.

    ``dense`` (n, d) float32; ``sparse`` a list of ``{token_id: weight}`` (zero weights left
    out, repeated tokens at their max weight) with ``sparse_csr`` the same as an (n, vocab)
    ``scipy.sparse.csr_matrix``; ``colbert`` a list of (tokens-1, d') float32 arrays.
    ``input_ids`` holds each text's token ids (with special tokens) for inspection.
    """

    dense: np.ndarray | None
    sparse: list[dict[int, float]] | None
    colbert: list[np.ndarray] | None
    input_ids: list[np.ndarray]
    vocab_size: int
    colbert_token_ids: list[np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.input_ids)

    @cached_property
    def sparse_csr(self) -> sp.csr_matrix:
        if self.sparse is None:
            raise ValueError("encoded without return_sparse=True")
        return sparse_dicts_to_csr(self.sparse, self.vocab_size)

    def as_flagembedding(self) -> dict:
        """This result as ``BGEM3FlagModel.encode`` returns it (:func:`m3lab.modeling.compat.as_flagembedding`)."""
        from .compat import as_flagembedding

        return as_flagembedding(self)

    def select(self, indices: Sequence[int] | np.ndarray) -> "EncodeOutput":
        """The embeddings of a subset of texts, in the given order."""
        idx = [int(i) for i in indices]
        pick = lambda xs: None if xs is None else [xs[i] for i in idx]  # noqa: E731
        return EncodeOutput(
            dense=None if self.dense is None else self.dense[idx],
            sparse=pick(self.sparse), colbert=pick(self.colbert),
            input_ids=pick(self.input_ids), vocab_size=self.vocab_size,
            colbert_token_ids=pick(self.colbert_token_ids),
        )


def sparse_dicts_to_csr(weights: Sequence[dict[int, float]], vocab_size: int) -> sp.csr_matrix:
    """Stack ``{token_id: weight}`` dicts into an (n, vocab_size) CSR matrix."""
    indptr = np.zeros(len(weights) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(w) for w in weights])
    indices = np.fromiter(chain.from_iterable(weights), dtype=np.int64, count=int(indptr[-1]))
    data = np.fromiter(chain.from_iterable(w.values() for w in weights), dtype=np.float32, count=int(indptr[-1]))
    return sp.csr_matrix((data, indices, indptr), shape=(len(weights), vocab_size))


@dataclass
class ScoreOutput:
    """Score matrices (n_queries, n_passages): the weighted ``scores`` and each function's."""

    scores: np.ndarray
    dense: np.ndarray | None
    sparse: np.ndarray | None
    colbert: np.ndarray | None
    weights: tuple[float, float, float]
