"""The score functions of m3lab.scoring against hand computations (section 3.2, eq. 2)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import pytest
import torch

from m3lab import scoring
from m3lab.modeling import sparse_dicts_to_csr

RNG = np.random.default_rng(0)


def _unit(n: int, d: int = 8, rng=RNG) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _maxsim(q: np.ndarray, p: np.ndarray) -> float:
    """s_mul for one pair, as bge-m3's colbert_score: mean over query vectors of the best passage match."""
    return float(np.mean([max(float(qi @ pj) for pj in p) for qi in q]))


def _lexical(qw: dict, pw: dict) -> float:
    """s_lex for one pair, as bge-m3's compute_lexical_matching_score: a loop over the query's tokens."""
    return sum(w * pw[t] for t, w in qw.items() if t in pw)


# ----------------------------------------------------------------------------- dense

def test_dense_scores_numpy_and_torch():
    q, p = _unit(3), _unit(5)
    hand = np.array([[float(a @ b) for b in p] for a in q])
    np.testing.assert_allclose(scoring.dense_scores(q, p), hand, atol=1e-6)
    qt = torch.from_numpy(q).requires_grad_()
    out = scoring.dense_scores(qt, torch.from_numpy(p))
    assert isinstance(out, torch.Tensor) and out.requires_grad
    out.sum().backward()
    np.testing.assert_allclose(qt.grad.numpy(), np.repeat(p.sum(0, keepdims=True), 3, 0), atol=1e-6)


# ----------------------------------------------------------------------------- sparse

def _random_lexical(n: int, vocab: int, rng) -> list[dict[int, float]]:
    out = []
    for _ in range(n):
        k = int(rng.integers(0, 12))
        ids = rng.choice(vocab, size=k, replace=False)
        out.append({int(t): float(rng.uniform(0.01, 2.0)) for t in ids})
    return out


def test_sparse_scores_equal_the_dict_loop():
    rng = np.random.default_rng(1)
    vocab = 40  # small, so many tokens are shared
    qs, ps = _random_lexical(9, vocab, rng), _random_lexical(13, vocab, rng)
    got = scoring.sparse_scores(sparse_dicts_to_csr(qs, vocab), sparse_dicts_to_csr(ps, vocab))
    hand = np.array([[_lexical(q, p) for p in ps] for q in qs])
    assert got.shape == (9, 13) and got.dtype == np.float32
    np.testing.assert_allclose(got, hand, rtol=1e-6, atol=1e-6)
    assert (hand > 0).sum() > 20 and (hand == 0).sum() > 0  # overlaps and non-overlaps both exercised
    # the dense-matrix forms agree too
    dq = sparse_dicts_to_csr(qs, vocab).toarray()
    dp = sparse_dicts_to_csr(ps, vocab).toarray()
    np.testing.assert_allclose(scoring.sparse_scores(dq, dp), hand, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scoring.sparse_scores(torch.from_numpy(dq), torch.from_numpy(dp)).numpy(), hand,
                               rtol=1e-6, atol=1e-6)


def test_sparse_product_blocks_and_edge_cases():
    rng = np.random.default_rng(7)
    vocab = 30
    qs, ps = _random_lexical(5, vocab, rng), _random_lexical(23, vocab, rng)
    q, p = sparse_dicts_to_csr(qs, vocab), sparse_dicts_to_csr(ps, vocab)
    hand = np.array([[_lexical(a, b) for b in ps] for a in qs])
    for max_elements in (1, 7, 1 << 24):  # one passage per block ... all at once
        np.testing.assert_allclose(scoring._sparse_product(q, p, max_elements=max_elements), hand, rtol=1e-6, atol=1e-6)
    # no shared token: all zeros; no rows: an empty matrix; different vocabularies: an error
    disjoint = sparse_dicts_to_csr([{1: 1.0}], vocab), sparse_dicts_to_csr([{2: 1.0}, {3: 2.0}], vocab)
    np.testing.assert_array_equal(scoring.sparse_scores(*disjoint), np.zeros((1, 2)))
    assert scoring.sparse_scores(sparse_dicts_to_csr([], vocab), p).shape == (0, 23)
    with pytest.raises(ValueError, match="vocabulary"):
        scoring.sparse_scores(q, sparse_dicts_to_csr(ps, vocab + 1))


