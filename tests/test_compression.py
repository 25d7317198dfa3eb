"""Smaller multi-vectors (m3lab.retrieval.compression) and the MUVERA first stage of CorpusIndex:
the int8 quantiser against a hand computation, token pooling (unchanged MaxSim at pool factor 1,
cluster means on separated clusters), int8 / pooled / MUVERA indexes against exhaustive MaxSim,
their save/load round trips and manifests."""
from __future__ import annotations

import json

import numpy as np
import pytest

from m3lab import scoring
from m3lab.retrieval import CorpusIndex, CorruptIndexError
from m3lab.retrieval import muvera as fde
from m3lab.retrieval.compression import (
    Int8Vectors,
    dequantize_int8,
    multivector_bytes,
    pool_tokens,
    quantize_int8,
)
from test_index import QUERIES, mini, tiny_m3  # noqa: F401 - test_index's fixtures, shared


@pytest.fixture(scope="module")
def exact(tiny_m3, mini):
    return CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("colbert",), colbert_dtype="float32",
                             show_progress=False)


# ----------------------------------------------------------------------------- int8


def test_int8_matches_a_hand_computation():
    x = np.array([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, -2.0, 0.011]], dtype=np.float32)
    codes, scales = quantize_int8(x)
    # row 0: scale 1/127; 0.5*127 = 63.5 -> 64 (round half to even), 0.25*127 = 31.75 -> 32
    # row 2: scale 3/127; 1/scale = 42.33 -> 42, -2/scale = -84.67 -> -85, 0.011/scale = 0.47 -> 0
    np.testing.assert_array_equal(codes, [[64, -127, 32, 0], [0, 0, 0, 0], [127, 42, -85, 0]])
    np.testing.assert_allclose(scales, [1 / 127, 0.0, 3 / 127], rtol=1e-7)
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    back = dequantize_int8(codes, scales)
    assert np.all(np.abs(back - x) <= scales[:, None] / 2 * (1 + 1e-6))  # half a step at most


def test_int8_refuses_non_finite_values_and_bad_shapes():
    with pytest.raises(ValueError, match="non-finite"):
        quantize_int8(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"\(n, d\) array"):
        quantize_int8(np.ones(3))


def test_int8_views_dequantise_each_document():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 6)).astype(np.float32)
    codes, scales = quantize_int8(x)
    views = Int8Vectors(codes, scales, np.array([0, 3, 3, 10]))
    assert len(views) == 3 and list(views.lengths) == [3, 0, 7] and views[1].shape == (0, 6)
    np.testing.assert_array_equal(views[2], dequantize_int8(codes[3:], scales[3:]))
    assert [v.shape[0] for v in views] == [3, 0, 7]


def test_multivector_bytes():
    assert multivector_bytes([10, 20], 384, "float32") == 30 * 384 * 4 + 24
    assert multivector_bytes([10, 20], 384, "float16") == 30 * 384 * 2 + 24
    assert multivector_bytes([10, 20], 384, "int8") == 30 * (384 + 4) + 24


# ----------------------------------------------------------------------------- pooling


def test_pool_factor_one_leaves_vectors_and_maxsim_unchanged():
    rng = np.random.default_rng(1)
    doc = rng.normal(size=(17, 8)).astype(np.float32)
    q = rng.normal(size=(5, 8)).astype(np.float32)
    pooled = pool_tokens(doc, 1)
    np.testing.assert_array_equal(pooled, doc)
    assert pooled is not doc
    assert scoring.colbert_scores_chunked([q], [pooled])[0, 0] == scoring.colbert_scores_chunked([q], [doc])[0, 0]


def test_pooling_separated_clusters_gives_their_means():
    rng = np.random.default_rng(2)
    centres = np.eye(6)[:3] * 10
    doc = np.concatenate([c + rng.normal(scale=0.01, size=(2, 6)) for c in centres])[[0, 2, 4, 1, 3, 5]]
    pooled = pool_tokens(doc, 2)
    means = np.stack([doc[[0, 3]].mean(0), doc[[1, 4]].mean(0), doc[[2, 5]].mean(0)])
    assert pooled.shape == (3, 6)
    # the same three means, in some order (cluster labels are arbitrary)
    order = [int(np.argmin(np.linalg.norm(means - p, axis=1))) for p in pooled]
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(pooled, means[order], rtol=1e-12)


