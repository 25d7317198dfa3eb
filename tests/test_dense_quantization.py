"""Quantised dense indexes (int8 scalar quantiser, binary) with float-query rescoring: random data, no model."""
from __future__ import annotations

import numpy as np
import pytest

from m3lab.retrieval.dense_quantization import DENSE_QUANTIZATIONS, QuantizedDenseIndex

SEED = 1234


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_unit(n: int, d: int, seed: int = SEED) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, d)))


def clustered(n: int = 2000, d: int = 64, clusters: int = 40, queries: int = 100, noise: float = 0.6,
              seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Documents and queries drawn around the same random cluster centres (unit vectors)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    docs = unit(centres[rng.integers(0, clusters, n)] + noise * rng.standard_normal((n, d)))
    qs = unit(centres[rng.integers(0, clusters, queries)] + noise * rng.standard_normal((queries, d)))
    return docs, qs


def recall_at(ids: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids.tolist(), exact.tolist())]))


def test_kinds():
    assert DENSE_QUANTIZATIONS == ("float32", "int8", "binary")


# ---------------------------------------------------------------------- int8
def test_int8_ranges_codes_and_decode_follow_faiss_min_max_formula():
    d = 24
    corpus = random_unit(300, d)
    calibration = random_unit(200, d, seed=SEED + 1)  # a different set: some corpus values fall outside
    ix = QuantizedDenseIndex(corpus, "int8", calibration=calibration)
    vmin, vmax = calibration.min(axis=0), calibration.max(axis=0)
    np.testing.assert_array_equal(ix.ranges[0], vmin)  # RS_minmax: exact min and max ...
    np.testing.assert_allclose(ix.ranges[1], vmax, rtol=0, atol=1.2e-7)  # ... max as vmin + vdiff (one rounding)
    arrays = ix.to_arrays()
    np.testing.assert_array_equal(arrays["vmin"], vmin)
    np.testing.assert_array_equal(arrays["vdiff"], vmax - vmin)  # faiss stores max - min in float32

    # Hand formula (faiss QT_8bit, non-uniform): code = int(255 * clip((x - vmin) / vdiff, 0, 1)).
    vdiff = (vmax - vmin).astype(np.float32)
    t = np.clip((corpus - vmin) / vdiff, np.float32(0), np.float32(1)).astype(np.float32)
    scaled = np.float32(255) * t
    hand = np.trunc(scaled).astype(np.int64)
    codes = ix.codes().astype(np.int64)
    assert codes.shape == (300, d) and ix.codes().dtype == np.uint8
    # The same float32 operations give the same codes; a one-level difference is only admissible where
    # 255 * t is within float32 rounding (a few ulp of 255, ~1e-4) of an integer.
    near_boundary = np.abs(scaled - np.round(scaled)) < 1e-4
    assert np.all((codes == hand) | (near_boundary & (np.abs(codes - hand) == 1)))
    assert (codes == hand).mean() > 0.999
    assert (codes == 0).any() and (codes == 255).any()  # values outside the calibration range are clipped

    # decode = vmin + (code + 0.5) / 255 * vdiff: three float32 operations on values of magnitude <= 2,
    # each within half an ulp (ulp(2) = 2.4e-7), so 1e-6 absolute covers rounding.
    decoded = ix.decode(np.arange(len(corpus)))
    expected = vmin + (codes.astype(np.float64) + 0.5) / 255 * vdiff
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=1e-6)
    inside = (corpus >= vmin) & (corpus <= vmax)
    assert np.all(np.abs(decoded - corpus)[inside] <= (0.5 / 255 * vdiff + 1e-6)[np.nonzero(inside)[1]])


def test_int8_default_calibration_is_the_corpus_and_constant_dimension_is_safe():
    corpus = random_unit(50, 8)
    ix = QuantizedDenseIndex(corpus, "int8")
    np.testing.assert_array_equal(ix.to_arrays()["vmin"], corpus.min(0))
    np.testing.assert_array_equal(ix.to_arrays()["vdiff"], corpus.max(0) - corpus.min(0))
    const = corpus.copy()
    const[:, 3] = 0.25  # max == min: faiss would divide 0 by 0
    ix = QuantizedDenseIndex(const, "int8")
    decoded = ix.decode(np.arange(50))
    assert np.isfinite(decoded).all()
    np.testing.assert_allclose(decoded[:, 3], 0.25, atol=1e-6)