def test_sparse_product_matches_scipy_on_non_canonical_csr():
    """Unsorted and duplicate entries (a hand-built CSR, float64) give scipy's q @ p.T: duplicates add up."""
    q = sp.csr_matrix((np.array([0.5, 1.0, 0.25, 2.0]), np.array([7, 2, 7, 4]), np.array([0, 3, 4])), shape=(2, 9))
    p = sp.csr_matrix((np.array([1.0, 3.0, 0.5, 1.5, 2.0]), np.array([4, 2, 2, 7, 0]), np.array([0, 3, 5])),
                      shape=(2, 9))
    expected = (q @ p.T).toarray()  # scipy sums the duplicates of (row 0, col 7) in q and (row 0, col 2) in p
    assert expected[0, 0] == 1.0 * 3.5 and expected[0, 1] == 0.75 * 1.5
    for max_elements in (1, 1 << 24):
        np.testing.assert_allclose(scoring._sparse_product(q, p, max_elements=max_elements), expected, rtol=1e-6)
    np.testing.assert_allclose(scoring.sparse_scores(q, p), expected, rtol=1e-6)


def _token_batch(n: int, length: int, vocab: int, seed: int):
    """Token ids with repeats and right padding (id 0, weight 0), and positive weights."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    lengths = torch.randint(1, length + 1, (n,), generator=g)
    mask = torch.arange(length)[None] < lengths[:, None]
    ids = ids.masked_fill(~mask, 0)
    raw = torch.rand(n, length, generator=g) + 0.05
    return ids, raw, mask


def _full_vocab_lexical(weights: torch.Tensor, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """The reference code's training form: a (batch, length, vocab) scatter, then the max over positions."""
    full = torch.zeros(ids.shape[0], ids.shape[1], vocab, dtype=weights.dtype)
    full = torch.scatter(full, -1, ids.unsqueeze(-1), weights.unsqueeze(-1))
    return full.max(dim=1).values


def test_lexical_matrix_keeps_the_max_of_repeated_tokens():
    ids = torch.tensor([[5, 7, 5, 9, 0], [7, 7, 7, 3, 3]])
    w = torch.tensor([[0.2, 0.5, 0.9, 0.1, 0.0], [0.3, 0.8, 0.1, 0.4, 0.6]])
    vocab = torch.unique(ids)
    m = scoring.lexical_matrix(w, ids, vocab)
    col = {int(t): i for i, t in enumerate(vocab)}
    assert m[0, col[5]] == pytest.approx(0.9) and m[0, col[7]] == pytest.approx(0.5) and m[0, col[3]] == 0
    assert m[1, col[7]] == pytest.approx(0.8) and m[1, col[3]] == pytest.approx(0.6) and m[1, col[9]] == 0


def test_sparse_scores_from_tokens_equal_full_vocabulary_form():
    vocab = 50
    q_ids, q_raw, q_mask = _token_batch(4, 9, vocab, seed=2)
    p_ids, p_raw, p_mask = _token_batch(6, 14, vocab, seed=3)
    q_raw.requires_grad_(), p_raw.requires_grad_()
    target = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))

    def scores(fn):
        q_raw.grad = p_raw.grad = None
        s = fn(q_raw * q_mask, p_raw * p_mask)  # weights zero at padding, as the model gives them
        (s * target).sum().backward()
        return s.detach(), q_raw.grad.clone(), p_raw.grad.clone()

    compact = scores(lambda qw, pw: scoring.sparse_scores_from_tokens(qw, q_ids, pw, p_ids))
    naive = scores(lambda qw, pw: _full_vocab_lexical(qw, q_ids, vocab) @ _full_vocab_lexical(pw, p_ids, vocab).T)
    for a, b in zip(compact, naive):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    assert (compact[0] > 0).sum() > 5  # shared tokens exist
    assert compact[1].abs().sum() > 0  # and the gradient reaches the weights


# ----------------------------------------------------------------------------- multi-vector

