"""The relevance scores of M3-Embedding, one function per formula (paper section 3.2).

Every score in m3lab — inference, indexes, training losses, the app — is computed
here. Functions take NumPy arrays or torch tensors; torch inputs keep their autograd
graph so the losses can use the same code.

==============================  ============================================
s_dense = <e_q, e_p>            :func:`dense_scores`
s_lex = sum w_qt * w_pt         :func:`sparse_scores`, :func:`sparse_scores_from_tokens`,
                                :func:`sparse_scores_inverted`
s_mul = 1/N sum_i max_j E_q E_p  :func:`colbert_scores`, :func:`colbert_scores_chunked`
s_rank / s_inter (eq. 2)        :func:`combine_scores`
==============================  ============================================
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

#: The three retrieval functions, in the order of every weight triple.
FUNCTIONS: tuple[str, str, str] = ("dense", "sparse", "colbert")
#: Hybrid weights (w_dense, w_sparse, w_colbert) bge-m3 uses in practice (PAPER.md, 3.2).
DEFAULT_WEIGHTS: tuple[float, float, float] = (1.0, 0.3, 1.0)


def check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    """(w_dense, w_sparse, w_colbert) as floats: three finite numbers, at least one non-zero."""
    try:
        out = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise ValueError(f"weights must be three numbers (w_dense, w_sparse, w_colbert), got {weights!r}") from None
    if len(out) != 3 or not all(np.isfinite(out)):
        raise ValueError(f"weights must be three finite numbers (w_dense, w_sparse, w_colbert), got {out}")
    if not any(out):
        raise ValueError("all weights are zero: give at least one of w_dense, w_sparse, w_colbert a non-zero weight")
    return out  # type: ignore[return-value]


def weighted_functions(weights: Sequence[float]) -> tuple[str, ...]:
    """The functions whose weight is not zero: the only ones a weighted score needs."""
    return tuple(f for f, w in zip(FUNCTIONS, check_weights(weights)) if w != 0)


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _as_csr(x) -> sp.csr_matrix:
    """``x`` as a float32 CSR matrix, without a copy when it already is one."""
    return x if sp.isspmatrix_csr(x) and x.dtype == np.float32 else sp.csr_matrix(x, dtype=np.float32)


def _matmul_t(q, p):
    """q @ p.T, in torch for NumPy inputs too (returned as NumPy).

    Waking NumPy's OpenBLAS thread pool between torch's parallel regions makes the two pools
    fight for the cores (single-query search on 2 cores: p95 22 -> 100 ms).
    """
    if isinstance(q, torch.Tensor):
        return q @ _as_tensor(p).to(q.dtype).T
    q, p = (torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) for x in (q, p))
    return (q @ p.T).numpy()


def dense_scores(q, p):
    """s_dense = <e_q, e_p> for every query/passage pair (section 3.2).

    ``q`` (n_q, d) and ``p`` (n_p, d) are L2-normalised dense embeddings; returns (n_q, n_p)
    of the same kind (NumPy or torch) as ``q``.
    """
    return _matmul_t(q, p)


def sparse_scores(q, p):
    """s_lex = sum over tokens t in both q and p of w_qt * w_pt (section 3.2).

    ``q`` and ``p`` are lexical-weight matrices with one row per text and one column per
    token id (repeated tokens already max-pooled): ``scipy.sparse`` matrices at inference
    (a sparse product, no loop over pairs) or dense torch tensors over a compact batch
    vocabulary in training. Returns a dense (n_q, n_p) array or tensor.
    """
    if sp.issparse(q) or sp.issparse(p):
        return _sparse_product(_as_csr(q), _as_csr(p))
    return _matmul_t(q, p)


def sparse_scores_inverted(q, inverted: sp.spmatrix) -> np.ndarray:
    """s_lex against an inverted index: :func:`sparse_scores` with the passages pre-transposed.

    ``inverted`` is the (vocab, n_p) CSR matrix ``p.T`` (one row per token id, listing the
    passages that contain it), so a batch of queries costs one sparse product and no
    conversion of the corpus per call. Equal to ``sparse_scores(q, inverted.T)``.
    """
    out = sp.csr_matrix(q) @ sp.csr_matrix(inverted)
    return np.asarray(out.toarray(), dtype=np.float32)


def _sparse_product(q: sp.csr_matrix, p: sp.csr_matrix, max_elements: int = 1 << 24) -> np.ndarray:
    """q @ p.T as a dense float32 array, over the token ids the two sides share.

    The all-pairs result is dense anyway, so a sparse x sparse product (which builds a sparse
    result, then converts it) is the slow way: the shared token ids are renumbered 0..U-1, the
    passages' weights on them are laid out dense, a block of passages at a time (at most
    ``max_elements`` floats), and multiplied by the queries as a torch CSR matrix (its CSR x dense
    kernel is several times faster than scipy's here). Duplicate entries add up, as in scipy.
    """
    if q.shape[1] != p.shape[1]:
        raise ValueError(f"vocabulary sizes differ: {q.shape[1]} (queries) vs {p.shape[1]} (passages)")
    out = np.zeros((q.shape[0], p.shape[0]), dtype=np.float32)
    vocab = q.shape[1]
    in_q = np.zeros(vocab, dtype=bool)
    in_p = np.zeros(vocab, dtype=bool)
    in_q[q.indices], in_p[p.indices] = True, True
    shared = np.flatnonzero(in_q & in_p)
    if shared.size == 0:
        return out
    column = np.full(vocab, -1, dtype=np.int64)
    column[shared] = np.arange(shared.size)

    q_col = column[q.indices]
    keep = q_col >= 0
    q_row = np.repeat(np.arange(q.shape[0]), np.diff(q.indptr))[keep]
    indptr = np.zeros(q.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(q_row, minlength=q.shape[0]), out=indptr[1:])
    with warnings.catch_warnings():  # "sparse CSR support is in beta": matmul with a dense matrix is all we use
        warnings.simplefilter("ignore", UserWarning)
        q_t = torch.sparse_csr_tensor(torch.from_numpy(indptr), torch.from_numpy(q_col[keep]),
                                      torch.from_numpy(q.data[keep].astype(np.float32, copy=False)),
                                      size=(q.shape[0], shared.size), check_invariants=False)
        p_col = column[p.indices]
        rows = max(1, max_elements // shared.size)
        for start in range(0, p.shape[0], rows):
            end = min(start + rows, p.shape[0])
            lo, hi = p.indptr[start], p.indptr[end]
            cols = p_col[lo:hi]
            keep = cols >= 0
            row = np.repeat(np.arange(end - start), np.diff(p.indptr[start:end + 1]))[keep]
            block = np.zeros((shared.size, end - start), dtype=np.float32)  # (shared tokens, passages)
            np.add.at(block, (cols[keep], row), p.data[lo:hi][keep])
            out[:, start:end] = (q_t @ torch.from_numpy(block)).numpy()
    return out


def lexical_matrix(token_weights: torch.Tensor, input_ids: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """Per-text lexical vectors over a compact vocabulary, differentiably.

    A token that occurs several times keeps its max weight (section 3.2). ``vocab`` is a
    sorted 1-D tensor of the token ids that may occur (e.g. the batch's own ids), so the
    result is (batch, len(vocab)) instead of the reference code's (batch, length, V).
    ``token_weights`` must already be zero at special and padding positions.
    """
    index = torch.searchsorted(vocab, input_ids.contiguous())
    out = token_weights.new_zeros(token_weights.shape[0], vocab.numel())
    return out.scatter_reduce(1, index, token_weights, reduce="amax", include_self=True)


def sparse_scores_from_tokens(q_weights: torch.Tensor, q_ids: torch.Tensor,
                              p_weights: torch.Tensor, p_ids: torch.Tensor) -> torch.Tensor:
    """s_lex for every pair from token weights and ids, without a vocabulary-sized tensor.

    Memory is (n_q + n_p) x U with U the number of distinct ids in the batch, instead of
    batch x length x V. Equal to :func:`sparse_scores` on the full-vocabulary matrices.
    """
    vocab = torch.unique(torch.cat([q_ids.reshape(-1), p_ids.reshape(-1)]))
    return sparse_scores(lexical_matrix(q_weights, q_ids, vocab), lexical_matrix(p_weights, p_ids, vocab))


def colbert_scores(q: torch.Tensor, q_mask: torch.Tensor, p: torch.Tensor, p_mask: torch.Tensor) -> torch.Tensor:
    """s_mul = 1/N sum_i max_j <E_q[i], E_p[j]> for every query/passage pair (section 3.2).

    ``q`` (n_q, L_q, d) and ``p`` (n_p, L_p, d) are padded, normalised multi-vector
    embeddings; the masks (1 = real token) exclude padding from the max and from N, the
    number of query vectors. Returns (n_q, n_p). Memory is n_q*L_q*n_p*L_p: chunk large
    inputs with :func:`colbert_scores_chunked`.
    """
    n_q, l_q, d = q.shape
    n_p, l_p, _ = p.shape
    # padding gets -inf through the GEMM's own bias term: cheaper than masking the similarity block.
    # Its vectors are zeroed first, since whatever they hold (NaN from normalising a zero vector in
    # fp16) would survive the bias where a mask would have replaced it.
    is_pad = ~p_mask.bool()
    if is_pad.any():
        p = p.masked_fill(is_pad.unsqueeze(-1), 0)
    pad = torch.zeros(n_p * l_p, dtype=q.dtype, device=q.device).masked_fill_(is_pad.reshape(-1), float("-inf"))
    sim = torch.addmm(pad, q.reshape(n_q * l_q, d), p.reshape(n_p * l_p, d).T).view(n_q, l_q, n_p, l_p)
    best = sim.amax(dim=-1)  # (n_q, l_q, n_p): each query token's best passage token
    q_mask = q_mask.to(best.dtype)
    best = torch.where(q_mask.bool().unsqueeze(-1), best, torch.zeros_like(best))
    return best.sum(dim=1) / q_mask.sum(dim=1, keepdim=True).clamp(min=1)


def pad_vectors(vectors: Sequence[np.ndarray], dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (L_i, d) arrays into a zero-padded (n, max L, d) tensor and its mask."""
    dim = dim if dim is not None else (vectors[0].shape[1] if len(vectors) else 0)
    length = max((len(v) for v in vectors), default=0)
    out = np.zeros((len(vectors), max(length, 1), dim), dtype=np.float32)
    mask = np.zeros((len(vectors), max(length, 1)), dtype=bool)
    for i, v in enumerate(vectors):
        out[i, : len(v)] = v
        mask[i, : len(v)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


def colbert_scores_chunked(queries: Sequence[np.ndarray], passages: Sequence[np.ndarray], *,
                           max_elements: int = 1 << 20, query_rows: int = 1024) -> np.ndarray:
    """All-pairs s_mul for lists of (L_i, d) arrays, in bounded memory.

    Queries and passages are sorted by length and processed in chunks whose similarity
    block and padded passage block each hold at most ``max_elements`` floats (one passage
    longer than that is a chunk of its own), so 10k x 10k pairs run in constant memory and
    padding stays small. Each chunk calls :func:`colbert_scores`. The defaults (4 MB blocks,
    1024 query vectors) keep each block in cache: for 1190 x 240 texts shaped like XQuAD-en
    (5-20 and 60-300 vectors of d = 384) on 2 CPU cores they take 2.4 s, 128 MB blocks 5.4 s.
    """
    n_q, n_p = len(queries), len(passages)
    out = np.zeros((n_q, n_p), dtype=np.float32)
    if n_q == 0 or n_p == 0:
        return out
    q_order = np.argsort([len(v) for v in queries], kind="stable")
    # a store that dequantises on access (retrieval.compression.Int8Vectors) says its lengths
    lengths = getattr(passages, "lengths", None)
    lengths = np.asarray([len(v) for v in passages] if lengths is None else lengths)
    p_order = np.argsort(lengths, kind="stable")
    p_lens = np.maximum(lengths[p_order], 1)
    with torch.inference_mode():
        qs = 0
        while qs < n_q:
            qe = qs + 1
            while qe < n_q and (qe - qs + 1) * max(len(queries[q_order[qe]]), 1) <= query_rows:
                qe += 1
            q_idx = q_order[qs:qe]
            q_pad, q_mask = pad_vectors([queries[i] for i in q_idx])
            rows = q_pad.shape[0] * q_pad.shape[1]
            # the padded passages (count x length x d) must fit too, not only the similarity block
            # (count x length x rows): for a few short queries (rows < d) they are the larger tensor
            width = max(rows, q_pad.shape[2])
            ps = 0
            while ps < n_p:
                pe = ps + 1
                while pe < n_p and width * (pe - ps + 1) * p_lens[pe] <= max_elements:
                    pe += 1
                p_idx = p_order[ps:pe]
                p_pad, p_mask = pad_vectors([passages[i] for i in p_idx])
                block = colbert_scores(q_pad, q_mask, p_pad, p_mask).numpy()
                out[np.ix_(q_idx, p_idx)] = block
                ps = pe
            qs = qe
    return out


def colbert_scores_one_query(query: np.ndarray, passages: Sequence[np.ndarray], *,
                             block_rows: int = 1 << 15) -> np.ndarray:
    """s_mul (section 3.2) of one query's (L_q, d) vectors against each passage: what :func:`colbert_scores`
    gives, computed without padding, for a single query against many passages (search and rerank).

    Consecutive passages are concatenated into blocks of at most ``block_rows`` vectors (one longer
    passage is a block of its own), cast to float32 once per block (float16 or dequantised int8
    storage), multiplied by the query in one GEMM, and each passage's maxima taken over its own
    columns (``np.maximum.reduceat``); the mean over query vectors is eq. 3's 1/N. One GEMM per block
    instead of one per passage: for bge-m3-sized passages (~200 vectors) the per-call overhead of a
    small GEMM otherwise dominates. A passage with no vector gets what :func:`colbert_scores` gives it.

    ``passages`` stored back to back (an object with ``offsets`` and ``rows(a, b)``, as
    :class:`m3lab.retrieval.compression.FloatVectors` and ``Int8Vectors``: a whole index's
    multi-vectors) are multiplied block by block where they lie, without gathering them into a copy
    (for float32 storage a block is a view): exhaustive MaxSim reads each stored vector once.
    """
    q = torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32))
    n = len(passages)
    out = np.empty(n, dtype=np.float32)
    lengths = getattr(passages, "lengths", None)
    lengths = np.asarray([len(v) for v in passages] if lengths is None else lengths, dtype=np.int64)
    if len(q) == 0 or n == 0:
        out[:] = colbert_scores_chunked([np.asarray(query, dtype=np.float32)], passages)[0] if n else 0
        return out
    offsets = getattr(passages, "offsets", None)
    if offsets is not None and hasattr(passages, "rows") and len(offsets) == n + 1:
        return _one_query_contiguous(q, passages, np.asarray(offsets, dtype=np.int64), lengths, block_rows, out)
    with torch.inference_mode():
        a = 0
        while a < n:
            b, rows = a, 0
            while b < n and (b == a or rows + lengths[b] <= block_rows):
                rows += lengths[b]
                b += 1
            idx = [i for i in range(a, b) if lengths[i] > 0]
            if idx:
                block = np.concatenate([np.asarray(passages[i], dtype=np.float32) for i in idx])
                sim = (q @ torch.from_numpy(block).T).numpy()  # (L_q, rows)
                starts = np.concatenate([[0], np.cumsum(lengths[idx])[:-1]])
                out[idx] = np.maximum.reduceat(sim, starts, axis=1).mean(axis=0)
            for i in range(a, b):
                if lengths[i] == 0:
                    out[i] = colbert_scores_chunked([np.asarray(query, dtype=np.float32)], [passages[i]])[0, 0]
            a = b
    return out


def _one_query_contiguous(q: torch.Tensor, passages, offsets: np.ndarray, lengths: np.ndarray, block_rows: int,
                          out: np.ndarray) -> np.ndarray:
    """:func:`colbert_scores_one_query` on passages stored back to back: blocks of whole passages of at
    most ``block_rows`` rows (or one longer passage), each ``passages.rows(start, end)`` in one GEMM."""
    n = len(lengths)
    empty = np.flatnonzero(lengths == 0)
    with torch.inference_mode():
        a = 0
        while a < n:
            b = max(int(np.searchsorted(offsets, offsets[a] + block_rows, side="right")) - 1, a + 1)
            b = min(b, n)
            start, end = int(offsets[a]), int(offsets[b])
            if end > start:
                block = np.ascontiguousarray(passages.rows(start, end), dtype=np.float32)
                sim = (q @ torch.from_numpy(block).T).numpy()  # (L_q, rows)
                # segments start at each non-empty passage; an empty one in between adds no column
                full = np.flatnonzero(lengths[a:b] > 0) + a
                out[full] = np.maximum.reduceat(sim, offsets[full] - start, axis=1).mean(axis=0)
            a = b
    if len(empty):
        zero = colbert_scores_chunked([q.numpy()], [np.zeros((0, q.shape[1]), dtype=np.float32)])[0, 0]
        out[empty] = zero
    return out


def combine_scores(dense=None, sparse=None, colbert=None,
                   weights: Sequence[float] = DEFAULT_WEIGHTS):
    """The weighted sum w1*s_dense + w2*s_lex + w3*s_mul.

    This is both the hybrid ranking score s_rank (section 3.2) and the ensemble teacher
    s_inter of self-knowledge distillation (eq. 2). A component may be ``None`` only if
    its weight is 0.
    """
    weights = check_weights(weights)
    total = None
    for name, s, w in zip(FUNCTIONS, (dense, sparse, colbert), weights):
        if w == 0:
            continue
        if s is None:
            raise ValueError(f"weight for {name} is {w} but no {name} scores were given")
        total = w * s if total is None else total + w * s
    return total