def test_pooling_keeps_protected_vectors_and_counts():
    rng = np.random.default_rng(3)
    doc = rng.normal(size=(31, 4)).astype(np.float16)
    pooled = pool_tokens(doc, 3, protected=1)
    assert pooled.shape == (1 + 30 // 3, 4) and pooled.dtype == np.float16
    np.testing.assert_array_equal(pooled[0], doc[0])
    assert pool_tokens(doc[:1], 2).shape == (1, 4)
    with pytest.raises(ValueError, match="pool_factor must be an integer >= 1"):
        pool_tokens(doc, 0)


# ----------------------------------------------------------------------------- indexes


def _colbert_ranking(index, q, **kw):
    return index.rank(q, ["colbert"], top_k=10, **kw)["colbert"]


def test_int8_index_scores_within_quantisation_error(tiny_m3, mini, exact, tmp_path):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("colbert",), colbert_dtype="int8",
                           show_progress=False)
    assert ix.colbert_vectors.dtype == np.int8 and ix.colbert_scales.shape == (len(ix.colbert_vectors),)
    assert ix.nbytes()["colbert"] == multivector_bytes(np.diff(ix.colbert_offsets), ix.colbert_vectors.shape[1], "int8")
    q = exact.encode_queries(QUERIES, components=("colbert",))
    got, ref = _colbert_ranking(ix, q), _colbert_ranking(exact, q)
    # each coordinate is off by at most scale/2 = max|x|/254: s_mul (a mean of n_q maxima of unit-vector
    # dot products) moves by at most sqrt(d) * max|x| / 254 <= 0.022 for d = 32; measured 9.8e-4
    full = scoring.colbert_scores_chunked(q.colbert, [ix.document_vectors(i) for i in range(len(ix))])
    np.testing.assert_allclose(got.scores, np.take_along_axis(full, got.indices, axis=1), rtol=1e-6, atol=1e-7)
    ref_full = scoring.colbert_scores_chunked(q.colbert, [exact.document_vectors(i) for i in range(len(exact))])
    assert np.abs(full - ref_full).max() < 0.01
    assert np.mean([len(set(a[:5]) & set(b[:5])) / 5 for a, b in zip(got.indices, ref.indices)]) >= 0.8
    loaded = CorpusIndex.load(ix.save(tmp_path / "int8"), tiny_m3)
    np.testing.assert_array_equal(loaded.colbert_vectors, ix.colbert_vectors)
    np.testing.assert_array_equal(loaded.colbert_scales, ix.colbert_scales)
    np.testing.assert_array_equal(_colbert_ranking(loaded, q).scores, got.scores)


def test_pooled_index_has_fewer_vectors(tiny_m3, mini, exact, tmp_path):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("colbert",), colbert_dtype="float32",
                           pool_factor=2, show_progress=False)
    lengths, full_lengths = np.diff(ix.colbert_offsets), np.diff(exact.colbert_offsets)
    np.testing.assert_array_equal(lengths, np.maximum(full_lengths // 2, 1))
    np.testing.assert_allclose(ix.document_vectors(0), pool_tokens(exact.document_vectors(0), 2), rtol=1e-5, atol=1e-6)
    assert ix.info()["settings"]["pool_factor"] == 2
    loaded = CorpusIndex.load(ix.save(tmp_path / "pooled"), tiny_m3)
    np.testing.assert_array_equal(loaded.colbert_offsets, ix.colbert_offsets)


def test_muvera_first_stage_reranks_by_exact_maxsim(tiny_m3, mini, exact, tmp_path):
    ix = CorpusIndex.build(tiny_m3, mini.corpus, max_length=128, store=("colbert",), colbert_dtype="float32",
                           muvera={"num_repetitions": 4, "num_simhash_projections": 3, "projection_dimension": 8},
                           show_progress=False)
    cfg = ix.muvera_config
    assert (cfg.dimension, cfg.num_repetitions, cfg.output_dimension) == (tiny_m3.colbert_linear.out_features, 4, 4 * 8 * 8)
    np.testing.assert_array_equal(ix.muvera_fde[:3], fde.encode_documents([exact.document_vectors(i) for i in range(3)], cfg))
    q = exact.encode_queries(QUERIES, components=("colbert",))
    ref = _colbert_ranking(exact, q)
    # every document a candidate: exactly the exhaustive ranking
    every = _colbert_ranking(ix, q, candidates=len(ix))
    np.testing.assert_array_equal(every.indices, ref.indices)
    np.testing.assert_array_equal(every.scores, ref.scores)
    # 10 candidates: the FDE top-10, ordered by their exact MaxSim
    few = _colbert_ranking(ix, q, candidates=10)
    q_fde = fde.encode_queries(list(q.colbert), cfg)
    fde_top = np.argsort(-(ix.muvera_fde @ q_fde.T).T, axis=1, kind="stable")[:, :10]
    full = scoring.colbert_scores_chunked(q.colbert, [exact.document_vectors(i) for i in range(len(exact))])
    for r in range(len(QUERIES)):
        assert set(few.indices[r]) == set(fde_top[r])
        np.testing.assert_allclose(few.scores[r], full[r, few.indices[r]], rtol=1e-6, atol=1e-7)
        assert np.all(np.diff(few.scores[r]) <= 0)
    path = ix.save(tmp_path / "muvera")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["settings"]["muvera"] == cfg.to_dict()
    loaded = CorpusIndex.load(path, tiny_m3)
    np.testing.assert_array_equal(_colbert_ranking(loaded, q, candidates=10).indices, few.indices)
    # a manifest whose FDE config does not fit the stored encodings is refused
    manifest["settings"]["muvera"]["num_repetitions"] = 5
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptIndexError, match="muvera_fde.npy: shape"):
        CorpusIndex.load(path, tiny_m3, verify=False)


def test_bad_compression_options_are_refused(tiny_m3, mini):
    with pytest.raises(ValueError, match="colbert_dtype must be one of"):
        CorpusIndex.build(tiny_m3, mini.corpus[:3], colbert_dtype="int4", show_progress=False)
    with pytest.raises(ValueError, match="pool_factor must be an integer >= 1"):
        CorpusIndex.build(tiny_m3, mini.corpus[:3], pool_factor=0, show_progress=False)
    with pytest.raises(ValueError, match="add 'colbert' to store"):
        CorpusIndex.build(tiny_m3, mini.corpus[:3], store=("dense",), muvera=True, show_progress=False)
    with pytest.raises(ValueError, match="muvera config has dimension 7"):
        CorpusIndex.build(tiny_m3, mini.corpus[:3], muvera=fde.FDEConfig(dimension=7), show_progress=False)
