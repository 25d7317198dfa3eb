"""Quantised dense indexes with float-query rescoring (issue 14, item 3 "Dense").

The semantics are those of sentence-transformers' ``quantize_embeddings`` and
``semantic_search_faiss(..., rescore=True)`` (Shakir, Aarsen, Lee: "Binary and Scalar Embedding
Quantization for Significantly Faster & Cheaper Retrieval", Hugging Face blog, 2024; binary
embeddings for passage retrieval after Yamada, Asai, Hajishirzi: "Efficient Passage Retrieval with
Hashing for Open-domain Question Answering", ACL 2021): the corpus is kept only as codes, a first
stage searches the codes for ``k * rescore_multiplier`` candidates, and the *float32* query rescores
those candidates against their decoded codes. The float corpus need not be kept.

* ``"int8"``: faiss's scalar quantiser (``IndexScalarQuantizer``, ``QT_8bit``, inner product), trained
  on a calibration set (default: the corpus). With the default range statistic ``RS_minmax`` and
  ``rangestat_arg = 0`` faiss stores, per dimension, ``vmin = min`` and ``vdiff = max - min`` of the
  calibration vectors (ST's ``ranges``) and uses (faiss ``ScalarQuantizer.cpp``, checked in the tests)::

      code   = int(255 * clip((x - vmin) / vdiff, 0, 1))       # truncation toward zero, 0..255
      decode = vmin + (code + 0.5) / 255 * vdiff               # the middle of the code's bucket

  ST instead writes ``((x - start) / step).astype(uint8)`` with ``step = (max - min) / 255`` (the
  same truncation, without clipping nor the half-bucket offset) and rescores with the raw codes;
  here candidates are rescored with the decoded vectors, an unbiased estimate of ``q . x``.
  A dimension with ``max == min`` gets ``vdiff = 1e-6`` (faiss would divide by zero).
  Note that faiss's search is already asymmetric (float query against decoded codes), so for
  int8 the rescored scores equal the first-stage scores up to float rounding: rescoring fixes
  the order (ties by lower id) rather than changing which documents win.
* ``"binary"``: ST's ``"ubinary"``: ``np.packbits(x > 0, axis=1)``, one bit per dimension (32x
  smaller than float32), searched by Hamming distance (``faiss.IndexBinaryFlat``) with the query
  binarised the same way; candidates are rescored with ``q . (2 * bits - 1)`` (bits as +-1).
  ST rescores with the 0/1 bits; for one query ``q . (2b - 1) = 2 q . b - sum(q)``, so the order
  is the same, and +-1 keeps the scores on the scale of a cosine times ``sqrt(d)``.

The pieces :meth:`QuantizedDenseIndex.candidates` and :meth:`QuantizedDenseIndex.rescore` are
public so that hybrid ranking can take dense candidates and score other documents' codes;
:meth:`QuantizedDenseIndex.to_arrays` / :meth:`QuantizedDenseIndex.from_arrays` persist an index as
plain NumPy arrays (no pickle, no faiss file).
"""
from __future__ import annotations

import faiss
import numpy as np

DENSE_QUANTIZATIONS = ("float32", "int8", "binary")
QUANTIZED_KINDS = ("int8", "binary")

INT8_LEVELS = 255  # faiss QT_8bit: codes 0..255, decode at (code + 0.5) / 255
MIN_RANGE = 1e-6  # vdiff of a dimension whose calibration values are all equal
_ROW_BLOCK = 64  # query rows rescored together (one decode of their candidates' union)
_DOC_BLOCK = 4096  # documents decoded at once while rescoring (bounds the float64 temporaries)


def _check_kind(kind: str) -> str:
    if kind == "float32":
        raise ValueError("kind 'float32' needs no quantised index (keep the float vectors and search them exactly); "
                         f"QuantizedDenseIndex takes one of {QUANTIZED_KINDS}")
    if kind not in QUANTIZED_KINDS:
        raise ValueError(f"kind must be one of {QUANTIZED_KINDS}, got {kind!r}")
    return kind


def _as_matrix(x, name: str, dimension: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous (n, d) float32 matrix of finite values, or a ValueError saying why not."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be a numeric (float) array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-d (n, d) array, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has 0 dimensions")
    if dimension is not None and arr.shape[1] != dimension:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, the index has dimension {dimension}")
    if arr.shape[0] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty (0 vectors)")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