def test_colbert_scores_masked_batch_equals_per_pair():
    rng = np.random.default_rng(5)
    qs = [_unit(int(n), rng=rng) for n in (1, 4, 7)]
    ps = [_unit(int(n), rng=rng) for n in (2, 9, 1, 5)]
    q_pad, q_mask = scoring.pad_vectors(qs)
    p_pad, p_mask = scoring.pad_vectors(ps)
    q_pad.requires_grad_()
    got = scoring.colbert_scores(q_pad, q_mask, p_pad, p_mask)
    hand = np.array([[_maxsim(q, p) for p in ps] for q in qs])
    np.testing.assert_allclose(got.detach().numpy(), hand, atol=1e-6)
    # the gradient equals the per-pair formula's (padding rows get none)
    got.sum().backward()
    q_leaf = [torch.from_numpy(q).requires_grad_() for q in qs]
    total = sum((ql @ torch.from_numpy(p).T).amax(dim=1).mean() for ql in q_leaf for p in ps)
    total.backward()
    for i, ql in enumerate(q_leaf):
        torch.testing.assert_close(q_pad.grad[i, : len(ql)], ql.grad, atol=1e-6, rtol=1e-6)
        assert not q_pad.grad[i, len(ql):].any()


def test_colbert_negative_similarities_never_lose_to_padding():
    """Padding (zero vectors) scores 0: a query token whose best real match is negative must keep it."""
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    short = np.array([[-1.0, 0.0]], dtype=np.float32)
    long = np.array([[-0.6, 0.8], [-0.8, 0.6], [-1.0, 0.0]], dtype=np.float32)
    got = scoring.colbert_scores_chunked([q], [short, long])
    np.testing.assert_allclose(got, [[-1.0, -0.6]], atol=1e-6)


def test_colbert_padding_content_is_ignored():
    """Whatever padded positions hold (NaN, as normalising a zero vector in fp16 gives) cannot reach a score."""
    rng = np.random.default_rng(8)
    qs, ps = [_unit(3, rng=rng), _unit(5, rng=rng)], [_unit(4, rng=rng), _unit(2, rng=rng)]
    q_pad, q_mask = scoring.pad_vectors(qs)
    p_pad, p_mask = scoring.pad_vectors(ps)
    clean = scoring.colbert_scores(q_pad, q_mask, p_pad, p_mask)
    q_pad[~q_mask], p_pad[~p_mask] = float("nan"), float("nan")
    torch.testing.assert_close(scoring.colbert_scores(q_pad, q_mask, p_pad, p_mask), clean)


@pytest.mark.parametrize("max_elements,query_rows", [(1, 1), (64, 8), (1000, 30), (1 << 25, 4096)])
def test_colbert_scores_chunked_equals_per_pair(monkeypatch, max_elements, query_rows):
    rng = np.random.default_rng(6)
    qs = [_unit(int(n), d=16, rng=rng) for n in rng.integers(1, 25, size=11)]
    ps = [_unit(int(n), d=16, rng=rng) for n in rng.integers(1, 60, size=17)]
    calls = []
    real = scoring.colbert_scores
    monkeypatch.setattr(scoring, "colbert_scores", lambda *a: calls.append(1) or real(*a))
    got = scoring.colbert_scores_chunked(qs, ps, max_elements=max_elements, query_rows=query_rows)
    hand = np.array([[_maxsim(q, p) for p in ps] for q in qs])
    assert got.shape == (11, 17) and got.dtype == np.float32
    np.testing.assert_allclose(got, hand, atol=1e-5)
    if max_elements < 1000:
        assert len(calls) > 20  # really chunked
    else:
        assert len(calls) >= 1


def test_colbert_scores_chunked_empty_inputs():
    assert scoring.colbert_scores_chunked([], [_unit(3)]).shape == (0, 1)
    assert scoring.colbert_scores_chunked([_unit(3)], []).shape == (1, 0)


# ----------------------------------------------------------------------------- combine (s_rank, eq. 2)

