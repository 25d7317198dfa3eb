"""Fewer and smaller multi-vectors (issue 14, item 2): storage precision and token pooling.

A document's multi-vector embedding (paper eq. 3: one normalised vector per token) is what makes
s_mul the best single function and also what makes it large: ~150 vectors per passage. Two ways
to shrink it, each usable from :meth:`m3lab.CorpusIndex.build` (``colbert_dtype``, ``pool_factor``):

* **Precision.** ``float16`` (the index default: halves float32 at a MaxSim error of ~1e-3), or
  ``int8`` with one float32 scale per vector: ``scale = max_i |x_i| / 127``, ``code = round(x / scale)``
  (symmetric, per vector, as ColBERT-style residual-free scalar quantisation; a quarter of
  float32 plus 4 bytes per vector). :class:`Int8Vectors` holds the codes and dequantises one
  document at a time, so an index stays int8 in memory.
* **Token pooling.** Hierarchical clustering of a document's vectors into ``len // pool_factor``
  clusters, each replaced by its mean (Clavié, Chaffin, Adams: "Reducing the Footprint of
  Multi-Vector Retrieval with Minimal Performance Impact via Token Pooling", arXiv:2409.14683;
  PyLate's ``pool_factor``). Ward linkage on the vectors themselves: for unit vectors the squared
  Euclidean distance is ``2 - 2 cos``, so these are PyLate's cosine clusters (PyLate feeds the
  rows of its distance matrix to scipy as observations; we cluster the vectors). Queries are
  never pooled. Pool factor 1 keeps every vector unchanged.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from tqdm.auto import tqdm

COLBERT_DTYPES = ("float16", "float32", "int8")

INT8_MAX = 127


def quantize_int8(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-vector int8: ``(codes int8 (n, d), scales float32 (n,))`` with
    ``vectors ~= codes * scales[:, None]``, ``scale = max |x| / 127`` (an all-zero vector gets scale 0).

    The rounding error of each coordinate is at most ``scale / 2``.
    """
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected an (n, d) array of vectors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("cannot quantise non-finite values (NaN or inf)")
    scales = (np.abs(x).max(axis=1) / INT8_MAX if x.shape[1] else np.zeros(len(x))).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float32)
    codes = np.clip(np.rint(x / safe[:, None]), -INT8_MAX, INT8_MAX).astype(np.int8)
    return codes, scales


def dequantize_int8(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float32 vectors ``codes * scales[:, None]`` (the inverse of :func:`quantize_int8` up to rounding)."""
    return codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]


class Int8Vectors(Sequence):
    """The documents' multi-vectors as int8 codes and per-vector scales, one document per item.

    ``vectors[i]`` dequantises document ``i`` (rows ``offsets[i]:offsets[i+1]``) to float32 on
    demand; ``lengths`` gives the vector counts without dequantising. What the scorers read.
    """

    def __init__(self, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray):
        self.codes, self.scales, self.offsets = codes, scales, offsets
        self.lengths = np.diff(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        a, b = self.offsets[i], self.offsets[i + 1]
        return dequantize_int8(self.codes[a:b], self.scales[a:b])


def pool_tokens(vectors: np.ndarray, pool_factor: int, *, protected: int = 0) -> np.ndarray:
    """One document's vectors pooled to ``max(1, n // pool_factor)`` cluster means (Ward linkage).

    The first ``protected`` vectors are kept as they are (PyLate protects [CLS]; bge-m3's
    multi-vectors have none, so 0 by default). Pool factor 1, or a document of one vector, returns
    the vectors unchanged. Cluster means are not renormalised (as in PyLate): a mean's norm below 1
    tells MaxSim how spread its members were. The output keeps the input's dtype.
    """
    if not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
        raise ValueError(f"pool_factor must be an integer >= 1, got {pool_factor!r}")
    v = np.asarray(vectors)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, d) array of vectors, got shape {v.shape}")
    keep, rest = v[:protected], v[protected:]
    n_clusters = max(1, len(rest) // pool_factor)
    if pool_factor == 1 or len(rest) <= 1 or n_clusters >= len(rest):
        return v.copy()
    x = rest.astype(np.float64)
    labels = fcluster(linkage(x, method="ward"), t=n_clusters, criterion="maxclust")
    sums = np.zeros((labels.max(), v.shape[1]))
    np.add.at(sums, labels - 1, x)
    means = sums / np.bincount(labels - 1)[:, None]
    return np.concatenate([keep, means.astype(v.dtype)])


def pool_documents(documents: Sequence[np.ndarray], pool_factor: int, *, protected: int = 0,
                   show_progress: bool = False) -> list[np.ndarray]:
    """:func:`pool_tokens` for every document, with a progress bar."""
    return [pool_tokens(d, pool_factor, protected=protected)
            for d in tqdm(documents, desc=f"pool x{pool_factor}", unit="doc", disable=not show_progress)]


def multivector_bytes(lengths: np.ndarray | Sequence[int], dim: int, dtype: str) -> int:
    """Bytes the multi-vectors take in storage ``dtype`` (int8 adds a float32 scale per vector),
    plus the int64 offsets."""
    if dtype not in COLBERT_DTYPES:
        raise ValueError(f"colbert_dtype must be one of {COLBERT_DTYPES}, got {dtype!r}")
    n_vec = int(np.sum(lengths))
    per = {"float32": 4 * dim, "float16": 2 * dim, "int8": dim + 4}[dtype]
    return n_vec * per + 8 * (len(lengths) + 1)