class QuantizedDenseIndex:
    """A corpus of (unit) dense vectors kept as int8 or binary codes, searched in two stages.

    ``QuantizedDenseIndex(vectors, "int8", calibration=None)`` or ``(vectors, "binary")``:
    ``vectors`` (n, d) float; ``calibration`` (c, d) vectors whose per-dimension min/max set the
    int8 ranges (default: ``vectors``; int8 only, a ValueError for binary).
    """

    def __init__(self, vectors: np.ndarray, kind: str, *, calibration: np.ndarray | None = None):
        kind = _check_kind(kind)
        x = _as_matrix(vectors, "vectors")
        d = x.shape[1]
        if kind == "int8":
            calib = x if calibration is None else _as_matrix(calibration, "calibration", d)
            index = _new_sq_index(d)
            index.train(calib)  # RS_minmax: trained = [min (d), max - min (d)]
            trained = faiss.vector_to_array(index.sq.trained).astype(np.float32)
            vmin, vdiff = trained[:d].copy(), trained[d:].copy()
            if not (vdiff > 0).all():  # a constant dimension: faiss would compute 0 / 0
                vdiff[~(vdiff > 0)] = MIN_RANGE
                _set_trained(index, vmin, vdiff)
            index.add(x)
        else:
            if calibration is not None:
                raise ValueError("calibration applies to int8 only (binary codes are the signs: no ranges to learn)")
            index = faiss.IndexBinaryFlat(_bytes_per_vector(d) * 8)
            index.add(np.packbits(x > 0, axis=1))
        self._init(kind, d, index)

    def _init(self, kind: str, dimension: int, index) -> None:
        self._kind, self._dimension, self._index = kind, int(dimension), index

    # ------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        """``"int8"`` or ``"binary"``."""
        return self._kind

    @property
    def dimension(self) -> int:
        """d, the dimension of the vectors (and queries)."""
        return self._dimension

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def code_size(self) -> int:
        """Bytes of one document's code: d (int8) or ceil(d / 8) (binary)."""
        return self._dimension if self._kind == "int8" else _bytes_per_vector(self._dimension)

    @property
    def nbytes(self) -> int:
        """Bytes of the codes plus what decoding needs (int8: vmin and vdiff, 2 x d float32)."""
        extra = 2 * 4 * self._dimension if self._kind == "int8" else 0
        return len(self) * self.code_size + extra

    @property
    def ranges(self) -> np.ndarray | None:
        """int8: (2, d) float32 [min; max] per dimension, as ST's ``ranges``; None for binary."""
        if self._kind != "int8":
            return None
        vmin, vdiff = self._trained()
        return np.stack([vmin, vmin + vdiff])

    def __repr__(self) -> str:
        return f"QuantizedDenseIndex(kind={self._kind!r}, n={len(self)}, dimension={self._dimension})"

    # ------------------------------------------------------------------ codes
    def _trained(self) -> tuple[np.ndarray, np.ndarray]:
        trained = faiss.vector_to_array(self._index.sq.trained).astype(np.float32)
        d = self._dimension
        return trained[:d].copy(), trained[d:].copy()

    def _code_view(self) -> np.ndarray:
        """A read-only (n, code_size) view of the codes faiss holds (no copy; the index never grows)."""
        n, size = len(self), self.code_size
        vector = self._index.codes if self._kind == "int8" else self._index.xb
        view = np.asarray(faiss.rev_swig_ptr(vector.data(), n * size)).reshape(n, size)
        view.flags.writeable = False
        return view

    def codes(self, ids: np.ndarray | None = None) -> np.ndarray:
        """uint8 codes (a copy) of documents ``ids`` (default: all): (n, d) for int8, (n, ceil(d/8)) for binary."""
        view = self._code_view()
        return view.copy() if ids is None else view[self._check_ids(ids)]

    def decode(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), d) float32: the documents' quantised representation, decoded: int8 via faiss
        (``vmin + (code + 0.5) / 255 * vdiff``), binary as +-1 per bit."""
        ids = self._check_ids(ids)
        if not len(ids):
            return np.zeros((0, self._dimension), np.float32)
        if self._kind == "int8":
            return self._index.reconstruct_batch(ids)
        bits = np.unpackbits(self._code_view()[ids], axis=1, count=self._dimension)
        return bits.astype(np.float32) * 2 - 1

    def _check_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(f"document ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).ravel()
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise ValueError(f"document ids must lie in [0, {len(self)}), got [{ids.min()}, {ids.max()}]")
        return ids

    # ------------------------------------------------------------------ search
    def _queries(self, queries) -> np.ndarray:
        return _as_matrix(queries, "queries", self._dimension, allow_empty=True)

    def first_stage(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's search of the codes: (ids int64 (m, k), first-stage scores float32 (m, k)),
        best first; int8: inner product of the float query with the decoded codes (higher is
        better), binary: Hamming distance to the binarised query (lower is better, as float32).
        Within the returned lists equal scores are ordered by lower id; which of several documents
        tied at the k-th place make the list is faiss's choice. Padding: id -1, score NaN."""
        q = self._queries(queries)
        k = _check_count(k, "k")
        m, kk = len(q), min(k, len(self))
        if m == 0:
            return np.full((0, k), -1, np.int64), np.full((0, k), np.nan, np.float32)
        if self._kind == "int8":
            scores, ids = self._index.search(q, kk)
            key = -scores.astype(np.float64)
        else:
            dist, ids = self._index.search(np.packbits(q > 0, axis=1), kk)
            scores = dist.astype(np.float32)
            key = dist.astype(np.float64)
        ids = ids.astype(np.int64)
        valid = ids >= 0
        key = np.where(valid, key, np.inf)
        order = np.lexsort((np.where(valid, ids, np.iinfo(np.int64).max), key), axis=1)
        ids = np.take_along_axis(ids, order, axis=1)
        scores = np.where(ids >= 0, np.take_along_axis(scores.astype(np.float32), order, axis=1), np.nan)
        return _pad(ids, scores.astype(np.float32), k)

    def candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The first stage's ``k`` candidate ids (m, k) int64 per query (-1 where the corpus has fewer)."""
        return self.first_stage(queries, k)[0]

    def rescore(self, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """(m, c) float32 scores ``q_r . decode(ids[r, j])`` of the float32 queries with the candidates'
        quantised representation (NaN where ``ids`` is -1). Computed in float64, rounded to float32,
        so a (query, document) score does not depend on which other candidates come along."""
        q = self._queries(queries)
        ids = np.asarray(ids)
        if ids.ndim != 2 or ids.shape[0] != len(q):
            raise ValueError(f"ids must be a 2-d (m, c) array with one row per query ({len(q)}), got {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"document ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64)
        valid = ids >= 0
        if (ids < -1).any() or (ids >= len(self)).any():
            raise ValueError(f"document ids must lie in [0, {len(self)}) or be -1 (none)")
        out = np.full(ids.shape, np.nan, np.float32)
        n = len(self)
        for a in range(0, len(q), _ROW_BLOCK):
            block, vblock = ids[a:a + _ROW_BLOCK], valid[a:a + _ROW_BLOCK]
            wanted = block[vblock]
            if not len(wanted):
                continue
            if len(wanted) >= n // 8:  # many candidates (e.g. the whole corpus): a mask, no sort
                mask = np.zeros(n, bool)
                mask[wanted] = True
                uniq = np.flatnonzero(mask)
                position = np.zeros(n, np.int64)
                position[uniq] = np.arange(len(uniq))
                inverse = position[wanted]
            else:
                uniq, inverse = np.unique(wanted, return_inverse=True)
            qb = q[a:a + _ROW_BLOCK].astype(np.float64)
            scores = np.empty((len(qb), len(uniq)), np.float32)  # (rows, unique candidates)
            for c in range(0, len(uniq), _DOC_BLOCK):  # decode a bounded number of documents at a time
                docs = self.decode(uniq[c:c + _DOC_BLOCK]).astype(np.float64)
                scores[:, c:c + _DOC_BLOCK] = qb @ docs.T
            rows = np.nonzero(vblock)[0]
            out[a:a + _ROW_BLOCK][vblock] = scores[rows, inverse.ravel()]
        return out

    def search(self, queries: np.ndarray, k: int, *, rescore_multiplier: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (ids int64 (m, k), scores float32 (m, k)), best first, ties by lower id: the first
        stage takes ``k * rescore_multiplier`` candidates from the codes, :meth:`rescore` scores them
        with the float32 query, the best ``k`` are kept. Padding (corpus smaller than k): -1 / NaN."""
        k = _check_count(k, "k")
        multiplier = _check_count(rescore_multiplier, "rescore_multiplier")
        q = self._queries(queries)
        cand = self.candidates(q, min(len(self), k * multiplier))
        scores = self.rescore(q, cand)
        key = np.where(cand >= 0, -scores.astype(np.float64), np.inf)
        order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), key), axis=1)[:, :k]
        ids = np.take_along_axis(cand, order, axis=1)
        return _pad(ids, np.take_along_axis(scores, order, axis=1), k)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays that :meth:`from_arrays` rebuilds the index from: ``codes`` (uint8) and, for
        int8, ``vmin`` / ``vdiff`` (float32, d), for binary ``dimension`` (int64, shape (1,))."""
        out = {"codes": self.codes()}
        if self._kind == "int8":
            out["vmin"], out["vdiff"] = self._trained()
        else:
            out["dimension"] = np.array([self._dimension], dtype=np.int64)
        return out

    @classmethod
    def from_arrays(cls, kind: str, arrays: dict[str, np.ndarray]) -> QuantizedDenseIndex:
        """The index that :meth:`to_arrays` described (ValueError when the arrays do not fit together)."""
        kind = _check_kind(kind)
        need = ("codes", "vmin", "vdiff") if kind == "int8" else ("codes", "dimension")
        missing = [key for key in need if key not in arrays]
        if missing:
            raise ValueError(f"{kind} index arrays lack {missing} (have {sorted(arrays)})")
        codes = np.asarray(arrays["codes"])
        if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
            raise ValueError(f"codes must be a non-empty 2-d uint8 array, got {codes.dtype} {codes.shape}")
        codes = np.ascontiguousarray(codes)
        self = cls.__new__(cls)
        if kind == "int8":
            d = codes.shape[1]
            vmin, vdiff = (np.asarray(arrays[key]) for key in ("vmin", "vdiff"))
            if vmin.shape != (d,) or vdiff.shape != (d,):
                raise ValueError(f"vmin and vdiff must have shape ({d},) like the codes' rows, "
                                 f"got {vmin.shape} and {vdiff.shape}")
            vmin, vdiff = vmin.astype(np.float32), vdiff.astype(np.float32)
            if not (np.isfinite(vmin).all() and np.isfinite(vdiff).all() and (vdiff > 0).all()):
                raise ValueError("vmin must be finite and vdiff finite and > 0")
            index = _new_sq_index(d)
            _set_trained(index, vmin, vdiff)
            index.add_sa_codes(codes)
        else:
            dim = np.asarray(arrays["dimension"]).ravel()
            if dim.shape != (1,) or dim.dtype.kind not in "iu":
                raise ValueError(f"dimension must be one integer, got {arrays['dimension']!r}")
            d = int(dim[0])
            if d < 1 or _bytes_per_vector(d) != codes.shape[1]:
                raise ValueError(f"binary codes of {codes.shape[1]} bytes do not hold {d} dimensions")
            if d % 8 and (codes[:, -1] & np.uint8((1 << (8 - d % 8)) - 1)).any():
                raise ValueError(f"binary codes set padding bits beyond dimension {d}")
            index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
            index.add(codes)
        self._init(kind, d, index)
        return self


def _bytes_per_vector(d: int) -> int:
    return (d + 7) // 8


def _new_sq_index(d: int):
    index = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    assert index.sq.rangestat == faiss.ScalarQuantizer.RS_minmax and index.sq.rangestat_arg == 0
    return index


def _set_trained(index, vmin: np.ndarray, vdiff: np.ndarray) -> None:
    """Give the scalar quantiser these ranges (faiss's layout: ``trained = [vmin (d), vdiff (d)]``)."""
    trained = np.concatenate([vmin, vdiff]).astype(np.float32)
    index.sq.trained.resize(0)
    faiss.copy_array_to_vector(trained, index.sq.trained)
    index.is_trained = True


def _pad(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, k) arrays: ``ids`` / ``scores`` widened with -1 / NaN (and NaN wherever the id is -1)."""
    m, have = ids.shape
    out_ids = np.full((m, k), -1, np.int64)
    out_scores = np.full((m, k), np.nan, np.float32)
    out_ids[:, :have] = ids[:, :k]
    out_scores[:, :have] = scores[:, :k]
    out_scores[out_ids < 0] = np.nan
    return out_ids, out_scores