def test_combine_scores_weights_and_errors():
    d, s, c = (np.full((2, 3), v, dtype=np.float32) for v in (1.0, 10.0, 100.0))
    np.testing.assert_allclose(scoring.combine_scores(d, s, c), 1.0 + 0.3 * 10 + 100.0)
    np.testing.assert_allclose(scoring.combine_scores(d, s, c, weights=(0.4, 0.2, 0.4)), 0.4 + 2 + 40)
    # a missing component is fine with weight 0
    np.testing.assert_allclose(scoring.combine_scores(d, None, c, weights=(1, 0, 1)), 101.0)
    np.testing.assert_allclose(scoring.combine_scores(None, s, None, weights=(0, 1, 0)), 10.0)
    with pytest.raises(ValueError, match="sparse"):
        scoring.combine_scores(d, None, c, weights=(1, 0.3, 1))
    with pytest.raises(ValueError, match="w_dense"):
        scoring.combine_scores(d, s, c, weights=(1, 1))
    with pytest.raises(ValueError, match="zero"):
        scoring.combine_scores(d, s, c, weights=(0, 0, 0))
    assert scoring.DEFAULT_WEIGHTS == (1.0, 0.3, 1.0)


def test_combine_scores_keeps_the_graph():
    parts = [torch.randn(2, 3, requires_grad=True) for _ in range(3)]
    total = scoring.combine_scores(*parts, weights=(1.0, 0.3, 1.0))
    total.sum().backward()
    for p, w in zip(parts, (1.0, 0.3, 1.0)):
        torch.testing.assert_close(p.grad, torch.full((2, 3), w))


def test_pad_vectors():
    vecs = [_unit(2, 4), _unit(5, 4), np.zeros((0, 4), dtype=np.float32)]
    pad, mask = scoring.pad_vectors(vecs)
    assert pad.shape == (3, 5, 4) and mask.tolist() == [[True] * 2 + [False] * 3, [True] * 5, [False] * 5]
    np.testing.assert_array_equal(pad[0, :2].numpy(), vecs[0])
    assert not pad[0, 2:].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_colbert_scores_one_query_equals_the_padded_computation(dtype):
    """The unpadded single-query MaxSim (one GEMM per block of passages) gives colbert_scores' values,
    including for passages with no vector and blocks split mid-corpus."""
    rng = np.random.default_rng(0)
    docs = [rng.normal(size=(int(n), 32)).astype(dtype) for n in rng.integers(0, 40, size=200)]
    q = rng.normal(size=(7, 32)).astype(np.float32)
    expect = scoring.colbert_scores_chunked([q], [d.astype(np.float32) for d in docs])[0]
    for block_rows in (1, 100, 1 << 15):
        got = scoring.colbert_scores_one_query(q, docs, block_rows=block_rows)
        # float32 sums of 32 products in another order: relative error ~1e-6 of the values (|s| ~ 5)
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_colbert_scores_one_query_on_passages_stored_back_to_back(storage):
    """Passages stored as one array cut by offsets (an index's multi-vectors) are scored where they lie,
    block by block: the values equal the padded computation on the same (decoded) vectors, with empty
    passages at the start, in the middle and at the end, and blocks that split the corpus anywhere."""
    from m3lab.retrieval.compression import FloatVectors, Int8Vectors, quantize_int8

    rng = np.random.default_rng(1)
    lengths = np.concatenate([[0], rng.integers(0, 40, size=150), [0, 0]])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    vectors = rng.normal(size=(int(offsets[-1]), 32)).astype(np.float32)
    if storage == "int8":
        codes, scales = quantize_int8(vectors)
        stored = Int8Vectors(codes, scales, offsets)
    else:
        stored = FloatVectors(vectors.astype(storage), offsets)
    decoded = [np.asarray(stored[i], dtype=np.float32) for i in range(len(stored))]
    q = rng.normal(size=(5, 32)).astype(np.float32)
    expect = scoring.colbert_scores_chunked([q], decoded)[0]
    for block_rows in (1, 37, 1 << 15):
        got = scoring.colbert_scores_one_query(q, stored, block_rows=block_rows)
        # as above: float32 sums of 32 products in another order
        np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5)
    assert got[0] == expect[0] and got[-1] == expect[-1]