def test_int8_first_stage_is_float_query_against_decoded_codes_and_rescore_matches():
    corpus, qs = random_unit(400, 32), random_unit(7, 32, seed=SEED + 2)
    ix = QuantizedDenseIndex(corpus, "int8")
    ids, first = ix.first_stage(qs, 20)
    by_hand = np.einsum("md,mkd->mk", qs.astype(np.float64), ix.decode(ids.ravel()).reshape(7, 20, 32))
    np.testing.assert_allclose(first, by_hand, rtol=0, atol=1e-5)  # faiss: asymmetric (float . decoded)
    np.testing.assert_allclose(ix.rescore(qs, ids), by_hand, rtol=0, atol=1e-6)
    # the first stage is the exact top-20 of q . decode(all codes) (no near-ties at the cut for this seed)
    all_scores = qs.astype(np.float64) @ ix.decode(np.arange(400)).astype(np.float64).T
    for row, s in zip(ids, all_scores):
        assert set(row.tolist()) == set(np.argsort(-s)[:20].tolist())
    top, scores = ix.search(qs, 5, rescore_multiplier=4)
    assert np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, np.take_along_axis(all_scores, top, axis=1), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- binary
@pytest.mark.parametrize("d", [64, 20])  # 20: the last byte is padded with zero bits
def test_binary_codes_are_packed_signs(d):
    corpus = random_unit(100, d)
    ix = QuantizedDenseIndex(corpus, "binary")
    np.testing.assert_array_equal(ix.codes(), np.packbits(corpus > 0, axis=1))
    assert ix.codes().shape == (100, (d + 7) // 8)
    np.testing.assert_array_equal(ix.decode(np.arange(100)), np.where(corpus > 0, 1.0, -1.0))


@pytest.mark.parametrize("d", [64, 20])
def test_binary_first_stage_is_brute_force_hamming(d):
    corpus, qs = random_unit(500, d), random_unit(9, d, seed=SEED + 3)
    ix = QuantizedDenseIndex(corpus, "binary")
    k = 25
    ids, dist = ix.first_stage(qs, k)
    hamming = ((qs[:, None, :] > 0) != (corpus[None, :, :] > 0)).sum(axis=2)  # (m, n) by hand
    for r in range(len(qs)):
        # the reported distances are the documents' true distances, and they are the k smallest (as a
        # multiset: which of several documents tied at the k-th distance make the list is free)
        np.testing.assert_array_equal(dist[r], hamming[r, ids[r]])
        np.testing.assert_array_equal(dist[r], np.sort(hamming[r])[:k])
        assert set(np.flatnonzero(hamming[r] < dist[r, -1])) <= set(ids[r].tolist())
        order = np.lexsort((ids[r], dist[r]))  # within the list: distance, then lower id
        np.testing.assert_array_equal(order, np.arange(k))
    np.testing.assert_array_equal(ix.candidates(qs, k), ids)


def test_binary_rescore_is_float_query_dot_plus_minus_one_bits():
    d = 20
    corpus, qs = random_unit(60, d), random_unit(4, d, seed=SEED + 4)
    ix = QuantizedDenseIndex(corpus, "binary")
    ids = np.array([[0, 5, 59, -1], [1, 1, 2, 3], [-1, -1, -1, -1], [58, 0, 7, 9]])
    got = ix.rescore(qs, ids)
    bits = np.unpackbits(np.packbits(corpus > 0, axis=1), axis=1, count=d).astype(np.float64)
    signs = 2 * bits - 1
    for r in range(4):
        for j in range(4):
            if ids[r, j] < 0:
                assert np.isnan(got[r, j])
            else:
                assert got[r, j] == pytest.approx(float(qs[r].astype(np.float64) @ signs[ids[r, j]]), abs=1e-6)
    assert got.dtype == np.float32


def test_binary_rescoring_raises_recall_on_clustered_data():
    docs, qs = clustered()
    exact = np.argsort(-(qs.astype(np.float64) @ docs.T), axis=1, kind="stable")[:, :10]
    ix = QuantizedDenseIndex(docs, "binary")
    hamming_only = recall_at(ix.candidates(qs, 10), exact)
    r1 = recall_at(ix.search(qs, 10, rescore_multiplier=1)[0], exact)
    r4 = recall_at(ix.search(qs, 10, rescore_multiplier=4)[0], exact)
    assert r1 == pytest.approx(hamming_only)  # multiplier 1 only reorders the Hamming top-10
    assert r4 > r1 + 0.04, (r1, r4)  # 0.38 -> 0.44 for this seed: the extra candidates, rescored, win


def test_int8_recall_on_clustered_data():
    docs, qs = clustered()
    exact = np.argsort(-(qs.astype(np.float64) @ docs.T), axis=1, kind="stable")[:, :10]
    ix = QuantizedDenseIndex(docs, "int8")
    assert recall_at(ix.search(qs, 10)[0], exact) >= 0.9


# ---------------------------------------------------------------------- search contract
@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_search_ties_by_lower_id_and_padding(kind):
    base = random_unit(3, 16)
    corpus = base[[2, 0, 2, 1, 0]]  # duplicates: equal codes, equal scores
    ix = QuantizedDenseIndex(corpus, kind)
    q = base[:1]
    ids, scores = ix.search(q, 7, rescore_multiplier=2)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == scores.shape == (1, 7)
    np.testing.assert_array_equal(ids[0, 5:], [-1, -1])
    assert np.isnan(scores[0, 5:]).all()
    assert sorted(ids[0, :5].tolist()) == [0, 1, 2, 3, 4]
    top = ids[0, :5]
    for a, b in zip(range(4), range(1, 5)):
        assert scores[0, a] > scores[0, b] or (scores[0, a] == scores[0, b] and top[a] < top[b])
    assert ids[0, 0] == 1 and ids[0, 1] == 4  # the query's own vector (rows 1 and 4), lower id first
    cand = ix.candidates(q, 6)
    assert cand.shape == (1, 6) and cand[0, 5] == -1
    empty_ids, empty_scores = ix.search(np.zeros((0, 16), np.float32), 3)
    assert empty_ids.shape == empty_scores.shape == (0, 3)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_properties(kind):
    ix = QuantizedDenseIndex(random_unit(30, 20), kind)
    assert ix.kind == kind and ix.dimension == 20 and len(ix) == 30
    assert ix.nbytes == (30 * 20 + 2 * 4 * 20 if kind == "int8" else 30 * 3)
    assert "QuantizedDenseIndex" in repr(ix)


# ---------------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_round_trip_through_arrays_gives_identical_results(kind, tmp_path):
    docs, qs = clustered(n=500, d=36, queries=20)
    ix = QuantizedDenseIndex(docs, kind, calibration=docs[:100] if kind == "int8" else None)
    arrays = ix.to_arrays()
    assert all(isinstance(a, np.ndarray) and a.dtype != object for a in arrays.values())
    np.savez(tmp_path / "q.npz", **arrays)
    with np.load(tmp_path / "q.npz", allow_pickle=False) as f:
        loaded = {key: f[key] for key in f.files}
    back = QuantizedDenseIndex.from_arrays(kind, loaded)
    assert (back.kind, back.dimension, len(back), back.nbytes) == (ix.kind, ix.dimension, len(ix), ix.nbytes)
    np.testing.assert_array_equal(back.codes(), ix.codes())
    for a, b in zip(ix.search(qs, 10), back.search(qs, 10)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ix.first_stage(qs, 30)[1], back.first_stage(qs, 30)[1])


def test_from_arrays_rejects_inconsistent_arrays():
    i8 = QuantizedDenseIndex(random_unit(10, 12), "int8").to_arrays()
    b = QuantizedDenseIndex(random_unit(10, 12), "binary").to_arrays()
    with pytest.raises(ValueError, match="lack"):
        QuantizedDenseIndex.from_arrays("int8", {"codes": i8["codes"]})
    with pytest.raises(ValueError, match="vmin and vdiff"):
        QuantizedDenseIndex.from_arrays("int8", {**i8, "vmin": i8["vmin"][:5]})
    with pytest.raises(ValueError, match="vdiff"):
        QuantizedDenseIndex.from_arrays("int8", {**i8, "vdiff": np.zeros(12, np.float32)})
    with pytest.raises(ValueError, match="uint8"):
        QuantizedDenseIndex.from_arrays("int8", {**i8, "codes": i8["codes"].astype(np.int64)})
    with pytest.raises(ValueError, match="do not hold"):
        QuantizedDenseIndex.from_arrays("binary", {**b, "dimension": np.array([40])})
    with pytest.raises(ValueError, match="padding bits"):
        QuantizedDenseIndex.from_arrays("binary", {**b, "codes": b["codes"] | np.uint8(1)})
    with pytest.raises(ValueError, match="kind"):
        QuantizedDenseIndex.from_arrays("int4", b)


# ---------------------------------------------------------------------- errors
def test_errors():
    x = random_unit(10, 8)
    with pytest.raises(ValueError, match="kind must be one of"):
        QuantizedDenseIndex(x, "int4")
    with pytest.raises(ValueError, match="float32"):
        QuantizedDenseIndex(x, "float32")
    with pytest.raises(ValueError, match="2-d"):
        QuantizedDenseIndex(x[0], "int8")
    with pytest.raises(ValueError, match="empty"):
        QuantizedDenseIndex(np.zeros((0, 8), np.float32), "binary")
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        QuantizedDenseIndex(bad, "int8")
    bad[3, 2] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        QuantizedDenseIndex(bad, "binary")
    with pytest.raises(ValueError, match="calibration has dimension 9"):
        QuantizedDenseIndex(x, "int8", calibration=random_unit(5, 9))
    with pytest.raises(ValueError, match="calibration is empty"):
        QuantizedDenseIndex(x, "int8", calibration=np.zeros((0, 8), np.float32))
    with pytest.raises(ValueError, match="int8 only"):
        QuantizedDenseIndex(x, "binary", calibration=x)
    ix = QuantizedDenseIndex(x, "int8")
    with pytest.raises(ValueError, match="queries has dimension 7"):
        ix.search(random_unit(2, 7), 3)
    with pytest.raises(ValueError, match="queries must be a 2-d"):
        ix.search(x[0], 3)
    with pytest.raises(ValueError, match="non-finite"):
        ix.search(np.full((1, 8), np.nan, np.float32), 3)
    with pytest.raises(ValueError, match="k must be"):
        ix.search(x, 0)
    with pytest.raises(ValueError, match="rescore_multiplier must be"):
        ix.search(x, 3, rescore_multiplier=0)
    with pytest.raises(ValueError, match=r"lie in \[0, 10\)"):
        ix.rescore(x[:1], np.array([[10]]))
    with pytest.raises(ValueError, match="one row per query"):
        ix.rescore(x[:2], np.array([[1, 2]]))


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_rescore_of_every_document_matches_candidate_rescoring(kind, monkeypatch):
    """The full-matrix path (all ids, read-only broadcast, several decode blocks) agrees with small lists."""
    import m3lab.retrieval.dense_quantization as dq

    monkeypatch.setattr(dq, "_DOC_BLOCK", 64)
    monkeypatch.setattr(dq, "_ROW_BLOCK", 3)
    corpus, qs = random_unit(300, 24), random_unit(7, 24, seed=SEED + 5)
    ix = QuantizedDenseIndex(corpus, kind)
    full = ix.rescore(qs, np.broadcast_to(np.arange(300), (7, 300)))
    by_hand = qs.astype(np.float64) @ ix.decode(np.arange(300)).astype(np.float64).T
    np.testing.assert_allclose(full, by_hand, rtol=0, atol=1e-6)
    ids, scores = ix.search(qs, 10, rescore_multiplier=3)
    np.testing.assert_array_equal(scores, np.take_along_axis(full, ids, axis=1))
