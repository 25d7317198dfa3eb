"""Fewer and smaller multi-vectors (issue 14, item 2): storage precision, pooling, pruning; sparse pruning.

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
* **k-means centroids** (CRISP, arXiv:2505.11471): :func:`kmeans_tokens`, the same number of
  clusters as pooling (``pool_method="kmeans"``).
* **Pruning**: drop the vectors of content-free tokens (:func:`stop_token_ids`) or keep the share
  whose token the sparse head weighs most (:func:`lexical_importance`), :func:`prune_tokens`.

And for the lexical function, :func:`prune_sparse` keeps each document's (or query's) top-k weights.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
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


class PackedVectors(Sequence):
    """The documents' multi-vectors stored back to back, cut by ``offsets``: one document per item.

    ``lengths`` gives the vector counts without touching the vectors; :meth:`rows` gives a range
    of rows of consecutive documents as float32, so that a single-query scorer multiplies many
    documents at once without gathering them (``scoring.colbert_scores_one_query``). What the
    scorers read; subclasses say how the rows are stored.
    """

    def __init__(self, offsets: np.ndarray):
        self.offsets = offsets
        self.lengths = np.diff(offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self._document(self.offsets[i], self.offsets[i + 1])

    def _document(self, a: int, b: int) -> np.ndarray:
        return self.rows(a, b)

    def rows(self, a: int, b: int) -> np.ndarray:
        raise NotImplementedError


class Int8Vectors(PackedVectors):
    """int8 codes and per-vector scales: ``vectors[i]`` dequantises document ``i`` to float32 on demand."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray, offsets: np.ndarray):
        super().__init__(offsets)
        self.codes, self.scales = codes, scales

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b``, dequantised to float32."""
        return dequantize_int8(self.codes[a:b], self.scales[a:b])


class FloatVectors(PackedVectors):
    """One (total, dim) float32 or float16 array: ``vectors[i]`` is a view of document ``i``'s rows in
    the storage dtype."""

    def __init__(self, vectors: np.ndarray, offsets: np.ndarray):
        super().__init__(offsets)
        self.vectors = vectors

    def _document(self, a: int, b: int) -> np.ndarray:
        return self.vectors[a:b]

    def rows(self, a: int, b: int) -> np.ndarray:
        """Rows ``a:b`` as float32: a view for float32 storage, a cast copy for float16."""
        return np.asarray(self.vectors[a:b], dtype=np.float32)


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


# ---------------------------------------------------------------------- CRISP-style k-means
def kmeans_tokens(vectors: np.ndarray, pool_factor: int, *, seed: int = 0, iterations: int = 20) -> np.ndarray:
    """One document's vectors replaced by ``max(1, n // pool_factor)`` k-means centroids.

    CRISP (Veneroso et al., "CRISP: Clustering Multi-Vector Representations for Denoising and
    Pruning", arXiv:2505.11471) clusters each document's token vectors with k-means and keeps the
    centroids; here as a post-hoc compression of a trained model (CRISP also trains with the
    clustering in the loop, which this does not). k-means++ seeding from ``seed`` (so the same
    document and seed give the same centroids), scipy's Lloyd iterations; a cluster left empty is
    dropped. Centroids are not renormalised, as :func:`pool_tokens`. Pool factor 1 returns a copy.
    """
    from scipy.cluster.vq import kmeans2

    if not isinstance(pool_factor, (int, np.integer)) or pool_factor < 1:
        raise ValueError(f"pool_factor must be an integer >= 1, got {pool_factor!r}")
    v = np.asarray(vectors)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, d) array of vectors, got shape {v.shape}")
    k = max(1, len(v) // pool_factor)
    if pool_factor == 1 or len(v) <= 1 or k >= len(v):
        return v.copy()
    x = v.astype(np.float64)
    with warnings.catch_warnings():  # an empty cluster is expected now and then: it is dropped below
        warnings.simplefilter("ignore")
        centroids, labels = kmeans2(x, k, iter=iterations, minit="++", seed=np.random.default_rng(seed),
                                    missing="warn")
    used = np.unique(labels)
    return centroids[used].astype(v.dtype)


POOL_METHODS = {"ward": pool_tokens, "kmeans": kmeans_tokens}


# ---------------------------------------------------------------------- pruning
PRUNE_BY = ("lexical", "stop_tokens")


def lexical_importance(token_ids: np.ndarray, lexical_weights: dict[int, float]) -> np.ndarray:
    """Each multi-vector's importance: the lexical weight (eq. 1's w_t, the sparse head's output) of its token.

    A document's multi-vectors are one per token (eq. 3), so the sparse head's weight of that token
    says how much the model itself thinks it matters; tokens it gives no weight score 0.
    """
    return np.array([lexical_weights.get(int(t), 0.0) for t in token_ids], dtype=np.float32)


def stop_token_ids(tokenizer) -> np.ndarray:
    """Vocabulary ids of tokens that carry no content: special tokens and tokens whose text is only
    punctuation, symbols or whitespace (after removing SentencePiece's ``▁`` and WordPiece's ``##``).

    Language-independent, unlike a stop-word list, so it suits a 100-language model.
    """
    import unicodedata

    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for token, i in tokenizer.get_vocab().items():
        text = token.replace("▁", "").replace("##", "").strip()
        if i in special or all(unicodedata.category(c)[0] in "PSZC" for c in text):
            out.append(i)
    return np.array(sorted(out), dtype=np.int64)


def prune_tokens(vectors: np.ndarray, *, keep: np.ndarray | None = None, importance: np.ndarray | None = None,
                 keep_ratio: float = 1.0) -> np.ndarray:
    """A document's vectors with the unimportant ones dropped (order kept, at least one vector left).

    Either ``keep``, a boolean mask (e.g. "not a stop token"), or ``importance`` scores of which the
    top ``ceil(keep_ratio * n)`` are kept (ties by position). Both given: the mask first, then the ratio
    among what is left. If the mask would drop every vector, the most important one (or the first) stays.

    Low-norm pruning is not offered: M3's multi-vectors are normalised (eq. 3: norm(W_mul H)), so
    every stored vector has norm 1.
    """
    v = np.asarray(vectors)
    n = len(v)
    if not 0 < keep_ratio <= 1:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    mask = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"keep mask has shape {mask.shape} for {n} vectors")
    imp = None if importance is None else np.asarray(importance, dtype=np.float64)
    if imp is not None and imp.shape != (n,):
        raise ValueError(f"importance has shape {imp.shape} for {n} vectors")
    if n == 0:
        return v.copy()
    if not mask.any():
        mask[int(np.argmax(imp)) if imp is not None else 0] = True
    if imp is not None and keep_ratio < 1:
        left = np.flatnonzero(mask)
        n_keep = max(1, math.ceil(keep_ratio * len(left)))
        best = left[np.lexsort((left, -imp[left]))[:n_keep]]
        mask = np.zeros(n, dtype=bool)
        mask[best] = True
    return v[mask]


# ---------------------------------------------------------------------- sparse
def prune_sparse(weights: sp.csr_matrix, top_k: int) -> sp.csr_matrix:
    """Each row's ``top_k`` largest lexical weights (ties by lower token id); the rest dropped.

    Bounds the inverted index (documents) or the work per query (queries): s_lex (eq. 1) sums only
    over shared tokens, so dropping a row's smallest weights removes its smallest terms.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"sparse top_k must be an integer >= 1, got {top_k!r}")
    m = sp.csr_matrix(weights, copy=True)
    m.sort_indices()
    keep = np.zeros(m.nnz, dtype=bool)
    for r in range(m.shape[0]):
        a, b = m.indptr[r], m.indptr[r + 1]
        if b - a <= top_k:
            keep[a:b] = True
        else:
            order = np.lexsort((m.indices[a:b], -m.data[a:b]))[:top_k]
            keep[a + order] = True
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[keep]
    out = sp.csr_matrix((m.data[keep], (rows, m.indices[keep])), shape=m.shape, dtype=m.dtype)
    out.sort_indices()
    return out
